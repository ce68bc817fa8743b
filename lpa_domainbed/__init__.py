"""lpa_domainbed: Learning to Perturb Activations (LPA) and its relatives for DomainBed.

Importing this package is cheap (no torch, no DomainBed): the ``.pth`` autoload imports
:mod:`lpa_domainbed._autoload` at every interpreter start. Everything heavy lives in submodules.

Use :func:`register` to add the package's algorithms, hyperparameters, datasets and command
launchers to an (unmodified) DomainBed. After ``pip install`` this happens automatically
whenever DomainBed is imported, unless ``LPA_DOMAINBED_AUTOLOAD=0``.
"""

__version__ = "0.1.0"
__all__ = ["register", "__version__"]


def register():
    """Register everything into DomainBed; idempotent. See :mod:`lpa_domainbed.registration`."""
    from lpa_domainbed.registration import register as _register

    return _register()
