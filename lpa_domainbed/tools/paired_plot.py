"""Forest plot of paired differences against a baseline (see :mod:`lpa_domainbed.tools.paired`):
one panel per held-out domain and the dataset average, one line per algorithm (or --pair)."""

import math

import numpy as np

from lpa_domainbed.tools.tables_write import png_bytes

__all__ = ["plot_forest"]


def plot_forest(rows, title):
    """``rows`` (one dataset and selection of :func:`paired.compute_paired`) as PNG bytes.

    Each algorithm: mean difference (points) with its 95% interval as a horizontal bar, red
    where the interval excludes 0; a hollow marker where there is no interval (fewer than 2
    pairs); a dashed zero line.
    Returns None when no comparison has a pair.
    """
    if not (rows["n_pairs"] > 0).any():
        return None
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    columns = list(dict.fromkeys(rows.test_env))
    names = list(dict.fromkeys(rows.label))
    figure = Figure(figsize=(2.2 * len(columns) + 1.5, 0.35 * len(names) + 1.4))
    FigureCanvasAgg(figure)
    axes = figure.subplots(1, len(columns), sharey=True, squeeze=False)[0]
    y = np.arange(len(names))[::-1]  # first algorithm on top
    for ax, column in zip(axes, columns):
        part = rows[rows.test_env == column].set_index("label").reindex(names)
        with_ci = part["ci_low"].notna().to_numpy()
        mean, low, high = (part[k].to_numpy(dtype=float)
                           for k in ("mean_diff", "ci_low", "ci_high"))
        excludes_zero = (part["excludes_zero"] == True).to_numpy()  # noqa: E712 (NaN: False)
        for shown, color in ((with_ci & ~excludes_zero, "tab:blue"),
                             (with_ci & excludes_zero, "tab:red")):
            ax.errorbar(mean[shown], y[shown], capsize=2, fmt="o", color=color,
                        xerr=[mean[shown] - low[shown], high[shown] - mean[shown]])
        alone = ~with_ci & ~np.isnan(mean)
        ax.plot(mean[alone], y[alone], "o", mfc="none", color="tab:gray")
        ax.axvline(0, color="black", linewidth=0.8, linestyle="--")
        ax.set_title(str(column), fontsize="medium")
        ax.set_xlabel("difference (points)")
        finite = np.concatenate([v[~np.isnan(v)] for v in (mean, low, high)])
        if not finite.size:  # a held-out domain where no algorithm has a pair yet
            ax.text(0.5, 0.5, "no pairs", transform=ax.transAxes, ha="center",
                    color="tab:gray")
            continue
        low_end, high_end = min(finite.min(), 0), max(finite.max(), 0)  # zero always shown
        if not math.isclose(low_end, high_end):
            pad = 0.1 * (high_end - low_end)
            ax.set_xlim(low_end - pad, high_end + pad)
    axes[0].set_yticks(y, names)
    figure.suptitle(title, fontsize="medium")
    figure.tight_layout()
    return png_bytes(figure)
