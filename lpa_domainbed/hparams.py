"""Declarative hyperparameters, merged into DomainBed's ``hparams_registry``.

DomainBed defines each hyperparameter as ``(default, random value)`` with the random value
drawn from ``np.random.RandomState(misc.seed_hash(seed, name))``. :class:`HParam` does the same
per name, so adding ours never changes the values DomainBed draws for its own hyperparameters.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Iterable

import numpy as np

__all__ = ["HParam", "define", "choice", "log_uniform", "uniform", "fixed"]


@dataclasses.dataclass(frozen=True)
class HParam:
    """One hyperparameter: a default and a random-search distribution.

    Args:
        name: the key in the hparams dict.
        default: the value used by ``hparams_seed=0`` (DomainBed's default hparams).
        sample: ``RandomState -> value``, the random-search distribution.
        doc: one line for the docs (paper symbol, meaning).
    """

    name: str
    default: Any
    sample: Callable[[np.random.RandomState], Any]
    doc: str = ""


def fixed(value):
    """A distribution that always returns ``value`` (not searched)."""
    return lambda r: value


def choice(values):
    values = list(values)
    return lambda r: values[int(r.randint(len(values)))]


def uniform(low, high):
    return lambda r: float(r.uniform(low, high))


def log_uniform(low_exp, high_exp):
    """``10 ** U(low_exp, high_exp)``, DomainBed's usual learning-rate style search."""
    return lambda r: float(10 ** r.uniform(low_exp, high_exp))


def define(hparams: dict, specs: Iterable[HParam], random_seed: int, seed_hash, override=False):
    """Add ``specs`` to a DomainBed ``{name: (default, random)}`` dict.

    The random value of each name is drawn exactly as DomainBed draws its own:
    ``RandomState(seed_hash(random_seed, name))``. ``override`` lets a dataset replace a value
    DomainBed already defined (for datasets DomainBed does not know, e.g. ``lr``).
    """
    for spec in specs:
        if spec.name in hparams and not override:
            raise ValueError(
                f"hparam {spec.name!r} is already defined by DomainBed; rename it")
        state = np.random.RandomState(seed_hash(random_seed, spec.name))
        hparams[spec.name] = (spec.default, spec.sample(state))
    return hparams
