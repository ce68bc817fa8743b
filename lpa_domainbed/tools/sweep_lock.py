"""One sweep at a time per output directory: a lock file holding the owner's pid.

Two sweeps launching into the same directory would each take the other's running jobs for
dead ones (and a restart of "incomplete" jobs would delete them). ``lpa-domainbed sweep``
holds ``<output_dir>/.lpa-domainbed-sweep.lock`` while it runs; a second one refuses, naming the
first. A lock whose process is gone (killed, machine rebooted) is taken over.
"""

from __future__ import annotations

import contextlib
import os
import socket
import sys
from pathlib import Path

__all__ = ["LOCK_NAME", "SweepLocked", "sweep_lock"]

LOCK_NAME = ".lpa-domainbed-sweep.lock"


class SweepLocked(RuntimeError):
    """Another live sweep holds the output directory; the message names it."""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's live process
    return True


def _owner(path: Path) -> tuple[int | None, str, str]:
    """(pid, host, command) written in the lock; pid None when unreadable."""
    try:
        pid, host, command = (path.read_text().split("\n", 2) + ["", ""])[:3]
        return int(pid), host, command.strip()
    except (OSError, ValueError):
        return None, "", ""


def _create(path: Path, text: str) -> bool:
    """Make ``path`` holding ``text`` at once (a hard link of a written file), unless it
    exists: a reader never sees a half-written lock."""
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    try:
        os.link(tmp, path)
    except FileExistsError:
        return False
    finally:
        tmp.unlink()
    return True


@contextlib.contextmanager
def sweep_lock(output_dir, command: str = ""):
    """Hold the output directory's lock inside the block (making the directory); raise
    :class:`SweepLocked` naming the live owner."""
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / LOCK_NAME
    host = socket.gethostname()
    text = f"{os.getpid()}\n{host}\n{command or ' '.join(sys.argv)}\n"
    for _ in range(2):  # a stale lock is removed once, then created anew
        if _create(path, text):
            break
        pid, owner_host, owner_command = _owner(path)
        if pid is not None and (owner_host != host or _alive(pid)):
            where = "" if owner_host == host else f" on {owner_host}"
            raise SweepLocked(
                f"another sweep (pid {pid}{where}: {owner_command or 'command unknown'}) is "
                f"running into {out}; wait until it ends, or stop it (kill {pid}) and rerun. "
                f"If no such process exists, delete {path}.")
        with contextlib.suppress(FileNotFoundError):
            path.unlink()  # its owner is gone: take it over
    else:
        pid, _, owner_command = _owner(path)
        raise SweepLocked(f"another sweep (pid {pid}: {owner_command}) just took {path}")
    try:
        yield path
    finally:
        if _owner(path)[0] == os.getpid():
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
