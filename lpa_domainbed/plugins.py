"""User plugins and fault isolation: modules whose algorithms/datasets register into DomainBed.

Two ways to name a plugin module, both read in every interpreter (so in every
``python -m domainbed.scripts.train`` job a sweep starts):

* the entry-point group ``lpa_domainbed.plugins`` of installed distributions (a package);
* the environment variable ``LPA_DOMAINBED_PLUGINS``: comma-separated module names or paths
  to ``.py`` files (a script in progress). Launched jobs inherit the environment.

A module that fails to import (the package's own algorithm modules included), also one that
calls ``sys.exit`` at import (a script's ``argparse`` at its top level), costs one warning on
stderr naming it and its error; everything else keeps working, and asking DomainBed for an
algorithm it would have provided says which module failed and how it was requested. Only a
KeyboardInterrupt (the user's Ctrl-C) goes through: it must stop the process.
"""

from __future__ import annotations

import dataclasses
import importlib
import importlib.util
import os
import re
import sys
from pathlib import Path

__all__ = ["ENV_VAR", "GROUP", "LAUNCHER_GROUP", "Failure", "FAILURES", "import_isolated",
           "requested", "load", "load_launchers", "explain_missing"]

ENV_VAR = "LPA_DOMAINBED_PLUGINS"
GROUP = "lpa_domainbed.plugins"
#: modules of command launchers: imported only with ``domainbed.command_launchers`` (where a
#: sweep runs), never in the train processes, which do not launch anything.
LAUNCHER_GROUP = "lpa_domainbed.launchers"


@dataclasses.dataclass
class Failure:
    """A module that could not be imported: how it was requested and what it would provide."""

    module: str
    source: str
    error: BaseException
    provides: list[str]

    def describe(self) -> str:
        if isinstance(self.error, SystemExit):
            return (f"module {self.module!r} ({self.source}) failed to import: it called "
                    f"sys.exit({self.error.code!r}) at import (SystemExit; a message printed "
                    f"just before this one, such as a usage line, is the module's)")
        return (f"module {self.module!r} ({self.source}) failed to import: "
                f"{type(self.error).__name__}: {self.error}")


#: module name -> its import failure, in this interpreter.
FAILURES: dict[str, Failure] = {}
_state = {"loading": False, "done": False, "launchers": False}

# `@ALGORITHMS.register("Name")`, `DATASETS.add("Name", ...)`, `@ALGORITHMS.register` + class
_NAMED = re.compile(r"""\.(?:register|add)\(\s*(?:name\s*=\s*)?["'](\w+)["']""")
_DECORATED = re.compile(r"""\.register(?:\(\s*\))?\s*\n\s*class\s+(\w+)""")


def _declared_names(path: str | None) -> list[str]:
    """Names a module's source registers, read without importing it (it failed to import)."""
    try:
        text = Path(path).read_text()
    except (OSError, TypeError):
        return []
    return _NAMED.findall(text) + _DECORATED.findall(text)


def _module_from_path(path: str):
    """Import a ``.py`` file under its stem, the same module name in every interpreter."""
    file = Path(path)
    name = file.stem
    if file.is_dir():
        raise IsADirectoryError(f"{path} is a directory: a plugin must be a .py file (e.g. "
                                f"{file / 'my_algs.py'}) or an importable module name (e.g. "
                                f"my_package.my_algs)")
    if not file.is_file():
        raise FileNotFoundError(f"no such file: {path}")
    if file.suffix != ".py":
        raise ImportError(f"{path} is not a .py file: a plugin must be a .py file or an "
                          f"importable module name")
    existing = sys.modules.get(name)
    if existing is not None:
        if Path(getattr(existing, "__file__", "") or "").resolve() == file.resolve():
            return existing
        raise ImportError(f"{file.name} would be imported as module {name!r}, which is already "
                          f"{existing!r}; rename the file")
    spec = importlib.util.spec_from_file_location(name, file)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # before exec: the module may import itself (pickle, dataclasses)
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[name]
        raise
    return module


def import_isolated(module: str, source: str, path: str | None = None):
    """Import ``module`` (or the file ``path``); on failure warn once and return ``None``."""
    if module in FAILURES:
        return None
    try:
        return _module_from_path(path) if path else importlib.import_module(module)
    except (Exception, SystemExit) as error:  # a plugin must not stop DomainBed or the others
        origin = path
        if origin is None:
            try:
                spec = importlib.util.find_spec(module)
                origin = spec.origin if spec else None
            except Exception:
                origin = None
        FAILURES[module] = Failure(module, source, error, _declared_names(origin))
        sys.stderr.write(f"lpa_domainbed: {FAILURES[module].describe()}. Its algorithms and "
                         f"datasets are unavailable; DomainBed and the other modules work.\n")
        return None


def _plain_directory(entry: str) -> bool:
    """A directory that is not a package: importing it by name would import nothing."""
    return os.path.isdir(entry) and not os.path.exists(os.path.join(entry, "__init__.py"))


def requested() -> list[tuple[str, str | None, str]]:
    """``(module name, file path or None, how it was requested)`` of every plugin."""
    from importlib.metadata import entry_points

    out = []
    for ep in entry_points(group=GROUP):
        dist = getattr(getattr(ep, "dist", None), "name", "?")
        out.append((ep.value.split(":")[0].strip(), None,
                    f"entry point {ep.name!r} of distribution {dist!r}, group {GROUP!r}"))
    entries = [e.strip() for e in os.environ.get(ENV_VAR, "").split(",") if e.strip()]
    for entry in entries:
        how = f"{ENV_VAR}={os.environ[ENV_VAR]}"
        if entry.endswith(".py") or os.sep in entry or _plain_directory(entry):
            out.append((Path(entry).stem, os.path.abspath(entry), how))
        else:
            out.append((entry, None, how))
    return out


def load() -> bool:
    """Import every plugin once per interpreter; True when this call imported them.

    Relative ``.py`` paths in the variable become absolute in ``os.environ``, so jobs started
    in another directory import the same files.
    """
    if _state["loading"] or _state["done"]:
        return False
    _state["loading"] = True
    try:
        plugins = requested()
        if os.environ.get(ENV_VAR):
            os.environ[ENV_VAR] = ",".join(
                os.path.abspath(e.strip()) if e.strip().endswith(".py") else e.strip()
                for e in os.environ[ENV_VAR].split(",") if e.strip())
        for module, path, how in plugins:
            import_isolated(module, how, path)
    finally:
        _state["loading"], _state["done"] = False, True
    return True


def load_launchers() -> None:
    """Import the modules of :data:`LAUNCHER_GROUP` once per interpreter (each isolated)."""
    from importlib.metadata import entry_points

    if _state["launchers"]:
        return
    _state["launchers"] = True
    for ep in entry_points(group=LAUNCHER_GROUP):
        dist = getattr(getattr(ep, "dist", None), "name", "?")
        import_isolated(ep.value.split(":")[0].strip(),
                        f"entry point {ep.name!r} of distribution {dist!r}, group "
                        f"{LAUNCHER_GROUP!r}")


def explain_missing(name: str) -> str | None:
    """Why ``name`` is not registered, when a failed module would have provided it."""
    owners = [f for f in FAILURES.values() if name in f.provides]
    if owners:
        return " ".join(f"{name} comes from {f.describe()}; fix it (or remove it from the "
                        f"plugins) and rerun." for f in owners)
    if FAILURES:
        listed = "; ".join(f.describe() for f in FAILURES.values())
        return f"These modules failed to import and may have provided it: {listed}."
    return None
