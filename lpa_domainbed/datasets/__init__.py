"""Datasets this package registers into ``domainbed.datasets`` (a plugin may add its own)."""

from lpa_domainbed.registry import Registry, taken_in

__all__ = ["DATASETS", "MODULES", "load"]

#: name -> ``MultipleDomainDataset`` subclass; filled by :func:`load`.
DATASETS: Registry = Registry("dataset", reserved=taken_in("domainbed.datasets"))

#: The package's dataset modules (each registers on import).
MODULES = ("rotated_digits", "style_digits")


def load() -> Registry:
    """Import the dataset modules (they import DomainBed) and return the filled registry."""
    from lpa_domainbed.plugins import import_isolated

    for name in MODULES:
        import_isolated(f"{__name__}.{name}", "part of lpa_domainbed")
    return DATASETS


# See lpa_domainbed.algorithms: DomainBed's module first, so the autoload hook runs cleanly.
import domainbed.datasets  # noqa: E402,F401
