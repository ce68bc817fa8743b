"""``local_parallel``: run a sweep's commands N at a time on one machine.

DomainBed's ``local`` launcher is serial. This one keeps ``LPA_DOMAINBED_JOBS`` commands
running (default: the number of CPU cores), writes one log per job, prints progress, reports
failed jobs with their log, and on Ctrl-C (or SIGTERM, SIGHUP) stops every job (see
:mod:`.processes`) and ends the sweep with one line. Jobs get this process's environment
(``LPA_DOMAINBED_PLUGINS`` included) with the sweep's interpreter first on PATH, and each one
GPU of the machine, spread evenly (:mod:`.gpus`; the job's log names it). When a job's shell
ends, whatever of its process group still runs is stopped (a shell killed on its own would
leave its python running, unwatched).

The loop that does all of this, :func:`run_locally`, takes the way a job starts as an
argument (a :class:`Starter`): ``local_parallel`` starts a shell per command,
``local_forkserver`` (:mod:`.forkserver`) forks training jobs from a server.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time

from lpa_domainbed.tools.launchers.gpus import GpuPool, gpu_pool
from lpa_domainbed.tools.launchers.jobs import (job_output_dirs, remove_empty_job_dirs,
                                                start_clean)
from lpa_domainbed.tools.launchers.processes import (deferring_stop_signals, ignoring_ctrl_c,
                                                     interrupted, start_job, stop_jobs,
                                                     stop_leftovers, stop_signals_as_ctrl_c)
from lpa_domainbed.tools.launchers.settings import num_parallel_jobs, settings_or_cleanup

__all__ = ["Starter", "local_parallel_launcher", "run_locally"]

_POLL_SECONDS = 0.2


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


class Starter:
    """How :func:`run_locally` starts a job: here, a shell of its own process group (see
    :func:`.processes.start_job`) appending to the job's log (made by :func:`run_locally`).
    A subclass may start some jobs another way; what it returns needs ``pid`` (its process
    group), ``poll()``, ``returncode`` and ``wait()`` (used by :func:`.processes.stop_jobs`)."""

    prefix = "[local_parallel]"

    def __init__(self, env: dict):
        self.env = env

    def start(self, index: int, command: str, log: str, extra_env: dict):
        """Start job ``index`` with ``extra_env`` (its GPU) added to the jobs' environment;
        return ``(process, open file to close when it ends, or None)``."""
        handle = open(log, "a")
        try:
            return start_job(command, stdout=handle, stderr=subprocess.STDOUT,
                             env={**self.env, **extra_env}), handle
        except BaseException:
            handle.close()
            raise

    def starting(self, index: int):
        """The context in which job ``index`` is started and recorded: here the stop signals
        wait (a job forked but not yet recorded would run on, unstopped)."""
        return deferring_stop_signals()

    def close(self, stop: bool = False) -> None:
        """Called once at the end (``stop``: the launch was interrupted or failed)."""


def _start(starter: Starter, index: int, command: str, log: str, gpus: GpuPool, gpu):
    """Make the job's log (naming its GPU) and start the job; on failure remove the log, so
    the job's directory stays empty, unlaunched."""
    with open(log, "w") as handle:
        if gpu is not None:
            handle.write(f"{starter.prefix} job {index} runs on GPU {gpus.devices[gpu]} "
                         f"(CUDA_VISIBLE_DEVICES={gpus.devices[gpu]})\n")
    try:
        return starter.start(index, command, log, gpus.env(gpu))
    except BaseException:
        os.remove(log)
        raise


def run_locally(commands: list[str], max_jobs: int, starter: Starter,
                gpus: GpuPool | None = None) -> list[str]:
    """Run ``commands`` with at most ``max_jobs`` at once, each started by ``starter`` on a GPU
    of ``gpus`` (if any). Returns the commands that failed; Ctrl-C, SIGTERM or SIGHUP stop the
    running jobs and raise SystemExit(130). Should a job fail to start, the running ones are
    stopped, the unstarted ones' empty directories removed (a rerun launches them), and the
    error raised."""
    prefix, total, fallback_dir = starter.prefix, len(commands), None
    gpus = gpus or GpuPool([])
    if gpus.describe():
        print(f"{prefix} {gpus.describe()}", flush=True)
    out_dirs = job_output_dirs(commands)
    pending = list(enumerate(commands))
    running: dict = {}  # process -> (index, command, log, handle, gpu)
    failed: list[tuple[str, str, int]] = []
    done, start, last_report = 0, time.time(), (-1, -1, 0.0)

    def report():
        """One line whenever a job finishes, and at least every 30 s."""
        nonlocal last_report
        finished, now = done + len(failed), time.time()
        if (finished, len(failed)) != last_report[:2] or now - last_report[2] > 30:
            print(f"{prefix} {finished}/{total} finished ({len(failed)} failed), "
                  f"{len(running)} running, {len(pending)} waiting, {now - start:.0f}s",
                  flush=True)
            last_report = (finished, len(failed), now)

    def stop_all():
        stop_jobs(list(running))
        for _, _, _, handle, _ in running.values():
            if handle:
                handle.close()
        starter.close(stop=True)

    try:
        with stop_signals_as_ctrl_c():
            while pending or running:
                for proc in [p for p in running if p.poll() is not None]:
                    index, command, log, handle, gpu = running.pop(proc)
                    left = stop_leftovers(proc.pid)
                    if left:
                        print(f"{prefix} job {index} ended (exit {proc.returncode}) while "
                              f"processes of it still ran (pids {', '.join(map(str, left))}): "
                              f"stopped them", file=sys.stderr, flush=True)
                    if handle:
                        handle.close()
                    gpus.release(gpu)
                    if proc.returncode == 0:
                        done += 1
                    else:
                        failed.append((command, log, proc.returncode))
                        print(f"{prefix} job {index} failed (exit {proc.returncode}); log: {log}",
                              file=sys.stderr, flush=True)
                while pending and len(running) < max_jobs and not gpus.full():
                    index, command = pending[0]
                    if fallback_dir is None and out_dirs[index] is None:
                        fallback_dir = tempfile.mkdtemp(prefix="lpa_domainbed_logs_")
                    log = _log_path(out_dirs[index], fallback_dir, index)
                    gpu = gpus.acquire()
                    with starter.starting(index):  # a started job is a recorded one
                        try:
                            proc, handle = _start(starter, index, command, log, gpus, gpu)
                        except BaseException:
                            gpus.release(gpu)
                            raise
                        pending.pop(0)
                        running[proc] = (index, command, log, handle, gpu)
                report()
                time.sleep(_POLL_SECONDS)
    except KeyboardInterrupt:
        with ignoring_ctrl_c():
            stop_all()
        raise interrupted(prefix, len(running), done + len(failed)) from None
    except BaseException:
        with ignoring_ctrl_c():
            stop_all()
            remove_empty_job_dirs([command for _, command in pending])
        raise
    starter.close()
    if failed:
        print(f"{prefix} {len(failed)} of {total} jobs failed:", file=sys.stderr)
        for command, log, code in failed:
            print(f"  exit {code}: log {log}", file=sys.stderr)
    return [command for command, _, _ in failed]


def local_parallel_launcher(commands: list[str], max_jobs: int | None = None) -> list[str]:
    """Run ``commands`` (shell strings) with at most ``max_jobs`` (default:
    ``LPA_DOMAINBED_JOBS``) at once. Returns the commands that failed (non-zero exit); a failed
    job does not stop the others. Ctrl-C stops the running jobs and raises SystemExit(130)."""
    commands = list(commands)
    jobs_setting = settings_or_cleanup(commands, "local_parallel", num_parallel_jobs)
    return run_locally(commands, max_jobs or jobs_setting, Starter(_child_env()), gpu_pool())
