"""The launchers' settings, read from environment variables and checked before anything runs.

DomainBed's ``Job.launch`` makes every job's output directory *before* it calls the launcher,
and its next ``launch`` skips any job whose directory exists. A launcher that failed on a bad
setting at that point would leave every job "Incomplete" and a corrected rerun would launch
nothing. So each launcher starts with :func:`settings_or_cleanup`: on an invalid setting it
removes the job directories of its commands that are still empty, then raises. A command line
tool can call :func:`validate_settings` before it starts DomainBed at all.

An empty variable counts as unset. Every error is a ValueError naming the variable and what to
set it to (a missing submitit is a ModuleNotFoundError saying what to install). No setting may
hold a control character (a newline in a Slurm setting would become a line of its own in the
sbatch script).
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import math
import os
import shutil
import unicodedata
from pathlib import Path
from typing import Any, Callable, Mapping

from lpa_domainbed.tools.launchers.jobs import remove_empty_job_dirs

__all__ = ["LauncherSettingError", "SlurmSettings", "jobs_per_gpu", "num_parallel_jobs",
           "settings_or_cleanup",
           "slurm_settings", "validate_settings"]


def _control_character(text: str) -> str | None:
    """The first control character of ``text`` (a newline, a tab, ...) as ``repr`` shows it."""
    for char in text:
        if unicodedata.category(char) == "Cc" or char in "\u2028\u2029":
            return repr(char)[1:-1]
    return None


def _text(raw: str) -> str:
    return raw


def _int_at_least(minimum: int) -> Callable[[str], int]:
    def parse(raw: str) -> int:
        value = int(raw)
        if value < minimum:
            raise ValueError(f"{value} < {minimum}")
        return value
    return parse


def _positive_number(raw: str) -> float:
    value = float(raw)
    if not (value > 0 and math.isfinite(value)):
        raise ValueError(f"{value} is not a finite positive number")
    return value


def _sbatch_options(raw: str) -> dict:
    options = json.loads(raw)
    if not isinstance(options, dict) or not all(
            isinstance(v, (str, int, float, bool)) for v in options.values()):
        raise ValueError("not a JSON object of strings, numbers or booleans")
    for key, value in options.items():
        for text in (key, value):
            char = _control_character(text) if isinstance(text, str) else None
            if char:
                raise ValueError(f"option {key!r} holds the control character {char}, which "
                                 f"would end its line in the sbatch script")
    return options


def _log_dir(raw: str) -> Path:
    """A directory that exists or can be made (checked without making anything)."""
    path = Path(raw).expanduser()
    existing = path
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise ValueError(f"{existing} is not a directory")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ValueError(f"{existing} is not writable")
    return path


def _cluster(raw: str) -> str:
    value = raw.lower()
    if value not in ("local", "slurm"):
        raise ValueError(f"unknown cluster {value!r}")
    return value


def _read(environ: Mapping[str, str], name: str, parse: Callable[[str], Any], expected: str,
          default: Any = None) -> Any:
    """``parse`` of the variable's stripped value, ``default`` when unset or empty."""
    raw = environ.get(name, "").strip()
    if not raw:
        return default
    char = _control_character(raw)
    if char:
        raise ValueError(f"{name}={raw!r} is invalid: it holds the control character {char} "
                         f"(a Slurm setting must be one line; in the sbatch script it would "
                         f"start a line of its own): set it to {expected}, on one line")
    try:
        return parse(raw)
    except (ValueError, TypeError) as error:
        raise ValueError(f"{name}={raw!r} is invalid ({error}): set it to {expected}, or unset "
                         f"it for the default") from None


def num_parallel_jobs(environ: Mapping[str, str] | None = None) -> int:
    """``LPA_DOMAINBED_JOBS``: commands ``local_parallel`` and ``local_forkserver`` run at once
    (default: CPU cores)."""
    return _read(os.environ if environ is None else environ, "LPA_DOMAINBED_JOBS",
                 _int_at_least(1), "a positive integer (jobs running at once)",
                 os.cpu_count() or 1)


def jobs_per_gpu(environ: Mapping[str, str] | None = None) -> int | None:
    """``LPA_DOMAINBED_JOBS_PER_GPU``: jobs the local launchers run at once on one GPU
    (default: no cap; see :mod:`.gpus`)."""
    return _read(os.environ if environ is None else environ, "LPA_DOMAINBED_JOBS_PER_GPU",
                 _int_at_least(1), "a positive integer (jobs running at once on one GPU)")


@dataclasses.dataclass(frozen=True)
class SlurmSettings:
    """What the ``submitit`` launcher asks Slurm (or the local executor) for."""

    partition: str | None = None
    gpus: int = 1
    cpus: int = 8
    mem_gb: float | None = None
    time_min: int = 1440
    account: str | None = None
    array_parallelism: int | None = None  # None: 64 on Slurm, the CPU count locally
    max_array_size: int = 1000
    extra: dict = dataclasses.field(default_factory=dict)
    log_dir: Path = Path("submitit_logs")
    cluster: str | None = None  # None: submitit's choice (Slurm when srun is on PATH)


# field, variable, parser, what to set
_SLURM_VARIABLES = (
    ("partition", "LPA_SLURM_PARTITION", _text, "a Slurm partition name"),
    ("gpus", "LPA_SLURM_GPUS", _int_at_least(0), "a non-negative integer (GPUs per job)"),
    ("cpus", "LPA_SLURM_CPUS", _int_at_least(1), "a positive integer (CPUs per job)"),
    ("mem_gb", "LPA_SLURM_MEM_GB", _positive_number, "a positive number (GB of memory per job)"),
    ("time_min", "LPA_SLURM_TIME_MIN", _int_at_least(1),
     "a positive integer (time limit per job, in minutes)"),
    ("account", "LPA_SLURM_ACCOUNT", _text, "a Slurm account name"),
    ("array_parallelism", "LPA_SLURM_ARRAY_PARALLELISM", _int_at_least(1),
     "a positive integer (jobs running at once)"),
    ("max_array_size", "LPA_SLURM_MAX_ARRAY_SIZE", _int_at_least(1),
     "a positive integer (tasks per job array, below the cluster's MaxArraySize)"),
    ("extra", "LPA_SLURM_EXTRA", _sbatch_options,
     'a JSON object of sbatch options, e.g. {"qos": "high", "constraint": "a100"}'),
    ("log_dir", "LPA_SUBMITIT_LOG_DIR", _log_dir,
     "a writable directory (or one that can be made) on a file system shared with the "
     "compute nodes"),
    ("cluster", "LPA_SUBMITIT_CLUSTER", _cluster, "'slurm' or 'local'"),
)


def slurm_settings(environ: Mapping[str, str] | None = None) -> SlurmSettings:
    """The ``submitit`` launcher's settings from ``LPA_SLURM_*`` and ``LPA_SUBMITIT_*``."""
    environ = os.environ if environ is None else environ
    defaults = SlurmSettings()
    settings = SlurmSettings(**{
        field: _read(environ, name, parse, expected, getattr(defaults, field))
        for field, name, parse, expected in _SLURM_VARIABLES})
    if settings.log_dir == defaults.log_dir:  # the default, in the current directory
        try:
            _log_dir(str(defaults.log_dir.absolute()))
        except ValueError as error:
            raise ValueError(f"LPA_SUBMITIT_LOG_DIR is unset and its default ./{defaults.log_dir} "
                             f"cannot be made here ({error}): set it to a writable directory "
                             f"on a file system shared with the compute nodes") from None
    if settings.cluster == "slurm" and shutil.which("srun", path=environ.get("PATH")) is None:
        raise ValueError("LPA_SUBMITIT_CLUSTER='slurm' but 'srun' is not on PATH: run on a "
                         "Slurm login node, or set LPA_SUBMITIT_CLUSTER=local")
    return settings


def validate_settings(launcher: str | None = None,
                      environ: Mapping[str, str] | None = None) -> None:
    """Check the settings of ``launcher`` (``local_parallel``, ``local_forkserver``,
    ``submitit``; None: all; any other name, such as DomainBed's own launchers: nothing). Raises ValueError naming the
    variable and what to set, or ModuleNotFoundError when ``submitit`` is not installed."""
    if launcher in (None, "local_parallel", "local_forkserver"):
        num_parallel_jobs(environ)
        jobs_per_gpu(environ)
    if launcher in (None, "submitit"):
        slurm_settings(environ)
    if launcher == "submitit" and importlib.util.find_spec("submitit") is None:
        raise ModuleNotFoundError("the 'submitit' launcher needs submitit: "
                                  "pip install 'lpa-domainbed[slurm]'")


class LauncherSettingError(SystemExit, ValueError):
    """An invalid launcher setting or a missing submitit, raised by a launcher. A ValueError to
    callers; uncaught (in DomainBed's sweep script) it ends the process with its message alone,
    without a traceback (it is also a SystemExit, status 1)."""


def settings_or_cleanup(commands: list[str], launcher: str, read: Callable[[], Any]) -> Any:
    """``read()`` (after :func:`validate_settings` for ``launcher``); when a setting is invalid,
    first :func:`remove_empty_job_dirs`, so the corrected command launches every job, then
    raise :class:`LauncherSettingError`."""
    try:
        validate_settings(launcher)
        return read()
    except (ValueError, ModuleNotFoundError) as error:
        remove_empty_job_dirs(commands)
        raise LauncherSettingError(f"error: {error}") from None
