"""The cells of the result tables, group-bys of the results frame (:mod:`tables_frame`).

A cell is DomainBed's ``collect_results.format_mean`` over the trials' selected accuracies
(100 * mean, 100 * std(data / sqrt(n))). The domain average ('Avg' column) is the mean of the
domain means (DomainBed's dataset tables) with the standard error over the averages of the
trials that have every domain; the overview is DomainBed's averages table (per dataset,
``format_mean`` over the trial averages) plus the mean over datasets. Where some trial lacks a
domain, the two formulas differ, so the overview shows the dataset table's 'Avg' cell, and both
say how many trials have every domain: one number, one label, for one thing.

A cell without a number says why (no runs, jobs that failed, the selection's needs); a cell
whose records were skipped (:mod:`tables_records`) says how many and why; a cell that uses an
incomplete job is marked †, one that uses a restarted job (only its last attempt is read) ‡.
"""

from __future__ import annotations

import math

import pandas as pd

from domainbed.scripts.collect_results import format_mean

from lpa_domainbed.tools.tables_frame import (AVERAGE, SELECTION_METHODS, results_frame,
                                              trial_averages)
from lpa_domainbed.tools.tables_report import INCOMPLETE_MARK, RESTARTED_MARK, plural

__all__ = ["CSV_COLUMNS", "CELL_COLUMNS", "INCOMPLETE_MARK", "RESTARTED_MARK", "format_cell",
           "format_table", "cell_tables", "compute_tables"]

CSV_COLUMNS = ["selection", "dataset", "algorithm", "test_env", "mean", "se", "n_trials", "note",
               "incomplete_jobs"]
#: the cells as computed: the CSV's columns, restarted jobs, the job sets, the formatted text
CELL_COLUMNS = CSV_COLUMNS + ["restarted_jobs", "incomplete", "restarted", "text"]


def format_cell(mean, se, note, n_trials=2, incomplete_jobs=0, restarted_jobs=0):
    """'71.0 ± 0.7', '71.0 ± 0.7, incomplete (1/2 trials)', or just the note; '†' when the
    number uses records of an incomplete job, '‡' of a restarted one. One trial has no standard
    error: its mean is shown alone (DomainBed would print '± 0.0')."""
    if math.isnan(mean):
        return note or "X"
    one = not (n_trials > 1)
    text = f"{mean:.1f}" if math.isnan(se) or one else f"{mean:.1f} ± {se:.1f}"
    text += f" {INCOMPLETE_MARK}" if incomplete_jobs else ""
    text += f" {RESTARTED_MARK}" if restarted_jobs else ""
    return f"{text}, {note}" if note else text


def format_table(cells, column):
    """Pivot cells to a strings table: algorithms x ``column`` values, in input order."""
    table = cells.pivot(index="algorithm", columns=column, values="text")
    table = table.reindex(index=list(dict.fromkeys(cells.algorithm)),
                          columns=list(dict.fromkeys(cells[column])))
    table.index.name, table.columns.name = "Algorithm", None
    return table


def _cell(key, mean=math.nan, se=math.nan, n=0, note="", incomplete=frozenset(),
          restarted=frozenset()):
    """One cell; ``key``: (selection, dataset, algorithm, test_env name)."""
    return dict(zip(("selection", "dataset", "algorithm", "test_env"), key), mean=mean, se=se,
                n_trials=n, note=note, incomplete=frozenset(incomplete),
                restarted=frozenset(restarted))


def _union(sets):
    return frozenset().union(*sets)


def _trials_note(n, n_expected, what="trials"):
    return f"incomplete ({n}/{n_expected} {what})" if n < n_expected else ""


def _joined(*notes):
    return ", ".join(n for n in notes if n)


def _skipped_note(report, dataset, algorithm, envs):
    """'2 records skipped: non-finite accuracy' for the records of these domains that
    ``report`` skipped, or ''."""
    kinds = {}
    for env in envs if report is not None else ():
        for kind, n in report.skipped_cells.get((dataset, algorithm, env), {}).items():
            kinds[kind] = kinds.get(kind, 0) + n
    if not kinds:
        return ""
    return f"{plural(sum(kinds.values()), 'record')} skipped: {', '.join(kinds)}"


def _empty_note(rows, selection, n_failed=0):
    """Why a (dataset, algorithm, held-out domain) cell has no number."""
    if rows.empty:
        return f"no results: {plural(n_failed, 'job')} failed" if n_failed else "no runs"
    if not rows.single_env.any():
        return "needs 1-env runs"
    return "needs 2-env runs" if selection == "leave_one_out" else "no selectable runs"


def _domain_cell(key, rows, n_expected, skipped="", n_failed=0):
    """format_mean over the trials' selected accuracies of one held-out domain; ``skipped``:
    the note on its skipped records; ``n_failed``: its algorithm's jobs without records."""
    selected = rows[rows.acc.notna()]
    if selected.empty:
        return _cell(key, note=_joined(_empty_note(rows, key[0], n_failed), skipped))
    mean, se, _ = format_mean(selected.acc.tolist(), False)
    return _cell(key, mean, se, len(selected),
                 _joined(_trials_note(len(selected), n_expected), skipped),
                 _union(selected.incomplete), _union(selected.restarted))


def _missing_parts_note(cells, parts):
    """Note for an average over cells of which some have no number."""
    n_filled = sum(not math.isnan(c["mean"]) for c in cells)
    if n_filled:
        return f"incomplete ({n_filled}/{len(cells)} {parts})"
    notes = {c["note"] for c in cells}
    return notes.pop() if len(notes) == 1 else "no results"


def _average_cell(key, domain_cells, averages, n_expected, skipped=""):
    """The domain average: mean over domains (DomainBed), se over the averages of the trials
    with every domain."""
    means = [c["mean"] for c in domain_cells]
    if any(math.isnan(m) for m in means):
        return _cell(key, note=_joined(_missing_parts_note(domain_cells, "domains"), skipped))
    complete = averages[averages.n_domains == len(domain_cells)].acc.tolist()
    se = format_mean(complete, False)[1] if complete else math.nan
    what = "trials" if len(complete) == len(averages) else "trials with every domain"
    return _cell(key, sum(means) / len(means), se, len(complete),
                 _joined(_trials_note(len(complete), n_expected, what), skipped),
                 _union(c["incomplete"] for c in domain_cells),
                 _union(c["restarted"] for c in domain_cells))


def _overview_cells(selection, algorithm, averages):
    """DomainBed's averages table for one algorithm, plus the mean over datasets;
    ``averages``: per dataset, (its domain average cell, its trial averages, its number of
    domains). Where a trial lacks a domain, the dataset table's 'Avg' cell itself."""
    cells = []
    for average, trials, n_envs in averages:
        if math.isnan(average["mean"]) or (trials.n_domains < n_envs).any():
            cells.append(average)
            continue
        mean, se, _ = format_mean(trials.acc.tolist(), False)
        cells.append({**average, "mean": mean, "se": se})
    key = (selection, AVERAGE, algorithm, AVERAGE)
    if any(math.isnan(c["mean"]) for c in cells):
        return cells + [_cell(key, note=_missing_parts_note(cells, "datasets"))]
    return cells + [_cell(key, sum(c["mean"] for c in cells) / len(cells),
                          n=min(c["n_trials"] for c in cells),
                          incomplete=_union(c["incomplete"] for c in cells),
                          restarted=_union(c["restarted"] for c in cells))]


def cell_tables(results, report=None):
    """``(cells, overview)`` of a :class:`~tables_frame.ResultsFrame` as tidy DataFrames
    (:data:`CELL_COLUMNS`): per selection, dataset, algorithm and held-out domain name or
    'Avg'; the overview per selection, dataset or 'Avg' (over datasets) and algorithm. With
    the :class:`~tables_report.LoadReport`, cells say which of their records were skipped, and
    an algorithm whose jobs all failed has a row that says so."""
    failed = report.failed_counts() if report is not None else {}
    algorithm_names = results.algorithms + list(dict.fromkeys(
        a for _, a in failed if a not in results.algorithms))
    empty = results.frame.iloc[:0]
    by_domain = dict(list(results.frame.groupby(
        ["selection", "dataset", "algorithm", "test_env"], sort=False)))
    by_algorithm = dict(list(results.frame.groupby(["selection", "dataset", "algorithm"],
                                                   sort=False)))
    cells, overview = [], []
    for selection in results.selections:
        averages = {}  # (dataset, algorithm) -> (its Avg cell, trial averages, n domains)
        for dataset in results.datasets:
            n_expected = results.n_trials(dataset)
            names = results.environments[dataset]
            for algorithm in algorithm_names:
                domain_cells = [
                    _domain_cell((selection, dataset, algorithm, name),
                                 by_domain.get((selection, dataset, algorithm, env), empty),
                                 n_expected, _skipped_note(report, dataset, algorithm, [env]),
                                 failed.get((dataset, algorithm), 0))
                    for env, name in enumerate(names)]
                trials = trial_averages(by_algorithm.get((selection, dataset, algorithm), empty))
                average = _average_cell(
                    (selection, dataset, algorithm, AVERAGE), domain_cells, trials, n_expected,
                    _skipped_note(report, dataset, algorithm, range(len(names))))
                averages[dataset, algorithm] = average, trials, len(names)
                cells += domain_cells + [average]
        for algorithm in algorithm_names:
            overview += _overview_cells(selection, algorithm,
                                        [averages[d, algorithm] for d in results.datasets])
    return _tidy(cells), _tidy(overview)


def _tidy(cells):
    frame = pd.DataFrame([{**c, "incomplete_jobs": len(c["incomplete"]),
                           "restarted_jobs": len(c["restarted"])} for c in cells],
                         columns=CELL_COLUMNS[:-1])
    frame["text"] = [format_cell(*c) for c in zip(
        frame["mean"], frame["se"], frame["note"], frame["n_trials"], frame["incomplete_jobs"],
        frame["restarted_jobs"])]
    return frame


def compute_tables(records, selections=tuple(SELECTION_METHODS)):
    """``(cells, overview)`` of DomainBed records (a ``Q``) for the given selection methods."""
    return cell_tables(results_frame(records, selections))
