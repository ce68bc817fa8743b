"""Peak memory of one update: what the algorithm holds when it starts (resident) plus the
highest net allocation during it (transient; CUDA allocator statistics, or on CPU the running
sum of the allocator's events recorded by ``torch.profiler``)."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Callable

import torch

__all__ = ["resident_bytes", "measure_memory"]


def _tensors_in(obj, depth=0):
    if isinstance(obj, torch.Tensor):
        yield obj
    elif depth < 3 and isinstance(obj, dict):
        for v in obj.values():
            yield from _tensors_in(v, depth + 1)
    elif depth < 3 and isinstance(obj, (list, tuple)):
        for v in obj:
            yield from _tensors_in(v, depth + 1)


def resident_bytes(alg, batch) -> int:
    """Bytes of the distinct storages the algorithm holds between updates, plus the batch."""
    tensors = []
    for p in alg.parameters():
        tensors += [p] + ([p.grad] if p.grad is not None else [])
    tensors += list(alg.buffers())
    for module in alg.modules():  # a wrapper (SWAD) holds the wrapped algorithm's optimizer
        for value in vars(module).values():
            if isinstance(value, torch.optim.Optimizer):
                for state in value.state.values():
                    tensors += list(_tensors_in(state))
            else:  # the algorithm's own tensors (stored perturbations, SWAD's segment sum)
                tensors += list(_tensors_in(value))
    tensors += [t for pair in batch for t in pair]
    seen, total = set(), 0
    for t in tensors:
        storage = t.untyped_storage()
        key = (str(t.device), storage.data_ptr())
        if key not in seen and storage.data_ptr() != 0:
            seen.add(key)
            total += storage.nbytes()
    return total


def _cpu_transient_peak(fn: Callable[[], object]) -> int:
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    with tempfile.TemporaryDirectory(prefix="lpa_bench_trace_") as tmp:
        path = Path(tmp) / "trace.json"
        prof.export_chrome_trace(str(path))
        events = json.loads(path.read_text())["traceEvents"]
    memory = [e for e in events if e.get("name") == "[memory]"
              and int(e.get("args", {}).get("Device Type", 0)) == 0]
    memory.sort(key=lambda e: (e["ts"], e["args"].get("Ev Idx", 0)))
    running, peak = 0, 0
    for event in memory:
        running += int(event["args"]["Bytes"])
        peak = max(peak, running)
    return peak


def measure_memory(alg, batch, device: str, reps: int = 1) -> dict[str, int]:
    """Peak memory of ``reps`` updates (the largest; algorithms that perturb at random, like
    MixStyle and DSU, do not perturb in every update)."""
    best = None
    for _ in range(max(1, reps)):
        resident = resident_bytes(alg, batch)
        if device == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            before = torch.cuda.memory_allocated()
            alg.update(batch)
            torch.cuda.synchronize()
            transient = torch.cuda.max_memory_allocated() - before
        else:
            transient = _cpu_transient_peak(lambda: alg.update(batch))
        if best is None or resident + transient > best["peak_bytes"]:
            best = {"resident_bytes": resident, "transient_bytes": transient,
                    "peak_bytes": resident + transient}
    return best
