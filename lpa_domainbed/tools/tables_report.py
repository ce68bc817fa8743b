"""What reading a sweep found, beside its records: :class:`LoadReport`, the one-line summary at
the top of every table file, and the warnings of :func:`tables_load.load_records`. The tables
list each kind below them (:mod:`tables_write`), and the cells it touches say so
(:mod:`tables_cells`)."""

from __future__ import annotations

import collections
import dataclasses
import warnings

from lpa_domainbed.tools.tables_records import skip_kind

__all__ = ["LoadReport", "INCOMPLETE_MARK", "RESTARTED_MARK", "plural"]

INCOMPLETE_MARK = "†"  # marks a table cell that uses records of an incomplete job
RESTARTED_MARK = "‡"  # marks a table cell that uses records of a restarted job


def plural(n, word):
    """'1 record', '2 records'."""
    return f"{n} {word}{'' if n == 1 else 's'}"


@dataclasses.dataclass
class LoadReport:
    """What :func:`load_records` found: record and job counts, corrupt lines
    (``skipped_lines``: path -> count), records skipped for a reason (``skipped_records``:
    path -> {reason: count}; ``skipped_cells``: (dataset, algorithm, domain index) ->
    {kind: count}), incomplete jobs (``incomplete_jobs``: paths; ``incomplete_reasons``:
    path -> why), restarted jobs (``restarted_jobs``: path -> what was left out), directories
    that never started training (``not_run``), input directories given more than once
    (``repeated_inputs``), job directories holding the same records as another one, read once
    (``duplicate_jobs``: path -> the directory read), and jobs that wrote no record
    (``failed_jobs``: path -> (dataset, algorithm) from its ``out.txt``, None where unknown)."""

    input_dirs: list
    n_records: int = 0
    n_jobs: int = 0
    skipped_lines: dict = dataclasses.field(default_factory=dict)
    skipped_records: dict = dataclasses.field(default_factory=dict)
    skipped_cells: dict = dataclasses.field(default_factory=dict)
    incomplete_jobs: list = dataclasses.field(default_factory=list)
    incomplete_reasons: dict = dataclasses.field(default_factory=dict)
    not_run: list = dataclasses.field(default_factory=list)
    restarted_jobs: dict = dataclasses.field(default_factory=dict)
    repeated_inputs: list = dataclasses.field(default_factory=list)
    duplicate_jobs: dict = dataclasses.field(default_factory=dict)
    failed_jobs: dict = dataclasses.field(default_factory=dict)
    complete_only: bool = False

    def add_skipped(self, path, skipped):
        """Count the :class:`~tables_records.Skipped` records of one file."""
        if not skipped:
            return
        self.skipped_records[str(path)] = dict(collections.Counter(s.reason for s in skipped))
        for s in skipped:
            for env in set(s.test_envs):
                kinds = self.skipped_cells.setdefault((s.dataset, s.algorithm, env), {})
                kinds[skip_kind(s.reason)] = kinds.get(skip_kind(s.reason), 0) + 1

    def n_skipped(self):
        return sum(sum(reasons.values()) for reasons in self.skipped_records.values())

    def failed_counts(self):
        """``{(dataset, algorithm): number of jobs}`` of the jobs that wrote no record."""
        return dict(collections.Counter(k for k in self.failed_jobs.values() if k))

    def summary(self):
        """One line for humans."""
        text = f"{self.n_records} records from {self.n_jobs} jobs"
        if self.skipped_lines:
            text += f"; skipped {sum(self.skipped_lines.values())} corrupt lines"
        if self.skipped_records:
            kinds = collections.Counter()
            for reasons in self.skipped_records.values():
                for reason, n in reasons.items():
                    kinds[skip_kind(reason)] += n
            text += (f"; skipped {plural(self.n_skipped(), 'record')} ("
                     + ", ".join(f"{kind}: {n}" for kind, n in kinds.items()) + ")")
        if self.duplicate_jobs:
            n = len(self.duplicate_jobs)
            text += (f"; {n} duplicate job {'directory' if n == 1 else 'directories'} (the "
                     f"same records as another, counted once)")
        if self.incomplete_jobs:
            verb = "excluded" if self.complete_only else f"marked {INCOMPLETE_MARK}"
            text += f"; {len(self.incomplete_jobs)} incomplete jobs ({verb})"
        if self.restarted_jobs:
            text += (f"; {len(self.restarted_jobs)} restarted jobs (last attempt used, marked "
                     f"{RESTARTED_MARK})")
        if self.not_run:
            text += f"; {len(self.not_run)} job directories not run"
        return text

    def warn(self):
        """One warning per kind of problem found."""
        if self.repeated_inputs:
            warnings.warn(f"input director(ies) given more than once, read once: "
                          f"{', '.join(self.repeated_inputs)}")
        if self.skipped_lines:
            warnings.warn(f"skipped {sum(self.skipped_lines.values())} corrupt line(s) in "
                          f"{len(self.skipped_lines)} file(s): {', '.join(self.skipped_lines)}")
        if self.skipped_records:
            warnings.warn(f"skipped {plural(self.n_skipped(), 'record')} that cannot be scored "
                          "(their cells say so): " + "; ".join(
                              f"{path}: {n} x {reason}" for path, reasons in
                              self.skipped_records.items() for reason, n in reasons.items()))
        if self.duplicate_jobs:
            warnings.warn("job director(ies) holding the same records as another, counted "
                          "once: " + ", ".join(f"{dup} (= {kept})" for dup, kept in
                                              self.duplicate_jobs.items()))
        if self.incomplete_jobs:
            action = ("excluded (--complete_only)" if self.complete_only
                      else f"their cells are marked {INCOMPLETE_MARK}")
            warnings.warn(f"{len(self.incomplete_jobs)} incomplete job(s), {action}: "
                          f"{', '.join(self.incomplete_jobs)}")
        if self.restarted_jobs:
            warnings.warn(f"{len(self.restarted_jobs)} restarted job(s) (several attempts in "
                          f"results.jsonl; the last is used, their cells are marked "
                          f"{RESTARTED_MARK}): {', '.join(self.restarted_jobs)}")
        if self.not_run:
            warnings.warn(f"{len(self.not_run)} job director(ies) never started training "
                          f"(not run): {', '.join(self.not_run)}")
