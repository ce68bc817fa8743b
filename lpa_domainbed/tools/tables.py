"""Result tables for DomainBed sweeps: ``make tables`` (``lpa-domainbed tables``).

The numbers are DomainBed's own: records are grouped with
:func:`domainbed.lib.reporting.get_grouped_records`, scored with each selection method's
``sweep_acc`` and summarised with ``collect_results.format_mean`` (100 * mean,
100 * std(data / sqrt(n))), exactly as ``collect_results.print_results_tables`` does. On top of
that the tables read several sweep directories, survive corrupt lines and restarted jobs,
explain empty cells, compare algorithms paired by trial, and write Markdown, LaTeX, tidy CSV,
bar charts, forest plots and a comparison with published numbers.

One route, one module per step:

1. :mod:`tables_load` (with :mod:`tables_records`, :mod:`tables_duplicates` and
   :mod:`tables_report`): the job directories' records, and what is wrong with them;
2. :mod:`tables_frame`: the one results frame (a selected accuracy per selection method,
   dataset, algorithm, held-out domain and trial);
3. :mod:`tables_cells` (cells and overview) and :mod:`paired` (paired differences), group-bys
   of the frame;
4. :mod:`tables_write`, :mod:`tables_selected` (the run and checkpoint model selection chose
   per cell), :mod:`paired`, :mod:`paired_plot`, :mod:`tables_reference`: the text of every
   file, returned, never written;
5. :mod:`safe_output`: every file written at once, under a lock, removing only what an
   earlier run wrote, and never replacing a file it did not write.

Run ``python -m lpa_domainbed.tools.tables --input_dir DIR [DIR ...] --name NAME``.
"""

import argparse
import dataclasses
import sys
from pathlib import Path

from lpa_domainbed.tools.safe_output import OutputError, check_name, write_outputs

try:  # the command explains a missing DomainBed instead of failing at import
    import pandas as pd

    from lpa_domainbed.tools.paired import PairError, PairedResult, check_pairs, paired_outputs
    from lpa_domainbed.tools.tables_cells import CSV_COLUMNS, cell_tables, compute_tables, \
        format_table
    from lpa_domainbed.tools.tables_frame import SELECTION_METHODS, results_frame
    from lpa_domainbed.tools.tables_load import (HOW_TO_GET_RESULTS, DuplicateJobError,
                                                 LoadReport, load_records)
    from lpa_domainbed.tools.tables_reference import (ReferenceCsvError, compare_with_published,
                                                      comparison_markdown, copy_reference,
                                                      published_reference, read_reference)
    from lpa_domainbed.tools.tables_selected import selected_outputs
    from lpa_domainbed.tools.tables_write import bar_charts, selection_outputs
except ModuleNotFoundError as missing:
    if (missing.name or "").split(".")[0] != "domainbed":
        raise
    DOMAINBED_MISSING = missing
else:
    DOMAINBED_MISSING = None

__all__ = [
    "SELECTION_METHODS", "CSV_COLUMNS", "LoadReport", "NoRecordsError", "TablesResult",
    "load_records", "compute_tables", "format_table", "compare_with_published",
    "copy_reference", "make_tables", "published_reference", "main",
]


def domainbed_hint():
    """How to make DomainBed importable, for the interpreter running this."""
    return (f"DomainBed is not importable from {sys.executable}. In a checkout of "
            "lpa_domainbed, run `make setup` (it clones DomainBed at the pinned commit into "
            "$DOMAINBED_DIR, default ~/.cache/lpa-domainbed/DomainBed, and makes it importable); "
            "for a DomainBed checkout of your own, `make setup DOMAINBED_DIR=/path/to/DomainBed`; "
            "in any other environment, put the checkout's path as one line into a .pth file in "
            "site-packages: echo /path/to/DomainBed > \"$(python -c 'import sysconfig; "
            "print(sysconfig.get_paths()[\"purelib\"])')/domainbed.pth\"")


class NoRecordsError(ValueError):
    """The input directories exist but hold no result records."""


@dataclasses.dataclass(frozen=True)
class TablesResult:
    """What :func:`make_tables` computed and wrote. ``cells``: tidy numbers (percent) per
    selection/dataset/algorithm/held-out domain and 'Avg', plus formatted ``text``;
    ``overview``: DomainBed's averages table (dataset 'Avg' = mean over datasets), same columns;
    ``markdown``: per selection; ``files``: every path written; ``comparison``: ours beside
    published numbers (None when nothing matches); ``paired``: the paired differences (None
    when there is nothing to compare)."""

    out_dir: Path
    report: "LoadReport"
    cells: "pd.DataFrame"
    overview: "pd.DataFrame"
    markdown: dict
    files: list
    comparison: "pd.DataFrame" = None
    paired: "PairedResult" = None

    def table(self, selection, dataset=None):
        """Formatted strings: one dataset's table, or the overview when ``dataset`` is None."""
        if dataset is None:
            return format_table(self.overview[self.overview.selection == selection], "dataset")
        rows = self.cells[(self.cells.selection == selection) & (self.cells.dataset == dataset)]
        return format_table(rows, "test_env")


def _selections(records):
    selections = list(SELECTION_METHODS)
    if not any(len(r["args"]["test_envs"]) == 2 for r in records):
        selections.remove("leave_one_out")
        print("leave-one-domain-out selection skipped: it needs runs with two test domains, "
              "which DomainBed's sweep makes without --single_test_envs.")
    return tuple(selections)


def _comparison(overview, reference):
    """(comparison or None, {'reference_comparison.md': text} or {})."""
    comparison = compare_with_published(overview, reference)
    if comparison.empty:
        return None, {}
    text = comparison_markdown(comparison)
    print(text)
    return comparison, {"reference_comparison.md": text}


def make_tables(input_dirs, name, out_root="results", reference_csv=None, plots=True,
                out_dir=None, complete_only=False, baseline=None, pairs=()):
    """Load sweeps, compute all tables, write them under ``<out_root>/<name>/`` (or
    ``out_dir``; see :mod:`lpa_domainbed.tools.safe_output`), print Markdown; then the paired
    differences of every algorithm vs ``baseline`` and of each ``(A, B)`` in ``pairs``
    (:mod:`lpa_domainbed.tools.paired`). ``name`` must be a plain name. Incomplete jobs are
    marked, or left out with ``complete_only``; restarted jobs are read from their last
    attempt and marked. ``baseline`` None means ERM where the sweep has it (else no
    comparison against a baseline, with a message); a named baseline without runs is a
    :class:`PairError`. Every input is checked before anything is written."""
    if DOMAINBED_MISSING is not None:
        raise ModuleNotFoundError(domainbed_hint(), name="domainbed")
    check_name(name)
    target = Path(out_dir) if out_dir is not None else Path(out_root) / name
    if reference_csv is None:
        reference_csv = Path(out_root) / "reference" / "published_results.csv"
        reference_csv = reference_csv if reference_csv.is_file() else published_reference()
    reference = read_reference(reference_csv)
    records, report = load_records(input_dirs, complete_only=complete_only)
    if not len(records) and report.skipped_records:
        raise NoRecordsError(f"no usable records in {', '.join(report.input_dirs)} "
                             f"({report.summary()}): " + "; ".join(
                                 f"{path}: {reason}" for path, reasons in
                                 list(report.skipped_records.items())[:3] for reason in reasons))
    if not len(records):
        raise NoRecordsError(f"no results.jsonl records in {', '.join(report.input_dirs)}; "
                             f"{HOW_TO_GET_RESULTS}")
    results = results_frame(records, _selections(records))
    if baseline is not None and baseline not in results.algorithms:
        raise PairError(f"--baseline {baseline!r} has no runs in this sweep; pass one of: "
                        f"{', '.join(results.algorithms)} (nothing was written)")
    repeated = [":".join(p) for i, p in enumerate(pairs) if p in pairs[:i]]
    if repeated:
        print(f"--pair {', '.join(dict.fromkeys(repeated))} given more than once: compared once")
    pairs = check_pairs(list(dict.fromkeys(pairs)), results.algorithms)
    cells, overview = cell_tables(results, report)
    outputs = {}
    for selection in results.selections:
        outputs.update(selection_outputs(cells, overview, report, selection, name))
    outputs.update(selected_outputs(records, results, name))
    outputs.update(bar_charts(cells) if plots else {})
    comparison, comparison_file = _comparison(overview, reference)
    outputs.update(comparison_file)
    paired, message = paired_outputs(results, name, baseline or "ERM", pairs, plots)
    if message:
        print(message)
    outputs.update(paired.outputs if paired else {})
    files = write_outputs(target, outputs)
    markdown = {s: outputs[f"{s}.md"] for s in results.selections}
    for selection in results.selections:
        print(markdown[selection])
    for selection in results.selections if paired else ():
        print(paired.markdown[selection])
    return TablesResult(target, report, cells, overview, markdown, files, comparison, paired)


def _pair(text):
    """'A:B' -> ('A', 'B') for --pair."""
    algorithm, _, baseline = text.partition(":")
    if not algorithm or not baseline or algorithm == baseline:
        raise argparse.ArgumentTypeError(f"{text!r}: write ALGORITHM:BASELINE, two different "
                                         f"algorithms of the sweep (e.g. LPA_BF16:LPA)")
    return algorithm, baseline


def main(argv=None):
    """``python -m lpa_domainbed.tools.tables --input_dir DIR [DIR ...] --name NAME``."""
    parser = argparse.ArgumentParser(prog="lpa-domainbed tables",
                                     description="Result tables for DomainBed sweeps")
    parser.add_argument("--input_dir", nargs="+", required=True, help="sweep output dir(s)")
    parser.add_argument("--name", required=True,
                        help="a plain name: writes <out_root>/<name>/ (results/<name>/)")
    parser.add_argument("--out_root", default="results")
    parser.add_argument("--out_dir", default=None,
                        help="write here instead of <out_root>/<name>/ (a folder of your own, "
                             "'.' included: only files an earlier run wrote, as its "
                             ".manifest.json lists, are replaced; a file of yours with the name "
                             "of a table stops the run, which names it and writes nothing)")
    parser.add_argument("--reference_csv", default=None,
                        help="published numbers to compare with (default: the packaged copy)")
    parser.add_argument("--no-plots", dest="plots", action="store_false")
    parser.add_argument("--baseline", default=None,
                        help="algorithm the paired differences are taken against (default: "
                             "ERM where the sweep has it); one without runs is an error")
    parser.add_argument("--pair", action="append", default=[], type=_pair,
                        metavar="ALGORITHM:BASELINE",
                        help="also compare these two algorithms, paired by trial (repeatable; "
                             "e.g. --pair LPA_BF16:LPA)")
    parser.add_argument("--complete_only", action="store_true",
                        help="leave out jobs without 'done' or with truncated/empty results")
    args = parser.parse_args(argv)
    if DOMAINBED_MISSING is not None:
        print(f"error: {domainbed_hint()}", file=sys.stderr)
        return 2
    try:
        result = make_tables(args.input_dir, args.name, args.out_root, args.reference_csv,
                             args.plots, out_dir=args.out_dir, complete_only=args.complete_only,
                             baseline=args.baseline, pairs=args.pair)
    except (FileNotFoundError, NoRecordsError, OutputError, ReferenceCsvError, PairError,
            DuplicateJobError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"{result.report.summary()}\nwrote {len(result.files)} files to {result.out_dir}",
          file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
