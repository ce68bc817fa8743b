""":func:`make_figures`: plan the runs, train or reuse them, tabulate, plot, summarize."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Iterable

from lpa_domainbed.tools.figures.cache import RunCache
from lpa_domainbed.tools.figures.plans import (FIG1_GROUPS, FIGURES, Settings, plan_figures,
                                         unique_specs)
from lpa_domainbed.tools.figures.plots import (FigureOutput, plot_fig1, plot_fig3a, plot_fig4a,
                                         plot_fig7)
from lpa_domainbed.tools.figures.summary import summary_lines, write_summary
from lpa_domainbed.tools.figures.tables import accuracy_table, fig1_table
from lpa_domainbed.tools.figures.training import format_seconds, run_all

__all__ = ["make_figures"]


def make_figures(settings: Settings, out_dir: Path, figures: Iterable[str] = FIGURES,
                 log=print) -> dict[str, FigureOutput]:
    """Plan, train (or reuse) every run, draw the figures; return their outputs."""
    out_dir = Path(out_dir)
    plan = plan_figures(figures, settings)
    specs = unique_specs(plan)
    log(f"==> {len(specs)} distinct runs for {', '.join(plan)} ({settings.describe()})",
        flush=True)
    records = run_all(specs, settings, RunCache(out_dir / "cache"), log=log)
    subtitle = settings.describe()
    outputs, tables = {}, {}
    if "fig1" in plan:
        tables["fig1"] = fig1_table(plan["fig1"], records)
        outputs["fig1"] = plot_fig1(tables["fig1"], out_dir, subtitle, FIG1_GROUPS)
    plotters = {"fig4a": plot_fig4a, "fig7": plot_fig7, "fig3a": plot_fig3a}
    for fig, plot in plotters.items():
        if fig in plan:
            tables[fig] = accuracy_table(plan[fig], records)
            tables[fig].to_csv(out_dir / f"{fig}_runs.csv", index=False)
            outputs[fig] = plot(tables[fig], out_dir, subtitle)
    if "fig1" in tables:
        tables["fig1"].to_csv(out_dir / "fig1_runs.csv", index=False)
    lines = summary_lines(outputs, tables)
    train_seconds = sum(r.get("train_seconds", 0.0) for r in records.values())
    lines.append(f"training time of the {len(records)} runs (when they were trained): "
                 f"{format_seconds(train_seconds)}")
    log("==> summary", flush=True)
    for line in lines:
        log(line, flush=True)
    write_summary(out_dir / "summary.md", subtitle,
                  f"python -m lpa_domainbed.tools.figures {' '.join(sys.argv[1:])}", lines)
    for output in outputs.values():
        log(f"wrote {output.png} and {output.csv}", flush=True)
    return outputs
