"""Autoload: register lpa_domainbed right after DomainBed's modules are imported.

The wheel installs ``lpa_domainbed_autoload.pth`` into site-packages: one line that imports
this module and turns a failure of that import (a syntax error in the package's
``__init__.py``) into one line on stderr naming the file, instead of ``site``'s traceback.
So this runs at every interpreter start in that environment, including
the ``python -m domainbed.scripts.train`` processes a DomainBed sweep starts. It must stay
cheap and must never break start-up: it imports only the standard library, installs a
meta-path finder, and turns any failure into one warning on stderr (the pattern of
virtualenv's ``_virtualenv.py`` and setuptools' ``_distutils_hack``).

Set ``LPA_DOMAINBED_AUTOLOAD=0`` to turn it off.
"""

import os
import sys

__all__ = ["ENV_VAR", "enabled", "install"]

ENV_VAR = "LPA_DOMAINBED_AUTOLOAD"

# The DomainBed modules we patch; each is patched right after its own code has run.
WATCHED = (
    "domainbed.algorithms",
    "domainbed.hparams_registry",
    "domainbed.datasets",
    "domainbed.command_launchers",
    "domainbed.lib.fast_data_loader",
)

_warned = False


def enabled() -> bool:
    return os.environ.get(ENV_VAR, "1").strip().lower() not in ("0", "false", "no", "off")


def _warn(name, error):
    global _warned
    if not _warned:
        _warned = True
        sys.stderr.write(
            f"lpa_domainbed: autoload after importing {name} failed "
            f"({type(error).__name__}: {error}). DomainBed runs without lpa_domainbed's "
            f"algorithms; call lpa_domainbed.register() for the traceback, or set "
            f"{ENV_VAR}=0 to silence this.\n")


def _after_exec(name, module):
    try:
        from lpa_domainbed import registration

        registration.on_module_loaded(name, module)
    except Exception as error:  # never let a plugin failure break the host
        _warn(name, error)


class _DomainBedFinder:
    """Meta-path finder that wraps the loader of the watched DomainBed modules."""

    _busy = False

    def find_spec(self, fullname, path=None, target=None):
        if fullname not in WATCHED or self._busy:
            return None
        import importlib.util

        type(self)._busy = True  # our own find_spec call below must not come back here
        try:
            spec = importlib.util.find_spec(fullname)
        except Exception:
            return None
        finally:
            type(self)._busy = False
        if spec is None or spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return None
        exec_module = spec.loader.exec_module

        def exec_and_register(module):
            exec_module(module)
            _after_exec(fullname, module)

        spec.loader.exec_module = exec_and_register
        return spec


def install():
    """Install the finder once (idempotent); patch modules that are already imported."""
    if not enabled() or any(isinstance(f, _DomainBedFinder) for f in sys.meta_path):
        return
    sys.meta_path.insert(0, _DomainBedFinder())
    for name in WATCHED:
        if name in sys.modules:
            _after_exec(name, sys.modules[name])


try:
    install()
except Exception as error:  # pragma: no cover - belt and braces for interpreter start
    _warn("interpreter start", error)
