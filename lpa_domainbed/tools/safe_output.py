"""Writing a tool's output directory safely: a plain name, all or nothing, no stale files.

Everything is written into a temporary directory next to the target and swapped in at the
end, so an unwritable or interrupted run never leaves a half-updated directory. The files a
run writes are listed in a manifest; the next run of the same name removes those it does not
write again (and files matching the tool's known patterns, for directories written before the
manifest existed) and keeps every other file (e.g. a RUN.md written by another tool).
"""

from __future__ import annotations

import fnmatch
import json
import os
import re
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path

__all__ = ["OutputError", "check_name", "staged_directory", "atomic_write_text", "MANIFEST"]

MANIFEST = ".manifest.json"
_PLAIN_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


class OutputError(ValueError):
    """An output name or directory that cannot be used; the message says what to pass."""


def check_name(name: str) -> str:
    """``name`` if it is a plain name (no path): it becomes ``<out_root>/<name>/``."""
    if not _PLAIN_NAME.fullmatch(name or "") or ".." in name:
        raise OutputError(f"--name {name!r} is not a plain name: use letters, digits, '.', '_' "
                          f"and '-' only (e.g. --name demo writes results/demo/); to write "
                          f"elsewhere, pass --out_dir DIR")
    return name


def atomic_write_text(path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file and os.replace."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _ours(target: Path, patterns) -> set:
    """Names in ``target`` written by an earlier run: its manifest, else the known patterns."""
    names = {MANIFEST}
    try:
        names |= set(json.loads((target / MANIFEST).read_text())["files"])
    except (OSError, ValueError, KeyError, TypeError):
        pass
    names |= {p.name for p in target.iterdir() if p.is_file()
              and any(fnmatch.fnmatch(p.name, pattern) for pattern in patterns)}
    return names


def _swap(stage: Path, target: Path, patterns) -> None:
    if not target.exists():
        os.replace(stage, target)
        return
    if not target.is_dir():
        raise OutputError(f"{target} exists and is not a directory; pass another --out_dir")
    produced = {p.name for p in stage.iterdir()}
    foreign = [p for p in target.iterdir()
               if p.name not in _ours(target, patterns) and p.name not in produced]
    old = Path(tempfile.mkdtemp(prefix=f".{target.name}.old.", dir=target.parent))
    os.replace(target, old / target.name)
    os.replace(stage, target)
    for entry in foreign:  # same file system: renames, nothing is copied or lost
        os.replace(old / target.name / entry.name, target / entry.name)
    shutil.rmtree(old)


@contextmanager
def staged_directory(target, patterns=()):
    """Yield a temporary directory next to ``target``; on success it becomes ``target``."""
    target = Path(target)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        stage = Path(tempfile.mkdtemp(prefix=f".{target.name}.new.", dir=target.parent))
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(stage, 0o777 & ~umask)  # mkdtemp's 0700 would become the output's mode
    except OSError as error:
        raise OutputError(f"cannot write {target}: {error.strerror or error}; pass a writable "
                          f"--out_dir (or --out_root)") from None
    try:
        yield stage
        files = sorted(p.name for p in stage.iterdir())
        (stage / MANIFEST).write_text(json.dumps({"files": files}, indent=1) + "\n")
        _swap(stage, target, patterns)
    except OSError as error:
        raise OutputError(f"cannot write {target}: {error}; nothing was changed there") from None
    finally:
        if stage.exists():
            shutil.rmtree(stage, ignore_errors=True)
