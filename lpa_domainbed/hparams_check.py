"""Checks of the hparams an algorithm receives, against what its :class:`HParam` s accept.

DomainBed's train script merges ``--hparams`` into the defaults with ``dict.update``, so a
misspelt name (``lpa_epss``) would train silently with the default, a string for a number
would fail with a bare ``TypeError`` deep in PyTorch, and ``Infinity`` would train a NaN model.

Pure functions: an algorithm's name, its specs, the types DomainBed's registry gives its other
hparams, and the hparams come in; messages (or the completed hparams) come out. Nothing here
imports the algorithms or reads the command line. The algorithm base class calls
:func:`validate` at construction; the sweep tooling runs :func:`problems` on a sweep's hparams
before anything is launched; :func:`hparams_argument_problem` reads a train command line that
the autoload hands it.
"""

from __future__ import annotations

import difflib
import functools
import json
from typing import Iterable

from lpa_domainbed.hparams import USER_PREFIX, HParam, kind, type_problem

__all__ = ["validate", "problems", "known_types", "registry_types", "clear_cache",
           "hparams_argument_problem"]

_FIX = "Fix it in --hparams (or the sweep's hparams)."


@functools.lru_cache(maxsize=None)
def registry_types(name: str) -> dict[str, tuple]:
    """``{hparam: accepted types}`` of what DomainBed's registry gives ``name`` (any dataset)."""
    from domainbed import datasets, hparams_registry

    known: dict[str, set] = {}
    for dataset in datasets.DATASETS:
        for key, (default, _) in hparams_registry._hparams(name, dataset, 0).items():
            known.setdefault(key, set()).update(kind(default))
    return {key: tuple(sorted(types, key=lambda t: t.__name__)) for key, types in known.items()}


def clear_cache() -> None:
    """Forget the registry's names (a newly registered dataset may bring new ones)."""
    registry_types.cache_clear()


def known_types(specs: Iterable[HParam], types: dict[str, tuple]) -> dict[str, tuple]:
    """``{name: accepted types}``: the registry's ``types``, then the ``specs``' own."""
    return {**types, **{spec.name: spec.types() for spec in specs}}


def _unknown(key: str, known, algorithm: str) -> str:
    close = difflib.get_close_matches(key, list(known), n=3)
    hint = f" Did you mean {' or '.join(map(repr, close))}?" if close else ""
    return (f"unknown hparam {key!r} for {algorithm}.{hint} {_FIX} A name of your own "
            f"(read by your code only) must start with {USER_PREFIX!r}.")


def problems(name: str, specs: list[HParam], types: dict[str, tuple], hparams: dict,
             unknown_ok=frozenset()) -> list[str]:
    """Every problem of ``hparams`` for the algorithm ``name``, one message each (``[]``: all
    fine). ``specs``: its :class:`HParam` s; ``types``: :func:`registry_types` of its name.
    A name in ``unknown_ok`` that the algorithm does not know is not a problem."""
    known = known_types(specs, types)
    by_name = {spec.name: spec for spec in specs}
    found = []
    for key, value in hparams.items():
        if key.startswith(USER_PREFIX) or (key in unknown_ok and key not in known):
            continue
        if key not in known:
            found.append(_unknown(key, known, name))
        else:
            spec = by_name.get(key)
            problem = spec.problem(value) if spec else type_problem(key, known[key], value)
            if problem:
                found.append(f"hparam {problem}. {_FIX}")
    return found


def validate(name: str, specs: list[HParam], types: dict[str, tuple], hparams: dict) -> dict:
    """Check ``hparams`` for the algorithm ``name``; return them completed with the specs'
    missing defaults (the one place where defaults are merged).

    Raises ``ValueError`` for a name no registry entry knows (with the closest names), a value
    of the wrong type, a non-finite number, or a value the :class:`HParam` refuses (not one of
    its ``choices``, failing its ``check``).
    """
    found = problems(name, specs, types, hparams)
    if found:
        raise ValueError(found[0])
    return {**{spec.name: spec.default for spec in specs}, **hparams}


def advice(specs: list[HParam], hparams: dict) -> list[str]:
    """What each spec's :meth:`~lpa_domainbed.hparams.HParam.advice` says of ``hparams``
    (valid values outside their sensible range), in the specs' order."""
    found = (spec.advice(hparams[spec.name]) for spec in specs if spec.name in hparams)
    return [text for text in found if text]


_EXAMPLE = """write one JSON object of names and values, e.g. --hparams '{"lpa_eps": 0.2}'"""


def hparams_argument_problem(argv: list[str]) -> str | None:
    """What is wrong with the ``--hparams`` text of a train command line (``None``: nothing).

    DomainBed's train script would ``json.loads`` it with a traceback, and ``dict.update`` a
    JSON list of pairs, or fail on any other list with a message about sequences."""
    text = None
    for i, arg in enumerate(argv):
        if arg == "--hparams" and i + 1 < len(argv):
            text = argv[i + 1]
        elif arg.startswith("--hparams="):
            text = arg.split("=", 1)[1]
    if not text:
        return None
    try:
        value = json.loads(text)
    except ValueError as error:
        return f"--hparams {text!r} is not valid JSON ({error}); {_EXAMPLE}"
    if not isinstance(value, dict):
        kind_name = {list: "list", str: "string", bool: "boolean", type(None): "null"}.get(
            type(value), "number")
        return f"--hparams {text!r} is a JSON {kind_name}, not an object; {_EXAMPLE}"
    return None
