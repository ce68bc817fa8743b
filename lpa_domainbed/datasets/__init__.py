"""Datasets this package registers into ``domainbed.datasets``."""

from lpa_domainbed.registry import Registry

__all__ = ["DATASETS"]

#: name -> ``MultipleDomainDataset`` subclass; filled by :func:`load`.
DATASETS: Registry = Registry("dataset")


def load() -> Registry:
    """Import the dataset modules (they import DomainBed) and return the filled registry."""
    from lpa_domainbed.datasets import rotated_digits  # noqa: F401  (registers on import)

    return DATASETS


# See lpa_domainbed.algorithms: DomainBed's module first, so the autoload hook runs cleanly.
import domainbed.datasets  # noqa: E402,F401
