"""Checks of the hparams an algorithm receives (what :func:`lpa_domainbed.hparams.validate` does).

DomainBed's train script merges ``--hparams`` into the defaults with ``dict.update``, so a
misspelt name (``lpa_epss``) would train silently with the default, a string for a number
would fail with a bare ``TypeError`` deep in PyTorch, and ``Infinity`` would train a NaN model.
"""

from __future__ import annotations

import difflib
import functools
import math
import numbers

import numpy as np

from lpa_domainbed.hparams import USER_PREFIX, specs_of

__all__ = ["check", "known_hparams"]

_FIX = "Fix it in --hparams (or the sweep's hparams)."


def _kind(value) -> tuple:
    """The accepted types inferred from a default value (``()`` = anything)."""
    if value is None:
        return ()
    if isinstance(value, bool):
        return (bool,)
    if isinstance(value, numbers.Integral):
        return (int,)
    if isinstance(value, numbers.Real):
        return (float,)
    if isinstance(value, (list, tuple)):
        return (list,)
    return (type(value),)


def _accepts(types: tuple, value) -> bool:
    if not types:
        return True
    for t in types:
        if t is bool and isinstance(value, (bool, np.bool_)):
            return True
        if t is int and isinstance(value, numbers.Integral) and not isinstance(value, bool):
            return True
        if t is float and isinstance(value, numbers.Real) and not isinstance(value, bool):
            return True
        if t is list and isinstance(value, (list, tuple)):
            return True
        if t not in (bool, int, float, list) and isinstance(value, t):
            return True
    return False


def _algorithm_name(cls) -> str:
    from lpa_domainbed.algorithms import ALGORITHMS

    return next((name for name, obj in ALGORITHMS.items() if obj is cls), cls.__name__)


@functools.lru_cache(maxsize=None)
def known_hparams(cls) -> dict[str, tuple]:
    """``{name: accepted types}`` of every hparam any registered dataset gives ``cls``."""
    from domainbed import datasets, hparams_registry

    name = _algorithm_name(cls)
    known: dict[str, set] = {}
    for dataset in datasets.DATASETS:
        for key, (default, _) in hparams_registry._hparams(name, dataset, 0).items():
            known.setdefault(key, set()).update(_kind(default))
    for spec in specs_of(cls, None):
        types = spec.type if spec.type is not None else _kind(spec.default)
        known[spec.name] = set(types if isinstance(types, tuple) else (types,))
    return {key: tuple(sorted(types, key=lambda t: t.__name__)) for key, types in known.items()}


def _type_names(types: tuple) -> str:
    names = [t.__name__ for t in types]
    return " or ".join(names) + (" (an int is accepted)" if float in types else "")


def check(cls, hparams: dict) -> dict:
    """Raise ``ValueError`` for an unknown name, a wrong type or a non-finite number."""
    known = known_hparams(cls)
    algorithm = _algorithm_name(cls)
    for key, value in hparams.items():
        if key.startswith(USER_PREFIX):
            continue
        if key not in known:
            close = difflib.get_close_matches(key, list(known), n=3)
            hint = f" Did you mean {' or '.join(map(repr, close))}?" if close else ""
            raise ValueError(
                f"unknown hparam {key!r} for {algorithm}.{hint} {_FIX} A name of your own "
                f"(read by your code only) must start with {USER_PREFIX!r}.")
        if not _accepts(known[key], value):
            raise ValueError(
                f"hparam {key}={value!r} has type {type(value).__name__}; expected "
                f"{_type_names(known[key])}. {_FIX}")
        if isinstance(value, numbers.Real) and not isinstance(value, bool) \
                and not math.isfinite(value):
            raise ValueError(f"hparam {key}={value!r} is not a finite number. {_FIX}")
    defaults = {spec.name: spec.default for spec in specs_of(cls, None)}
    return {**defaults, **hparams}
