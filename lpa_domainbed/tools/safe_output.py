"""Writing a tool's output directory safely: a plain name, one writer at a time, whole files,
and nothing removed that the tool did not write.

:func:`write_outputs` takes every file's content at once (computed in memory beforehand), so
nothing is written before everything is known. Then, holding a lock on the output directory
(another writer of the same directory waits, and is told so), it writes the files into a
temporary folder inside the directory and renames each into place: every file is whole, old
or new, at every moment. A manifest (``.manifest.json``) lists the files a run wrote; the next
run removes those of them it does not write again, and nothing else: a user's
``paired_notes.md``, a RUN.md written by another tool, any file in a folder given as
``--out_dir`` (``.`` included) stays. A file that has the name of one this run writes but is not
in the manifest (the user's own ``oracle.md`` in ``--out_dir .``, say) is never replaced: the
run stops before writing anything and names the file, so the user moves it or picks another
directory. An output directory that is a symbolic link to a
directory is written through: the files go where it points, and the link stays. When the
output cannot be written, nothing is left behind: no temporary folder, and no directory that
this run created.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import shutil
import sys
import tempfile
import time
from pathlib import Path

__all__ = ["OutputError", "check_name", "is_plain_name", "write_outputs", "atomic_write_text",
           "MANIFEST", "LOCK_WAIT_S"]

MANIFEST = ".manifest.json"
LOCK_WAIT_S = 120.0  # how long a writer waits for another writer of the same directory
_PLAIN_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


class OutputError(ValueError):
    """An output name or directory that cannot be used; the message says what to pass."""


def is_plain_name(name) -> bool:
    """Whether ``name`` is a plain name: letters, digits, '.', '_' and '-', no path, no '..'."""
    return isinstance(name, str) and bool(_PLAIN_NAME.fullmatch(name)) and ".." not in name


def check_name(name: str) -> str:
    """``name`` if it is a plain name (no path): it becomes ``<out_root>/<name>/``."""
    if not is_plain_name(name):
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


def _make_directory(target: Path) -> list:
    """Create ``target`` (and missing parents); return the directories created, deepest
    first. A dangling link or a non-directory in the way is an :class:`OutputError`."""
    if target.is_symlink() and not target.exists():
        raise OutputError(f"{target} is a symbolic link to {os.readlink(target)}, which does "
                          f"not exist; create that directory (the tables are written through "
                          f"the link) or pass another --out_dir")
    if target.exists() and not target.is_dir():
        raise OutputError(f"{target} exists and is not a directory; pass another --out_dir")
    missing = [p for p in (target, *target.parents) if not p.exists()]
    try:
        target.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        _remove_empty(missing)
        raise OutputError(f"cannot write {target}: {error.strerror or error}; pass a writable "
                          f"--out_dir (or --out_root)") from None
    return missing


def _remove_empty(directories) -> None:
    for directory in directories:  # deepest first; only what this run created, when empty
        try:
            directory.rmdir()
        except OSError:
            pass


def _lock(target: Path) -> int:
    """An exclusive lock on the directory ``target`` (a descriptor to close); waits, saying
    so, while another writer holds it."""
    fd = os.open(target, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    deadline = time.monotonic() + LOCK_WAIT_S
    said = False
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return fd
        except BlockingIOError:
            if time.monotonic() > deadline:
                os.close(fd)
                raise OutputError(f"another writer still holds {target} after "
                                  f"{LOCK_WAIT_S:.0f} s (a tables run writing the same --name "
                                  f"or --out_dir); let it finish, or pass another --name or "
                                  f"--out_dir") from None
            if not said:
                print(f"waiting: another writer holds {target} (a tables run writing the same "
                      f"--name or --out_dir); this run writes when it is done", file=sys.stderr)
                said = True
            time.sleep(0.1)


def _ours(target: Path) -> set:
    """The plain file names an earlier run wrote here, as its manifest records."""
    try:
        names = json.loads((target / MANIFEST).read_text())["files"]
    except (OSError, ValueError, KeyError, TypeError):
        return set()
    return {n for n in names if isinstance(n, str) and n == Path(n).name
            and not n.startswith(".") and n not in ("", "..")}


def _write_manifest(target: Path, names) -> None:
    atomic_write_text(target / MANIFEST, json.dumps({"files": sorted(names)}, indent=1) + "\n")


def _refuse_foreign(names, target: Path) -> None:
    """Refuse to replace a file (or link) named like one of ``names`` that no earlier run of
    the tool wrote here (it is not in the manifest): it is the user's."""
    ours = _ours(target)
    foreign = [n for n in names if n not in ours and ((target / n).is_symlink() or (
        (target / n).exists() and not (target / n).is_dir()))]
    if foreign:
        listed = ", ".join(str(target / n) for n in foreign)
        raise OutputError(f"{listed}: not written by an earlier run of this tool (not in "
                          f"{target / MANIFEST}), and this run writes a file of that name; "
                          f"your file is kept and nothing was written: move or rename it, or "
                          f"pass another --out_dir (or --name)")


def _stage_files(files: dict, stage: Path, target: Path) -> None:
    """Write ``files`` into ``stage``; refuse a directory where a file goes."""
    for name, content in files.items():
        if (target / name).is_dir() and not (target / name).is_symlink():
            raise OutputError(f"{target / name} is a directory, where this run writes a file; "
                              f"move it away or pass another --out_dir; nothing was changed")
        if isinstance(content, bytes):
            (stage / name).write_bytes(content)
        else:
            (stage / name).write_text(content, encoding="utf-8")


def _replace_files(names, stage: Path, target: Path) -> None:
    """Move the staged files into ``target``; remove the earlier run's files that are not
    written again. The manifest covers every file of the tool at every step, so an
    interrupted run leaves nothing that the next run cannot clean up."""
    earlier = _ours(target)
    _write_manifest(target, earlier | set(names))
    for name in names:
        os.replace(stage / name, target / name)
    for name in sorted(earlier - set(names)):
        if (target / name).is_file() or (target / name).is_symlink():
            (target / name).unlink()
    _write_manifest(target, names)


def write_outputs(target, files: dict) -> list:
    """Write ``files`` (``{plain name: str or bytes}``) into the directory ``target`` (made if
    missing) as described in the module docstring; return their paths."""
    target = Path(target)
    for name in files:
        if name != Path(name).name or name.startswith("."):
            raise ValueError(f"not a plain output file name: {name!r}")
    created = _make_directory(target)
    fd, stage, staged = None, None, False
    try:
        fd = _lock(target)
        _refuse_foreign(files, target)
        stage = Path(tempfile.mkdtemp(prefix=".tables.new.", dir=target))
        _stage_files(files, stage, target)
        staged = True
        _replace_files(list(files), stage, target)
    except OSError as error:
        if stage is not None:
            shutil.rmtree(stage, ignore_errors=True)
        _remove_empty(created)
        state = ("some files may be new, the others old, every one whole; rerun to finish"
                 if staged else "nothing was changed there")
        raise OutputError(f"cannot write {target}: {error.strerror or error}; {state}; pass a "
                          f"writable --out_dir (or --out_root)") from None
    finally:
        if stage is not None:
            shutil.rmtree(stage, ignore_errors=True)
        if fd is not None:
            os.close(fd)
    return [target / name for name in files]
