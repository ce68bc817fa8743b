"""The algorithm behind a run: its class (DomainBed's, with ours, or the figure-only
:class:`~lpa_domainbed.tools.figures.lpa_dropout.LPADropout`) and its complete hparams."""

from __future__ import annotations

from typing import Iterable

__all__ = ["FIGURE_ONLY", "algorithm_class", "resolve_hparams"]

#: algorithms the figures train that DomainBed does not know: name -> the registered
#: algorithm whose DomainBed default hparams they start from.
FIGURE_ONLY = {"LPA_Dropout": "LPA"}


def __getattr__(name):
    """``LPADropout``, imported on first access (importing this module needs no torch)."""
    if name == "LPADropout":
        return algorithm_class("LPA_Dropout")
    raise AttributeError(name)


def algorithm_class(name: str):
    """The class of ``name``: the figure-only ``LPA_Dropout`` or DomainBed's (with ours)."""
    if name == "LPA_Dropout":
        from lpa_domainbed.tools.figures.lpa_dropout import LPADropout

        return LPADropout
    from domainbed import algorithms

    return algorithms.get_algorithm_class(name)


def resolve_hparams(algorithm: str, dataset: str, overrides: Iterable = ()) -> dict:
    """DomainBed's default hparams of ``algorithm`` on ``dataset`` (``hparams_seed=0``),
    completed with the algorithm's own defaults and ``overrides`` applied, so the cache key
    names every value the run used."""
    from domainbed import hparams_registry

    from lpa_domainbed import hparams as hp

    hparams = hparams_registry.default_hparams(FIGURE_ONLY.get(algorithm, algorithm), dataset)
    cls = algorithm_class(algorithm)
    for name, default in hp.defaults_of(cls, dataset).items():
        hparams.setdefault(name, default)
    unknown = [k for k, _ in overrides if k not in hparams]
    if unknown:
        raise ValueError(f"{algorithm} has no hparam(s) {unknown}; its hparams: "
                         f"{', '.join(sorted(hparams))}")
    hparams.update(dict(overrides))
    return hparams
