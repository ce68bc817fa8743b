"""Result tables for DomainBed sweeps: the aggregation behind ``make tables``.

The numbers are DomainBed's own: records are grouped with
:func:`domainbed.lib.reporting.get_grouped_records`, scored with each selection method's
``sweep_acc`` and summarised with ``collect_results.format_mean`` (100 * mean,
100 * std(data / sqrt(n))), exactly as ``collect_results.print_results_tables`` does. On top of
that this module reads several sweep directories, survives corrupt lines, explains empty cells,
and writes Markdown, LaTeX, tidy CSV, bar charts and a comparison with published numbers.

Run ``python -m lpa_domainbed.tools.tables --input_dir DIR [DIR ...] --name NAME``.
"""

import argparse
import dataclasses
import math
import sys
from pathlib import Path

import pandas as pd

from domainbed import algorithms, datasets
from domainbed.lib import reporting
from domainbed.lib.query import Q
from domainbed.scripts.collect_results import format_mean

from lpa_domainbed.tools.safe_output import OutputError, check_name, staged_directory
from lpa_domainbed.tools.tables_load import (HOW_TO_GET_RESULTS, INCOMPLETE_KEY, LoadReport,
                                       load_records)
from lpa_domainbed.tools.tables_write import (CSV_COLUMNS, OUTPUT_PATTERNS, format_cell, format_table,
                                        SELECTION_METHODS, compare_with_published,
                                        copy_reference, published_reference, write_comparison,
                                        write_plots, write_selection_files)

__all__ = [
    "SELECTION_METHODS", "LoadReport", "NoRecordsError", "TablesResult", "load_records",
    "compute_tables", "format_table", "compare_with_published", "copy_reference",
    "make_tables", "published_reference", "main",
]



class NoRecordsError(ValueError):
    """The input directories exist but hold no result records."""


@dataclasses.dataclass
class TablesResult:
    """What :func:`make_tables` computed and wrote. ``cells``: tidy numbers (percent) per
    selection/dataset/algorithm/held-out domain and 'Avg', plus formatted ``text``;
    ``overview``: DomainBed's averages table (dataset 'Avg' = mean over datasets), same columns.
    """

    out_dir: Path
    report: LoadReport
    cells: pd.DataFrame
    overview: pd.DataFrame
    markdown: dict
    files: list
    comparison: pd.DataFrame = None
    paired: object = None  # paired.PairedResult: differences vs the baseline, or None

    def table(self, selection, dataset=None):
        """Formatted strings: one dataset's table, or the overview when ``dataset`` is None."""
        if dataset is None:
            return format_table(self.overview[self.overview.selection == selection], "dataset")
        rows = self.cells[(self.cells.selection == selection) & (self.cells.dataset == dataset)]
        return format_table(rows, "test_env")


# ----------------------------------------------------------------------------- numbers
def _in_registry_order(found, registry):
    """DomainBed's order: names in ``registry`` order first, then the others as given."""
    return [n for n in registry if n in found] + [n for n in found if n not in registry]


def _environment_names(dataset, records):
    """Held-out domain names from the dataset class, or env indices for unknown datasets."""
    try:
        return list(datasets.get_dataset_class(dataset).ENVIRONMENTS)
    except NotImplementedError:
        example = records.filter_equals("args.dataset", dataset)[0]
        return [str(i) for i in range(sum(f"env{i}_in_acc" in example for i in range(100)))]


def _empty_cell_note(groups, selection):
    """Why a (dataset, algorithm, held-out domain) cell has no number."""
    if not groups:
        return "no runs"
    records = [r for g in groups for r in g["records"]]
    if not any(len(r["args"]["test_envs"]) == 1 for r in records):
        return "needs 1-env runs"
    return "needs 2-env runs" if selection == "leave_one_out" else "no selectable runs"


def _row(selection, dataset, algorithm, test_env, mean=math.nan, se=math.nan, n=0, note="",
         jobs=frozenset()):
    """One cell; ``jobs``: the incomplete jobs whose records it uses (shown as a count)."""
    return dict(selection=selection, dataset=dataset, algorithm=algorithm, test_env=test_env,
                mean=mean, se=se, n_trials=n, note=note, jobs=frozenset(jobs))


def _jobs_of(rows):
    return frozenset().union(*(r["jobs"] for r in rows))


def _domain_rows(selection, dataset, algorithm, env_names, groups_by_key, n_expected):
    """One row per held-out domain: format_mean over the trials' selected accuracies."""
    rows = []
    for env, env_name in enumerate(env_names):
        groups = groups_by_key.get((dataset, algorithm, env), [])
        accs = Q([g["sweep_acc"] for g in groups if g["sweep_acc"] is not None])
        if not len(accs):
            rows.append(_row(selection, dataset, algorithm, env_name,
                             note=_empty_cell_note(groups, selection)))
            continue
        jobs = {r[INCOMPLETE_KEY] for g in groups if g["sweep_acc"] is not None
                for r in g["records"] if INCOMPLETE_KEY in r}
        mean, se, _ = format_mean(accs, False)
        note = f"incomplete ({len(accs)}/{n_expected} trials)" if len(accs) < n_expected else ""
        rows.append(_row(selection, dataset, algorithm, env_name, mean, se, len(accs), note,
                         jobs))
    return rows


def _trial_averages(scored, dataset, algorithm):
    """Per trial, the mean selected accuracy over domains (DomainBed's averages table)."""
    return (scored.filter_equals("algorithm, dataset", (algorithm, dataset))
            .group("trial_seed")
            .map(lambda trial_seed, group: group.select("sweep_acc").mean()))


def _missing_parts_note(rows, parts):
    """Note for an average over rows of which some have no number."""
    n_filled = sum(not math.isnan(r["mean"]) for r in rows)
    if n_filled:
        return f"incomplete ({n_filled}/{len(rows)} {parts})"
    notes = {r["note"] for r in rows}
    return notes.pop() if len(notes) == 1 else "no results"


def _average_row(selection, dataset, algorithm, domain_rows, scored, n_expected):
    """The 'Avg' column: mean over domains (DomainBed), se over per-trial averages."""
    means = [r["mean"] for r in domain_rows]
    if any(math.isnan(m) for m in means):
        return _row(selection, dataset, algorithm, "Avg",
                    note=_missing_parts_note(domain_rows, "domains"))
    trial_averages = _trial_averages(scored, dataset, algorithm)
    _, se, _ = format_mean(trial_averages, False)
    n_complete = min(r["n_trials"] for r in domain_rows)
    note = f"incomplete ({n_complete}/{n_expected} trials)" if n_complete < n_expected else ""
    return _row(selection, dataset, algorithm, "Avg", sum(means) / len(means), se,
                len(trial_averages), note, _jobs_of(domain_rows))


def _overview_rows(selection, datasets_, algorithm, cells, scored):
    """DomainBed's averages table for one algorithm, plus the mean over datasets."""
    rows = []
    for dataset in datasets_:
        average = cells[(dataset, algorithm)]
        if math.isnan(average["mean"]):
            rows.append({**average, "dataset": dataset})
            continue
        mean, se, _ = format_mean(_trial_averages(scored, dataset, algorithm), False)
        rows.append(_row(selection, dataset, algorithm, "Avg", mean, se,
                         average["n_trials"], average["note"], average["jobs"]))
    means = [r["mean"] for r in rows]
    if any(math.isnan(m) for m in means):
        rows.append(_row(selection, "Avg", algorithm, "Avg",
                         note=_missing_parts_note(rows, "datasets")))
    else:
        rows.append(_row(selection, "Avg", algorithm, "Avg", sum(means) / len(means),
                         n=min(r["n_trials"] for r in rows), jobs=_jobs_of(rows)))
    return rows


def compute_tables(records, selections=tuple(SELECTION_METHODS)):
    """Return tidy DataFrames ``(cells, overview)`` for the given selection method keys."""
    grouped = reporting.get_grouped_records(records)
    algorithm_names = _in_registry_order(records.select("args.algorithm").unique(),
                                         algorithms.ALGORITHMS)
    dataset_names = _in_registry_order(records.select("args.dataset").unique().sorted(),
                                       datasets.DATASETS)
    cell_rows, overview_rows = [], []
    for selection in selections:
        method = SELECTION_METHODS[selection]
        all_scored = grouped.map(lambda g: {**g, "sweep_acc": method.sweep_acc(g["records"])})
        scored = all_scored.filter(lambda g: g["sweep_acc"] is not None)
        groups_by_key = {}
        for group in all_scored:
            key = (group["dataset"], group["algorithm"], group["test_env"])
            groups_by_key.setdefault(key, []).append(group)
        averages = {}
        for dataset in dataset_names:
            env_names = _environment_names(dataset, records)
            n_expected = len(grouped.filter_equals("dataset", dataset)
                             .select("trial_seed").unique())
            for algorithm in algorithm_names:
                rows = _domain_rows(selection, dataset, algorithm, env_names, groups_by_key,
                                    n_expected)
                rows.append(_average_row(selection, dataset, algorithm, rows, scored, n_expected))
                averages[(dataset, algorithm)] = rows[-1]
                cell_rows.extend(rows)
        for algorithm in algorithm_names:
            overview_rows.extend(_overview_rows(selection, dataset_names, algorithm, averages,
                                                scored))
    return _tidy_frame(cell_rows), _tidy_frame(overview_rows)


def _tidy_frame(rows):
    frame = pd.DataFrame([{**r, "incomplete_jobs": len(r["jobs"])} for r in rows],
                         columns=CSV_COLUMNS)
    frame["text"] = [format_cell(*r) for r in zip(frame["mean"], frame["se"], frame["note"],
                                                   frame["n_trials"], frame["incomplete_jobs"])]
    return frame


# ----------------------------------------------------------------------------- entry points
def make_tables(input_dirs, name, out_root="results", reference_csv=None, plots=True,
                out_dir=None, complete_only=False, baseline="ERM"):
    """Load sweeps, compute all tables, write them under ``<out_root>/<name>/`` (or
    ``out_dir``), print Markdown; then the paired differences of every algorithm vs
    ``baseline`` (:mod:`lpa_domainbed.tools.paired`). ``name`` must be a plain name. The directory
    is replaced as a whole at the end (see :mod:`lpa_domainbed.tools.safe_output`); incomplete jobs
    are marked, or left out with ``complete_only``."""
    check_name(name)
    target = Path(out_dir) if out_dir is not None else Path(out_root) / name
    records, report = load_records(input_dirs, complete_only=complete_only)
    if not len(records):
        raise NoRecordsError(f"no results.jsonl records in {', '.join(report.input_dirs)}; "
                             f"{HOW_TO_GET_RESULTS}")
    selections = list(SELECTION_METHODS)
    if not any(len(r["args"]["test_envs"]) == 2 for r in records):
        selections.remove("leave_one_out")
        print("leave-one-domain-out selection skipped: it needs runs with two test domains, "
              "which DomainBed's sweep makes without --single_test_envs.")
    cells, overview = compute_tables(records, tuple(selections))
    if reference_csv is None:
        reference_csv = Path(out_root) / "reference" / "published_results.csv"
        reference_csv = reference_csv if reference_csv.is_file() else published_reference()
    with staged_directory(target, OUTPUT_PATTERNS) as stage:
        result = TablesResult(stage, report, cells, overview, markdown={}, files=[])
        for selection in selections:
            result.markdown[selection] = write_selection_files(result, selection, name)
        if plots:
            write_plots(result)
        result.comparison = write_comparison(result, reference_csv)
        from lpa_domainbed.tools.paired import write_paired  # paired imports this module's helpers

        result.paired = write_paired(records, selections, stage, name, baseline, plots)
        result.files += result.paired.files if result.paired else []
    result.out_dir, result.files = target, [target / f.name for f in result.files]
    for selection in selections:
        print(result.markdown[selection])
    for selection in selections if result.paired else ():
        print(result.paired.markdown[selection])
    return result


def main(argv=None):
    """Command line: ``python -m lpa_domainbed.tools.tables --input_dir DIR [DIR ...] --name NAME``."""
    parser = argparse.ArgumentParser(prog="lpa-domainbed tables",
                                     description="Result tables for DomainBed sweeps")
    parser.add_argument("--input_dir", nargs="+", required=True, help="sweep output dir(s)")
    parser.add_argument("--name", required=True,
                        help="a plain name: writes <out_root>/<name>/ (results/<name>/)")
    parser.add_argument("--out_root", default="results")
    parser.add_argument("--out_dir", default=None,
                        help="write here instead of <out_root>/<name>/")
    parser.add_argument("--reference_csv", default=None,
                        help="published numbers to compare with (default: the packaged copy)")
    parser.add_argument("--no-plots", dest="plots", action="store_false")
    parser.add_argument("--baseline", default="ERM",
                        help="algorithm the paired differences are taken against")
    parser.add_argument("--complete_only", action="store_true",
                        help="leave out jobs without 'done' or with truncated/empty results")
    args = parser.parse_args(argv)
    try:
        result = make_tables(args.input_dir, args.name, args.out_root, args.reference_csv,
                             args.plots, out_dir=args.out_dir, complete_only=args.complete_only,
                             baseline=args.baseline)
    except (FileNotFoundError, NoRecordsError, OutputError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"{result.report.summary()}\nwrote {len(result.files)} files to {result.out_dir}",
          file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
