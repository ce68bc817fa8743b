"""Declarative hyperparameters, merged into DomainBed's ``hparams_registry``.

DomainBed defines each hyperparameter as ``(default, random value)`` with the random value
drawn from ``np.random.RandomState(misc.seed_hash(seed, name))``. :class:`HParam` does the same
per name, so adding ours never changes the values DomainBed draws for its own hyperparameters.

An :class:`HParam` also says which values it accepts (its type, its ``choices`` or its
``check``), so each rule is written once; :mod:`lpa_domainbed.hparams_check` applies them to
what DomainBed's train script passes (``--hparams`` is merged with ``dict.update``, so nothing
else would catch ``lpa_epss`` or ``lpa_mode='amortised'``). A class changes an inherited
default with ``HPARAM_DEFAULTS = {name: value}``; :func:`specs_of` is the one place that
applies it, :func:`defaults_of` the one place that lists the defaults.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from typing import Any, Callable, Iterable

import numpy as np

__all__ = ["HParam", "Rule", "define", "choice", "log_uniform", "uniform", "fixed", "at_least",
           "above", "within", "specs_of", "defaults_of", "kind", "type_problem",
           "USER_PREFIX"]

#: ``--hparams`` names starting with this are the user's own: never rejected as unknown.
USER_PREFIX = "user_"


@dataclasses.dataclass(frozen=True)
class Rule:
    """A check on one value: ``test(value) -> bool`` and what a valid value is, in words."""

    test: Callable[[Any], bool]
    expected: str

    def __call__(self, value) -> bool:
        return bool(self.test(value))


def at_least(low) -> Rule:
    return Rule(lambda v: v >= low, f"a value >= {low}")


def above(low) -> Rule:
    return Rule(lambda v: v > low, f"a value > {low}")


def within(low, high, bounds: str = "[]") -> Rule:
    """``low <= v <= high``; ``bounds`` ``"[)"``, ``"(]"`` or ``"()"`` excludes an end."""
    lo_ok = (lambda v: v >= low) if bounds[0] == "[" else (lambda v: v > low)
    hi_ok = (lambda v: v <= high) if bounds[1] == "]" else (lambda v: v < high)
    return Rule(lambda v: lo_ok(v) and hi_ok(v), f"a value in {bounds[0]}{low}, {high}{bounds[1]}")


#: ``sensible`` for a radius relative to the activation's norm (LPA's eps, eq. 14; ADA's):
#: above 1 the perturbation can outgrow the activation it perturbs. The paper finds LPA stable
#: for eps in [0.05, 0.3] and degrading above 0.5 (Figure 7a).
RELATIVE_RADIUS = Rule(lambda v: v <= 1, "[0, 1], where the perturbation is at most as large "
                       "as the activation (the paper: stable for 0.05-0.3, degrading above 0.5, "
                       "Figure 7a)")


def kind(value) -> tuple:
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
    """Whether ``value`` has one of ``types`` (an int is a float, a bool is not an int)."""
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


def type_problem(name: str, types: tuple, value) -> str | None:
    """``"{name}={value!r} has type ..."`` or ``"... is not a finite number"``, or ``None``."""
    if not _accepts(types, value):
        names = " or ".join(sorted(t.__name__ for t in types))
        names += " (an int is accepted)" if float in types else ""
        return f"{name}={value!r} has type {type(value).__name__}; expected {names}"
    if isinstance(value, numbers.Real) and not isinstance(value, bool) \
            and not math.isfinite(value):
        return f"{name}={value!r} is not a finite number"
    return None


class _Fixed:
    """The spelling ``fixed(value)``: not searched (see :class:`HParam`)."""

    def __init__(self, value):
        self.value = value

    def __repr__(self):
        return f"fixed({self.value!r})"


def fixed(value):
    """Not searched: the random draw is the default. Same as leaving ``sample`` out."""
    return _Fixed(value)


def choice(values):
    values = list(values)
    return lambda r: values[int(r.randint(len(values)))]


def uniform(low, high):
    return lambda r: float(r.uniform(low, high))


def log_uniform(low_exp, high_exp):
    """``10 ** U(low_exp, high_exp)``, DomainBed's usual learning-rate style search."""
    return lambda r: float(10 ** r.uniform(low_exp, high_exp))


@dataclasses.dataclass(frozen=True)
class HParam:
    """One hyperparameter: its default, its random search, and the values it accepts.

    Args:
        name: the key in the hparams dict.
        default: the value used by ``hparams_seed=0`` (DomainBed's default hparams).
        sample: ``RandomState -> value``, the random-search distribution; ``None`` (or
            ``fixed(default)``): not searched, every draw is the default.
        doc: one line for the docs (paper symbol, meaning).
        type: the accepted Python type(s) (``float``, ``(str, list)``...); inferred from
            ``default`` when ``None`` (an ``int`` is accepted for ``float``, a ``bool`` is not
            an ``int``; a ``None`` default accepts anything).
        choices: the allowed values of an enum, e.g. ``("float32", "bfloat16")``.
        check: a :class:`Rule` a valid value passes, e.g. ``at_least(0)``.
        sensible: a :class:`Rule` for values that are valid but make the method meaningless
            (a perturbation larger than the activation it perturbs): one outside it is
            accepted, with a warning (:meth:`advice`).

    A new enum is one line: ``HParam("lpa_direction", "loss", choices=("loss", "conjecture"))``.
    """

    name: str
    default: Any
    sample: Callable[[np.random.RandomState], Any] | None = None
    doc: str = ""
    type: Any = None
    choices: tuple | None = None
    check: Rule | None = None
    sensible: Rule | None = None

    def __post_init__(self):
        if isinstance(self.sample, _Fixed):
            if self.sample.value != self.default:
                raise ValueError(f"HParam {self.name!r}: {self.sample!r} differs from its default "
                                 f"{self.default!r}; leave the distribution out (not searched)")
            object.__setattr__(self, "sample", None)
        if self.choices is not None:
            object.__setattr__(self, "choices", tuple(self.choices))
        problem = self.problem(self.default)
        if problem:
            raise ValueError(f"HParam {self.name!r}: its default {problem}")

    def draw(self, state: np.random.RandomState):
        """The random-search value (the default when not searched)."""
        return self.default if self.sample is None else self.sample(state)

    def types(self) -> tuple:
        if self.type is None:
            return kind(self.default)
        return self.type if isinstance(self.type, tuple) else (self.type,)

    def problem(self, value) -> str | None:
        """What is wrong with ``value`` (``"{name}={value!r} ..."``), or ``None``."""
        shown = f"{self.name}={value!r}"
        problem = type_problem(self.name, self.types(), value)
        if problem:
            return problem
        if self.choices is not None and value not in self.choices:
            return f"{shown} is invalid: expected one of {self.choices}"
        if self.check is not None and not self.check(value):
            return f"{shown} is invalid: expected {self.check.expected}"
        return None

    def advice(self, value) -> str | None:
        """Why a valid ``value`` outside :attr:`sensible` will likely give meaningless numbers,
        and what to set instead; ``None`` inside it."""
        if self.sensible is None or self.sensible(value):
            return None
        return (f"{self.name}={value!r} is accepted, but outside {self.sensible.expected}: the "
                f"run trains, and its numbers will likely mean little. Set {self.name} inside "
                f"that range (its default is {self.default!r})")


def _defaults_override(cls) -> dict:
    """``HPARAM_DEFAULTS`` of ``cls`` and its bases, the most derived class winning."""
    merged: dict = {}
    for klass in reversed(cls.__mro__):
        merged.update(vars(klass).get("HPARAM_DEFAULTS", {}))
    return merged


def specs_of(cls, dataset: str | None = None) -> list[HParam]:
    """The hparams an algorithm class declares, with its ``HPARAM_DEFAULTS`` applied.

    ``cls.hparam_specs(dataset)`` when the class has it (every ``ActivationPerturbation``; a
    plain DomainBed ``Algorithm`` may define the same classmethod), else none. A subclass adds
    names with ``super().hparam_specs(dataset) + [HParam(...)]`` and changes an inherited
    default with a class attribute ``HPARAM_DEFAULTS = {"perturb_layer": "features"}``; the
    new default must pass the hparam's own checks, and a searched distribution stays.
    """
    hook = getattr(cls, "hparam_specs", None)
    specs = list(hook(dataset)) if hook is not None else []
    names = [s.name for s in specs]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise ValueError(f"{cls.__name__}.hparam_specs declares {twice} more than once; to "
                         f"change an inherited default write HPARAM_DEFAULTS = "
                         f"{{{twice[0]!r}: ...}} in the class")
    overrides = _defaults_override(cls)
    unknown = sorted(set(overrides) - set(names))
    if unknown:
        raise ValueError(f"{cls.__name__}.HPARAM_DEFAULTS names {unknown}, which "
                         f"{cls.__name__} does not declare; declare them in hparam_specs")
    out = []
    for spec in specs:
        if spec.name in overrides:
            try:
                spec = dataclasses.replace(spec, default=overrides[spec.name])
            except ValueError as error:
                raise ValueError(f"{cls.__name__}.HPARAM_DEFAULTS: {error}") from None
        out.append(spec)
    return out


def defaults_of(cls, dataset: str | None = None) -> dict:
    """``{name: default}`` of the hparams ``cls`` declares (:func:`specs_of`)."""
    return {spec.name: spec.default for spec in specs_of(cls, dataset)}


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
        hparams[spec.name] = (spec.default, spec.draw(state))
    return hparams
