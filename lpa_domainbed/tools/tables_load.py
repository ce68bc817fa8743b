"""Reading a sweep's job directories for :mod:`lpa_domainbed.tools.tables`.

Like ``domainbed.lib.reporting.load_records`` (every ``<input_dir>/<job>/results.jsonl``), but
nothing enters the tables unnoticed: corrupt lines and records that cannot be scored are skipped
and counted (:mod:`tables_records`); a job without ``done``, whose last line is truncated or whose
results are empty is *incomplete* (its records are tagged so the cells that use them are
marked, or dropped with ``complete_only``); a directory an interrupted launch left behind
(empty, or only a launcher log) is listed as *not run*. A ``results.jsonl`` that holds more
than one attempt (the step sequence starts again, as after a requeue or a rerun in the same
directory: DomainBed's train script appends) is *restarted*: only its last attempt is read, its
records are tagged, and the earlier attempts stay on disk untouched (nothing here writes).
An input directory given twice is read once; a job seen in two directories is counted once, or
refused where the copies differ (:mod:`tables_duplicates`). A job that wrote no record is
listed with its dataset and algorithm (from the args DomainBed prints to its ``out.txt``) and
the last line of its ``err.txt``. Every record read carries its job directory
(:data:`JOB_DIR_KEY`), for the report of the selected runs.
"""

from __future__ import annotations

import json
from pathlib import Path

from domainbed.lib.query import Q

from lpa_domainbed.tools.tables_duplicates import DuplicateJobError, drop_duplicates
from lpa_domainbed.tools.tables_records import read_results
from lpa_domainbed.tools.tables_report import INCOMPLETE_MARK, RESTARTED_MARK, LoadReport

__all__ = ["LoadReport", "load_records", "DuplicateJobError", "INCOMPLETE_KEY", "RESTARTED_KEY",
           "JOB_DIR_KEY", "INCOMPLETE_MARK", "RESTARTED_MARK", "HOW_TO_GET_RESULTS"]

HOW_TO_GET_RESULTS = "run the sweep first: make sweep NAME=... or make demo"
#: set on a record (a dict) that comes from an incomplete job; DomainBed ignores extra keys
INCOMPLETE_KEY = "_lpa_incomplete_job"
#: set on a record of a job whose results.jsonl holds several attempts (the last is read)
RESTARTED_KEY = "_lpa_restarted_job"
#: set on every record: the job directory it was read from
JOB_DIR_KEY = "_lpa_job_dir"
TRAINING_OUTPUT = ("results.jsonl", "out.txt", "err.txt")  # written by DomainBed's train.py


def _check_input_dir(input_dir: Path):
    if input_dir.is_file():
        hint = (f" (e.g. {input_dir.parent.parent})" if input_dir.name == "results.jsonl"
                else "")
        raise FileNotFoundError(f"{input_dir} is a file; pass the sweep's output directory, "
                                f"the folder that holds one directory per job{hint}")
    if not input_dir.is_dir():
        raise FileNotFoundError(f"sweep output directory {input_dir} does not exist; "
                                f"{HOW_TO_GET_RESULTS}, or pass --input_dir DIR")
    if (input_dir / "results.jsonl").exists() or (input_dir / "done").exists():
        raise FileNotFoundError(f"{input_dir} is one job's directory; pass the sweep's output "
                                f"directory (the folder that holds the job directories, e.g. "
                                f"{input_dir.parent})")


def _attempts(records):
    """Split a job's records into attempts: per run (records with the same args; DomainBed
    writes one run per job directory), a new attempt starts where the step stops increasing
    (a restart writes step 0 again). Returns ``{run: [attempt, ...]}``, each attempt a list of
    records in file order."""
    runs = {}
    for record in records:
        attempts = runs.setdefault(json.dumps(record["args"], sort_keys=True, default=str), [[]])
        if attempts[-1] and record["step"] <= attempts[-1][-1]["step"]:
            attempts.append([])
        attempts[-1].append(record)
    return runs


def _restart_note(runs):
    attempts = max(runs.values(), key=len)
    earlier = sum(len(a) for run in runs.values() for a in run[:-1])
    return (f"results.jsonl holds {len(attempts)} attempts (the step starts again at "
            f"{attempts[-1][0]['step']} after {attempts[-2][-1]['step']}); the last is used, "
            f"the {earlier} records before it are not")


def _why_incomplete(job_dir, runs, truncated, n_skipped=0):
    if not (job_dir / "done").exists():
        return "no 'done' file (killed, crashed or still running)"
    if truncated:
        return "results.jsonl ends in a truncated line"
    if not runs and n_skipped:
        return f"every record of results.jsonl was skipped ({n_skipped}; see Skipped records)"
    if not runs:
        return "results.jsonl holds no records"
    for attempts in runs.values():
        last, reached = attempts[-1][-1]["step"], max(a[-1]["step"] for a in attempts)
        if last < reached:  # 'done' is from an earlier attempt
            return (f"restarted after it finished, its last attempt stopped at step {last} "
                    f"(an earlier one reached {reached})")
    return None


def _unique_dirs(input_dirs, report):
    """The input directories, each once (by its resolved path), in the order given."""
    seen, unique = set(), []
    for input_dir in input_dirs:
        _check_input_dir(input_dir)
        if input_dir.resolve() in seen:
            report.repeated_inputs.append(str(input_dir))
            continue
        seen.add(input_dir.resolve())
        unique.append(input_dir)
    return unique


def _printed_args(job_dir):
    """(dataset, algorithm) from the 'Args:' block DomainBed's train script prints to
    ``out.txt``, or None when it is not there."""
    try:
        lines = (job_dir / "out.txt").read_text(errors="replace").splitlines()
    except OSError:
        return None
    args, inside = {}, False
    for line in lines:
        if line.strip() == "Args:":
            inside = True
        elif inside and line.startswith("\t") and ": " in line:
            key, _, value = line.strip().partition(": ")
            args[key] = value
        elif inside:
            break
    return (args["dataset"], args["algorithm"]) if {"dataset", "algorithm"} <= set(args) else None


def _last_error(job_dir):
    """The last non-empty line of ``err.txt`` (a crash's exception), or ''."""
    try:
        lines = [line.strip() for line in (job_dir / "err.txt").read_text(
            errors="replace").splitlines() if line.strip()]
    except OSError:
        return ""
    return lines[-1][:300] if lines else ""


def _read_job(job_dir, report, complete_only):
    """The records of one job directory to use, recording what was found in ``report``."""
    results_path = job_dir / "results.jsonl"
    records, truncated, skipped = [], False, []
    if results_path.is_file():
        records, bad_lines, truncated, skipped = read_results(results_path)
        report.n_jobs += 1
        if bad_lines:
            report.skipped_lines[str(results_path)] = bad_lines
        report.add_skipped(results_path, skipped)
    runs = _attempts(records)
    if any(len(attempts) > 1 for attempts in runs.values()):
        report.restarted_jobs[str(job_dir)] = _restart_note(runs)
        last = {id(r) for attempts in runs.values() for r in attempts[-1]}
        records = [r for r in records if id(r) in last]
        for record in records:
            record[RESTARTED_KEY] = str(job_dir)
    for record in records:
        record[JOB_DIR_KEY] = str(job_dir)
    reason = _why_incomplete(job_dir, runs, truncated, len(skipped))
    if reason:
        if not records:
            report.failed_jobs[str(job_dir)] = _printed_args(job_dir)
            error = _last_error(job_dir)
            reason += f"; err.txt ends: {error}" if error else ""
        report.incomplete_jobs.append(str(job_dir))
        report.incomplete_reasons[str(job_dir)] = reason
        if complete_only:
            return []
        for record in records:
            record[INCOMPLETE_KEY] = str(job_dir)
    return records


def load_records(input_dirs, complete_only=False):
    """Read every ``<input_dir>/<job>/results.jsonl``; one directory or a list.

    Returns ``(Q(records), LoadReport)``. Records of incomplete jobs carry
    :data:`INCOMPLETE_KEY` (their job directory), or are left out with ``complete_only``;
    those of a restarted job carry :data:`RESTARTED_KEY`. Raises
    :class:`DuplicateJobError` for one job in two directories with different records.
    """
    input_dirs = [Path(d) for d in ([input_dirs] if isinstance(input_dirs, (str, Path))
                                    else input_dirs)]
    report = LoadReport(input_dirs=[str(d) for d in input_dirs], complete_only=complete_only)
    input_dirs = _unique_dirs(input_dirs, report)
    report.input_dirs = [str(d) for d in input_dirs]
    jobs = []
    for job_dir in sorted(j for d in input_dirs for j in d.iterdir() if j.is_dir()):
        if not any((job_dir / name).is_file() for name in TRAINING_OUTPUT):
            report.not_run.append(str(job_dir))  # empty, or only a launcher's log
            continue
        jobs.append((job_dir, _read_job(job_dir, report, complete_only)))
    records = drop_duplicates(jobs, report)
    report.n_records = len(records)
    report.warn()
    return Q(records), report
