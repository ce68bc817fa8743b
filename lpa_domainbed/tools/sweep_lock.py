"""One sweep at a time per output directory: a lock file holding the owner's pid.

Two sweeps launching into the same directory would each take the other's running jobs for
dead ones (and a restart of "incomplete" jobs would delete them). ``lpa-domainbed sweep``
holds ``<output_dir>/.lpa-domainbed-sweep.lock`` while it runs; a second one refuses, naming the
first. The lock also records the process group of each DomainBed sweep the owner starts
(:func:`record_group`): a lock whose owner is gone is taken over only when none of those groups
has a live process (an owner killed with ``kill -9`` may leave its sweep running, see
:mod:`.live_jobs`); otherwise the new sweep refuses, naming them and how to stop them.
"""

from __future__ import annotations

import contextlib
import os
import socket
import sys
from pathlib import Path

from lpa_domainbed.tools.live_jobs import group_members

__all__ = ["LOCK_NAME", "SweepLocked", "record_group", "sweep_lock"]

LOCK_NAME = ".lpa-domainbed-sweep.lock"
_GROUPS = "groups:"
_held: dict[Path, str] = {}  # the locks this process holds -> their text


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


def _owner(path: Path) -> tuple[int | None, str, str, list[int]]:
    """(pid, host, command, process groups) written in the lock; pid None when unreadable."""
    try:
        lines = path.read_text().split("\n")
        groups = [int(g) for line in lines[3:] if line.startswith(_GROUPS)
                  for g in line[len(_GROUPS):].split()]
        pid, host, command = (lines + ["", ""])[:3]
        return int(pid), host, command.strip(), groups
    except (OSError, ValueError):
        return None, "", "", []


def record_group(pgid: int) -> None:
    """Add the process group ``pgid`` (a DomainBed sweep this process started) to every lock
    this process holds, replacing the file at once."""
    for path, text in list(_held.items()):
        lines = text.rstrip("\n").split("\n")
        groups = [line for line in lines[3:] if line.startswith(_GROUPS)]
        known = groups[0][len(_GROUPS):].split() if groups else []
        text = "\n".join(lines[:3] + [f"{_GROUPS} {' '.join(known + [str(pgid)])}"]) + "\n"
        tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
        tmp.write_text(text)
        os.replace(tmp, path)
        _held[path] = text


def _left_running(out: Path, path: Path, pid: int, command: str, groups: list[int]) -> None:
    """Refuse a lock whose owner is gone while a sweep it started still runs."""
    alive = {group: members for group in groups if (members := group_members(group))}
    if not alive:
        return
    listed = "; ".join(f"process group {group}: pids {', '.join(map(str, members))}"
                       for group, members in alive.items())
    stop = " ".join(f"kill -INT -- -{group}" for group in alive)
    raise SweepLocked(
        f"the sweep that held {path} (pid {pid}: {command or 'command unknown'}) is gone, but "
        f"the DomainBed sweep it started still runs into {out} ({listed}). Stop it with "
        f"'{stop}' (as a Ctrl-C: its launcher stops its jobs), wait until those processes "
        f"have ended, then rerun.")


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
    command = " ".join((command or " ".join(sys.argv)).splitlines())
    text = f"{os.getpid()}\n{host}\n{command}\n"
    for _ in range(2):  # a stale lock is removed once, then created anew
        if _create(path, text):
            break
        pid, owner_host, owner_command, groups = _owner(path)
        if pid is not None and (owner_host != host or _alive(pid)):
            where = "" if owner_host == host else f" on {owner_host}"
            raise SweepLocked(
                f"another sweep (pid {pid}{where}: {owner_command or 'command unknown'}) is "
                f"running into {out}; wait until it ends, or stop it (kill {pid}) and rerun. "
                f"If no such process exists, delete {path}.")
        if pid is not None:
            _left_running(out, path, pid, owner_command, groups)
        with contextlib.suppress(FileNotFoundError):
            path.unlink()  # its owner is gone: take it over
    else:
        pid, _, owner_command, _ = _owner(path)
        raise SweepLocked(f"another sweep (pid {pid}: {owner_command}) just took {path}")
    _held[path] = text
    try:
        yield path
    finally:
        _held.pop(path, None)
        if _owner(path)[0] == os.getpid():
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
