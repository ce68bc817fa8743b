"""The text of the tables of :mod:`lpa_domainbed.tools.tables`: Markdown, LaTeX, tidy CSV and bar
charts, returned as ``{file name: text or PNG bytes}``; nothing here writes a file or changes
its arguments. Marked cells (incomplete or restarted jobs) get a footnote, and the jobs are
listed under the tables."""

from __future__ import annotations

import io

import numpy as np
import pandas as pd
from tabulate import tabulate

from lpa_domainbed.tools.tables_cells import (CSV_COLUMNS, INCOMPLETE_MARK, RESTARTED_MARK,
                                              format_table)
from lpa_domainbed.tools.tables_frame import AVERAGE, SELECTION_METHODS
from lpa_domainbed.tools.tables_report import plural

__all__ = ["markdown_table", "latex_table", "selection_outputs", "bar_charts", "png_bytes"]

_LATEX_MARKS = {INCOMPLETE_MARK: r"$^\dagger$", RESTARTED_MARK: r"$^\ddagger$"}


def _latex_escape(text):
    for char in "\\&%$#_{}":
        text = text.replace(char, "\\" + char)
    return text


def markdown_table(table):
    return tabulate(table, headers="keys", tablefmt="pipe", disable_numparse=True)


def latex_table(table, caption, footnotes=()):
    """A LaTeX table; ``footnotes``: (mark, text) pairs, each added below the table when a
    cell carries its mark."""
    body = tabulate(table, headers="keys", tablefmt="latex_booktabs", disable_numparse=True)
    body = body.replace("±", r"$\pm$")
    for mark, latex in _LATEX_MARKS.items():
        body = body.replace(mark, latex)
    cells = [str(v) for v in table.to_numpy().ravel()]
    for mark, text in footnotes:
        if any(mark in cell for cell in cells):
            body += (f"\n\\par\\footnotesize {_LATEX_MARKS[mark]} "
                     + _latex_escape(text.replace(mark, "").strip()))
    return ("\\begin{table}[ht]\n\\centering\n\\caption{" + _latex_escape(caption) + "}\n"
            + body + "\n\\end{table}\n")


def _footnotes(report):
    """(mark, footnote) for each kind of marked cell this report can have."""
    notes = []
    if report.incomplete_jobs and not report.complete_only:
        notes.append((INCOMPLETE_MARK, f"{INCOMPLETE_MARK} uses results of an incomplete job "
                      "(listed below); rerun the sweep, or pass --complete_only to leave them "
                      "out."))
    if report.restarted_jobs:
        notes.append((RESTARTED_MARK, f"{RESTARTED_MARK} uses a restarted job: its "
                      "results.jsonl holds more than one attempt, and only the last one is "
                      "used (listed below)."))
    return notes


def _jobs_sections(report):
    """Markdown sections listing incomplete, restarted and not-run jobs."""
    section = ""
    if report.incomplete_jobs:
        verb = "left out (--complete_only)" if report.complete_only else f"marked {INCOMPLETE_MARK}"
        section += f"\n## Incomplete jobs ({verb})\n\n" + "".join(
            f"- {job}: {report.incomplete_reasons[job]}\n" for job in report.incomplete_jobs)
    if report.restarted_jobs:
        section += (f"\n## Restarted jobs (marked {RESTARTED_MARK}; only the last attempt is "
                    "used, every record stays on disk)\n\n") + "".join(
            f"- {job}: {why}\n" for job, why in report.restarted_jobs.items())
    if report.skipped_records:
        section += ("\n## Skipped records (in no cell's number; the cells they belong to say "
                    "so)\n\n") + "".join(
            f"- {path}: {plural(n, 'record')}: {reason}\n"
            for path, reasons in report.skipped_records.items() for reason, n in reasons.items())
    if report.duplicate_jobs:
        section += ("\n## Duplicate job directories (the same job's records as another "
                    "directory; counted once)\n\n") + "".join(
            f"- {dup}: the same records as {kept}\n" for dup, kept in report.duplicate_jobs.items())
    if report.not_run:
        section += "\n## Not run (empty job directories, or only a launcher log)\n\n" + "".join(
            f"- {job}\n" for job in report.not_run)
    return section


def _sections(cells, overview, selection):
    """(title, strings table) for each dataset, then the overview."""
    cells = cells[cells.selection == selection]
    sections = [(f"Dataset: {d}", format_table(cells[cells.dataset == d], "test_env"))
                for d in cells.dataset.unique()]
    return sections + [("Averages", format_table(overview[overview.selection == selection],
                                                 "dataset"))]


def _tidy_csv(cells, overview, selection):
    rows = pd.concat([cells[cells.selection == selection],
                      overview[(overview.selection == selection) & (overview.dataset == AVERAGE)]])
    columns = CSV_COLUMNS + (["restarted_jobs"] if rows.restarted_jobs.any() else [])
    return rows[columns].to_csv(index=False)


def selection_outputs(cells, overview, report, selection, name):
    """``{'<selection>.md': ..., '.tex': ..., '.csv': ...}`` for one selection method; the CSV
    has a ``restarted_jobs`` column where some cell uses a restarted job."""
    method_name = SELECTION_METHODS[selection].name
    sections = _sections(cells, overview, selection)
    footnotes = _footnotes(report)
    markdown = (f"# {name}: model selection: {method_name}\n\n{report.summary()}\n\n"
                "Cells: accuracy (%) on the held-out domain, mean ± standard error over trials "
                "(DomainBed's formula); the mean alone where there is one trial. Avg: the mean "
                "of the domain means, ± over the trials that have every domain; the Averages "
                "table shows the same cell.\n")
    for title, table in sections:
        text = markdown_table(table)
        markdown += f"\n## {title}\n\n{text}\n" + "".join(
            f"\n{note}\n" for mark, note in footnotes if mark in text)
    markdown += _jobs_sections(report)
    latex = "".join(latex_table(t, f"{title}, model selection: {method_name}", footnotes)
                    for title, t in sections)
    return {f"{selection}.md": markdown, f"{selection}.tex": latex,
            f"{selection}.csv": _tidy_csv(cells, overview, selection)}


def png_bytes(figure):
    """A matplotlib figure as PNG bytes (120 dpi)."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=120)
    return buffer.getvalue()


def _bar_chart(rows, title):
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
    return png_bytes(figure)


def bar_charts(cells):
    """``{'<dataset>_training_domain_validation.png': PNG bytes}`` for every dataset with a
    number under training-domain validation."""
    validation = cells[cells.selection == "training_domain_validation"]
    return {f"{dataset}_training_domain_validation.png":
            _bar_chart(rows, f"{dataset}, training-domain validation")
            for dataset, rows in validation.groupby("dataset", sort=False)
            if rows["mean"].notna().any()}
