"""The algorithm behind a run: its class (DomainBed's, with ours, or the figure-only
:class:`LPADropout`) and its complete hparams."""

from __future__ import annotations

from typing import Any, Iterable

__all__ = ["LPADropout", "algorithm_class", "resolve_hparams"]

_LOCAL_ALGORITHMS: dict[str, Any] = {}


def _lpa_dropout_class():
    """Build :class:`LPADropout` lazily: it subclasses LPA, which imports torch and DomainBed."""
    from lpa_domainbed.algorithms.base import merge_specs
    from lpa_domainbed.algorithms.dropout import Dropout, dropout_mask
    from lpa_domainbed.algorithms.lpa import LPA

    class _LPADropout(LPA):
        """LPA, then dropout on LPA's output, at the same layer in one ``perturb``:
        ``a~ = (a + delta_c) * m / (1 - p)``. The PGD search sees the clean activation (it is
        LPA's own); the dropout mask is drawn afterwards, as a dropout layer placed after the
        perturbation would. Only for Figure 3a, so it is not registered in DomainBed."""

        @classmethod
        def hparam_specs(cls, dataset=None):
            return merge_specs(super().hparam_specs(dataset),
                               [s for s in Dropout.hparam_specs(dataset)
                                if s.name.startswith("dropout_")])

        def check_hparams(self):
            super().check_hparams()
            Dropout.check_hparams(self)

        def perturb(self, a, y, ctx):
            a_lpa = super().perturb(a, y, ctx)
            h = self.hparams
            mask = dropout_mask(a_lpa, h["dropout_p"], h["dropout_kind"],
                                int(h["dropout_block_size"]))
            return a_lpa * mask.to(a_lpa.dtype)

    _LPADropout.__name__ = _LPADropout.__qualname__ = "LPADropout"
    return _LPADropout


def __getattr__(name):
    """``LPADropout``, built on first access (importing this module needs no torch)."""
    if name == "LPADropout":
        return algorithm_class("LPA_Dropout")
    raise AttributeError(name)


def algorithm_class(name: str):
    """The class of ``name``: this package's ``LPA_Dropout`` or DomainBed's (with ours)."""
    if name == "LPA_Dropout":
        if name not in _LOCAL_ALGORITHMS:
            _LOCAL_ALGORITHMS[name] = _lpa_dropout_class()
        return _LOCAL_ALGORITHMS[name]
    from domainbed import algorithms

    return algorithms.get_algorithm_class(name)


def resolve_hparams(algorithm: str, dataset: str, overrides: Iterable = ()) -> dict:
    """DomainBed's default hparams of ``algorithm`` on ``dataset`` (``hparams_seed=0``),
    completed with the algorithm's own defaults and ``overrides`` applied, so the cache key
    names every value the run used."""
    from domainbed import hparams_registry

    base = "LPA" if algorithm == "LPA_Dropout" else algorithm  # DomainBed doesn't know ours
    hparams = hparams_registry.default_hparams(base, dataset)
    cls = algorithm_class(algorithm)
    if hasattr(cls, "hparam_specs"):
        for spec in cls.hparam_specs(dataset):
            hparams.setdefault(spec.name, spec.default)
    unknown = [k for k, _ in overrides if k not in hparams]
    if unknown:
        raise ValueError(f"{algorithm} has no hparam(s) {unknown}")
    hparams.update(dict(overrides))
    return hparams
