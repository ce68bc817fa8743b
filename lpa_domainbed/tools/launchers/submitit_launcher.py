"""``submitit``: run a sweep's commands as Slurm job arrays through `submitit`_.

Each command is one task of a Slurm job array, at most ``LPA_SLURM_ARRAY_PARALLELISM`` running
at once; without Slurm (no ``srun`` on ``PATH``, or ``LPA_SUBMITIT_CLUSTER=local``) submitit's
local executor runs them here, as many at once. It waits for every job, prints progress when
the counts change, reports failed jobs with their logs and returns the failed commands. Ctrl-C
cancels every unfinished job (``scancel`` on Slurm) and ends the sweep with one line.

Jobs get the environment of the sweep (submitit's Slurm jobs inherit sbatch's environment,
``--export=ALL``; the local executor copies it), with the sweep's interpreter first on PATH.

Settings, environment variables only (an empty one counts as unset; an invalid one raises
ValueError naming it before any job starts, see :mod:`.settings`):

* ``LPA_SLURM_PARTITION``, ``LPA_SLURM_ACCOUNT``: partition and account (the cluster's default);
* ``LPA_SLURM_GPUS`` (1), ``LPA_SLURM_CPUS`` (8), ``LPA_SLURM_MEM_GB`` (the partition's),
  ``LPA_SLURM_TIME_MIN`` (1440): what each job gets;
* ``LPA_SLURM_ARRAY_PARALLELISM``: jobs running at once (64 on Slurm, the CPU count locally);
* ``LPA_SLURM_MAX_ARRAY_SIZE``: tasks per job array (1000, below Slurm's default
  ``MaxArraySize``); more commands are split over arrays sharing the parallelism;
* ``LPA_SLURM_EXTRA``: other sbatch options as a JSON object, e.g. ``{"qos": "high"}``;
* ``LPA_SUBMITIT_LOG_DIR``: submitit's folder, on a file system the nodes share
  (``./submitit_logs``); each launch writes into a new ``<date>-<time>-<pid>`` subfolder;
* ``LPA_SUBMITIT_CLUSTER``: ``slurm`` or ``local`` (default: submitit's choice).

.. _submitit: https://github.com/facebookincubator/submitit
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time

from lpa_domainbed.tools.launchers.jobs import job_output_dirs, remove_empty_job_dirs, start_clean
from lpa_domainbed.tools.launchers.processes import (LaunchFailed, ignoring_ctrl_c,
                                                     interruptible_children, interrupted,
                                                     start_job, stop_jobs, stop_signals_as_ctrl_c)
from lpa_domainbed.tools.launchers.settings import (SlurmSettings, settings_or_cleanup,
                                                    slurm_settings)
from lpa_domainbed.tools.launchers.slurm_queue import JOB_NAME, ended_state, queue_states

__all__ = ["run_shell_command", "submitit_launcher"]

_PREFIX = "[submitit]"
_POLL_SECONDS = 5.0
_LOCAL_CANCEL_SECONDS = 10.0


def run_shell_command(command: str, output_dir: str | None = None) -> None:
    """The job submitit runs: ``command`` in a shell (see :func:`.processes.start_job`);
    CalledProcessError when it exits non-zero. A job that starts again (requeued) first moves
    its earlier attempt's files in ``output_dir`` aside (:func:`.jobs.start_clean`). When the
    job is interrupted (cancelled, timed out, preempted) the shell's whole process group is
    stopped, so nothing outlives it."""
    print(f"{_PREFIX} running: {command}", flush=True)
    moved = start_clean(output_dir)
    if moved:
        print(f"{_PREFIX} an earlier attempt's files were moved to {moved}", flush=True)
    # Slurm sends its time-limit warning (SIGUSR2) to every process of the job: it is meant for
    # submitit's handler in this process, and would kill the training process unhandled.
    process = start_job(command, preexec_fn=_ignore_slurm_warning)
    try:
        returncode = process.wait()
    except BaseException:
        stop_jobs([process], grace=0.1)  # submitit SIGKILLs this process 1 s after SIGINT
        raise
    if returncode != 0:
        raise subprocess.CalledProcessError(returncode, command)


def _ignore_slurm_warning() -> None:
    signal.signal(signal.SIGUSR2, signal.SIG_IGN)


def _failure(error: BaseException) -> str:
    """A short reason from submitit's error: ``exit 3``, ``killed by signal 9``, ``ended
    without a result (state OUT_OF_MEMORY)`` or the last line of the job's traceback."""
    text = str(error)
    match = re.search(r"non-zero exit status (-?\d+)", text)
    if match:
        code = int(match.group(1))
        return f"killed by signal {-code}" if code < 0 else f"exit {code}"
    match = re.search(r"died with <Signals\.(\w+): (\d+)>", text)
    if match:
        return f"killed by signal {match.group(2)} ({match.group(1)})"
    match = re.search(r"Job not requeued because: ([^.\n]*)", text)
    if match:  # submitit's answer to Slurm's warning signal before the time limit
        return f"stopped by Slurm: {match.group(1)} (raise LPA_SLURM_TIME_MIN)"
    match = re.search(r"has not produced any output \(state: ([^)]*)\)", text)
    if match:
        return f"ended without a result (state {match.group(1)})"
    parts = text.split("-" * 22)  # submitit puts the job's traceback between such rules
    lines = [line.strip() for line in (parts[1] if len(parts) >= 3 else text).splitlines()
             if line.strip()]
    return lines[-1][:200] if lines else type(error).__name__


def _make_executor(settings: SlurmSettings):
    """The executor (Slurm or local), its log folder for this launch, and its cluster."""
    import submitit  # installed: validate_settings("submitit") checked it
    cluster = settings.cluster or ("slurm" if submitit.AutoExecutor.which() == "slurm"
                                   else "local")
    folder = (settings.log_dir / f"{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}").absolute()
    executor = submitit.AutoExecutor(folder=folder, cluster=cluster)
    executor.update_parameters(
        name=JOB_NAME, nodes=1, tasks_per_node=1, timeout_min=settings.time_min,
        cpus_per_task=settings.cpus, gpus_per_node=settings.gpus or None,
        mem_gb=settings.mem_gb, slurm_partition=settings.partition,
        slurm_account=settings.account, slurm_additional_parameters=settings.extra or None,
        # Slurm warns a job (SIGUSR2) this long before its time limit; submitit then ends it
        slurm_signal_delay_s=min(90, max(10, settings.time_min * 15)))
    return executor, folder, cluster


def _submit_arrays(executor, commands: list[str], out_dirs: list, jobs: list, failed: dict,
                   settings: SlurmSettings, parallelism: int) -> None:
    """Job arrays of at most ``max_array_size`` tasks sharing ``parallelism``. Commands sbatch
    refuses (e.g. a per-user job limit) fail and lose their empty job directories, so that a
    rerun launches them; the arrays already submitted go on."""
    size = settings.max_array_size
    starts = range(0, len(commands), size)
    per_array = max(1, parallelism // len(starts))
    executor.update_parameters(slurm_array_parallelism=per_array)
    for start in starts:
        try:
            array = executor.map_array(run_shell_command, commands[start:start + size],
                                       out_dirs[start:start + size])
        except (RuntimeError, OSError) as error:
            reason = (str(error).strip().splitlines() or [type(error).__name__])[0][:300]
            failed.update({i: f"not submitted ({reason})" for i in range(start, len(commands))})
            remove_empty_job_dirs(commands[start:])
            print(f"{_PREFIX} sbatch refused: {reason}; {len(commands) - start} commands were "
                  f"not submitted. Once the submitted jobs have ended, relaunch the sweep (see "
                  f"'Resume' in docs/launchers.md).", file=sys.stderr, flush=True)
            return
        jobs[start:start + len(array)] = array
        print(f"{_PREFIX} submitted {len(array)} jobs as Slurm job "
              f"{array[0].job_id.split('_')[0]} (at most {per_array} at once)", flush=True)


def _logs(job) -> str:  # a job's log paths, for messages
    return f"stdout: {job.paths.stdout}, stderr: {job.paths.stderr}"


def _sleep(seconds: float) -> None:
    time.sleep(seconds)  # tests replace it


def _cancel(unfinished: list, cluster: str) -> None:
    """``scancel`` the unfinished Slurm jobs, or interrupt the local ones and wait a while."""
    if cluster == "slurm":
        for start in range(0, len(unfinished), 500):
            subprocess.call(["scancel", *[job.job_id for job in unfinished[start:start + 500]]])
        return
    for job in unfinished:
        job.cancel(check=False)
    deadline = time.monotonic() + _LOCAL_CANCEL_SECONDS
    while any(not job.done() for job in unfinished) and time.monotonic() < deadline:
        time.sleep(0.1)


def _has_result(job) -> bool:
    return job.paths.result_pickle.exists()


class _Queue:
    """Slurm's queue, asked once per poll (see :mod:`.slurm_queue`); ``states`` is None
    locally or where ``squeue`` cannot answer (then submitit's own view decides)."""

    def __init__(self, cluster: str):
        self.cluster, self.states = cluster, None
        self.absent: dict[int, int] = {}
        self.requeued: set[int] = set()

    def refresh(self) -> None:
        self.states = queue_states() if self.cluster == "slurm" else None

    def ended(self, index: int, job) -> str | None:
        """None while the job runs or waits; "" when it ended with a result; else how it
        ended without one (seen out of the queue on two polls in a row)."""
        if self.states is None:
            return "" if job.done() else None
        if job.job_id in self.states:
            self.absent.pop(index, None)
            if _has_result(job) and index not in self.requeued:  # an earlier attempt's result
                self.requeued.add(index)
                print(f"{_PREFIX} job {index} was requeued by Slurm; it starts again and "
                      f"moves its earlier attempt's files to attempt-<n>/ in its output "
                      f"directory", flush=True)
            return None
        if _has_result(job):
            return ""
        self.absent[index] = self.absent.get(index, 0) + 1
        if self.absent[index] < 2:
            return None
        return f"ended without a result (state {ended_state(job.job_id)})"

    def running(self, job) -> bool:
        state = self.states.get(job.job_id, "") if self.states is not None else str(job.state)
        return state.upper() in ("RUNNING", "COMPLETING")


def submitit_launcher(commands: list[str]) -> list[str]:
    """Run ``commands`` (shell strings) as submitit jobs and wait for all of them. Returns the
    commands that failed; a failed job does not stop the others. Ctrl-C (or SIGTERM, SIGHUP)
    cancels the unfinished jobs and raises SystemExit(130)."""
    commands = list(commands)
    settings = settings_or_cleanup(commands, "submitit", slurm_settings)
    if not commands:
        print(f"{_PREFIX} nothing to launch", flush=True)
        return []
    out_dirs = job_output_dirs(commands)
    try:
        executor, folder, cluster = _make_executor(settings)
    except Exception as error:  # nothing was submitted: a rerun must launch every job
        remove_empty_job_dirs(commands)
        raise LaunchFailed(f"error: {_PREFIX} cannot start ({type(error).__name__}: {error}); "
                           f"no job was submitted and their empty directories were removed: "
                           f"fix it (LPA_SUBMITIT_LOG_DIR, LPA_SUBMITIT_CLUSTER) and rerun the "
                           f"same command") from None
    parallelism = settings.array_parallelism or (64 if cluster == "slurm" else os.cpu_count() or 1)
    print(f"{_PREFIX} {len(commands)} jobs on {cluster}, at most {parallelism} at once; logs in "
          f"{folder}", flush=True)
    jobs: list = [None] * len(commands)
    failed: dict[int, str] = {}  # index -> reason
    finished: set[int] = set()
    queue = _Queue(cluster)
    last_line, start = None, time.monotonic()
    try:
        with stop_signals_as_ctrl_c():
            if cluster == "slurm":
                _submit_arrays(executor, commands, out_dirs, jobs, failed, settings, parallelism)
                finished.update(failed)
            while len(finished) < len(commands):
                queue.refresh()
                for index, job in enumerate(jobs):
                    if job is None or index in finished:
                        continue
                    ended = queue.ended(index, job)
                    if ended is None:
                        continue
                    finished.add(index)
                    error = job.exception() if ended == "" else None
                    if ended or error is not None:
                        failed[index] = ended or _failure(error)
                        if queue.states is not None and "signal" in failed[index]:
                            failed[index] += f"; Slurm: {ended_state(job.job_id)}"
                        print(f"{_PREFIX} job {index} failed ({failed[index]}); {_logs(job)}",
                              file=sys.stderr, flush=True)
                active = sum(job is not None and i not in finished for i, job in enumerate(jobs))
                for index in range(len(commands)):  # the local executor has no array cap: ours
                    if cluster == "local" and jobs[index] is None and active < parallelism:
                        with interruptible_children():  # cancel() sends SIGINT
                            jobs[index] = executor.submit(run_shell_command, commands[index],
                                                          out_dirs[index])
                        active += 1
                running = sum(job is not None and i not in finished and queue.running(job)
                              for i, job in enumerate(jobs))
                line = (f"{_PREFIX} {len(finished)}/{len(commands)} finished ({len(failed)} "
                        f"failed), {running} running, {active - running} queued"
                        + (f", {jobs.count(None) - len(failed)} waiting"
                           if jobs.count(None) > len(failed) else ""))
                if line != last_line:
                    print(f"{line}, {time.monotonic() - start:.0f}s", flush=True)
                    last_line = line
                if len(finished) < len(commands):
                    _sleep(_POLL_SECONDS)
    except KeyboardInterrupt:
        unfinished = [job for i, job in enumerate(jobs) if job is not None and i not in finished]
        with ignoring_ctrl_c():
            _cancel(unfinished, cluster)
        raise interrupted(_PREFIX, len(unfinished), len(finished)) from None
    if failed:
        print(f"{_PREFIX} {len(failed)} of {len(commands)} jobs failed:", file=sys.stderr)
        for index in sorted(failed):
            where = _logs(jobs[index]) if jobs[index] is not None else commands[index]
            print(f"  {failed[index]}: {where}", file=sys.stderr, flush=True)
    return [commands[index] for index in sorted(failed)]
