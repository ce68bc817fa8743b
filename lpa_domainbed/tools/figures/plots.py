"""The four figures as PNG, each with the CSV of its plotted numbers: :func:`plot_fig1`,
:func:`plot_fig4a`, :func:`plot_fig7`, :func:`plot_fig3a` (matplotlib, no pyplot state)."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Iterable

import numpy as np
import pandas as pd

from lpa_domainbed.tools.figures.canvas import erm_band, finish, flag, new_figure, no_data
from lpa_domainbed.tools.figures.plans import (FIG1_ALGORITHMS, FIG1_GROUPS, FIG1_VARIANTS,
                                         FIG3A_METHODS, FIG7_GRIDS)
from lpa_domainbed.tools.figures.tables import summarize

__all__ = ["FIG1_LEGEND", "FIG7_LABELS", "FigureOutput", "plot_fig1", "plot_fig4a", "plot_fig7",
           "plot_fig3a"]

#: Figure 1's legend entries, used when a variant of LPA is plotted beside LPA.
FIG1_LEGEND = {"LPA": "LPA, DG defaults (all_positive + fixed bound)",
               "LPA (mean_accuracy + varied)":
                   "LPA (mean_accuracy + varied): class-adaptive, eq. 14"}
#: Figure 1's colours: each group keeps its colour whichever groups are present; the
#: class-adaptive LPA is a lighter blue beside LPA's.
FIG1_COLORS = {"LPA": "C0", "LPA (mean_accuracy + varied)": "C9", "Dropout": "C1",
               "ADA": "C2", "ManifoldMixup": "C3"}
#: what each hparam means, for axis labels.
FIG7_LABELS = {"lpa_eps": "eps (lpa_eps): bound relative to |a|",
               "lpa_beta": "beta (lpa_beta): gamma_l = beta^(L-l)",
               "lpa_lowrank": "low-rank ratio k/d_l (lpa_lowrank; 0 = full rank)"}


@dataclasses.dataclass
class FigureOutput:
    """What a plotting function wrote, and what it has to say."""

    name: str
    png: Path
    csv: Path
    table: pd.DataFrame
    notes: list[str] = dataclasses.field(default_factory=list)


def _fig1_wanted(table: pd.DataFrame, algorithms: Iterable[str] | None) -> list[str]:
    """``algorithms``, or by default :data:`FIG1_ALGORITHMS` (noted when missing) and the
    :data:`FIG1_VARIANTS` the table has, in :data:`FIG1_GROUPS` order."""
    if algorithms is not None:
        return list(algorithms)
    have = set() if table.empty else set(table["algorithm"])
    return [g for g in FIG1_GROUPS if g in FIG1_ALGORITHMS or (g in FIG1_VARIANTS and g in have)]


def plot_fig1(table: pd.DataFrame, out_dir: Path, subtitle: str = "",
              algorithms: Iterable[str] | None = None) -> FigureOutput:
    """Figure 1: grouped bars of per-class relative activation variation, one group per class,
    one bar per algorithm (or :data:`FIG1_VARIANTS` entry), error bars = standard error over
    trials. ``algorithms`` (the bars, in order; a missing one is noted) defaults to
    :data:`FIG1_ALGORITHMS` plus the variants present in ``table``. Writes
    ``fig1_activation_variation.{png,csv}`` (CSV: algorithm, layer, class, mean, se, ...)."""
    out_dir = Path(out_dir)
    png, csv = out_dir / "fig1_activation_variation.png", out_dir / "fig1_activation_variation.csv"
    wanted = _fig1_wanted(table, algorithms)
    present = [a for a in wanted if not table.empty and a in set(table["algorithm"])]
    notes = [f"no results for {', '.join(a for a in wanted if a not in present)} "
             f"(left out)"] if len(present) < len(wanted) else []
    by = ["algorithm", "layer", "class"]
    summary = summarize(table[table["algorithm"].isin(present)] if present else pd.DataFrame(),
                        by, "rel")
    summary.to_csv(csv, index=False)
    figure, (axes,) = new_figure(10, 4.6)
    layer_text = ""
    if not present:
        no_data(axes, "no probe results to plot")
    else:
        classes = sorted(summary["class"].unique())
        width = 0.8 / len(present)
        # The long legend entries only where LPA appears twice (they would not fit in one row).
        legend = FIG1_LEGEND if any(name in FIG1_VARIANTS for name in present) else {}
        for i, name in enumerate(present):
            rows = summary[summary["algorithm"] == name].set_index("class").reindex(classes)
            x = np.arange(len(classes)) + (i - (len(present) - 1) / 2) * width
            axes.bar(x, rows["mean"], width, yerr=rows["se"].fillna(0), capsize=2,
                     color=FIG1_COLORS.get(name, f"C{4 + i}"),
                     label=f"{legend.get(name, name)} (mean {rows['mean'].mean():.3f})")
        axes.set_xticks(np.arange(len(classes)), [str(c) for c in classes])
        axes.set_xlabel("class")
        axes.set_ylabel("relative variation  E|a~ - a| / E|a|")
        # Legend above the bars (one row, or two for more than four groups), with head room,
        # so it never hides a bar.
        ncols = len(present) if len(present) <= 4 else math.ceil(len(present) / 2)
        head_room = 1.25 if ncols == len(present) else 1.4
        axes.set_ylim(0, head_room * float((summary["mean"] + summary["se"].fillna(0)).max()))
        axes.legend(fontsize="small", ncols=ncols, loc="upper center")
        axes.grid(axis="y", alpha=0.3)
        layers = list(dict.fromkeys(summary["layer"]))
        layer_text = f" at {', '.join(layers)}"
        if len(layers) > 1:
            notes.append(f"the algorithms perturb different layers: {', '.join(layers)}")
    finish(figure, [axes], f"Fig. 1: relative activation variation per class{layer_text} "
           "(held-out domain, selected checkpoint)", subtitle, notes, png)
    return FigureOutput("fig1", png, csv, summary, notes)


def plot_fig4a(table: pd.DataFrame, out_dir: Path, subtitle: str = "") -> FigureOutput:
    """Figure 4a: LPA's held-out accuracy at each layer (error bars = SE over trials), ERM as a
    line with a ±SE band. Writes ``fig4a_accuracy_vs_layer.{png,csv}`` (CSV: algorithm, layer,
    layer_index, mean, se, n_trials, n_test_envs; ERM has layer_index -1)."""
    out_dir = Path(out_dir)
    png, csv = out_dir / "fig4a_accuracy_vs_layer.png", out_dir / "fig4a_accuracy_vs_layer.csv"
    notes = []
    summary = summarize(table, ["algorithm", "layer", "layer_index"])
    summary.to_csv(csv, index=False)
    lpa = summary[summary["algorithm"] == "LPA"].sort_values("layer_index")
    erm = summary[summary["algorithm"] == "ERM"]
    figure, (axes,) = new_figure(9, 4.8)
    if erm.empty:
        notes.append("no ERM results: no reference line")
    if lpa.empty:
        notes.append("no LPA results")
        no_data(axes, "no LPA results to plot")
    else:
        x = np.arange(len(lpa))
        if not erm.empty:
            erm_band(axes, erm)
        axes.errorbar(x, lpa["mean"], yerr=lpa["se"], marker="o", capsize=3, color="C0",
                      label="LPA at this layer (last: logits = LPL)")
        default = table[(table["algorithm"] == "LPA") & flag(table, "is_default")]
        labels = []
        for name in lpa["layer"]:
            label = name.replace(" = ", "\n= ")
            if name == "logits":
                label += "\n(LPL)"
            if not default.empty and name in set(default["layer"]):
                label += "\n(default)"
            labels.append(label)
        axes.set_xticks(x, labels, fontsize="small")
        for xi, mean in zip(x, lpa["mean"]):
            axes.annotate(f"{mean:.1f}", (xi, mean), textcoords="offset points",
                          xytext=(6, 4), fontsize="x-small")
        axes.legend(fontsize="small")
    axes.set_xlabel("perturbation layer (input -> logits)")
    axes.set_ylabel("held-out accuracy (%)")
    axes.grid(axis="y", alpha=0.3)
    finish(figure, [axes], "Fig. 4a: held-out accuracy vs. LPA's perturbation layer",
           subtitle + "; mean ± SE over trials of the average over held-out domains",
           notes, png)
    return FigureOutput("fig4a", png, csv, summary, notes)


def plot_fig7(table: pd.DataFrame, out_dir: Path, subtitle: str = "") -> FigureOutput:
    """Figure 7: three panels, LPA's held-out accuracy against ``lpa_eps``, ``lpa_beta`` and
    ``lpa_lowrank`` (error bars = SE over trials; default value marked), ERM band in each.
    Writes ``fig7_sensitivity.{png,csv}`` (CSV: algorithm, param, value, mean, se, ...)."""
    out_dir = Path(out_dir)
    png, csv = out_dir / "fig7_sensitivity.png", out_dir / "fig7_sensitivity.csv"
    notes = []
    by = ["algorithm", "param", "value"]
    summary = summarize(table, by)
    summary.to_csv(csv, index=False)
    erm = summary[summary["algorithm"] == "ERM"]
    if erm.empty:
        notes.append("no ERM results: no reference line")
    figure, axes_list = new_figure(13, 4.4, ncols=len(FIG7_GRIDS))
    for axes, param in zip(axes_list, FIG7_GRIDS):
        rows = summary[(summary["algorithm"] == "LPA") & (summary["param"] == param)]
        rows = rows.sort_values("value")
        if rows.empty:
            notes.append(f"no LPA results for {param}")
            no_data(axes, f"no results for {param}")
            continue
        if not erm.empty:
            erm_band(axes, erm)
        axes.errorbar(rows["value"], rows["mean"], yerr=rows["se"], marker="o", capsize=3,
                      color="C0", label="LPA")
        defaults = table[(table["param"] == param) & flag(table, "is_default")]
        for value in sorted(set(defaults["value"])):
            full = " (full rank)" if param == "lpa_lowrank" and value == 0 else ""
            axes.axvline(value, color="C0", linestyle=":", linewidth=1,
                         label=f"default {value:g}{full}")
        axes.set_xlabel(FIG7_LABELS.get(param, param), fontsize="small")
        axes.grid(alpha=0.3)
        axes.legend(fontsize="x-small")
    axes_list[0].set_ylabel("held-out accuracy (%)")
    finish(figure, axes_list, "Fig. 7: sensitivity of LPA to eps, beta and the low-rank ratio",
           subtitle + "; mean ± SE over trials of the average over held-out domains",
           notes, png)
    return FigureOutput("fig7", png, csv, summary, notes)


def plot_fig3a(table: pd.DataFrame, out_dir: Path, subtitle: str = "",
               methods: Iterable[str] = tuple(FIG3A_METHODS)) -> FigureOutput:
    """Figure 3a: one bar per method (ERM, the single perturbations and their combinations),
    error bars = SE over trials. Writes ``fig3a_combinations.{png,csv}`` (CSV: method, mean,
    se, n_trials, n_test_envs)."""
    out_dir = Path(out_dir)
    png, csv = out_dir / "fig3a_combinations.png", out_dir / "fig3a_combinations.csv"
    wanted = list(methods)
    summary = summarize(table, ["method"])
    present = [m for m in wanted if m in set(summary["method"])]
    notes = [f"no results for {', '.join(m for m in wanted if m not in present)} "
             f"(left out)"] if len(present) < len(wanted) else []
    summary = summary.set_index("method").reindex(present).reset_index() if present else summary
    summary.to_csv(csv, index=False)
    figure, (axes,) = new_figure(8, 4.8)
    if not present:
        no_data(axes, "no results to plot")
    else:
        colors = ["0.55" if m == "ERM" else ("C1" if "+" in m else "C0") for m in present]
        x = np.arange(len(present))
        axes.bar(x, summary["mean"], 0.65, yerr=summary["se"], capsize=4, color=colors)
        axes.set_xticks(x, present)
        low = float((summary["mean"] - summary["se"]).min())
        high = float((summary["mean"] + summary["se"]).max())
        bottom = max(0.0, low - 0.25 * (high - low) - 1)
        axes.set_ylim(bottom, high + 0.15 * (high - low) + 1)
        # Values inside the bars, at their foot, where no error bar can cover them.
        for xi, mean in zip(x, summary["mean"]):
            axes.annotate(f"{mean:.1f}", (xi, bottom), textcoords="offset points",
                          xytext=(0, 4), ha="center", fontsize="small", color="white",
                          fontweight="bold")
        axes.set_ylabel("held-out accuracy (%)  [axis does not start at 0]")
        axes.grid(axis="y", alpha=0.3)
        from matplotlib.patches import Patch

        axes.legend(handles=[Patch(color="0.55", label="ERM"), Patch(color="C0", label="alone"),
                             Patch(color="C1", label="combined")], fontsize="small")
    finish(figure, [axes], "Fig. 3a: LPA combined with Dropout and with LPL",
           subtitle + "; mean ± SE over trials of the average over held-out domains",
           notes, png)
    return FigureOutput("fig3a", png, csv, summary, notes)
