"""Processes a sweep leaves behind, and what keeps a rerun from deleting their directories.

``lpa-domainbed sweep`` runs DomainBed's sweep script in a process group of its own. Should the
command itself be killed outright (``kill -9``, which no handler sees), that group would run
on, its jobs with it, and a rerun with ``--restart_incomplete`` would delete the directories
those jobs write to. Three things prevent it:

* :func:`interrupt_when_parent_dies`: the sweep script gets SIGINT (a Ctrl-C) when the command
  that started it dies, however it dies, so its launcher stops every job as on Ctrl-C (Linux);
* the sweep lock records the script's process group (:mod:`.sweep_lock`), and a lock whose
  owner is gone while that group lives is refused, naming its processes (:func:`group_members`);
* :func:`refuse_live_jobs`: before incomplete jobs are deleted, any live process that uses one
  of their directories (its working directory, an open file there, or the directory on its
  command line) stops the rerun with a message naming the processes and how to stop them.

Processes are read from ``/proc`` (Linux); elsewhere nothing is found and nothing is refused.
"""

from __future__ import annotations

import ctypes
import os
import signal
from pathlib import Path

__all__ = ["JobsStillRunning", "group_members", "interrupt_when_parent_dies", "live_users",
           "refuse_live_jobs"]

_PR_SET_PDEATHSIG = 1
_SHOWN = 8  # processes named in a message; the rest are counted


class JobsStillRunning(RuntimeError):
    """Live processes use directories a rerun would delete; the message names them."""


def interrupt_when_parent_dies(parent_pid: int):
    """A ``preexec_fn``: the child gets SIGINT when ``parent_pid`` (its parent) dies. The C
    library is looked up here, in the parent: the forked child only calls it."""
    try:
        prctl = getattr(ctypes.CDLL(None, use_errno=True), "prctl", None)
    except OSError:
        prctl = None  # not Linux: the lock and the directory check still guard a rerun

    def preexec() -> None:
        if prctl is None:
            return
        prctl(_PR_SET_PDEATHSIG, int(signal.SIGINT), 0, 0, 0)
        if os.getppid() != parent_pid:  # the parent died before prctl took effect
            os._exit(130)

    return preexec


def _pids() -> list[int]:
    try:
        return [int(name) for name in os.listdir("/proc") if name.isdigit()]
    except OSError:
        return []


def _stat(pid: int) -> list[str] | None:
    """Fields of ``/proc/<pid>/stat`` after the command name: state, ppid, pgrp, ..."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def group_members(pgid: int) -> list[int]:
    """Live (not zombie) processes of the process group ``pgid``."""
    members = []
    for pid in _pids():
        fields = _stat(pid)
        if fields and fields[0] != "Z" and fields[2] == str(pgid):
            members.append(pid)
    return sorted(members)


def _inside(path: str, roots: list[str]) -> str | None:
    for root in roots:
        if path == root or path.startswith(root + os.sep):
            return root
    return None


def _uses(pid: int, roots: list[str]) -> set[str]:
    """Which of ``roots`` the process ``pid`` uses (cwd, open files, command line)."""
    proc = Path(f"/proc/{pid}")
    found = set()
    links = [proc / "cwd"]
    try:
        links += [proc / "fd" / fd for fd in os.listdir(proc / "fd")]
    except OSError:
        pass
    for link in links:
        try:
            root = _inside(os.readlink(link).removesuffix(" (deleted)"), roots)
        except OSError:
            continue
        if root:
            found.add(root)
    try:
        words = (proc / "cmdline").read_bytes().decode(errors="replace").split("\0")
    except OSError:
        words = []
    for word in words:
        root = _inside(os.path.abspath(word), roots) if word.startswith(os.sep) else None
        if root:
            found.add(root)
    return found


def live_users(directories) -> dict[str, list[int]]:
    """``directory -> pids`` of the live processes (other than this one) using each of
    ``directories``; directories nobody uses are left out."""
    roots = sorted({os.path.realpath(d) for d in directories})
    if not roots:
        return {}
    users: dict[str, list[int]] = {}
    for pid in _pids():
        fields = _stat(pid)
        if pid == os.getpid() or not fields or fields[0] == "Z":
            continue
        for root in _uses(pid, roots):
            users.setdefault(root, []).append(pid)
    return {root: sorted(pids) for root, pids in sorted(users.items())}


def refuse_live_jobs(directories, action: str) -> None:
    """Raise :class:`JobsStillRunning` when a live process uses one of ``directories`` (jobs
    that ``action`` would delete)."""
    users = live_users(directories)
    if not users:
        return
    pids = sorted({pid for group in users.values() for pid in group})
    listed = "; ".join(f"{root}: pid {', '.join(map(str, group))}"
                       for root, group in list(users.items())[:_SHOWN])
    more = f"; and {len(users) - _SHOWN} more directories" if len(users) > _SHOWN else ""
    jobs = "1 incomplete job is" if len(users) == 1 else f"{len(users)} incomplete jobs are"
    raise JobsStillRunning(
        f"{jobs} still in use by running processes ({listed}{more}); "
        f"{action} would delete their directories. They may be jobs of an earlier sweep that "
        f"was killed: wait until they end, or stop them (kill {' '.join(map(str, pids))}), "
        f"then rerun.")
