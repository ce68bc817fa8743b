"""``local_parallel``: run a sweep's commands N at a time on one machine.

DomainBed's ``local`` launcher is serial. This one keeps ``LPA_DOMAINBED_JOBS`` commands
running (default: the number of CPU cores), writes one log per job, prints progress, reports
failed jobs with their log, and on Ctrl-C stops every child (each runs in its own process
group, so nothing is orphaned).
"""

from __future__ import annotations

import os
import re
import shlex
import signal
import subprocess
import sys
import tempfile
import time

__all__ = ["local_parallel_launcher", "num_parallel_jobs"]

_POLL_SECONDS = 0.2


def num_parallel_jobs() -> int:
    value = os.environ.get("LPA_DOMAINBED_JOBS", "")
    if not value:
        return os.cpu_count() or 1
    try:
        n = int(value)
    except ValueError:
        n = 0
    if n < 1:
        raise ValueError(f"LPA_DOMAINBED_JOBS={value!r}: set it to a positive integer")
    return n


def _log_path(command: str, fallback_dir: str, index: int) -> str:
    """The job's own ``output_dir`` when the command names one (DomainBed's train does)."""
    match = re.search(r"--output_dir\s+(\S+)", command)
    if match:
        out_dir = shlex.split(match.group(1))[0]
        os.makedirs(out_dir, exist_ok=True)
        return os.path.join(out_dir, "launcher.log")
    return os.path.join(fallback_dir, f"job{index:05d}.log")


def _child_env() -> dict:
    env = dict(os.environ)
    # N jobs x all-core intra-op threads oversubscribes the machine; one thread each is faster.
    env.setdefault("OMP_NUM_THREADS", "1")
    env.setdefault("MKL_NUM_THREADS", "1")
    return env


def local_parallel_launcher(commands: list[str], max_jobs: int | None = None) -> list[str]:
    """Run ``commands`` (shell strings) with at most ``max_jobs`` at once.

    Returns the commands that failed (non-zero exit). A failed job does not stop the others.
    """
    max_jobs = max_jobs or num_parallel_jobs()
    commands = list(commands)
    total = len(commands)
    fallback_dir = tempfile.mkdtemp(prefix="lpa_domainbed_logs_")
    env = _child_env()
    pending = list(enumerate(commands))
    running: dict[subprocess.Popen, tuple[int, str, str, object]] = {}
    failed: list[tuple[str, str, int]] = []
    done = 0
    start = time.time()
    last_report = (-1, -1, 0.0)

    def report():
        """One line whenever a job finishes, and at least every 30 s."""
        nonlocal last_report
        finished = done + len(failed)
        now = time.time()
        if (finished, len(failed)) != last_report[:2] or now - last_report[2] > 30:
            print(f"[local_parallel] {finished}/{total} finished ({len(failed)} failed), "
                  f"{len(running)} running, {len(pending)} waiting, {now - start:.0f}s",
                  flush=True)
            last_report = (finished, len(failed), now)

    try:
        while pending or running:
            for proc in [p for p in running if p.poll() is not None]:
                index, command, log, handle = running.pop(proc)
                handle.close()
                if proc.returncode == 0:
                    done += 1
                else:
                    failed.append((command, log, proc.returncode))
                    print(f"[local_parallel] job {index} failed (exit {proc.returncode}); "
                          f"log: {log}", file=sys.stderr, flush=True)
            while pending and len(running) < max_jobs:
                index, command = pending.pop(0)
                log = _log_path(command, fallback_dir, index)
                handle = open(log, "w")
                proc = subprocess.Popen(command, shell=True, stdout=handle,
                                        stderr=subprocess.STDOUT, env=env,
                                        start_new_session=True)
                running[proc] = (index, command, log, handle)
            report()
            time.sleep(_POLL_SECONDS)
    except KeyboardInterrupt:
        print(f"[local_parallel] interrupted: stopping {len(running)} running jobs",
              file=sys.stderr, flush=True)
        for proc in running:
            try:
                os.killpg(proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        for proc, (_, _, _, handle) in running.items():
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
            handle.close()
        raise
    if failed:
        print(f"[local_parallel] {len(failed)} of {total} jobs failed:", file=sys.stderr)
        for command, log, code in failed:
            print(f"  exit {code}: log {log}", file=sys.stderr)
    return [command for command, _, _ in failed]
