"""Algorithms this package registers into ``domainbed.algorithms``.

All of them are thin subclasses of :class:`~lpa_domainbed.algorithms.base.ActivationPerturbation`.
"""

from lpa_domainbed.registry import Registry

__all__ = ["ALGORITHMS", "load"]

#: name -> algorithm class, in the order DomainBed's tables list them.
ALGORITHMS: Registry = Registry("algorithm")


def load() -> Registry:
    """Import the algorithm modules (they import torch and DomainBed); return the registry."""
    # Import order is registration order, which is the order of rows in the tables.
    from lpa_domainbed.algorithms import lpa  # noqa: F401  (LPA, LPL, LPA_LPL)
    from lpa_domainbed.algorithms import dropout, manifold_mixup, ada  # noqa: F401
    from lpa_domainbed.algorithms import mixstyle, dsu  # noqa: F401

    return ALGORITHMS


# Import DomainBed's module first, so that the autoload hook (which runs right after it and
# imports the algorithm modules above) never meets one of them half-imported.
import domainbed.algorithms  # noqa: E402,F401
