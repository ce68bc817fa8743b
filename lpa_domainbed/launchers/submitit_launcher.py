"""``submitit``: run a sweep's commands as Slurm jobs through `submitit`_.

Each command becomes one task of a Slurm job array (at most ``LPA_SLURM_ARRAY_PARALLELISM``
tasks run at once). Where there is no Slurm (no ``srun`` on ``PATH``), or with
``LPA_SUBMITIT_CLUSTER=local``, the same code runs the commands through submitit's local
executor, at most ``LPA_SLURM_ARRAY_PARALLELISM`` at a time. The launcher waits for every job,
prints a progress line whenever the counts change, reports each failed job with its
stdout/stderr log, and returns the failed commands (a failed job does not stop the others).
On Ctrl-C it cancels every unfinished job (``scancel`` on Slurm) and re-raises.

Settings: an environment variable wins over the same key (in parentheses) of the optional TOML
file named by ``LPA_SUBMITIT_CONFIG``, which wins over the default; an empty variable counts as
unset. Invalid values raise ValueError naming the variable (or key) and what to set.

* ``LPA_SLURM_PARTITION`` (``partition``): Slurm partition (default: the cluster's default);
* ``LPA_SLURM_GPUS`` (``gpus``): GPUs per job (1);
* ``LPA_SLURM_CPUS`` (``cpus``): CPUs per job (8);
* ``LPA_SLURM_MEM_GB`` (``mem_gb``): memory per job in GB (the cluster's default);
* ``LPA_SLURM_TIME_MIN`` (``time_min``): time limit per job in minutes (1440);
* ``LPA_SLURM_ACCOUNT`` (``account``): Slurm account (the user's default);
* ``LPA_SLURM_ARRAY_PARALLELISM`` (``array_parallelism``): jobs running at once (64 on Slurm,
  the number of CPU cores locally);
* ``LPA_SLURM_MAX_ARRAY_SIZE`` (``max_array_size``): tasks per job array, more commands are
  split over several arrays that share the parallelism evenly (1000; Slurm's default
  ``MaxArraySize`` is 1001);
* ``LPA_SLURM_EXTRA`` (``extra``): JSON object (TOML table) of extra sbatch options, e.g.
  ``{"qos": "high", "constraint": "a100"}``;
* ``LPA_SUBMITIT_LOG_DIR`` (``log_dir``): submitit's folder, on a file system the compute
  nodes share (``./submitit_logs``);
* ``LPA_SUBMITIT_CLUSTER`` (``cluster``): ``slurm`` or ``local`` (default: submitit's choice,
  ``slurm`` when ``srun`` is on ``PATH``).

Each launch writes into its own subfolder ``<log_dir>/<date>-<time>-<pid>/``; a job's logs are
``<job id>_0_log.out`` and ``<job id>_0_log.err`` there, and the ``.out`` file starts with the
command the job ran.

.. _submitit: https://github.com/facebookincubator/submitit
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable, Mapping, NamedTuple

__all__ = [
    "CONFIG_ENV_VAR",
    "SubmititSettings",
    "load_settings",
    "run_shell_command",
    "submitit_launcher",
]

CONFIG_ENV_VAR = "LPA_SUBMITIT_CONFIG"
_PREFIX = "[submitit]"
_POLL_SECONDS = 5.0
# A job Slurm reports as ended may take a while to show its result file on a network file system.
_SLURM_RESULT_GRACE_SECONDS = 60.0
_KILL_GRACE_SECONDS = 0.5
_LOCAL_CANCEL_TIMEOUT_SECONDS = 10.0
_SLURM_DEFAULT_PARALLELISM = 64
_SCANCEL_BATCH = 500


# --------------------------------------------------------------------------- settings


@dataclasses.dataclass(frozen=True)
class SubmititSettings:
    """What to ask Slurm (or the local executor) for; see the module docstring."""

    partition: str | None = None
    gpus: int = 1
    cpus: int = 8
    mem_gb: float | None = None
    time_min: int = 1440
    account: str | None = None
    array_parallelism: int | None = None
    max_array_size: int = 1000
    extra: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    log_dir: Path = Path("submitit_logs")
    cluster: str | None = None

    def parallelism(self, cluster: str) -> int:
        """Jobs allowed to run at once: the setting, else 64 on Slurm and the CPU count locally."""
        if self.array_parallelism is not None:
            return self.array_parallelism
        if cluster == "slurm":
            return _SLURM_DEFAULT_PARALLELISM
        return os.cpu_count() or 1


def _text(raw: Any) -> str:
    """A non-empty string, stripped."""
    if not isinstance(raw, str) or not raw.strip():
        raise ValueError("not a non-empty string")
    return raw.strip()


def _integer(raw: Any) -> int:
    """An int from an int or a decimal string (not a bool, not a float)."""
    if isinstance(raw, bool):
        raise ValueError("a boolean is not an integer")
    if isinstance(raw, int):
        return raw
    if isinstance(raw, str):
        return int(raw.strip())
    raise ValueError("not an integer")


def _int_at_least(minimum: int) -> Callable[[Any], int]:
    """A parser of integers >= ``minimum``."""
    def parse(raw: Any) -> int:
        value = _integer(raw)
        if value < minimum:
            raise ValueError(f"{value} < {minimum}")
        return value

    return parse


def _positive_number(raw: Any) -> float:
    """A finite number > 0."""
    if isinstance(raw, bool):
        raise ValueError("a boolean is not a number")
    value = float(raw.strip() if isinstance(raw, str) else raw)
    if not (value > 0 and math.isfinite(value)):
        raise ValueError(f"{value} is not a finite positive number")
    return value


def _sbatch_options(raw: Any) -> dict[str, Any]:
    """sbatch options from a JSON object (environment) or a TOML table (config file)."""
    options = json.loads(raw) if isinstance(raw, str) else raw
    if not isinstance(options, Mapping):
        raise ValueError("not a JSON object / TOML table")
    for key, value in options.items():
        if not isinstance(key, str) or not isinstance(value, (str, int, float, bool)):
            raise ValueError(f"option {key!r}: {value!r} is not a string, number or boolean")
    return dict(options)


def _directory(raw: Any) -> Path:
    """A path, ``~`` expanded (made absolute when the launcher runs)."""
    return Path(_text(raw)).expanduser()


def _cluster(raw: Any) -> str:
    """``local`` or ``slurm``."""
    value = _text(raw).lower()
    if value not in ("local", "slurm"):
        raise ValueError(f"unknown cluster {value!r}")
    return value


class _Option(NamedTuple):
    """One setting: its dataclass field (also its config-file key), variable, parser, advice."""

    field: str
    env_var: str
    parse: Callable[[Any], Any]
    expected: str


_OPTIONS = (
    _Option("partition", "LPA_SLURM_PARTITION", _text, "a Slurm partition name"),
    _Option("gpus", "LPA_SLURM_GPUS", _int_at_least(0), "a non-negative integer (GPUs per job)"),
    _Option("cpus", "LPA_SLURM_CPUS", _int_at_least(1), "a positive integer (CPUs per job)"),
    _Option("mem_gb", "LPA_SLURM_MEM_GB", _positive_number,
            "a positive number (GB of memory per job)"),
    _Option("time_min", "LPA_SLURM_TIME_MIN", _int_at_least(1),
            "a positive integer (time limit per job, in minutes)"),
    _Option("account", "LPA_SLURM_ACCOUNT", _text, "a Slurm account name"),
    _Option("array_parallelism", "LPA_SLURM_ARRAY_PARALLELISM", _int_at_least(1),
            "a positive integer (jobs running at once)"),
    _Option("max_array_size", "LPA_SLURM_MAX_ARRAY_SIZE", _int_at_least(1),
            "a positive integer (tasks per job array, below the cluster's MaxArraySize)"),
    _Option("extra", "LPA_SLURM_EXTRA", _sbatch_options,
            'a JSON object of sbatch options, e.g. {"qos": "high", "constraint": "a100"}'),
    _Option("log_dir", "LPA_SUBMITIT_LOG_DIR", _directory,
            "a directory on a file system shared with the compute nodes"),
    _Option("cluster", "LPA_SUBMITIT_CLUSTER", _cluster,
            "'slurm' or 'local' (or unset it to let submitit choose)"),
)


def _parse_option(option: _Option, raw: Any, source: str) -> Any:
    """Parse one raw value; a bad one raises ValueError naming ``source`` and what to set."""
    try:
        return option.parse(raw)
    except (ValueError, TypeError) as error:
        raise ValueError(f"{source}={raw!r} is invalid ({error}): set it to {option.expected}, "
                         f"or unset it for the default") from None


def _load_toml(path: Path) -> dict[str, Any]:
    """The parsed config file; a missing or malformed one raises ValueError."""
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        try:
            import tomli as tomllib
        except ModuleNotFoundError:
            raise ValueError(f"{CONFIG_ENV_VAR}={str(path)!r}: reading TOML on Python 3.10 "
                             f"needs 'tomli' (pip install 'lpa-domainbed[slurm]')") from None
    try:
        with open(path, "rb") as handle:
            return tomllib.load(handle)
    except OSError as error:
        raise ValueError(f"{CONFIG_ENV_VAR}={str(path)!r}: cannot read it ({error.strerror}); "
                         f"set it to an existing TOML file or unset it") from None
    except tomllib.TOMLDecodeError as error:
        raise ValueError(f"{CONFIG_ENV_VAR}={str(path)!r} is not valid TOML ({error}); "
                         f"fix the file or unset the variable") from None


def _config_file_values(environ: Mapping[str, str]) -> tuple[dict[str, Any], str]:
    """The raw values of the config file named by ``LPA_SUBMITIT_CONFIG`` and its path."""
    path = environ.get(CONFIG_ENV_VAR, "").strip()
    if not path:
        return {}, ""
    values = _load_toml(Path(path).expanduser())
    known = {option.field for option in _OPTIONS}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ValueError(f"{CONFIG_ENV_VAR}={path!r}: unknown key(s) {', '.join(unknown)}; "
                         f"the keys are {', '.join(sorted(known))}")
    return values, path


def load_settings(environ: Mapping[str, str] | None = None) -> SubmititSettings:
    """Settings from the environment, then the config file, then the defaults."""
    environ = os.environ if environ is None else environ
    file_values, file_path = _config_file_values(environ)
    chosen: dict[str, Any] = {}
    for option in _OPTIONS:
        raw_env = environ.get(option.env_var, "")
        if raw_env.strip():
            chosen[option.field] = _parse_option(option, raw_env, option.env_var)
        elif option.field in file_values:
            source = f"{option.field} in {file_path} ({option.env_var})"
            chosen[option.field] = _parse_option(option, file_values[option.field], source)
    return SubmititSettings(**chosen)


# --------------------------------------------------------------------------- the job itself


def _signal_group(pgid: int, signum: int) -> None:
    """Send ``signum`` to a process group that may already be gone."""
    try:
        os.killpg(pgid, signum)
    except ProcessLookupError:
        pass


def _kill_process_group(process: subprocess.Popen) -> None:
    """SIGTERM the process's group, then SIGKILL whatever is left of it."""
    _signal_group(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=_KILL_GRACE_SECONDS)
    except subprocess.TimeoutExpired:
        pass
    _signal_group(process.pid, signal.SIGKILL)
    process.wait()


def _command_env() -> dict[str, str]:
    """This environment, with this interpreter's directory first on PATH: DomainBed's commands
    start with a bare ``python``, which must be the environment that launched the sweep even
    when it was not activated (``.venv/bin/python -m domainbed.scripts.sweep ...``)."""
    env = dict(os.environ)
    env["PATH"] = os.pathsep.join(filter(None, [os.path.dirname(sys.executable),
                                                env.get("PATH", "")]))
    return env


def run_shell_command(command: str) -> None:
    """The job submitit runs: ``command`` in a shell; CalledProcessError when it exits non-zero.

    Same contract as ``subprocess.run(command, shell=True, check=True)``, except that the shell
    gets its own process group, killed whole when this job is interrupted (cancelled, Ctrl-C,
    timed out, preempted), so no training process outlives its job; and ``python`` in the
    command is this job's interpreter (see :func:`_command_env`).
    """
    print(f"{_PREFIX} running: {command}", flush=True)
    process = subprocess.Popen(command, shell=True, start_new_session=True, env=_command_env())
    try:
        returncode = process.wait()
    except BaseException:
        _kill_process_group(process)
        raise
    if returncode != 0:
        raise subprocess.CalledProcessError(returncode, command)


# --------------------------------------------------------------------------- executor


def _choose_cluster(submitit: Any, settings: SubmititSettings) -> str:
    """``settings.cluster``, else submitit's choice (Slurm when ``srun`` exists, else local)."""
    if settings.cluster == "slurm" and shutil.which("srun") is None:
        raise RuntimeError("LPA_SUBMITIT_CLUSTER=slurm but 'srun' is not on PATH; run on a "
                           "Slurm login node, or set LPA_SUBMITIT_CLUSTER=local")
    if settings.cluster:
        return settings.cluster
    return "slurm" if submitit.AutoExecutor.which() == "slurm" else "local"


def _executor_parameters(settings: SubmititSettings) -> dict[str, Any]:
    """``update_parameters`` arguments: shared ones and ``slurm_*`` ones (ignored locally)."""
    return {
        "name": "lpa_domainbed",
        "nodes": 1,
        "tasks_per_node": 1,
        "timeout_min": settings.time_min,
        "cpus_per_task": settings.cpus,
        "gpus_per_node": settings.gpus or None,
        "mem_gb": settings.mem_gb,
        "slurm_partition": settings.partition,
        "slurm_account": settings.account,
        "slurm_additional_parameters": dict(settings.extra) or None,
    }


def _launch_folder(log_dir: Path) -> Path:
    """A fresh subfolder of ``log_dir`` for this launch (local job ids are reused pids)."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    folder = (log_dir / f"{stamp}-{os.getpid()}").absolute()
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def _make_executor(submitit: Any, settings: SubmititSettings, cluster: str, folder: Path) -> Any:
    """A submitit AutoExecutor for ``cluster`` writing into ``folder``, parameters set."""
    executor = submitit.AutoExecutor(folder=folder, cluster=cluster)
    executor.update_parameters(**_executor_parameters(settings))
    return executor


# --------------------------------------------------------------------------- job tracking


@dataclasses.dataclass
class _TrackedJob:
    """One command, its submitit job once submitted, and its outcome once known."""

    index: int
    command: str
    job: Any = None
    failed: bool | None = None
    reason: str = ""
    ended_without_result_since: float | None = None

    @property
    def finished(self) -> bool:
        return self.failed is not None


def _failure_reason(error: BaseException) -> str:
    """A short reason from submitit's error: ``exit 3``, ``killed by signal 9`` or its last line."""
    text = str(error)
    match = re.search(r"non-zero exit status (-?\d+)", text)
    if match:
        code = int(match.group(1))
        return f"killed by signal {-code}" if code < 0 else f"exit {code}"
    parts = text.split("-" * 22)
    trace = parts[1] if len(parts) >= 3 else text
    lines = [line.strip() for line in trace.strip().splitlines() if line.strip()]
    return lines[-1][:200] if lines else type(error).__name__


def _update_outcome(tracked: _TrackedJob, grace_seconds: float) -> None:
    """Record whether a submitted job has succeeded or failed, without blocking."""
    job = tracked.job
    if job is None or tracked.finished or not job.done():
        return
    if job.paths.result_pickle.exists():
        error = job.exception()
        tracked.failed = error is not None
        tracked.reason = _failure_reason(error) if error is not None else ""
        return
    now = time.monotonic()
    if tracked.ended_without_result_since is None:
        tracked.ended_without_result_since = now
    if now - tracked.ended_without_result_since >= grace_seconds:
        tracked.failed = True
        tracked.reason = f"ended without a result (state {job.state})"


def _is_running(job: Any) -> bool:
    """Whether the scheduler says the job runs (submitit's cached state)."""
    return str(job.state).upper() in ("RUNNING", "COMPLETING")


def _counts(tracked_jobs: list[_TrackedJob]) -> dict[str, int]:
    """How many jobs are done, failed, running, queued (submitted) and waiting (not yet)."""
    counts = dict(done=0, failed=0, running=0, queued=0, waiting=0)
    for tracked in tracked_jobs:
        if tracked.finished:
            counts["failed" if tracked.failed else "done"] += 1
        elif tracked.job is None:
            counts["waiting"] += 1
        elif _is_running(tracked.job):
            counts["running"] += 1
        else:
            counts["queued"] += 1
    return counts


class _ProgressPrinter:
    """Prints a progress line whenever the counts change."""

    def __init__(self, total: int):
        self.total = total
        self.start = time.monotonic()
        self.last_counts: dict[str, int] | None = None

    def report(self, counts: dict[str, int]) -> None:
        if counts == self.last_counts:
            return
        self.last_counts = counts
        finished = counts["done"] + counts["failed"]
        line = (f"{_PREFIX} {finished}/{self.total} finished ({counts['failed']} failed), "
                f"{counts['running']} running, {counts['queued']} queued")
        if counts["waiting"]:
            line += f", {counts['waiting']} waiting"
        print(f"{line}, {time.monotonic() - self.start:.0f}s", flush=True)


def _log_paths(tracked: _TrackedJob) -> str:
    """The job's stdout and stderr log paths, for messages."""
    paths = tracked.job.paths
    return f"stdout: {paths.stdout}, stderr: {paths.stderr}"


def _mark_not_submitted(tracked_jobs: list[_TrackedJob], error: BaseException) -> None:
    """Count commands that sbatch refused as failed, and say how to submit them later."""
    first_line = (str(error).strip().splitlines() or [type(error).__name__])[0][:300]
    for tracked in tracked_jobs:
        tracked.failed, tracked.reason = True, f"not submitted ({first_line})"
    print(f"{_PREFIX} submission failed: {first_line}\n"
          f"{_PREFIX} {len(tracked_jobs)} commands were not submitted; the submitted jobs go on. "
          f"Once they have ended, run DomainBed's 'sweep delete_incomplete' and then 'sweep "
          f"launch' again (same arguments) to submit the rest.", file=sys.stderr, flush=True)


def _announce_failure(tracked: _TrackedJob) -> None:
    """Say at once that a job failed, with its logs."""
    print(f"{_PREFIX} job {tracked.index} failed ({tracked.reason}); {_log_paths(tracked)}",
          file=sys.stderr, flush=True)


def _report_failures(failed: list[_TrackedJob], total: int) -> None:
    """The final summary of the failed jobs and their logs."""
    if not failed:
        return
    print(f"{_PREFIX} {len(failed)} of {total} jobs failed:", file=sys.stderr)
    for tracked in failed:
        if tracked.job is not None:
            print(f"  {tracked.reason}: {_log_paths(tracked)}", file=sys.stderr)
    not_submitted = [tracked for tracked in failed if tracked.job is None]
    if not_submitted:
        print(f"  {len(not_submitted)} commands: {not_submitted[0].reason}", file=sys.stderr)
    sys.stderr.flush()


# --------------------------------------------------------------------------- submission


def _array_chunks(tracked_jobs: list[_TrackedJob], size: int) -> list[list[_TrackedJob]]:
    """Consecutive groups of at most ``size`` jobs, one job array each."""
    return [tracked_jobs[start:start + size] for start in range(0, len(tracked_jobs), size)]


def _submit_slurm_arrays(executor: Any, tracked_jobs: list[_TrackedJob],
                         settings: SubmititSettings) -> None:
    """Submit every command as Slurm job arrays sharing the parallelism cap evenly.

    When sbatch refuses an array, that array's and the later arrays' commands count as failed
    (not submitted) and the arrays already submitted go on.
    """
    chunks = _array_chunks(tracked_jobs, settings.max_array_size)
    per_array = max(1, settings.parallelism("slurm") // len(chunks))
    executor.update_parameters(slurm_array_parallelism=per_array)
    for position, chunk in enumerate(chunks):
        try:
            jobs = executor.map_array(run_shell_command, [tracked.command for tracked in chunk])
        except (RuntimeError, OSError) as error:  # sbatch refused (e.g. a per-user job limit)
            _mark_not_submitted([tracked for rest in chunks[position:] for tracked in rest], error)
            return
        for tracked, job in zip(chunk, jobs):
            tracked.job = job
        print(f"{_PREFIX} submitted {len(chunk)} jobs as Slurm job {jobs[0].job_id.split('_')[0]} "
              f"(at most {per_array} at once)", flush=True)


def _submit_local_jobs(executor: Any, tracked_jobs: list[_TrackedJob], parallelism: int) -> None:
    """Start waiting commands while fewer than ``parallelism`` local jobs are unfinished."""
    active = sum(1 for tracked in tracked_jobs if tracked.job is not None and not tracked.finished)
    for tracked in tracked_jobs:
        if active >= parallelism:
            return
        if tracked.job is None and not tracked.finished:
            tracked.job = executor.submit(run_shell_command, tracked.command)
            active += 1


def _cancel_slurm_jobs(jobs: list[Any]) -> None:
    """``scancel`` the jobs (array tasks by their ``<array>_<index>`` ids), a batch at a time."""
    job_ids = [job.job_id for job in jobs]
    for start in range(0, len(job_ids), _SCANCEL_BATCH):
        subprocess.call(["scancel", *job_ids[start:start + _SCANCEL_BATCH]])


def _cancel_local_jobs(jobs: list[Any]) -> None:
    """Interrupt each local job and wait (bounded) for its processes to end."""
    for job in jobs:
        job.cancel(check=False)
    deadline = time.monotonic() + _LOCAL_CANCEL_TIMEOUT_SECONDS
    while any(not job.done() for job in jobs) and time.monotonic() < deadline:
        time.sleep(0.1)


def _cancel_unfinished(tracked_jobs: list[_TrackedJob], cluster: str) -> None:
    """Cancel every submitted job that has not finished (after Ctrl-C)."""
    jobs = [tracked.job for tracked in tracked_jobs if tracked.job is not None
            and not tracked.finished]
    print(f"{_PREFIX} interrupted: cancelling {len(jobs)} unfinished jobs",
          file=sys.stderr, flush=True)
    if not jobs:
        return
    if cluster == "slurm":
        _cancel_slurm_jobs(jobs)
    else:
        _cancel_local_jobs(jobs)


# --------------------------------------------------------------------------- the launcher


def _sleep(seconds: float) -> None:
    """Wait between polls (tests replace it)."""
    time.sleep(seconds)


def _wait_for_jobs(executor: Any, tracked_jobs: list[_TrackedJob], cluster: str,
                   settings: SubmititSettings) -> None:
    """Poll until every job has finished, starting local jobs as slots free up."""
    progress = _ProgressPrinter(len(tracked_jobs))
    grace = _SLURM_RESULT_GRACE_SECONDS if cluster == "slurm" else 0.0
    while True:
        for tracked in tracked_jobs:
            was_finished = tracked.finished
            _update_outcome(tracked, grace)
            if tracked.failed and not was_finished:
                _announce_failure(tracked)
        if cluster == "local":
            _submit_local_jobs(executor, tracked_jobs, settings.parallelism("local"))
        progress.report(_counts(tracked_jobs))
        if all(tracked.finished for tracked in tracked_jobs):
            return
        _sleep(_POLL_SECONDS)


def submitit_launcher(commands: list[str],
                      settings: SubmititSettings | None = None) -> list[str]:
    """Run ``commands`` (shell strings) as submitit jobs and wait for all of them.

    Returns the commands that failed. A failed job does not stop the others; Ctrl-C cancels
    the unfinished jobs and re-raises KeyboardInterrupt.
    """
    settings = settings or load_settings()
    tracked_jobs = [_TrackedJob(index, command) for index, command in enumerate(commands)]
    if not tracked_jobs:
        print(f"{_PREFIX} nothing to launch", flush=True)
        return []
    try:
        import submitit
    except ModuleNotFoundError:
        raise ModuleNotFoundError(
            "the 'submitit' launcher needs submitit: pip install 'lpa-domainbed[slurm]'") from None
    cluster = _choose_cluster(submitit, settings)
    folder = _launch_folder(settings.log_dir)
    executor = _make_executor(submitit, settings, cluster, folder)
    print(f"{_PREFIX} {len(tracked_jobs)} jobs on {cluster}, at most "
          f"{settings.parallelism(cluster)} at once; logs in {folder}", flush=True)
    try:
        if cluster == "slurm":
            _submit_slurm_arrays(executor, tracked_jobs, settings)
        _wait_for_jobs(executor, tracked_jobs, cluster, settings)
    except KeyboardInterrupt:
        _cancel_unfinished(tracked_jobs, cluster)
        raise
    failed = [tracked for tracked in tracked_jobs if tracked.failed]
    _report_failures(failed, len(tracked_jobs))
    return [tracked.command for tracked in failed]
