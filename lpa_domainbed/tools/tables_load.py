"""Reading a sweep's job directories for :mod:`lpa_domainbed.tools.tables`.

Like ``domainbed.lib.reporting.load_records`` (every ``<input_dir>/<job>/results.jsonl``), but
nothing enters the tables unnoticed: corrupt lines and records without the fields the tables
need are skipped and counted; a job without ``done``, whose last line is truncated or whose
results are empty is *incomplete* (its records are tagged so the cells that use them are
marked, or dropped with ``complete_only``); a directory an interrupted launch left behind
(empty, or only a launcher log) is listed as *not run*. A ``results.jsonl`` that holds more
than one attempt (the step sequence starts again, as after a requeue or a rerun in the same
directory: DomainBed's train script appends) is *restarted*: only its last attempt is read, its
records are tagged, and the earlier attempts stay on disk untouched (nothing here writes).
An input directory given twice is read once.
"""

from __future__ import annotations

import dataclasses
import json
import warnings
from pathlib import Path

from domainbed.lib.query import Q

__all__ = ["LoadReport", "load_records", "INCOMPLETE_KEY", "RESTARTED_KEY", "INCOMPLETE_MARK",
           "RESTARTED_MARK", "HOW_TO_GET_RESULTS"]

HOW_TO_GET_RESULTS = "run the sweep first: make sweep NAME=... or make demo"
#: set on a record (a dict) that comes from an incomplete job; DomainBed ignores extra keys
INCOMPLETE_KEY = "_lpa_incomplete_job"
#: set on a record of a job whose results.jsonl holds several attempts (the last is read)
RESTARTED_KEY = "_lpa_restarted_job"
INCOMPLETE_MARK = "†"  # marks a table cell that uses records of an incomplete job
RESTARTED_MARK = "‡"  # marks a table cell that uses records of a restarted job
REQUIRED_ARGS = {"dataset": str, "algorithm": str, "test_envs": list, "trial_seed": int,
                 "hparams_seed": int}
TRAINING_OUTPUT = ("results.jsonl", "out.txt", "err.txt")  # written by DomainBed's train.py


@dataclasses.dataclass
class LoadReport:
    """What :func:`load_records` found: record and job counts, skipped lines, incomplete jobs
    (``incomplete_jobs``: paths; ``incomplete_reasons``: path -> why), restarted jobs
    (``restarted_jobs``: path -> what was left out), directories that never started training
    (``not_run``) and input directories given more than once (``repeated_inputs``)."""

    input_dirs: list
    n_records: int = 0
    n_jobs: int = 0
    skipped_lines: dict = dataclasses.field(default_factory=dict)  # results.jsonl path -> count
    incomplete_jobs: list = dataclasses.field(default_factory=list)
    incomplete_reasons: dict = dataclasses.field(default_factory=dict)
    not_run: list = dataclasses.field(default_factory=list)
    restarted_jobs: dict = dataclasses.field(default_factory=dict)
    repeated_inputs: list = dataclasses.field(default_factory=list)
    complete_only: bool = False

    def summary(self):
        """One line for humans."""
        text = f"{self.n_records} records from {self.n_jobs} jobs"
        if self.skipped_lines:
            text += f"; skipped {sum(self.skipped_lines.values())} corrupt lines"
        if self.incomplete_jobs:
            verb = "excluded" if self.complete_only else f"marked {INCOMPLETE_MARK}"
            text += f"; {len(self.incomplete_jobs)} incomplete jobs ({verb})"
        if self.restarted_jobs:
            text += (f"; {len(self.restarted_jobs)} restarted jobs (last attempt used, marked "
                     f"{RESTARTED_MARK})")
        if self.not_run:
            text += f"; {len(self.not_run)} job directories not run"
        return text


def _parse_record(line):
    """A DomainBed record from one line, or None if it is corrupt or lacks the fields the
    tables need (the args that group records, and the step)."""
    try:
        record = json.loads(line)
    except json.JSONDecodeError:
        return None
    if not isinstance(record, dict) or not isinstance(record.get("args"), dict):
        return None
    args = record["args"]
    step = record.get("step")
    if not isinstance(step, (int, float)) or isinstance(step, bool) or not all(
            isinstance(args.get(k), t) for k, t in REQUIRED_ARGS.items()):
        return None
    return record


def _read_jsonl(path):
    """Return (records, number of non-empty lines that are not a record, whether the last
    line is cut off: not JSON at all, as when a job is killed mid-write)."""
    with open(path, "r", errors="replace") as handle:
        lines = [line for line in handle if line.strip()]
    parsed = [_parse_record(line) for line in lines]
    records = [r for r in parsed if r is not None]
    truncated = False
    if lines and parsed[-1] is None:
        try:
            json.loads(lines[-1])
        except json.JSONDecodeError:
            truncated = True
    return records, len(parsed) - len(records), truncated


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


def _why_incomplete(job_dir, runs, truncated):
    if not (job_dir / "done").exists():
        return "no 'done' file (killed, crashed or still running)"
    if truncated:
        return "results.jsonl ends in a truncated line"
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


def _read_job(job_dir, report, complete_only):
    """The records of one job directory to use, recording what was found in ``report``."""
    results_path = job_dir / "results.jsonl"
    records, truncated = [], False
    if results_path.is_file():
        records, bad_lines, truncated = _read_jsonl(results_path)
        report.n_jobs += 1
        if bad_lines:
            report.skipped_lines[str(results_path)] = bad_lines
    runs = _attempts(records)
    if any(len(attempts) > 1 for attempts in runs.values()):
        report.restarted_jobs[str(job_dir)] = _restart_note(runs)
        last = {id(r) for attempts in runs.values() for r in attempts[-1]}
        records = [r for r in records if id(r) in last]
        for record in records:
            record[RESTARTED_KEY] = str(job_dir)
    reason = _why_incomplete(job_dir, runs, truncated)
    if reason:
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
    those of a restarted job carry :data:`RESTARTED_KEY`.
    """
    input_dirs = [Path(d) for d in ([input_dirs] if isinstance(input_dirs, (str, Path))
                                    else input_dirs)]
    report = LoadReport(input_dirs=[str(d) for d in input_dirs], complete_only=complete_only)
    input_dirs = _unique_dirs(input_dirs, report)
    report.input_dirs = [str(d) for d in input_dirs]
    records = []
    for job_dir in sorted(j for d in input_dirs for j in d.iterdir() if j.is_dir()):
        if not any((job_dir / name).is_file() for name in TRAINING_OUTPUT):
            report.not_run.append(str(job_dir))  # empty, or only a launcher's log
            continue
        records.extend(_read_job(job_dir, report, complete_only))
    report.n_records = len(records)
    _warn(report)
    return Q(records), report


def _warn(report):
    if report.repeated_inputs:
        warnings.warn(f"input director(ies) given more than once, read once: "
                      f"{', '.join(report.repeated_inputs)}")
    if report.skipped_lines:
        warnings.warn(f"skipped {sum(report.skipped_lines.values())} corrupt line(s) in "
                      f"{len(report.skipped_lines)} file(s): {', '.join(report.skipped_lines)}")
    if report.incomplete_jobs:
        action = ("excluded (--complete_only)" if report.complete_only
                  else f"their cells are marked {INCOMPLETE_MARK}")
        warnings.warn(f"{len(report.incomplete_jobs)} incomplete job(s), {action}: "
                      f"{', '.join(report.incomplete_jobs)}")
    if report.restarted_jobs:
        warnings.warn(f"{len(report.restarted_jobs)} restarted job(s) (several attempts in "
                      f"results.jsonl; the last is used, their cells are marked {RESTARTED_MARK}): "
                      f"{', '.join(report.restarted_jobs)}")
    if report.not_run:
        warnings.warn(f"{len(report.not_run)} job director(ies) never started training "
                      f"(not run): {', '.join(report.not_run)}")
