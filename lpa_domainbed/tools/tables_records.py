"""One ``results.jsonl`` as :mod:`tables_load` reads it: which lines are records the tables can
use, and why the others are not.

A line is *corrupt* (counted per file, as a skipped line) when it is not JSON, not an object, or
lacks the fields that group records (the args ``dataset``, ``algorithm``, ``test_envs``,
``trial_seed``, ``hparams_seed`` and a finite ``step``). A record that has them but cannot be
scored is *skipped* with a reason, counted per file and per table cell it belongs to, so no cell
changes without saying so:

- its dataset name is not a plain name (it names output files);
- its ``test_envs`` is empty, or names a domain the dataset does not have (the dataset class's
  ``ENVIRONMENTS``, or, for a dataset DomainBed does not know, the ``env<i>_in_acc`` keys);
- it lacks ``env<i>_in_acc`` or ``env<i>_out_acc`` for a domain ``i``, or one is not a number;
- an accuracy (any ``*_acc`` value) is not finite (NaN or infinite, as a diverged run writes).
"""

from __future__ import annotations

import functools
import json
import math
import re

from domainbed import datasets

from lpa_domainbed.tools.safe_output import is_plain_name

__all__ = ["REQUIRED_ARGS", "Skipped", "read_results", "why_unusable", "skip_kind"]

REQUIRED_ARGS = {"dataset": str, "algorithm": str, "test_envs": list, "trial_seed": int,
                 "hparams_seed": int}
_ENV_KEY = re.compile(r"env(\d+)_in_acc")


class Skipped:
    """A record left out, and where it would have counted: ``reason`` (a sentence),
    ``dataset``, ``algorithm``, ``test_envs`` and ``trial_seed`` from its args."""

    __slots__ = ("reason", "dataset", "algorithm", "test_envs", "trial_seed")

    def __init__(self, reason, args):
        self.reason = reason
        self.dataset, self.algorithm = args["dataset"], args["algorithm"]
        self.test_envs, self.trial_seed = list(args["test_envs"]), args["trial_seed"]


def skip_kind(reason):
    """The short kind of a skip reason: 'non-finite accuracy (env1_out_acc)' -> 'non-finite
    accuracy'."""
    return reason.split(" (")[0]


def _number(value):
    return isinstance(value, (int, float)) and not isinstance(value, bool)


@functools.lru_cache(maxsize=None)
def _known_domains(dataset):
    """How many domains DomainBed's class for ``dataset`` has, or None for an unknown one."""
    try:
        return len(datasets.get_dataset_class(dataset).ENVIRONMENTS)
    except (NotImplementedError, AttributeError, TypeError):
        return None


def _n_domains(record):
    known = _known_domains(record["args"]["dataset"])
    if known is not None:
        return known
    found = [int(m.group(1)) for m in map(_ENV_KEY.fullmatch, record) if m]
    return max(found) + 1 if found else 0


def why_unusable(record):
    """Why a record that has the grouping fields cannot be scored, or None when it can."""
    args = record["args"]
    if not is_plain_name(args["dataset"]):
        return (f"dataset {args['dataset']!r} is not a plain name (letters, digits, '.', '_', "
                f"'-'): it would name output files")
    n_domains, test_envs = _n_domains(record), args["test_envs"]
    if not test_envs:
        return "test_envs [] (no held-out domain)"
    if not all(isinstance(e, int) and not isinstance(e, bool) and 0 <= e < n_domains
               for e in test_envs):
        return (f"test_envs {test_envs} outside {args['dataset']}'s {n_domains} domains "
                f"(0 to {n_domains - 1})")
    for i in range(n_domains):
        for key in (f"env{i}_in_acc", f"env{i}_out_acc"):
            if key not in record:
                return f"lacks {key} ({args['dataset']} has {n_domains} domains)"
            if not _number(record[key]):
                return f"{key} is not a number ({record[key]!r})"
    bad = [k for k, v in record.items() if k.endswith("_acc") and _number(v)
           and not math.isfinite(v)]
    return f"non-finite accuracy ({', '.join(bad)})" if bad else None


def _parse(line):
    """A record with the grouping fields from one line, or None (a corrupt line)."""
    try:
        record = json.loads(line)
    except json.JSONDecodeError:
        return None
    if not isinstance(record, dict) or not isinstance(record.get("args"), dict):
        return None
    args, step = record["args"], record.get("step")
    if not _number(step) or not math.isfinite(step) or not all(
            isinstance(args.get(k), t) for k, t in REQUIRED_ARGS.items()):
        return None
    return record


def read_results(path):
    """Read one ``results.jsonl``. Returns ``(records, n_corrupt, truncated, skipped)``: the
    usable records in file order; how many non-empty lines are corrupt; whether the last line
    is cut off (not JSON at all, as when a job is killed mid-write); a :class:`Skipped` per
    record left out for a reason."""
    with open(path, "r", errors="replace") as handle:
        lines = [line for line in handle if line.strip()]
    parsed = [_parse(line) for line in lines]
    records, skipped = [], []
    for record in parsed:
        if record is None:
            continue
        reason = why_unusable(record)
        if reason is None:
            records.append(record)
        else:
            skipped.append(Skipped(reason, record["args"]))
    truncated = False
    if lines and parsed[-1] is None:
        try:
            json.loads(lines[-1])
        except json.JSONDecodeError:
            truncated = True
    return records, sum(r is None for r in parsed), truncated, skipped
