"""Checks of the hparams an algorithm receives, against what its :class:`HParam` s accept.

DomainBed's train script merges ``--hparams`` into the defaults with ``dict.update``, so a
misspelt name (``lpa_epss``) would train silently with the default, a string for a number
would fail with a bare ``TypeError`` deep in PyTorch, and ``Infinity`` would train a NaN model.
:func:`validate` runs at construction; :func:`validate_sweep_hparams` runs the same checks on
a sweep's hparams before anything is launched.
"""

from __future__ import annotations

import difflib
import functools
import json
import sys
from typing import Iterable

from lpa_domainbed.hparams import USER_PREFIX, defaults_of, kind, specs_of, type_problem

__all__ = ["validate", "validate_sweep_hparams", "known_hparams", "problems", "clear_cache",
           "hparams_argument_problem", "check_train_command_line"]

_FIX = "Fix it in --hparams (or the sweep's hparams)."


def _algorithm_name(cls) -> str:
    from lpa_domainbed.algorithms import ALGORITHMS

    return next((name for name, obj in ALGORITHMS.items() if obj is cls), cls.__name__)


@functools.lru_cache(maxsize=None)
def _registry_types(name: str) -> dict[str, tuple]:
    """``{hparam: accepted types}`` of what DomainBed's registry gives ``name`` (any dataset)."""
    from domainbed import datasets, hparams_registry

    known: dict[str, set] = {}
    for dataset in datasets.DATASETS:
        for key, (default, _) in hparams_registry._hparams(name, dataset, 0).items():
            known.setdefault(key, set()).update(kind(default))
    return {key: tuple(sorted(types, key=lambda t: t.__name__)) for key, types in known.items()}


def known_hparams(cls) -> dict[str, tuple]:
    """``{name: accepted types}`` of every hparam any registered dataset gives ``cls``."""
    known = dict(_registry_types(_algorithm_name(cls)))
    known.update({spec.name: spec.types() for spec in specs_of(cls, None)})
    return known


def clear_cache() -> None:
    """Forget the registry's names (a newly registered dataset may bring new ones)."""
    _registry_types.cache_clear()


def _unknown(key: str, known, algorithm: str) -> str:
    close = difflib.get_close_matches(key, list(known), n=3)
    hint = f" Did you mean {' or '.join(map(repr, close))}?" if close else ""
    return (f"unknown hparam {key!r} for {algorithm}.{hint} {_FIX} A name of your own "
            f"(read by your code only) must start with {USER_PREFIX!r}.")


def problems(cls, hparams: dict, unknown_ok=frozenset()) -> list[str]:
    """Every problem of ``hparams`` for ``cls``, one message each (``[]``: all fine).

    A name in ``unknown_ok`` that ``cls`` does not know is not a problem."""
    known = known_hparams(cls)
    specs = {spec.name: spec for spec in specs_of(cls, None)}
    algorithm = _algorithm_name(cls)
    found = []
    for key, value in hparams.items():
        if key.startswith(USER_PREFIX) or (key in unknown_ok and key not in known):
            continue
        if key not in known:
            found.append(_unknown(key, known, algorithm))
        else:
            spec = specs.get(key)
            problem = spec.problem(value) if spec else type_problem(key, known[key], value)
            if problem:
                found.append(f"hparam {problem}. {_FIX}")
    return found


def validate(cls, hparams: dict) -> dict:
    """Check ``hparams`` for ``cls``; return them completed with its missing defaults.

    Raises ``ValueError`` for a name no registry entry knows (with the closest names), a value
    of the wrong type, a non-finite number, or a value the :class:`HParam` refuses (not one of
    its ``choices``, failing its ``check``). The one place where defaults are merged.
    """
    found = problems(cls, hparams)
    if found:
        raise ValueError(found[0])
    return {**defaults_of(cls, None), **hparams}


def _validates_at_construction(cls) -> bool:
    from lpa_domainbed.algorithms.base import ActivationPerturbation

    return issubclass(cls, ActivationPerturbation)


def validate_sweep_hparams(algorithms: Iterable[str], hparams: dict | None) -> None:
    """Check a sweep file's ``hparams`` (given to every job) for each of ``algorithms``.

    Raises ``ValueError`` listing every problem, one per line, each naming the algorithm:
    an unknown name (for an algorithm of this package, which refuses unknown names at
    construction; for DomainBed's own algorithms, which ignore them, only a name no algorithm
    of the sweep knows), a wrong type, a non-finite number, a value outside an HParam's
    ``choices`` or ``check``. Needs DomainBed importable; an unknown algorithm is a problem.
    """
    from domainbed import algorithms as domainbed_algorithms

    import lpa_domainbed

    lpa_domainbed.register()
    hparams, found, classes = dict(hparams or {}), [], {}
    for name in dict.fromkeys(algorithms):
        try:
            classes[name] = domainbed_algorithms.get_algorithm_class(name)
        except NotImplementedError as error:
            found.append(f"{name}: {error}")
    anyone_knows = set().union(*(known_hparams(cls) for cls in classes.values()))
    for name, cls in classes.items():
        lenient = set() if _validates_at_construction(cls) else anyone_knows
        found += [f"{name}: {problem}" for problem in problems(cls, hparams, lenient)]
    if found:
        raise ValueError("\n".join(found))


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
        kind = {list: "list", str: "string", bool: "boolean", type(None): "null"}.get(
            type(value), "number")
        return f"--hparams {text!r} is a JSON {kind}, not an object; {_EXAMPLE}"
    return None


def check_train_command_line() -> None:
    """In DomainBed's train script, exit with one line when its ``--hparams`` is not a JSON
    object (called when the script asks the registry for its hparams, before it parses them)."""
    main = sys.modules.get("__main__")
    spec_name = getattr(getattr(main, "__spec__", None), "name", None)
    if spec_name != "domainbed.scripts.train" and not sys.argv[0].replace("\\", "/").endswith(
            "domainbed/scripts/train.py"):
        return
    problem = hparams_argument_problem(sys.argv[1:])
    if problem:
        raise SystemExit(f"train: {problem}")
