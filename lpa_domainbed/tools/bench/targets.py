"""The targets of :data:`~lpa_domainbed.tools.bench.config.TARGETS` evaluated on the records."""

from __future__ import annotations

import statistics

from lpa_domainbed.tools.bench.config import TARGETS

__all__ = ["evaluate_targets"]


def _label(row: dict) -> str:
    return row["algorithm"] + ("" if row["mode"] in ("-", "element") else f" {row['mode']}")


def _value(target: dict, row: dict, rows: dict):
    if target["metric"] == "same_round_ratio":
        ref = rows.get(target["reference"])
        if ref is None:
            return None
        return statistics.median(a / b for a, b in zip(row["time_ms_all"], ref["time_ms_all"]))
    return row.get(target["metric"])


def evaluate_targets(records: list[dict], targets=TARGETS) -> list[dict]:
    """One ``"target"`` record per target and network it applies to, with ``met``; a target
    whose variant or value is missing (not benchmarked, no floor) is left out."""
    out = []
    bench = [r for r in records if r.get("kind") == "benchmark"]
    for network in dict.fromkeys(r["network"] for r in bench):
        rows = {(r["algorithm"], r["mode"]): r for r in bench if r["network"] == network}
        for target in targets:
            if target.get("networks") and network not in target["networks"]:
                continue
            if target["variant"] == "*":
                chosen = [r for key, r in rows.items() if key[0] != "ERM"]
            else:
                chosen = [rows[target["variant"]]] if target["variant"] in rows else []
            for row in chosen:
                device = row.get("machine", {}).get("device", "cpu")
                if target.get("devices") and device not in target["devices"]:
                    continue
                value = _value(target, row, rows)
                if value is None:
                    continue
                out.append({"kind": "target", "network": network,
                            "target": target["label"].format(variant=_label(row)),
                            "value": value, "limit": target["limit"], "what": target["what"],
                            "met": value <= target["limit"]})
    return out
