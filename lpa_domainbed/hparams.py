"""Declarative hyperparameters, merged into DomainBed's ``hparams_registry``, and their checks.

DomainBed defines each hyperparameter as ``(default, random value)`` with the random value
drawn from ``np.random.RandomState(misc.seed_hash(seed, name))``. :class:`HParam` does the same
per name, so adding ours never changes the values DomainBed draws for its own hyperparameters.

DomainBed merges ``--hparams`` into the defaults with ``dict.update``: a misspelt name or a
wrong type would be silently ignored or fail deep inside training. :func:`validate` checks
them at construction (:mod:`lpa_domainbed.hparams_check`).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Iterable

import numpy as np

__all__ = ["HParam", "define", "choice", "log_uniform", "uniform", "fixed", "merge_specs",
           "specs_of", "validate", "USER_PREFIX"]

#: ``--hparams`` names starting with this are the user's own: never rejected as unknown.
USER_PREFIX = "user_"


@dataclasses.dataclass(frozen=True)
class HParam:
    """One hyperparameter: a default and a random-search distribution.

    Args:
        name: the key in the hparams dict.
        default: the value used by ``hparams_seed=0`` (DomainBed's default hparams).
        sample: ``RandomState -> value``, the random-search distribution.
        doc: one line for the docs (paper symbol, meaning).
        type: the accepted Python type(s) (``float``, ``(str, list)``...); inferred from
            ``default`` when ``None`` (an ``int`` is accepted for ``float``, a ``bool`` is not
            an ``int``; a ``None`` default accepts anything).
    """

    name: str
    default: Any
    sample: Callable[[np.random.RandomState], Any]
    doc: str = ""
    type: Any = None


class _Fixed:
    """A distribution that always returns one value; a new default replaces that value."""

    def __init__(self, value):
        self.value = value

    def __call__(self, r):
        return self.value

    def __repr__(self):
        return f"fixed({self.value!r})"


def fixed(value):
    """A distribution that always returns ``value`` (not searched)."""
    return _Fixed(value)


def choice(values):
    values = list(values)
    return lambda r: values[int(r.randint(len(values)))]


def uniform(low, high):
    return lambda r: float(r.uniform(low, high))


def log_uniform(low_exp, high_exp):
    """``10 ** U(low_exp, high_exp)``, DomainBed's usual learning-rate style search."""
    return lambda r: float(10 ** r.uniform(low_exp, high_exp))


def merge_specs(base: list[HParam], extra: list[HParam]) -> list[HParam]:
    """``base`` with entries of ``extra`` replacing same-named ones (others appended).

    A replacing entry without an explicit ``type`` keeps the replaced one's (a subclass that
    changes ``perturb_layer``'s default still accepts a list of layers).
    """
    names = {s.name: s for s in extra}
    merged = []
    for spec in base:
        new = names.pop(spec.name, spec)
        if new is not spec and new.type is None and spec.type is not None:
            new = dataclasses.replace(new, type=spec.type)
        merged.append(new)
    return merged + list(names.values())


def _defaults_override(cls) -> dict:
    """``HPARAM_DEFAULTS`` of ``cls`` and its bases, the most derived class winning."""
    merged: dict = {}
    for klass in reversed(cls.__mro__):
        merged.update(vars(klass).get("HPARAM_DEFAULTS", {}))
    return merged


def specs_of(cls, dataset: str | None = None) -> list[HParam]:
    """The hparams an algorithm class declares, with its ``HPARAM_DEFAULTS`` applied.

    ``cls.hparam_specs(dataset)`` when the class has it (every ``ActivationPerturbation``; a
    plain DomainBed ``Algorithm`` may define the same classmethod), else none. A class
    attribute ``HPARAM_DEFAULTS = {"perturb_layer": "features"}`` changes inherited defaults
    in one line; a searched distribution stays, a fixed one follows the new default.
    """
    hook = getattr(cls, "hparam_specs", None)
    specs = list(hook(dataset)) if hook is not None else []
    overrides = _defaults_override(cls)
    unknown = sorted(set(overrides) - {s.name for s in specs})
    if unknown:
        raise ValueError(f"{cls.__name__}.HPARAM_DEFAULTS names {unknown}, which "
                         f"{cls.__name__} does not declare; declare them in hparam_specs")
    out = []
    for spec in specs:
        if spec.name in overrides:
            value = overrides[spec.name]
            sample = fixed(value) if isinstance(spec.sample, _Fixed) else spec.sample
            spec = dataclasses.replace(spec, default=value, sample=sample)
        out.append(spec)
    return out


def define(hparams: dict, specs: Iterable[HParam], random_seed: int, seed_hash, override=False):
    """Add ``specs`` to a DomainBed ``{name: (default, random)}`` dict.

    The random value of each name is drawn exactly as DomainBed draws its own:
    ``RandomState(seed_hash(random_seed, name))``. ``override`` lets a dataset replace a value
    DomainBed already defined (for datasets DomainBed does not know, e.g. ``lr``).
    """
    specs = list(specs)
    if not override:  # check all first: a refused spec list leaves ``hparams`` unchanged
        for spec in specs:
            if spec.name in hparams:
                raise ValueError(
                    f"hparam {spec.name!r} is already defined by DomainBed; rename it")
    for spec in specs:
        state = np.random.RandomState(seed_hash(random_seed, spec.name))
        hparams[spec.name] = (spec.default, spec.sample(state))
    return hparams


def validate(algorithm_class, hparams: dict) -> dict:
    """Check ``hparams`` for ``algorithm_class``; return a copy with its missing defaults.

    Raises ``ValueError`` for a name no registry entry knows (with the closest names), a value
    of the wrong type, or a non-finite number. See :mod:`lpa_domainbed.hparams_check`.
    """
    from lpa_domainbed.hparams_check import check

    return check(algorithm_class, hparams)
