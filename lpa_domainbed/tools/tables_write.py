"""Writing the tables of :mod:`lpa_domainbed.tools.tables`: Markdown, LaTeX, tidy CSV, bar charts and
the comparison with published numbers (shipped as package data, so installed use needs no
checkout). Cells marked '†' use results of an incomplete job; a footnote says so."""

import math
import shutil
from importlib import resources
from pathlib import Path

import numpy as np
import pandas as pd
from tabulate import tabulate

from domainbed import model_selection

__all__ = ["SELECTION_METHODS", "CSV_COLUMNS", "INCOMPLETE_MARK", "OUTPUT_PATTERNS",
           "format_cell", "format_table",
           "write_selection_files", "write_plots", "write_comparison", "published_reference",
           "copy_reference", "compare_with_published"]

# Keys double as the ``model_selection`` values of the published-results CSV.
SELECTION_METHODS = {
    "training_domain_validation": model_selection.IIDAccuracySelectionMethod,
    "leave_one_out": model_selection.LeaveOneOutSelectionMethod,
    "oracle": model_selection.OracleSelectionMethod,
}
CSV_COLUMNS = ["selection", "dataset", "algorithm", "test_env", "mean", "se", "n_trials", "note",
               "incomplete_jobs"]
INCOMPLETE_MARK = "†"  # a cell that uses records of an incomplete job
#: the files make_tables writes (an earlier run's files matching these are replaced)
OUTPUT_PATTERNS = [f"{s}.{ext}" for s in SELECTION_METHODS for ext in ("md", "tex", "csv")] + [
    "*_training_domain_validation.png", "reference_comparison.md",
    "paired_*.md", "paired_*.csv", "paired_*.tex", "paired_*.png"]


def format_cell(mean, se, note, n_trials=2, incomplete_jobs=0):
    """'71.0 ± 0.7', '71.0 ± 0.7, incomplete (1/2 trials)', or just the note; '†' when the
    number uses records of an incomplete job. One trial has no standard error: its mean is
    shown alone (DomainBed would print '± 0.0')."""
    if math.isnan(mean):
        return note or "X"
    one = not (n_trials > 1)
    text = f"{mean:.1f}" if math.isnan(se) or one else f"{mean:.1f} ± {se:.1f}"
    text += f" {INCOMPLETE_MARK}" if incomplete_jobs else ""
    return f"{text}, {note}" if note else text


def format_table(rows, column):
    """Pivot tidy rows to a strings table: algorithms x ``column`` values, in input order."""
    table = rows.pivot(index="algorithm", columns=column, values="text")
    table = table.reindex(index=list(dict.fromkeys(rows.algorithm)),
                          columns=list(dict.fromkeys(rows[column])))
    table.index.name, table.columns.name = "Algorithm", None
    return table


def _latex_escape(text):
    for char in "\\&%$#_{}":
        text = text.replace(char, "\\" + char)
    return text


def _markdown_table(table):
    return tabulate(table, headers="keys", tablefmt="pipe", disable_numparse=True)


def _latex_table(table, caption, footnote=""):
    body = (tabulate(table, headers="keys", tablefmt="latex_booktabs", disable_numparse=True)
            .replace("±", r"$\pm$").replace(INCOMPLETE_MARK, r"$^\dagger$"))
    if footnote and any(INCOMPLETE_MARK in str(v) for v in table.to_numpy().ravel()):
        body += ("\n\\par\\footnotesize $^\\dagger$ "
                 + _latex_escape(footnote.replace(INCOMPLETE_MARK, "").strip()))
    return ("\\begin{table}[ht]\n\\centering\n\\caption{" + _latex_escape(caption) + "}\n"
            + body + "\n\\end{table}\n")


def _incomplete_notes(report):
    """(footnote for the marked cells, Markdown section listing incomplete / not-run jobs)."""
    if report.complete_only or not report.incomplete_jobs:
        footnote = ""
    else:
        footnote = (f"{INCOMPLETE_MARK} uses results of an incomplete job (listed below); "
                    "rerun the sweep, or pass --complete_only to leave them out.")
    section = ""
    if report.incomplete_jobs:
        verb = "left out (--complete_only)" if report.complete_only else f"marked {INCOMPLETE_MARK}"
        section += f"\n## Incomplete jobs ({verb})\n\n" + "".join(
            f"- {job}: {report.incomplete_reasons[job]}\n" for job in report.incomplete_jobs)
    if report.not_run:
        section += "\n## Not run (empty job directories, or only a launcher log)\n\n" + "".join(
            f"- {job}\n" for job in report.not_run)
    return footnote, section


def _sections(result, selection):
    """(title, strings table) for each dataset, then the overview."""
    cells = result.cells[result.cells.selection == selection]
    sections = [(f"Dataset: {d}", result.table(selection, d)) for d in cells.dataset.unique()]
    return sections + [("Averages", result.table(selection))]


def write_selection_files(result, selection, name):
    """Markdown, LaTeX and tidy CSV for one selection method; returns the Markdown text."""
    method_name = SELECTION_METHODS[selection].name
    sections = _sections(result, selection)
    footnote, jobs_section = _incomplete_notes(result.report)
    markdown = (f"# {name}: model selection: {method_name}\n\n{result.report.summary()}\n\n"
                "Cells: accuracy (%) on the held-out domain, mean ± standard error over trials "
                "(DomainBed's formula); the mean alone where there is one trial.\n")
    markdown += "".join(f"\n## {title}\n\n{_markdown_table(t)}\n"
                        + (f"\n{footnote}\n" if INCOMPLETE_MARK in _markdown_table(t)
                           and footnote else "")
                        for title, t in sections)
    markdown += jobs_section
    latex = "".join(_latex_table(t, f"{title}, model selection: {method_name}", footnote)
                    for title, t in sections)
    base = result.out_dir / selection
    base.with_suffix(".md").write_text(markdown)
    base.with_suffix(".tex").write_text(latex)
    csv_rows = pd.concat([result.cells[result.cells.selection == selection],
                          result.overview[(result.overview.selection == selection)
                                          & (result.overview.dataset == "Avg")]])
    csv_rows[CSV_COLUMNS].to_csv(base.with_suffix(".csv"), index=False)
    result.files += [base.with_suffix(s) for s in (".md", ".tex", ".csv")]
    return markdown


def _plot_dataset(rows, path, title):
    """Grouped bar chart: one bar per algorithm per held-out domain + Avg, error bars = se."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    columns = list(dict.fromkeys(rows.test_env))
    algorithm_names = list(dict.fromkeys(rows.algorithm))
    figure = Figure(figsize=(min(24.0, max(6.0, 0.6 * len(columns) * len(algorithm_names))), 4))
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    width = 0.8 / len(algorithm_names)
    for i, algorithm in enumerate(algorithm_names):
        values = rows[rows.algorithm == algorithm].set_index("test_env").reindex(columns)
        filled = values["mean"].notna().to_numpy()
        x = np.arange(len(columns))[filled] + (i - (len(algorithm_names) - 1) / 2) * width
        axes.bar(x, values["mean"][filled], width, yerr=values["se"][filled].fillna(0),
                 capsize=2, label=algorithm)
    axes.set_xticks(np.arange(len(columns)), columns)
    axes.set_ylabel("test accuracy (%)")
    axes.set_title(title)
    axes.legend(fontsize="small")
    figure.tight_layout()
    figure.savefig(path, dpi=120)


# ----------------------------------------------------------------------------- reference
def published_reference() -> Path:
    """The published-results CSV shipped with the package (a copy of the repository's
    results/reference/published_results.csv)."""
    return Path(str(resources.files("lpa_domainbed.tools") / "data" / "published_results.csv"))


def copy_reference(source=None, destination=Path("results/reference/published_results.csv")):
    """Copy a published-results CSV (default: the packaged one), unchanged."""
    source = published_reference() if source is None else source
    destination = Path(destination)
    destination.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(source, destination)
    return destination


def compare_with_published(overview, reference):
    """Our dataset averages beside published ones (same algorithm and model selection).

    Rows whose model selection is 'unspecified' are shown beside our training-domain
    validation numbers, labelled as such. Returns an empty DataFrame when nothing matches.
    """
    ours = overview[overview.dataset != "Avg"].set_index(["selection", "dataset", "algorithm"])
    rows = []
    for published in reference.to_dict("records"):
        selection = published["model_selection"]
        our_selection = "training_domain_validation" if selection == "unspecified" else selection
        for dataset in overview.dataset.unique():
            key = (our_selection, dataset, published["algorithm"])
            if dataset not in published or pd.isna(published[dataset]) or key not in ours.index:
                continue
            our_mean = ours.loc[key, "mean"]
            if not math.isnan(our_mean):
                rows.append({"dataset": dataset, "algorithm": published["algorithm"],
                             "our selection": our_selection, "ours": our_mean,
                             "published": float(published[dataset]),
                             "published selection": selection, "source": published["source"],
                             "ours - published": our_mean - float(published[dataset])})
    return pd.DataFrame(rows)


def write_comparison(result, reference_csv):
    """Write reference_comparison.md when our datasets/algorithms meet published ones."""
    comparison = compare_with_published(result.overview, pd.read_csv(reference_csv))
    if comparison.empty:
        return None
    path = result.out_dir / "reference_comparison.md"
    markdown = ("# Ours vs published (dataset averages, %)\n\nPublished rows with 'unspecified' "
                "model selection are shown beside our training-domain validation numbers.\n\n"
                + tabulate(comparison, headers="keys", tablefmt="pipe", floatfmt=".1f",
                           showindex=False) + "\n")
    path.write_text(markdown)
    print(markdown)
    result.files.append(path)
    return comparison


def write_plots(result):
    """One bar chart per dataset for training-domain validation (skips empty datasets)."""
    validation = result.cells[result.cells.selection == "training_domain_validation"]
    for dataset in validation.dataset.unique():
        rows = validation[validation.dataset == dataset]
        if rows["mean"].notna().any():
            path = result.out_dir / f"{dataset}_training_domain_validation.png"
            _plot_dataset(rows, path, f"{dataset}, training-domain validation")
            result.files.append(path)
