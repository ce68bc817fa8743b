"""Counting host-device synchronizations per call, with ``torch.cuda.set_sync_debug_mode``.

In ``"warn"`` mode PyTorch emits a ``UserWarning`` "called a synchronizing CUDA operation" at
every operation that makes the host wait for the GPU (``.item()``, ``torch.unique``,
boolean-mask indexing, a ``bincount`` without ``minlength`` bound...). :class:`SyncCounter`
turns the mode on, counts those warnings instead of printing them, attributes each to the call
wrapped by :meth:`SyncCounter.wrap` that was running (an algorithm's ``update``), and records
where it came from: the innermost frame of this package or of DomainBed.
"""

from __future__ import annotations

import collections
import statistics
import traceback
import warnings
from pathlib import PurePath
from typing import Callable

__all__ = ["SYNC_MESSAGE", "SyncCounter", "site_of"]

#: the text of PyTorch's warning in sync debug mode "warn".
SYNC_MESSAGE = "called a synchronizing CUDA operation"
_PACKAGES = ("lpa_domainbed", "domainbed")


def site_of(stack: list[traceback.FrameSummary]) -> str:
    """``package/module.py:line (code)`` of the innermost frame of this package or DomainBed
    (a path relative to the package, never the machine's), else ``<elsewhere>``."""
    for frame in reversed(stack):
        parts = PurePath(frame.filename).parts
        if "gpu_check" in parts:  # this tool's own wrappers, not where the sync comes from
            continue
        for i in range(len(parts) - 1, -1, -1):
            if parts[i] in _PACKAGES:
                code = (frame.line or "").split("#")[0].strip()
                code = code if len(code) <= 60 else code[:57] + "..."
                return f"{'/'.join(parts[i:])}:{frame.lineno} ({code})"
    return "<elsewhere>"


class SyncCounter:
    """Sync debug mode "warn" while active; per wrapped call, the syncs it caused.

    ``calls[key]``: syncs of each call of ``key`` in order; ``sites[key]``: where they came
    from (a Counter). Syncs outside any wrapped call count under ``"<outside>"``.
    ``set_mode=False`` leaves torch's mode alone (tests without CUDA emit the warning
    themselves).
    """

    def __init__(self, set_mode: bool = True):
        self.set_mode = set_mode
        self.calls: dict[str, list[int]] = collections.defaultdict(list)
        self.sites: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
        self.outside = 0
        self._current: str | None = None
        self._running = 0

    def __enter__(self) -> "SyncCounter":
        self._catch = warnings.catch_warnings()
        self._catch.__enter__()
        warnings.filterwarnings("always", message=SYNC_MESSAGE)
        self._show = warnings.showwarning
        warnings.showwarning = self._on_warning
        if self.set_mode:
            import torch

            self._mode = torch.cuda.get_sync_debug_mode()
            torch.cuda.set_sync_debug_mode("warn")
        return self

    def __exit__(self, *exc):
        if self.set_mode:
            import torch

            torch.cuda.set_sync_debug_mode(self._mode)
        self._catch.__exit__(*exc)
        return False

    def _on_warning(self, message, category, filename, lineno, file=None, line=None):
        if SYNC_MESSAGE not in str(message):
            return self._show(message, category, filename, lineno, file, line)
        if self._current is None:
            self.outside += 1
            key = "<outside>"
        else:
            self._running += 1
            key = self._current
        self.sites[key][site_of(traceback.extract_stack()[:-1])] += 1

    def wrap(self, key: str, fn: Callable) -> Callable:
        """``fn`` whose calls count their syncs under ``key``."""
        def counted(*args, **kwargs):
            outer, outer_running = self._current, self._running
            self._current, self._running = key, 0
            try:
                return fn(*args, **kwargs)
            finally:
                self.calls[key].append(self._running)
                self._current, self._running = outer, outer_running + self._running
        return counted

    def summary(self, key: str, skip_first: int = 1) -> dict:
        """Syncs per call of ``key`` (the first ``skip_first`` calls left out of the median and
        maximum: warm-up), and the sites over all calls, most frequent first."""
        counts = self.calls.get(key, [])
        steady = counts[skip_first:] or counts
        return {"calls": len(counts), "per_call": counts,
                "median": statistics.median(steady) if steady else None,
                "max": max(steady) if steady else None,
                "sites": dict(self.sites.get(key, collections.Counter()).most_common())}
