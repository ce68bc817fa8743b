"""What Slurm's queue says about a sweep's jobs, for the ``submitit`` launcher.

submitit learns how a job ended from ``sacct`` (Slurm accounting), which many small clusters
do not run, and from the job's result file, which the first attempt of a requeued job (after
``scontrol requeue``, a node failure or a preemption) has already written. So the launcher
also asks ``squeue``: a job still in the queue has not finished, whatever its result file
says; a job that has left the queue without a result ended there (cancelled, timed out, out
of memory, its node failed), and ``scontrol`` says how, while Slurm remembers the job.
"""

from __future__ import annotations

import os
import re
import subprocess

__all__ = ["JOB_NAME", "ended_state", "queue_states"]

JOB_NAME = "lpa_domainbed"  # the Slurm job name of every job the launcher submits
_TIMEOUT_S = 60


def queue_states() -> dict[str, str] | None:
    """``job id -> state`` (``PENDING``, ``RUNNING``, ...) of this user's jobs named
    :data:`JOB_NAME` in the queue, array tasks one by one (``<array id>_<index>``); None
    when ``squeue`` cannot answer."""
    try:
        run = subprocess.run(["squeue", "--noheader", "--array", "--name", JOB_NAME,
                              "--user", str(os.getuid()), "--format", "%i %T"],
                             capture_output=True, text=True, timeout=_TIMEOUT_S)
    except (OSError, subprocess.SubprocessError):
        return None
    if run.returncode != 0:
        return None
    return dict(line.split(None, 1) for line in run.stdout.splitlines() if " " in line.strip())


def ended_state(job_id: str) -> str:
    """How a job that left the queue ended (``TIMEOUT``, ``CANCELLED``, ...), as far as
    ``scontrol`` still knows it, else ``unknown``."""
    try:
        run = subprocess.run(["scontrol", "--oneliner", "show", "job", job_id],
                             capture_output=True, text=True, timeout=_TIMEOUT_S)
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    match = re.search(r"\bJobState=(\S+)", run.stdout)
    return match.group(1) if match else "unknown"
