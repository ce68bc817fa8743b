"""One network: every variant's update timed in interleaved rounds, the tail probed for the
floor, then peak memory; one record per variant."""

from __future__ import annotations

import statistics
from typing import Callable

import torch

from lpa_domainbed.tools.bench.config import NetworkSpec, Settings, Variant, search_precision
from lpa_domainbed.tools.bench.floor import floor_ratios, search_steps
from lpa_domainbed.tools.bench.memory import measure_memory
from lpa_domainbed.tools.bench.networks import build, make_batch
from lpa_domainbed.tools.bench.timing import Clock, TailProbe, time_update

__all__ = ["benchmark_network"]


def _log(msg: str, log: Callable[[str], None] | None):
    if log is not None:
        log(msg)


def _rounds(algs: dict, probe, batch, clock: Clock, settings: Settings, log):
    """Round-robin timing: each round visits every variant (and the tail probe) once,
    starting one further along each time, so slow drifts of the machine hit all alike."""
    keys = list(algs)
    times, walls, cpus = ({k: [] for k in keys} for _ in range(3))
    tails: list[dict] = []
    items = keys + (["<tail>"] if probe else [])
    for r in range(settings.rounds):
        order = items[r % len(items):] + items[:r % len(items)]
        round_tail = []
        for item in order:
            if item == "<tail>":
                round_tail += [probe.measure() for _ in range(settings.tail_reps)]
            else:
                t, wall, cpu = time_update(algs[item], batch, clock)
                times[item].append(t)
                walls[item].append(wall)
                cpus[item].append(cpu)
        tails.append({name: {part: statistics.median(t[name][part] for t in round_tail)
                             for part in round_tail[0][name]}
                      for name in (round_tail[0] if round_tail else {})})
        _log(f"    round {r + 1}/{settings.rounds} (ms): "
             + "  ".join(f"{k} {1e3 * times[k][-1]:.0f}" for k in keys), log)
    return times, walls, cpus, tails


def benchmark_network(net: NetworkSpec, variant_list: list[Variant], settings: Settings,
                      device: str = "cpu", log: Callable[[str], None] | None = print,
                      instrument: Callable[[str, object], None] | None = None) -> list[dict]:
    """Time and measure every variant on ``net``; returns one record per variant.
    ``instrument(key, algorithm)``, if given, sees each algorithm once it is built (the GPU
    check counts the synchronizations of its ``update``)."""
    if variant_list[0].algorithm != "ERM":
        raise ValueError("the first variant must be ERM (the reference)")
    _log(f"==> {net.describe()}", log)
    clock = Clock(settings.clock, device)
    batch = make_batch(net, device)
    algs = {v.key: build(v, net, device) for v in variant_list}
    for key, alg in algs.items():
        if instrument is not None:
            instrument(key, alg)
    keys = list(algs)
    pgd_cuts = sorted({c.name for a in algs.values() if search_steps(a) for c in a.cuts})
    precisions = tuple(sorted({search_precision(a.hparams) for a in algs.values()
                               if search_steps(a)}))
    probe = TailProbe(net, pgd_cuts, device, batch, clock, precisions) if pgd_cuts else None
    _log(f"    warm-up: {settings.warmup} update(s) per variant; then {settings.rounds} rounds, "
         f"each timing every variant's update() once (round-robin) and the tail "
         f"(t_tail: CutForward.tail + grad to the cut) at the PGD cuts {pgd_cuts}", log)
    for _ in range(settings.warmup):
        for key in keys:
            algs[key].update(batch)
        if probe:
            probe.measure()
    times, walls, cpus, tails = _rounds(algs, probe, batch, clock, settings, log)

    erm = times[keys[0]]
    records = []
    for v in variant_list:
        alg, t = algs[v.key], times[v.key]
        ratio = statistics.median(ti / te for ti, te in zip(t, erm))
        floor = floor_ratios(alg, tails, erm)
        f, fc = floor["floor_ratio"], floor["floor_with_clean_ratio"]
        records.append({
            "kind": "benchmark", "network": net.name, "network_built": net.network,
            "algorithm": v.algorithm, "mode": v.mode, "hparams": dict(v.overrides),
            "cuts": [c.name for c in getattr(alg, "cuts", [])], "clock": settings.clock,
            "search_precision": search_precision(alg.hparams) if search_steps(alg) else None,
            "time_ms": 1e3 * statistics.median(t), "time_ms_all": [1e3 * x for x in t],
            "wall_ms": 1e3 * statistics.median(walls[v.key]),
            "cpu_ms": 1e3 * statistics.median(cpus[v.key]),
            "ratio_vs_erm": ratio,
            "ratio_vs_erm_wall": statistics.median(
                a / b for a, b in zip(walls[v.key], walls[keys[0]])),
            **floor,
            "ratio_vs_floor": None if f is None else ratio / f,
            "ratio_vs_floor_with_clean": None if fc is None else ratio / fc,
            "input_shape": list(net.feed_shape), "batch_size": net.batch_size,
            "num_classes": net.num_classes, "rounds": settings.rounds,
            "warmup": settings.warmup, "torch_threads": torch.get_num_threads(),
        })
        _log(f"    {v.key:>24}: {records[-1]['time_ms']:8.1f} ms  x{ratio:.3f} ERM"
             + ("" if f is None else f"  floor x{f:.3f}  (x{ratio / f:.3f} floor)"), log)

    _log(f"    peak memory ({settings.mem_reps} profiled update(s) per variant, the largest): "
         "resident (parameters, grads, buffers, optimizer state, own state, batch) + the "
         "update's highest net allocation", log)
    for rec, v in zip(records, variant_list):
        rec.update(measure_memory(algs[v.key], batch, device, settings.mem_reps))
    erm_mem = records[0]
    for rec, v in zip(records, variant_list):
        rec["peak_mem_ratio"] = rec["peak_bytes"] / erm_mem["peak_bytes"]
        rec["transient_mem_ratio"] = rec["transient_bytes"] / max(erm_mem["transient_bytes"], 1)
        _log(f"    {v.key:>24}: peak {rec['peak_bytes'] / 2**20:8.1f} MiB "
             f"(x{rec['peak_mem_ratio']:.3f} ERM; transient x{rec['transient_mem_ratio']:.3f})",
             log)
    return records
