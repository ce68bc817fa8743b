"""The embedded demo's wall time, from the ``timing.json`` that ``make demo`` writes."""

from __future__ import annotations

import json
from pathlib import Path

__all__ = ["DEMO_FIELDS", "demo_record"]

#: what the demo's ``timing.json`` holds (and the demo record copies).
DEMO_FIELDS = ("sweep_wall_time_s", "total_wall_time_s", "jobs", "jobs_run", "commit",
               "domainbed_commit", "machine")


def demo_record(timing_json: Path, root: Path | None = None) -> dict:
    """A ``"demo"`` record with :data:`DEMO_FIELDS` (None where absent), or a ``note`` saying
    why there is none (no file: run ``make demo``; unreadable; no sweep wall time). Under
    ``root`` the file is named relative to it (reports name no machine's paths)."""
    timing_json = Path(timing_json)
    shown = timing_json
    if root is not None and timing_json.is_relative_to(root):
        shown = timing_json.relative_to(root)
    rec = {"kind": "demo", "source": str(shown), **dict.fromkeys(DEMO_FIELDS)}
    if not timing_json.exists():
        rec["note"] = f"{shown} does not exist (run `make demo` first); skipped"
        return rec
    try:
        data = json.loads(timing_json.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        rec["note"] = f"{shown} is not readable JSON ({exc}); rerun `make demo`"
        return rec
    if not isinstance(data, dict) or not isinstance(data.get("sweep_wall_time_s"),
                                                    (int, float)):
        rec["note"] = f"no numeric sweep_wall_time_s in {shown}; rerun `make demo`"
        return rec
    rec.update({k: data.get(k) for k in DEMO_FIELDS})
    return rec
