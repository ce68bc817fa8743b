"""Which directory each command of a sweep writes to, and what the launchers do there.

Under DomainBed's sweep script (``python -m domainbed.scripts.sweep``) a launcher receives the
``command_str`` of DomainBed's ``Job`` objects; the script keeps those objects in its module
global ``jobs``, so each command's directory is taken from them (``Job.output_dir``, always inside
the sweep's ``--output_dir``). A command not among them (a launcher called directly) is split
as DomainBed built it (``shlex``: a quoted ``--hparams`` text is one token, so its content can
never be taken for an ``--output_dir``) and its single standalone ``--output_dir`` value is used.

A job that starts again in a directory that already holds files (a Slurm requeue after a node
failure or a preemption, any rerun of the same command) would append a second attempt to
DomainBed's ``results.jsonl``: :func:`start_clean` first moves the earlier attempt's files into
``attempt-<n>/`` beside them. Nothing is deleted.
"""

from __future__ import annotations

import os
import re
import shlex
import sys

__all__ = ["ATTEMPT_PREFIX", "job_output_dir", "job_output_dirs", "remove_empty_job_dirs",
           "start_clean"]

ATTEMPT_PREFIX = "attempt-"
_ATTEMPT = re.compile(re.escape(ATTEMPT_PREFIX) + r"(\d+)$")


def _sweep_jobs() -> dict[str, str]:
    """``command_str -> output_dir`` of DomainBed's sweep script running in this process."""
    main = sys.modules.get("__main__")
    spec = getattr(main, "__spec__", None)
    if getattr(spec, "name", None) != "domainbed.scripts.sweep":
        return {}
    return {job.command_str: job.output_dir for job in getattr(main, "jobs", None) or []}


def job_output_dir(command: str, known: dict[str, str] | None = None) -> str | None:
    """The directory ``command`` writes to (see the module's docstring), else None."""
    known = _sweep_jobs() if known is None else known
    if command in known:
        return known[command]
    try:
        tokens = shlex.split(command)
    except ValueError:
        return None
    hits = [i for i, token in enumerate(tokens) if token == "--output_dir"]
    if len(hits) != 1 or hits[0] + 1 == len(tokens):
        return None
    return tokens[hits[0] + 1]


def job_output_dirs(commands: list[str]) -> list[str | None]:
    known = _sweep_jobs()
    return [job_output_dir(command, known) for command in commands]


def remove_empty_job_dirs(commands: list[str]) -> None:
    """Remove the commands' job directories that are still empty (made by DomainBed's
    ``Job.launch`` for jobs that never started), so that DomainBed's next ``launch`` sees those
    jobs as not launched rather than incomplete."""
    for out_dir in job_output_dirs(commands):
        if out_dir and os.path.isdir(out_dir) and not os.listdir(out_dir):
            os.rmdir(out_dir)


def start_clean(out_dir: str | None) -> str | None:
    """Move the files of an earlier attempt in ``out_dir`` into ``out_dir/attempt-<n>/`` (n =
    1, 2, ...); return that folder, or None when there was nothing to move."""
    if not out_dir or not os.path.isdir(out_dir):
        return None
    entries = [name for name in os.listdir(out_dir) if not _ATTEMPT.match(name)]
    if not entries:
        return None
    numbers = [int(m.group(1)) for m in map(_ATTEMPT.match, os.listdir(out_dir)) if m]
    folder = os.path.join(out_dir, f"{ATTEMPT_PREFIX}{max(numbers, default=0) + 1}")
    os.mkdir(folder)
    for name in entries:
        os.replace(os.path.join(out_dir, name), os.path.join(folder, name))
    return folder
