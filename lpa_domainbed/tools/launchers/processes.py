"""Starting a job's shell and stopping it whole, and the one-line end of an interrupted launch.

Every job runs in its own process group (``start_new_session``): a Ctrl-C in the terminal then
reaches only the launcher, which stops each job deliberately (SIGTERM to the group, a short
wait, SIGKILL to whatever is left), so no training process is orphaned.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time

from lpa_domainbed.tools.live_jobs import group_members
from lpa_domainbed.tools.runinfo import env_with_python

__all__ = ["LaunchFailed", "deferring_stop_signals", "ignoring_ctrl_c", "interruptible_children", "interrupted", "signal_group",
           "start_job", "stop_jobs", "stop_leftovers", "stop_signals_as_ctrl_c"]

GRACE_SECONDS = 5.0
_STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


def start_job(command: str, **popen_kwargs) -> subprocess.Popen:
    """``command`` in a shell of its own process group, in this environment with this
    interpreter first on PATH: DomainBed's job commands start with a bare ``python``, which
    must be the interpreter running the sweep even when its environment is not activated."""
    env = env_with_python(sys.executable, popen_kwargs.pop("env", None))
    return subprocess.Popen(command, shell=True, start_new_session=True, env=env,
                            **popen_kwargs)


def signal_group(pid: int, signum: int) -> None:
    try:
        os.killpg(pid, signum)
    except (ProcessLookupError, PermissionError):
        pass  # the group is gone already


def stop_jobs(processes: list[subprocess.Popen], grace: float = GRACE_SECONDS) -> None:
    """SIGTERM each job's process group, wait up to ``grace`` seconds for all of them, then
    SIGKILL each group (also reaching background children of a shell that has exited)."""
    for process in processes:
        signal_group(process.pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    for process in processes:
        try:
            process.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            pass
    for process in processes:
        signal_group(process.pid, signal.SIGKILL)
        process.wait()


def stop_leftovers(pgid: int, grace: float = GRACE_SECONDS) -> list[int]:
    """Stop what is left of the job's process group ``pgid`` once its leader has ended (a
    job's shell killed on its own leaves its python running); return the pids found."""
    left = group_members(pgid)
    if left:
        signal_group(pgid, signal.SIGTERM)
        deadline = time.monotonic() + grace
        while group_members(pgid) and time.monotonic() < deadline:
            time.sleep(0.05)
        signal_group(pgid, signal.SIGKILL)
    return left


@contextlib.contextmanager
def ignoring_ctrl_c():
    """A second Ctrl-C (or SIGTERM, SIGHUP) must not interrupt the clean-up of the first (main
    thread only)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {s: signal.signal(s, signal.SIG_IGN) for s in _STOP_SIGNALS}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


@contextlib.contextmanager
def deferring_stop_signals():
    """Ctrl-C, SIGTERM and SIGHUP that arrive inside wait until its end (main thread only).

    Starting a job and recording it must be one step: a Ctrl-C between ``fork`` and the
    record would leave a job running in a session of its own that no one stops. The signals
    are blocked, not ignored, so one that arrived is delivered, and acted on, at the end."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, _STOP_SIGNALS)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def _as_ctrl_c(signum, _frame):
    raise KeyboardInterrupt(signal.Signals(signum).name)


@contextlib.contextmanager
def stop_signals_as_ctrl_c():
    """Inside, SIGTERM (``kill``, a scheduler) and SIGHUP (a closed terminal) stop the launch
    exactly as Ctrl-C does: every job is stopped, none is left running (main thread only)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {s: signal.signal(s, _as_ctrl_c) for s in _STOP_SIGNALS[1:]}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


@contextlib.contextmanager
def interruptible_children():
    """Processes started inside get SIGINT's default action even where this one ignores it.

    A command a shell starts in the background (``make sweep &``, a CI runner) ignores SIGINT,
    and Python keeps an inherited "ignore"; submitit's local executor cancels a job with SIGINT,
    so its jobs must not inherit that. Installing Python's handler for the moment of the start
    suffices: a handler, unlike "ignore", is reset to the default by ``exec``.
    """
    if (threading.current_thread() is not threading.main_thread()
            or signal.getsignal(signal.SIGINT) is not signal.SIG_IGN):
        yield
        return
    signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)


class LaunchFailed(SystemExit, RuntimeError):
    """A launch that could not go on (its message says why and what to do). A RuntimeError to
    callers; uncaught (in DomainBed's sweep script) it ends the process with its message alone,
    without a traceback (it is also a SystemExit, status 1)."""


def interrupted(prefix: str, stopped: int, finished: int) -> SystemExit:
    """Print the single line that ends an interrupted launch; return SystemExit(130) for the
    caller to raise (DomainBed's sweep script would print a traceback for KeyboardInterrupt)."""
    print(f"{prefix} interrupted: stopped {stopped} unfinished jobs, {finished} finished jobs "
          f"are kept; the stopped ones are incomplete (see 'Resume' in docs/launchers.md)",
          file=sys.stderr, flush=True)
    return SystemExit(130)
