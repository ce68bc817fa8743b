"""DomainBed's sweep as a child process that stops when we are stopped: SIGINT and SIGTERM
are forwarded, and the child ends with the parent (see :func:`run_forwarding_signals`)."""

from __future__ import annotations

import os
import signal
import subprocess

from lpa_domainbed.tools import runinfo, sweeps
from lpa_domainbed.tools.live_jobs import interrupt_when_parent_dies
from lpa_domainbed.tools.sweep_lock import record_group

__all__ = ["INTERRUPTED", "run_forwarding_signals"]

INTERRUPTED = 130  # the shell's status for a process stopped by SIGINT


def run_forwarding_signals(cmd: list[str]) -> None:
    """Run ``cmd`` in its own process group with this interpreter first on PATH.

    SIGINT, SIGTERM and SIGHUP sent to us reach the child's whole group (DomainBed's sweep and
    its launcher) as SIGINT, a Ctrl-C, whatever the signal: the launcher stops its jobs exactly
    as on Ctrl-C (a SIGTERM would end DomainBed's sweep script at once, leaving the jobs
    running). We wait for it; then KeyboardInterrupt is raised. A terminal's Ctrl-C reaches
    only us (the child has its own group), so nobody gets it twice. Should we die without
    a handler running (``kill -9``), the child gets SIGINT all the same (Linux), and the output
    directory's lock records its group. Raises CalledProcessError on failure.
    """
    print(f"==> {sweeps.format_command(cmd)}", flush=True)
    received: list[int] = []
    forwarded: list[int] = []
    child: subprocess.Popen | None = None

    def forward(signum, _frame):
        received.append(signum)
        if child is not None:
            _interrupt(child)
            forwarded.append(signum)

    # Installed before the child starts, because exec resets a handled signal to its default
    # but keeps an ignored one ignored: a sweep started in the background by a script
    # (`... &`, nohup) has SIGINT ignored, and its child would then ignore the Ctrl-C we
    # forward, and nothing would stop.
    previous = {s: signal.signal(s, forward)
                for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    try:
        child = subprocess.Popen(cmd, env=runinfo.env_with_python(), start_new_session=True,
                                 preexec_fn=interrupt_when_parent_dies(os.getpid()))
        record_group(child.pid)
        if received and not forwarded:  # a signal came while the child was starting
            _interrupt(child)
        returncode = child.wait()
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
    if received:
        raise KeyboardInterrupt
    if returncode:
        raise subprocess.CalledProcessError(returncode, cmd)


def _interrupt(child: subprocess.Popen) -> None:
    try:
        os.killpg(child.pid, signal.SIGINT)
    except ProcessLookupError:
        pass
