"""``local_parallel``: run a sweep's commands N at a time on one machine.

DomainBed's ``local`` launcher is serial. This one keeps ``LPA_DOMAINBED_JOBS`` commands
running (default: the number of CPU cores), writes one log per job, prints progress, reports
failed jobs with their log, and on Ctrl-C (or SIGTERM, SIGHUP) stops every job (see
:mod:`.processes`) and ends the sweep with one line. Jobs get this process's environment
(``LPA_DOMAINBED_PLUGINS`` included) with the sweep's interpreter first on PATH.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time

from lpa_domainbed.tools.launchers.jobs import job_output_dirs, start_clean
from lpa_domainbed.tools.launchers.processes import (ignoring_ctrl_c, interrupted, start_job,
                                                     stop_jobs, stop_signals_as_ctrl_c)
from lpa_domainbed.tools.launchers.settings import num_parallel_jobs, settings_or_cleanup

__all__ = ["local_parallel_launcher"]

_POLL_SECONDS = 0.2
_PREFIX = "[local_parallel]"


def _log_path(out_dir: str | None, fallback_dir: str, index: int) -> str:
    """``launcher.log`` in the job's own ``output_dir`` (an earlier attempt's files moved aside
    first, see :func:`.jobs.start_clean`), else a file in ``fallback_dir``."""
    if out_dir:
        os.makedirs(out_dir, exist_ok=True)
        start_clean(out_dir)
        return os.path.join(out_dir, "launcher.log")
    return os.path.join(fallback_dir, f"job{index:05d}.log")


def _child_env() -> dict:
    env = dict(os.environ)
    # N jobs x all-core intra-op threads oversubscribes the machine; one thread each is faster.
    env.setdefault("OMP_NUM_THREADS", "1")
    env.setdefault("MKL_NUM_THREADS", "1")
    return env


def local_parallel_launcher(commands: list[str], max_jobs: int | None = None) -> list[str]:
    """Run ``commands`` (shell strings) with at most ``max_jobs`` (default:
    ``LPA_DOMAINBED_JOBS``) at once. Returns the commands that failed (non-zero exit); a failed
    job does not stop the others. Ctrl-C stops the running jobs and raises SystemExit(130)."""
    commands = list(commands)
    jobs_setting = settings_or_cleanup(commands, "local_parallel", num_parallel_jobs)
    max_jobs = max_jobs or jobs_setting
    total = len(commands)
    fallback_dir = None
    env = _child_env()
    out_dirs = job_output_dirs(commands)
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
            print(f"{_PREFIX} {finished}/{total} finished ({len(failed)} failed), "
                  f"{len(running)} running, {len(pending)} waiting, {now - start:.0f}s",
                  flush=True)
            last_report = (finished, len(failed), now)

    try:
        with stop_signals_as_ctrl_c():
            while pending or running:
                for proc in [p for p in running if p.poll() is not None]:
                    index, command, log, handle = running.pop(proc)
                    handle.close()
                    if proc.returncode == 0:
                        done += 1
                    else:
                        failed.append((command, log, proc.returncode))
                        print(f"{_PREFIX} job {index} failed (exit {proc.returncode}); log: {log}",
                              file=sys.stderr, flush=True)
                while pending and len(running) < max_jobs:
                    index, command = pending.pop(0)
                    if fallback_dir is None and out_dirs[index] is None:
                        fallback_dir = tempfile.mkdtemp(prefix="lpa_domainbed_logs_")
                    log = _log_path(out_dirs[index], fallback_dir, index)
                    handle = open(log, "w")
                    running[start_job(command, stdout=handle, stderr=subprocess.STDOUT,
                                      env=env)] = (index, command, log, handle)
                report()
                time.sleep(_POLL_SECONDS)
    except KeyboardInterrupt:
        with ignoring_ctrl_c():
            stop_jobs(list(running))
            for _, _, _, handle in running.values():
                handle.close()
        raise interrupted(_PREFIX, len(running), done + len(failed)) from None
    if failed:
        print(f"{_PREFIX} {len(failed)} of {total} jobs failed:", file=sys.stderr)
        for command, log, code in failed:
            print(f"  exit {code}: log {log}", file=sys.stderr)
    return [command for command, _, _ in failed]
