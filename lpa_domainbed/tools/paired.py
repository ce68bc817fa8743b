"""Paired comparisons against a baseline algorithm: the part of ``make tables`` that says
whether an algorithm beats ERM (or ``--baseline NAME``) beyond trial-to-trial noise, and, for
each ``--pair A:B``, whether A beats B (two variants of one method, say).

DomainBed's ``trial_seed`` fixes the data split (which examples are train, validation and
test), so two algorithms run with the same trial seed saw the same data: the comparison pairs
trials by it. For each model-selection method, dataset, held-out domain and the dataset
average, with ``d_t = acc_algorithm(t) - acc_baseline(t)`` in percentage points over the paired
trial seeds ``t``, we report the mean of ``d_t`` and its 95% confidence interval from Student's
t distribution with ``n - 1`` degrees of freedom (the paired t-test of
``scipy.stats.ttest_rel``). The selected accuracies are the results frame's
(:mod:`lpa_domainbed.tools.tables_frame`): DomainBed's grouping and ``sweep_acc``.

Trials present on one side only are listed, never silently dropped; the dataset average of a
trial needs every held-out domain of that trial; fewer than 2 pairs give no interval.
Output: ``paired_<selection>.{md,csv,tex}`` and one forest plot per dataset and selection.
"""

from __future__ import annotations

import dataclasses
import math
import warnings

import numpy as np
import pandas as pd
from scipy import stats

from lpa_domainbed.tools.paired_plot import plot_forest
from lpa_domainbed.tools.tables_frame import AVERAGE, SELECTION_METHODS, trial_averages
from lpa_domainbed.tools.tables_write import latex_table, markdown_table

__all__ = ["CSV_COLUMNS", "ROW_COLUMNS", "CONFIDENCE", "PairError", "PairedResult",
           "paired_difference", "compute_paired", "check_pairs", "format_paired_cell",
           "paired_outputs"]

CSV_COLUMNS = ["selection", "dataset", "test_env", "algorithm", "baseline", "n_pairs",
               "mean_diff", "ci_low", "ci_high"]
#: the rows as computed: the CSV's, whether the interval excludes 0, why a cell lacks pairs
#: or an interval, and the row's label in the tables (the algorithm, or 'A - B' for a --pair)
ROW_COLUMNS = CSV_COLUMNS + ["excludes_zero", "note", "label"]
CONFIDENCE = 0.95


class PairError(ValueError):
    """A --pair whose algorithms the sweep does not have; the message names those it has."""


@dataclasses.dataclass(frozen=True)
class PairedResult:
    """``rows``: one comparison per selection/dataset/held-out domain (or 'Avg')/algorithm
    (:data:`ROW_COLUMNS`); ``markdown``: per selection; ``outputs``: ``{file name: content}``."""

    baseline: str
    rows: pd.DataFrame
    markdown: dict
    outputs: dict


def paired_difference(algorithm_accs, baseline_accs):
    """Pair two ``{trial_seed: accuracy in [0, 1]}`` dicts by trial seed.

    Returns ``(n_pairs, mean_diff, ci_low, ci_high, note)`` in percentage points; the interval
    is NaN with fewer than 2 pairs, and ``note`` names the trial seeds present on one side only.
    """
    seeds = sorted(set(algorithm_accs) & set(baseline_accs))
    notes = [f"{_trials(s)} only {side}" for s, side in (
        (set(baseline_accs) - set(algorithm_accs), "in the baseline"),
        (set(algorithm_accs) - set(baseline_accs), "in the algorithm")) if s]
    if not seeds:
        return 0, math.nan, math.nan, math.nan, "; ".join(notes or ["no runs"])
    ours = 100 * np.array([algorithm_accs[s] for s in seeds], dtype=float)
    theirs = 100 * np.array([baseline_accs[s] for s in seeds], dtype=float)
    mean = float(np.mean(ours - theirs))
    if len(seeds) < 2:
        return 1, mean, math.nan, math.nan, "; ".join(notes + ["1 pair: no interval"])
    if np.ptp(ours - theirs) == 0:  # t is undefined; every pair agrees exactly
        return len(seeds), mean, mean, mean, "; ".join(notes + ["identical differences"])
    with warnings.catch_warnings():  # near-identical differences: scipy warns, result stands
        warnings.simplefilter("ignore", RuntimeWarning)
        low, high = stats.ttest_rel(ours, theirs).confidence_interval(CONFIDENCE)
    return len(seeds), mean, float(low), float(high), "; ".join(notes)


def _trials(seeds):
    """'trial 2' or 'trials 2, 3'."""
    return ("trial " if len(seeds) == 1 else "trials ") + ", ".join(map(str, sorted(seeds)))


def _accuracies(rows, n_envs):
    """Of one algorithm's rows (one selection and dataset): per held-out domain index
    ``{trial_seed: acc}``; the averages ``{trial_seed: acc}`` of the trials with every domain;
    and the trial seeds left out of the averages because some domain is missing."""
    selected = rows[rows.acc.notna()]
    per_env = {env: dict(zip(part.trial_seed, part.acc))
               for env, part in selected.groupby("test_env", sort=False)}
    averages = trial_averages(rows.sort_values("test_env", kind="stable"))  # domain order
    complete = averages.n_domains == n_envs
    return per_env, averages.acc[complete].to_dict(), set(averages.index[~complete])


def _row(key, algorithm, baseline, comparison, label, extra_note=""):
    n, mean, low, high, note = comparison
    note = "; ".join(n for n in (extra_note, note) if n)
    return dict(zip(("selection", "dataset", "test_env"), key), algorithm=algorithm,
                baseline=baseline, n_pairs=n, mean_diff=mean, ci_low=low, ci_high=high,
                excludes_zero=bool(low > 0 or high < 0), note=note, label=label)


def _average_note(name, left_out):
    return f"{name} {_trials(left_out)} without every domain (not in Avg)" if left_out else ""


def _compare(selection, dataset, env_names, ours, theirs, algorithm, baseline, label):
    """The rows of one algorithm against one baseline: each held-out domain, then Avg."""
    (our_envs, our_avg, our_left_out), (base_envs, base_avg, base_left_out) = ours, theirs
    rows = [_row((selection, dataset, name), algorithm, baseline,
                 paired_difference(our_envs.get(env, {}), base_envs.get(env, {})), label)
            for env, name in enumerate(env_names)]
    note = "; ".join(n for n in (_average_note(baseline, base_left_out),
                                 _average_note(algorithm, our_left_out)) if n)
    return rows + [_row((selection, dataset, AVERAGE), algorithm, baseline,
                        paired_difference(our_avg, base_avg), label, note)]


def check_pairs(pairs, algorithm_names):
    """``pairs`` (``(A, B)`` tuples) as given, or ValueError naming an algorithm without runs."""
    for pair in pairs:
        for name in pair:
            if name not in algorithm_names:
                raise PairError(f"--pair {':'.join(pair)}: {name!r} has no runs in this sweep "
                                 f"(algorithms: {', '.join(algorithm_names)})")
    return list(pairs)


def compute_paired(results, baseline="ERM", pairs=()):
    """Every algorithm of a :class:`~tables_frame.ResultsFrame` against ``baseline`` (none when
    it is None), then each ``(A, B)`` of ``pairs`` (labelled 'A - B'), as a DataFrame of
    :data:`ROW_COLUMNS`. Raises ``ValueError`` naming the algorithms present when ``baseline``
    or an algorithm of a pair has no records."""
    check_pairs(pairs, results.algorithms)
    if baseline is not None and baseline not in results.algorithms:
        raise ValueError(f"baseline {baseline!r} has no runs in this sweep (algorithms: "
                         f"{', '.join(sorted(results.algorithms))}); pass --baseline with one "
                         f"of them")
    comparisons = [(a, baseline, a) for a in results.algorithms
                   if baseline is not None and a != baseline]
    comparisons += [(a, b, f"{a} - {b}") for a, b in pairs]
    by_algorithm = dict(list(results.frame.groupby(["selection", "dataset", "algorithm"],
                                                   sort=False)))
    empty = results.frame.iloc[:0]
    rows = []
    for selection in results.selections:
        for dataset in results.datasets:
            env_names = results.environments[dataset]
            accs = {a: _accuracies(by_algorithm.get((selection, dataset, a), empty),
                                   len(env_names)) for a in results.algorithms}
            for algorithm, base, label in comparisons:
                rows += _compare(selection, dataset, env_names, accs[algorithm], accs[base],
                                 algorithm, base, label)
    return pd.DataFrame(rows, columns=ROW_COLUMNS)


# ----------------------------------------------------------------------------- text
def format_paired_cell(row):
    """'+1.2 [-0.3, +2.7] (3)', with ' *' where the interval excludes 0; short text without
    an interval ('+1.2 (1 pair, no interval)', 'no pairs')."""
    if row["n_pairs"] == 0:
        return "no pairs"
    if math.isnan(row["ci_low"]):
        return f"{row['mean_diff']:+.1f} ({row['n_pairs']} pair, no interval)"
    mark = " *" if row["excludes_zero"] else ""
    return (f"{row['mean_diff']:+.1f} [{row['ci_low']:+.1f}, {row['ci_high']:+.1f}]"
            f"{mark} ({row['n_pairs']})")


def _dataset_table(rows):
    table = rows.assign(text=[format_paired_cell(r) for r in rows.to_dict("records")]).pivot(
        index="label", columns="test_env", values="text")
    table = table.reindex(index=list(dict.fromkeys(rows.label)),
                          columns=list(dict.fromkeys(rows.test_env)))
    table.index.name, table.columns.name = "Algorithm", None
    return table


def _notes(rows):
    """'- Algorithm, domain: note' for every comparison with unpaired trials or no interval;
    one '- Algorithm: note' where all of an algorithm's cells share the note."""
    lines = []
    for label, part in rows.groupby("label", sort=False):
        if part.note.nunique() == 1 and part.note.iloc[0]:
            lines.append(f"- {label}: {part.note.iloc[0]}")
        else:
            lines += [f"- {label}, {r['test_env']}: {r['note']}"
                      for r in part.to_dict("records") if r["note"]]
    return lines


def _markdown(rows, method_name, name, against, pairs):
    text = (f"# {name}: paired differences vs {against}, model selection: {method_name}\n\n"
            f"Cells: accuracy of the algorithm minus {against} (percentage points) on the "
            f"held-out domain, mean over trials paired by trial seed "
            f"[{int(CONFIDENCE * 100)}% t interval] (pairs); * the interval excludes 0. "
            f"Avg: per trial, the mean over held-out domains.\n")
    if pairs:
        text += ("Rows 'A - B' (--pair A:B): the accuracy of A minus B, paired the same "
                 "way.\n")
    for dataset in rows.dataset.unique():
        part = rows[rows.dataset == dataset]
        text += f"\n## Dataset: {dataset}\n\n{markdown_table(_dataset_table(part))}\n"
        notes = _notes(part)
        if notes:
            text += "\nUnpaired trials and cells without an interval:\n\n" + "\n".join(notes) + "\n"
    return text


def paired_outputs(results, name, baseline="ERM", pairs=(), plots=True):
    """``(PairedResult or None, message)``: the outputs ``paired_<selection>.{md,csv,tex}`` and
    a forest plot per dataset with a pair, as text or PNG bytes; and why nothing, or no
    comparison against the baseline, was made (or ''). Nothing is written here."""
    message = ""
    if baseline not in results.algorithms:
        message = (f"paired comparisons skipped: baseline {baseline!r} has no runs in this sweep "
                   f"(algorithms: {', '.join(sorted(results.algorithms))}); pass --baseline "
                   f"with one of them.")
        baseline = None
    elif results.algorithms == [baseline] and not pairs:
        message = f"paired comparisons skipped: {baseline} is the only algorithm in this sweep."
    rows = compute_paired(results, baseline, pairs)
    against = baseline or ", ".join(dict.fromkeys(b for _, b in pairs))
    minus = f"accuracy minus {against}" + ("; --pair rows A - B" if pairs else "")
    files, markdown = {}, {}
    for selection, part in rows.groupby("selection", sort=False):
        method_name = SELECTION_METHODS[selection].name
        markdown[selection] = _markdown(part, method_name, name, against, pairs)
        files[f"paired_{selection}.md"] = markdown[selection]
        files[f"paired_{selection}.csv"] = part[CSV_COLUMNS].to_csv(index=False)
        files[f"paired_{selection}.tex"] = "".join(
            latex_table(_dataset_table(part[part.dataset == d]),
                        f"{d}: {minus} (points), paired by trial, model selection: {method_name}")
            for d in part.dataset.unique())
        for dataset in part.dataset.unique() if plots else ():
            png = plot_forest(part[part.dataset == dataset],
                              f"{dataset}: {minus}, {method_name} (red: 95% interval excludes "
                              f"0; hollow: 1 pair, no interval)")
            if png is not None:
                files[f"paired_{selection}_{dataset}.png"] = png
    result = PairedResult(baseline, rows, markdown, files) if not rows.empty else None
    return result, message
