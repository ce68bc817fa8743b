"""The cells of the result tables, group-bys of the results frame (:mod:`tables_frame`).

A cell is DomainBed's ``collect_results.format_mean`` over the trials' selected accuracies
(100 * mean, 100 * std(data / sqrt(n))). The domain average ('Avg' column) is the mean of the
domain means with the standard error over the trial averages; the overview is DomainBed's
averages table (per dataset, ``format_mean`` over the trial averages) plus the mean over
datasets. A cell without a number says why; a cell that uses an incomplete job is marked †, one
that uses a restarted job (only its last attempt is read) ‡.
"""

from __future__ import annotations

import math

import pandas as pd

from domainbed.scripts.collect_results import format_mean

from lpa_domainbed.tools.tables_frame import (AVERAGE, SELECTION_METHODS, results_frame,
                                              trial_averages)
from lpa_domainbed.tools.tables_load import INCOMPLETE_MARK, RESTARTED_MARK

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


def _trials_note(n, n_expected):
    return f"incomplete ({n}/{n_expected} trials)" if n < n_expected else ""


def _empty_note(rows, selection):
    """Why a (dataset, algorithm, held-out domain) cell has no number."""
    if rows.empty:
        return "no runs"
    if not rows.single_env.any():
        return "needs 1-env runs"
    return "needs 2-env runs" if selection == "leave_one_out" else "no selectable runs"


def _domain_cell(key, rows, n_expected):
    """format_mean over the trials' selected accuracies of one held-out domain."""
    selected = rows[rows.acc.notna()]
    if selected.empty:
        return _cell(key, note=_empty_note(rows, key[0]))
    mean, se, _ = format_mean(selected.acc.tolist(), False)
    return _cell(key, mean, se, len(selected), _trials_note(len(selected), n_expected),
                 _union(selected.incomplete), _union(selected.restarted))


def _missing_parts_note(cells, parts):
    """Note for an average over cells of which some have no number."""
    n_filled = sum(not math.isnan(c["mean"]) for c in cells)
    if n_filled:
        return f"incomplete ({n_filled}/{len(cells)} {parts})"
    notes = {c["note"] for c in cells}
    return notes.pop() if len(notes) == 1 else "no results"


def _average_cell(key, domain_cells, averages, n_expected):
    """The domain average: mean over domains (DomainBed), se over the trial averages."""
    means = [c["mean"] for c in domain_cells]
    if any(math.isnan(m) for m in means):
        return _cell(key, note=_missing_parts_note(domain_cells, "domains"))
    _, se, _ = format_mean(averages.acc.tolist(), False)
    n_complete = min(c["n_trials"] for c in domain_cells)
    return _cell(key, sum(means) / len(means), se, len(averages),
                 _trials_note(n_complete, n_expected),
                 _union(c["incomplete"] for c in domain_cells),
                 _union(c["restarted"] for c in domain_cells))


def _overview_cells(selection, algorithm, averages):
    """DomainBed's averages table for one algorithm, plus the mean over datasets;
    ``averages``: per dataset, (its domain average cell, its trial averages)."""
    cells = []
    for average, trials in averages:
        if math.isnan(average["mean"]):
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


def cell_tables(results):
    """``(cells, overview)`` of a :class:`~tables_frame.ResultsFrame` as tidy DataFrames
    (:data:`CELL_COLUMNS`): per selection, dataset, algorithm and held-out domain name or
    'Avg'; the overview per selection, dataset or 'Avg' (over datasets) and algorithm."""
    empty = results.frame.iloc[:0]
    by_domain = dict(list(results.frame.groupby(
        ["selection", "dataset", "algorithm", "test_env"], sort=False)))
    by_algorithm = dict(list(results.frame.groupby(["selection", "dataset", "algorithm"],
                                                   sort=False)))
    cells, overview = [], []
    for selection in results.selections:
        averages = {}  # (dataset, algorithm) -> (the domain average cell, the trial averages)
        for dataset in results.datasets:
            n_expected = results.n_trials(dataset)
            for algorithm in results.algorithms:
                domain_cells = [
                    _domain_cell((selection, dataset, algorithm, name),
                                 by_domain.get((selection, dataset, algorithm, env), empty),
                                 n_expected)
                    for env, name in enumerate(results.environments[dataset])]
                trials = trial_averages(by_algorithm.get((selection, dataset, algorithm), empty))
                average = _average_cell((selection, dataset, algorithm, AVERAGE), domain_cells,
                                        trials, n_expected)
                averages[dataset, algorithm] = average, trials
                cells += domain_cells + [average]
        for algorithm in results.algorithms:
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
