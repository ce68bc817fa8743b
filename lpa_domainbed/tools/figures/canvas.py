"""The matplotlib scaffolding shared by the figures: a figure on the Agg canvas, titles and
notes, empty panels, the ERM reference band."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

__all__ = ["new_figure", "finish", "no_data", "flag", "erm_band"]


def new_figure(width: float, height: float, ncols: int = 1):
    """A matplotlib figure on the Agg canvas (no pyplot global state) and its axes."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height))
    FigureCanvasAgg(figure)
    axes = figure.subplots(1, ncols, squeeze=False)[0]
    return figure, list(axes)


def finish(figure, axes, title: str, subtitle: str, notes: list[str], path: Path) -> None:
    """Title, subtitle, notes (missing inputs) under the plot, then save as PNG."""
    figure.suptitle(title, fontsize="medium", fontweight="bold")
    lines = [subtitle] + [f"Note: {n}" for n in notes]
    figure.text(0.5, 0.005, "\n".join(lines), ha="center", va="bottom", fontsize="x-small",
                wrap=True)
    figure.tight_layout(rect=(0, 0.04 + 0.03 * len(lines), 1, 0.97))
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=130)


def no_data(axes, message: str) -> None:
    """An empty panel that says why it is empty."""
    axes.text(0.5, 0.5, message, ha="center", va="center", transform=axes.transAxes)
    axes.set_xticks([])
    axes.set_yticks([])


def flag(table: pd.DataFrame, column: str) -> pd.Series:
    """A boolean column, all False where the table lacks it (fabricated or partial inputs)."""
    if column not in table:
        return pd.Series(False, index=table.index)
    return table[column].fillna(False).astype(bool)


def erm_band(axes, erm: pd.DataFrame, label: str = "ERM") -> None:
    """ERM's mean as a horizontal line and ± one standard error as a band."""
    mean, se = float(erm["mean"].iloc[0]), float(erm["se"].iloc[0])
    axes.axhline(mean, color="0.3", linestyle="--", linewidth=1.2,
                 label=f"{label} {mean:.1f} ± {se:.1f}")
    axes.axhspan(mean - se, mean + se, color="0.6", alpha=0.25, linewidth=0)
