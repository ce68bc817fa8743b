"""One job seen twice: the same job's directory in two ``--input_dir`` (a sweep copied, or
given under two names), or a stale copy beside it (``<hash>_old``).

A job is known by its args (DomainBed names a job's directory by a hash of them), less the
``output_dir`` it ran in. DomainBed's model selection would pool the records of two directories
of one job as one run, so the tables never do: where every directory of a job holds the same
records (the same numbers, wherever they ran), they are counted once, from the first directory
in reading order, and the others are listed as duplicates; where the records differ, the
tables refuse (:class:`DuplicateJobError`) and name the directories, since only the user knows
which run is right.
"""

from __future__ import annotations

import json
from pathlib import Path

__all__ = ["DuplicateJobError", "job_key", "drop_duplicates"]


class DuplicateJobError(ValueError):
    """One job in several job directories with different records; the message names them."""


def _args(record):
    return {k: v for k, v in record["args"].items() if k != "output_dir"}


def job_key(record):
    """The identity of a record's job: its args without ``output_dir``, as JSON."""
    return json.dumps(_args(record), sort_keys=True, default=str)


def _comparable(records):
    """The records as compared: without ``output_dir`` and without the tables' own tags."""
    return [json.dumps({**{k: v for k, v in r.items() if not k.startswith("_lpa_")},
                        "args": _args(r)}, sort_keys=True, default=str) for r in records]


def _describe(record):
    args = record["args"]
    return ", ".join(f"{k} {args[k]}" for k in ("dataset", "algorithm", "test_envs",
                                                 "trial_seed", "hparams_seed"))


def _refuse(holders):
    """``holders``: [(job_dir, its records of the job)]."""
    example = holders[0][1][0]
    listed = "; ".join(
        f"{job_dir} ({len(records)} records, steps up to {max(r['step'] for r in records)}, "
        f"{'done' if (Path(job_dir) / 'done').exists() else 'no done file'})"
        for job_dir, records in holders)
    raise DuplicateJobError(
        f"the same job ({_describe(example)}) is in {len(holders)} job directories with "
        f"different records: {listed}. One is a stale copy (a <hash>_old directory, say) or "
        f"another run of the job, and its numbers must not be pooled: move the one you do not "
        f"want out of the input directories, or pass only one of them as --input_dir; nothing "
        f"was written")


def drop_duplicates(jobs, report):
    """The records of ``jobs`` (``[(job_dir, records)]`` in reading order) with each job's
    records counted once; fills ``report.duplicate_jobs`` and takes the duplicates out of its
    incomplete and restarted lists (their records are not used). Raises
    :class:`DuplicateJobError` where the copies differ."""
    keys = [[job_key(r) for r in records] for _, records in jobs]  # once per record
    holders = {}  # job key -> indices of the jobs holding it
    for index, job_keys in enumerate(keys):
        for key in dict.fromkeys(job_keys):
            holders.setdefault(key, []).append(index)
    dropped = set()  # (job index, job key)
    for key, indices in holders.items():
        if len(indices) < 2:
            continue
        parts = [(jobs[i][0], [r for r, k in zip(jobs[i][1], keys[i]) if k == key])
                 for i in indices]
        if any(_comparable(records) != _comparable(parts[0][1]) for _, records in parts[1:]):
            _refuse(parts)
        for index in indices[1:]:
            dropped.add((index, key))
            report.duplicate_jobs[str(jobs[index][0])] = str(parts[0][0])
    kept = []
    for index, (job_dir, records) in enumerate(jobs):
        used = [r for r, k in zip(records, keys[index]) if (index, k) not in dropped]
        if records and not used:
            _forget(report, str(job_dir))
        kept += used
    return kept


def _forget(report, job_dir):
    if job_dir in report.incomplete_jobs:
        report.incomplete_jobs.remove(job_dir)
        report.incomplete_reasons.pop(job_dir, None)
    report.restarted_jobs.pop(job_dir, None)
