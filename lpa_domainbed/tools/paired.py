"""Paired comparisons against a baseline algorithm: the part of ``make tables`` that says
whether an algorithm beats ERM (or ``--baseline NAME``) beyond trial-to-trial noise.

DomainBed's ``trial_seed`` fixes the data split (which examples are train, validation and
test), so an algorithm and the baseline run with the same trial seed saw the same data: the
comparison pairs trials by it. For each model-selection method, dataset, held-out domain and
the dataset average, with ``d_t = acc_algorithm(t) - acc_baseline(t)`` in percentage points
over the paired trial seeds ``t``, we report the mean of ``d_t`` and its 95% confidence interval
from Student's t distribution with ``n - 1`` degrees of freedom (the paired t-test of
``scipy.stats.ttest_rel``). The selected accuracy per trial is DomainBed's own:
``reporting.get_grouped_records`` then each selection method's ``sweep_acc``.

Trials present on one side only are listed, never silently dropped; the dataset average of a
trial needs every held-out domain of that trial; fewer than 2 pairs give no interval.
Output: ``paired_<selection>.{md,csv,tex}`` and one forest plot per dataset and selection.
"""

import dataclasses
import math
import warnings

import numpy as np
import pandas as pd
from scipy import stats

from domainbed import algorithms, datasets
from domainbed.lib import reporting
from lpa_domainbed.tools.tables import _environment_names, _in_registry_order
from lpa_domainbed.tools.tables_write import SELECTION_METHODS, _latex_table, _markdown_table

__all__ = ["CSV_COLUMNS", "CONFIDENCE", "PairedResult", "paired_difference",
           "compute_paired", "format_paired_cell", "write_paired"]

CSV_COLUMNS = ["selection", "dataset", "test_env", "algorithm", "baseline", "n_pairs",
               "mean_diff", "ci_low", "ci_high"]
CONFIDENCE = 0.95
AVERAGE = "Avg"


@dataclasses.dataclass
class PairedResult:
    """``rows``: one comparison per selection/dataset/held-out domain (or 'Avg')/algorithm with
    the CSV columns plus ``excludes_zero`` and ``note`` (unpaired trials, why no interval);
    ``markdown``: per selection; ``files``: everything written."""

    baseline: str
    rows: pd.DataFrame
    markdown: dict
    files: list


# ----------------------------------------------------------------------------- numbers
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


def _selected_accuracies(records, selection):
    """{(dataset, algorithm, test_env index): {trial_seed: selected test accuracy}}."""
    method = SELECTION_METHODS[selection]
    accs = {}
    for group in reporting.get_grouped_records(records):
        acc = method.sweep_acc(group["records"])
        if acc is not None:
            key = (group["dataset"], group["algorithm"], group["test_env"])
            accs.setdefault(key, {})[group["trial_seed"]] = acc
    return accs


def _trial_averages(accs, dataset, algorithm, n_envs):
    """Per trial seed, the mean selected accuracy over held-out domains, for trials that have
    every domain; also the trial seeds left out because some domain is missing."""
    per_env = [accs.get((dataset, algorithm, env), {}) for env in range(n_envs)]
    seeds = set().union(*per_env)
    complete = {s for s in seeds if all(s in env_accs for env_accs in per_env)}
    averages = {s: float(np.mean([env_accs[s] for env_accs in per_env])) for s in complete}
    return averages, seeds - complete


def _row(selection, dataset, test_env, algorithm, baseline, comparison, extra_note=""):
    n, mean, low, high, note = comparison
    note = "; ".join(n for n in (extra_note, note) if n)
    return dict(selection=selection, dataset=dataset, test_env=test_env, algorithm=algorithm,
                baseline=baseline, n_pairs=n, mean_diff=mean, ci_low=low, ci_high=high,
                excludes_zero=bool(low > 0 or high < 0), note=note)


def _average_note(name, left_out):
    return f"{name} {_trials(left_out)} without every domain (not in Avg)" if left_out else ""


def compute_paired(records, selections=tuple(SELECTION_METHODS), baseline="ERM"):
    """All paired comparisons as a DataFrame (see :class:`PairedResult`).

    Raises ``ValueError`` with the algorithms present when ``baseline`` has no records.
    """
    found = records.select("args.algorithm").unique()
    if baseline not in found:
        raise ValueError(f"baseline {baseline!r} has no runs in this sweep (algorithms: "
                         f"{', '.join(sorted(found))}); pass --baseline with one of them")
    algorithm_names = [a for a in _in_registry_order(found, algorithms.ALGORITHMS)
                       if a != baseline]
    dataset_names = _in_registry_order(records.select("args.dataset").unique().sorted(),
                                       datasets.DATASETS)
    rows = []
    for selection in selections:
        accs = _selected_accuracies(records, selection)
        for dataset in dataset_names:
            env_names = _environment_names(dataset, records)
            base_avg, base_left_out = _trial_averages(accs, dataset, baseline, len(env_names))
            for algorithm in algorithm_names:
                for env, env_name in enumerate(env_names):
                    comparison = paired_difference(accs.get((dataset, algorithm, env), {}),
                                                   accs.get((dataset, baseline, env), {}))
                    rows.append(_row(selection, dataset, env_name, algorithm, baseline,
                                     comparison))
                ours, left_out = _trial_averages(accs, dataset, algorithm, len(env_names))
                note = "; ".join(n for n in (_average_note(baseline, base_left_out),
                                             _average_note(algorithm, left_out)) if n)
                rows.append(_row(selection, dataset, AVERAGE, algorithm, baseline,
                                 paired_difference(ours, base_avg), note))
    return pd.DataFrame(rows, columns=CSV_COLUMNS + ["excludes_zero", "note"])


# ----------------------------------------------------------------------------- formatting
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
        index="algorithm", columns="test_env", values="text")
    table = table.reindex(index=list(dict.fromkeys(rows.algorithm)),
                          columns=list(dict.fromkeys(rows.test_env)))
    table.index.name, table.columns.name = "Algorithm", None
    return table


def _notes(rows):
    """'- Algorithm, domain: note' for every comparison with unpaired trials or no interval;
    one '- Algorithm: note' where all of an algorithm's cells share the note."""
    lines = []
    for algorithm, part in rows.groupby("algorithm", sort=False):
        if part.note.nunique() == 1 and part.note.iloc[0]:
            lines.append(f"- {algorithm}: {part.note.iloc[0]}")
        else:
            lines += [f"- {algorithm}, {r['test_env']}: {r['note']}"
                      for r in part.to_dict("records") if r["note"]]
    return lines


def _markdown(rows, selection, name, baseline):
    method_name = SELECTION_METHODS[selection].name
    text = (f"# {name}: paired differences vs {baseline}, model selection: {method_name}\n\n"
            f"Cells: accuracy of the algorithm minus {baseline} (percentage points) on the "
            f"held-out domain, mean over trials paired by trial seed "
            f"[{int(CONFIDENCE * 100)}% t interval] (pairs); * the interval excludes 0. "
            f"Avg: per trial, the mean over held-out domains.\n")
    for dataset in rows.dataset.unique():
        part = rows[rows.dataset == dataset]
        text += f"\n## Dataset: {dataset}\n\n{_markdown_table(_dataset_table(part))}\n"
        notes = _notes(part)
        if notes:
            text += "\nUnpaired trials and cells without an interval:\n\n" + "\n".join(notes) + "\n"
    return text


def write_paired(records, selections, out_dir, name, baseline="ERM", plots=True):
    """Compute, write ``paired_<selection>.{md,csv,tex}`` (+ forest plots) under ``out_dir``;
    the caller prints ``result.markdown``. A baseline absent from the sweep prints why and returns None."""
    from lpa_domainbed.tools.paired_plot import plot_forest

    try:
        rows = compute_paired(records, selections, baseline)
    except ValueError as error:
        print(f"paired comparisons skipped: {error}.")
        return None
    if rows.empty:
        print(f"paired comparisons skipped: {baseline} is the only algorithm in this sweep.")
        return None
    result = PairedResult(baseline, rows, markdown={}, files=[])
    for selection in selections:
        part = rows[rows.selection == selection]
        base = out_dir / f"paired_{selection}"
        result.markdown[selection] = _markdown(part, selection, name, baseline)
        base.with_suffix(".md").write_text(result.markdown[selection])
        part[CSV_COLUMNS].to_csv(base.with_suffix(".csv"), index=False)
        method_name = SELECTION_METHODS[selection].name
        base.with_suffix(".tex").write_text("".join(
            _latex_table(_dataset_table(part[part.dataset == d]),
                         f"{d}: accuracy minus {baseline} (points), paired by trial, "
                         f"model selection: {method_name}")
            for d in part.dataset.unique()))
        result.files += [base.with_suffix(s) for s in (".md", ".csv", ".tex")]
        for dataset in part.dataset.unique() if plots else ():
            path = out_dir / f"paired_{selection}_{dataset}.png"
            if plot_forest(part[part.dataset == dataset], path,
                           f"{dataset}: accuracy minus {baseline}, {method_name} (red: "
                           f"95% interval excludes 0; hollow: 1 pair, no interval)"):
                result.files.append(path)
    return result
