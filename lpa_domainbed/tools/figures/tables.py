"""Run records as tidy tables (one row per run, or per run and class) and their summary:
mean and DomainBed's standard error over trials."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from lpa_domainbed.tools.figures.plans import RunSpec

__all__ = ["accuracy_table", "fig1_table", "summarize"]


def accuracy_table(rows: list[tuple[RunSpec, dict]], records: dict[RunSpec, dict]
                   ) -> pd.DataFrame:
    """One row per run: the labels, ``test_env``, ``trial``, ``acc`` (held-out in-split
    accuracy, %, at the selected checkpoint) and ``step`` (the selected checkpoint)."""
    out = []
    for spec, labels in rows:
        if spec not in records:
            continue
        selected = records[spec]["selected"]
        out.append({**labels, "test_env": spec.test_env, "trial": spec.trial,
                    "acc": 100 * selected["test_acc"], "step": selected["step"]})
    return pd.DataFrame(out)


def fig1_table(rows: list[tuple[RunSpec, dict]], records: dict[RunSpec, dict]
               ) -> pd.DataFrame:
    """One row per run and class: ``algorithm``, ``layer``, ``test_env``, ``trial``,
    ``class``, ``rel`` (``E|a~ - a| / E|a|`` on the held-out in-split, selected checkpoint)."""
    out = []
    for spec, labels in rows:
        probe = records.get(spec, {}).get("selected", {}).get("probe")
        if not probe:
            continue
        for layer, stats in probe.items():
            for cls, rel in enumerate(stats["rel"]):
                out.append({**labels, "layer": layer, "test_env": spec.test_env,
                            "trial": spec.trial, "class": cls,
                            "rel": float("nan") if rel is None else rel})
    return pd.DataFrame(out)


def summarize(table: pd.DataFrame, by: list[str], value: str = "acc") -> pd.DataFrame:
    """Mean and standard error over trials of the per-trial average over held-out domains.

    Columns: ``by``, ``mean``, ``se`` (DomainBed's ``std(v / sqrt(n))``, 0 for one trial),
    ``n_trials``, ``n_test_envs``.
    """
    columns = [*by, "mean", "se", "n_trials", "n_test_envs"]
    if table.empty:
        return pd.DataFrame(columns=columns)
    # dropna=False: ERM has no layer / hparam value (NaN) but is a group of its own.
    per_trial = table.groupby([*by, "trial"], sort=False, dropna=False)[value].mean()
    grouped = per_trial.reset_index().groupby(by, sort=False, dropna=False)[value]
    summary = pd.DataFrame({
        "mean": grouped.mean(),
        "se": grouped.agg(lambda v: float(np.std(np.asarray(v) / math.sqrt(len(v))))),
        "n_trials": grouped.count(),
        "n_test_envs": table.groupby(by, sort=False, dropna=False)["test_env"].nunique(),
    }).reset_index()
    return summary[columns]
