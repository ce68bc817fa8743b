"""Algorithms this package registers into ``domainbed.algorithms``.

All of them are thin subclasses of :class:`~lpa_domainbed.algorithms.base.ActivationPerturbation`.
A user's own algorithm registers here too (``@ALGORITHMS.register("Name")``), from a plugin
module (see :mod:`lpa_domainbed.plugins`) or a script.
"""

from lpa_domainbed.registry import Registry, taken_in

__all__ = ["ALGORITHMS", "MODULES", "load"]

#: name -> algorithm class, in the order DomainBed's tables list them.
ALGORITHMS: Registry = Registry("algorithm", reserved=taken_in("domainbed.algorithms"))

#: The package's algorithm modules; import order is registration order (the tables' rows).
MODULES = ("lpa", "dropout", "manifold_mixup", "ada", "mixstyle", "dsu", "study", "swad")


def load() -> Registry:
    """Import the algorithm modules (they import torch and DomainBed); return the registry.

    Each module is imported on its own: one that fails (a syntax error) costs a warning and
    its own algorithms, not DomainBed's or the other modules'.
    """
    from lpa_domainbed.plugins import import_isolated

    for name in MODULES:
        import_isolated(f"{__name__}.{name}", "part of lpa_domainbed")
    return ALGORITHMS


# Import DomainBed's module first, so that the autoload hook (which runs right after it and
# imports the algorithm modules above) never meets one of them half-imported.
import domainbed.algorithms  # noqa: E402,F401
