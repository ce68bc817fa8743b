"""The plain-text findings of the figures (printed at the end and saved as ``summary.md``):
means ± SE and paired differences to ERM."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd

from lpa_domainbed.tools.figures.plots import FigureOutput

__all__ = ["summary_lines", "write_summary"]


def _paired_difference(table: pd.DataFrame, mask_a, mask_b) -> str:
    """A - B over the (test_env, trial) runs both have: mean ± SE (DomainBed's formula) over
    those runs and how many A wins. Pairing removes the domain's and the trial's difficulty."""
    a = table[mask_a].groupby(["test_env", "trial"])["acc"].mean()
    b = table[mask_b].groupby(["test_env", "trial"])["acc"].mean()
    both = a.index.intersection(b.index)
    if not len(both):
        return "no paired runs"
    diff = (a[both] - b[both]).to_numpy()
    se = float(np.std(diff / math.sqrt(len(diff))))
    return (f"{diff.mean():+.1f} ± {se:.1f} points over {len(diff)} paired held-out runs, "
            f"better in {int((diff > 0).sum())}, worse in {int((diff < 0).sum())}")


def _fmt(row) -> str:
    """``mean ± se`` of a summary row."""
    return f"{row['mean']:.1f} ± {row['se']:.1f}"


def summary_lines(outputs: dict[str, FigureOutput], tables: dict[str, pd.DataFrame]
                  ) -> list[str]:
    """Plain-text findings of each figure (printed at the end and saved as summary.md)."""
    lines = []
    if "fig1" in outputs:
        s = outputs["fig1"].table
        for name, rows in s.groupby("algorithm", sort=False):
            lines.append(f"fig1: {name} at {rows['layer'].iloc[0]}: relative variation "
                         f"{rows['mean'].min():.3f}..{rows['mean'].max():.3f} over classes "
                         f"(mean {rows['mean'].mean():.3f})")
    for fig in ("fig4a", "fig7", "fig3a"):
        if fig not in outputs:
            continue
        s, t = outputs[fig].table, tables[fig]
        erm = s[s["algorithm" if fig != "fig3a" else "method"] == "ERM"]
        erm_text = _fmt(erm.iloc[0]) if not erm.empty else "n/a"
        if fig == "fig4a":
            lpa = s[s["algorithm"] == "LPA"].sort_values("layer_index")
            points = ", ".join(f"{r['layer']}: {_fmt(r)}" for _, r in lpa.iterrows())
            lines.append(f"fig4a: ERM {erm_text}; LPA by layer: {points}")
            for layer in lpa["layer"]:
                paired = _paired_difference(t, (t["algorithm"] == "LPA") & (t["layer"] == layer),
                                            t["algorithm"] == "ERM")
                lines.append(f"  LPA at {layer} - ERM: {paired}")
        elif fig == "fig7":
            lines.append(f"fig7: ERM {erm_text}")
            for param, rows in s[s["algorithm"] == "LPA"].groupby("param", sort=False):
                points = ", ".join(f"{r['value']:g}: {_fmt(r)}" for _, r in rows.iterrows())
                lines.append(f"  {param}: {points}")
        else:
            points = ", ".join(f"{r['method']}: {_fmt(r)}" for _, r in s.iterrows())
            lines.append(f"fig3a: {points}")
            for method in s["method"]:
                if method == "ERM":
                    continue
                paired = _paired_difference(t, t["method"] == method, t["method"] == "ERM")
                lines.append(f"  {method} - ERM: {paired}")
    for name, output in outputs.items():
        lines += [f"{name}: note: {n}" for n in output.notes]
    return lines


def write_summary(path: Path, subtitle: str, command: str, lines: list[str]) -> None:
    """``summary.md``: the protocol, the command that made it and the findings."""
    Path(path).write_text(f"# Figures: {subtitle}\n\nCommand: `{command}`\n\n```\n"
                          + "\n".join(lines) + "\n```\n")
