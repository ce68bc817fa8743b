"""Speed and peak memory of every algorithm's training update, relative to ERM (issue 5).

    python -m lpa_domainbed.bench [--quick] [--device cpu|cuda] [--out results/benchmarks]

(``make bench``.) What it measures, in one process:

* **Time.** For each network, every variant (ERM, LPA exact / amortized / low-rank, LPL,
  LPA_LPL, Dropout, ManifoldMixup, ADA, and any other registered algorithm) is built from the
  same seed, so all share the architecture, the initial weights and the batch. After warm-up
  updates, the real ``algorithm.update(minibatches)`` that DomainBed's training loop calls is
  timed in round-robin order (each round visits every variant once, starting one further
  along each time), for several rounds. ``time_ms`` is the median over rounds;
  ``ratio_vs_erm`` is the median over rounds of the same-round ratio ``t_alg / t_ERM`` (pairing
  within a round cancels slow drifts of the machine's load).
* **Analytic floor of exact PGD.** ``floor = 1 + T * t_tail / t_step``: ``t_step`` is one ERM
  update, ``t_tail`` one evaluation of the layers after the cut plus the backward to the cut's
  input, timed with the real machinery (``CutForward.tail`` inside a ``CutForward.run`` hook,
  then ``torch.autograd.grad(loss, z)``, as one PGD step does) and interleaved with the
  updates. Several cuts (LPA_LPL) add their terms. ADA with ``ada_clean_weight > 0`` also
  trains on the clean loss: its backward through the tail (with weight gradients) is extra
  work, reported as ``floor_with_clean_ratio = floor + t_clean_backward / t_step``.
* **Peak memory** of one update, after the timing rounds:
  ``peak = resident + transient``. ``resident`` is the bytes held when the update starts by
  what the algorithm owns (parameters, gradients, buffers, optimizer state, its own tensors
  such as LPA's stored perturbations) plus the batch; ``transient`` is the highest net
  increase of allocated bytes during the update. On CUDA it is
  ``torch.cuda.max_memory_allocated() - memory_allocated()`` before; on CPU, which has no
  allocator statistics, it comes from ``torch.profiler`` with ``profile_memory=True``: every
  allocation and free of PyTorch's CPU allocator is recorded in order, and the transient peak
  is the maximum of their running sum. ``peak_mem_ratio`` compares ``peak`` with ERM's;
  ``transient_mem_ratio`` compares the transient parts only (the stricter view).

Outputs ``<out>/latest.json`` and ``<out>/latest.md``. The JSON is a list of records, each
with ``kind``: ``"benchmark"`` (one per network and variant: network, algorithm, mode,
time_ms, ratio_vs_erm, floor_ratio (null where no PGD search runs), peak_mem_ratio, ...,
machine), ``"target"`` (one per target and network, with ``met``) and ``"demo"`` (the wall
time of the embedded demo sweep, parsed from ``results/demo/RUN.md``, or why it is missing).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import math
import os
import platform
import re
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F

__all__ = ["NetworkSpec", "Variant", "Settings", "NETWORKS", "variants", "run", "main",
           "benchmark_network", "evaluate_targets", "describe_machine", "demo_record"]

REPO = Path(__file__).resolve().parents[1]


# -- what is benchmarked ------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class NetworkSpec:
    """A DomainBed network and the batch it is fed.

    ``input_shape`` picks DomainBed's featurizer (its ``Featurizer`` chooses ResNet for
    224x224 inputs only); ``feed_shape`` is the image size actually fed (ResNets are
    resolution-agnostic, so a smaller image keeps a CPU benchmark short).
    """

    name: str
    dataset: str  # for DomainBed's default hparams
    input_shape: tuple[int, ...]
    feed_shape: tuple[int, ...]
    num_classes: int
    num_domains: int  # training domains in one update
    per_domain: int
    hparams: dict = dataclasses.field(default_factory=dict)

    @property
    def batch_size(self) -> int:
        return self.num_domains * self.per_domain

    def describe(self) -> str:
        shape = "x".join(map(str, self.feed_shape))
        return (f"{self.name}: input {shape} (built for {'x'.join(map(str, self.input_shape))}), "
                f"batch {self.num_domains} domains x {self.per_domain} = {self.batch_size}, "
                f"{self.num_classes} classes, DomainBed default hparams of {self.dataset}")


RESNET50 = NetworkSpec("ResNet-50", "PACS", (3, 224, 224), (3, 96, 96), 7, 3, 4,
                       {"resnet18": False, "resnet50_augmix": False})
MNIST_CNN = NetworkSpec("MNIST_CNN", "Debug28", (3, 28, 28), (3, 28, 28), 10, 3, 32)
NETWORKS = {"resnet50": RESNET50, "mnist_cnn": MNIST_CNN}


@dataclasses.dataclass(frozen=True)
class Variant:
    """An algorithm and the hparams that select one of its modes."""

    algorithm: str
    mode: str
    overrides: dict = dataclasses.field(default_factory=dict)

    @property
    def key(self) -> str:
        return self.algorithm if self.mode == "-" else f"{self.algorithm}[{self.mode}]"


def variants() -> list[Variant]:
    """ERM, every mode named in issue 5, then any other registered algorithm (defaults)."""
    from lpa_domainbed.algorithms import load

    explicit = [
        Variant("ERM", "-"),
        Variant("LPA", "exact", {"lpa_mode": "exact", "lpa_steps": 3, "lpa_lowrank": 0.0,
                                 "perturb_layer": "default"}),
        Variant("LPA", "amortized", {"lpa_mode": "amortized"}),
        Variant("LPA", "lowrank", {"lpa_mode": "exact", "lpa_lowrank": 0.25}),
        Variant("LPL", "exact"),
        Variant("LPA_LPL", "exact"),
        Variant("Dropout", "element"),
        Variant("ManifoldMixup", "-"),
        Variant("ADA", "clean_w=0.5", {"ada_clean_weight": 0.5}),
        Variant("ADA", "clean_w=0", {"ada_clean_weight": 0.0}),
    ]
    covered = {v.algorithm for v in explicit}
    return explicit + [Variant(name, "default") for name in load() if name not in covered]


@dataclasses.dataclass(frozen=True)
class Settings:
    """Repetitions, and the clock: ``cpu`` (process CPU time, robust to other processes on a
    shared machine; exact for one thread) or ``wall``. ``threads``: torch intra-op threads
    (``None``: leave torch's default)."""

    warmup: int = 2
    rounds: int = 7
    tail_reps: int = 1  # tail evaluations timed per round (their median is kept)
    mem_reps: int = 2  # profiled updates per variant; the largest peak is kept
    clock: str = "cpu"
    threads: int | None = 1

    @classmethod
    def quick(cls, **kw) -> "Settings":
        return cls(warmup=1, rounds=2, mem_reps=1, **kw)


# -- the machine ----------------------------------------------------------------------------
def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def describe_machine(device: str) -> dict:
    info = {
        "cpu": _cpu_model(),
        "cpu_cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "device": device,
    }
    if device == "cuda":
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def _machine_line(m: dict) -> str:
    dev = f"CUDA ({m['gpu']})" if m["device"] == "cuda" else "CPU"
    return (f"{m['cpu']}, {m['cpu_cores']} cores ({m['torch_threads']} torch threads), "
            f"device {dev}; torch {m['torch']}, Python {m['python']}, {m['platform']}")


# -- building -----------------------------------------------------------------------------
@contextlib.contextmanager
def offline_resnet_weights():
    """A temporary TORCH_HOME with randomly initialized ResNet-50 weights under the file name
    torchvision's pretrained loader looks for (DomainBed always asks for pretrained weights;
    timing needs the architecture only, and nothing is downloaded)."""
    import torchvision

    saved = os.environ.get("TORCH_HOME")
    with tempfile.TemporaryDirectory(prefix="lpa_bench_torch_home_") as home:
        checkpoints = Path(home) / "hub" / "checkpoints"
        checkpoints.mkdir(parents=True)
        url = torchvision.models.ResNet50_Weights.IMAGENET1K_V1.url
        state = torch.random.get_rng_state()
        torch.manual_seed(0)
        torch.save(torchvision.models.resnet50().state_dict(),
                   checkpoints / os.path.basename(url))
        torch.random.set_rng_state(state)
        os.environ["TORCH_HOME"] = home
        try:
            yield home
        finally:
            if saved is None:
                os.environ.pop("TORCH_HOME", None)
            else:
                os.environ["TORCH_HOME"] = saved


def build(variant: Variant, net: NetworkSpec, device: str):
    from domainbed import algorithms, hparams_registry

    hparams = hparams_registry.default_hparams(variant.algorithm, net.dataset)
    hparams.update(net.hparams)
    hparams.update(variant.overrides)
    torch.manual_seed(0)
    with warnings.catch_warnings():  # torchvision's notes on DomainBed's pretrained=True
        warnings.filterwarnings("ignore", message=".*(pretrained|weight enum).*",
                                category=UserWarning)
        alg = algorithms.get_algorithm_class(variant.algorithm)(
            net.input_shape, net.num_classes, net.num_domains + 1, hparams)
    return alg.to(device).train()


def make_batch(net: NetworkSpec, device: str, seed: int = 0) -> list:
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(net.per_domain, *net.feed_shape, generator=g).to(device),
             torch.randint(0, net.num_classes, (net.per_domain,), generator=g).to(device))
            for _ in range(net.num_domains)]


# -- timing ---------------------------------------------------------------------------------
def _sync(device: str):
    if device == "cuda":
        torch.cuda.synchronize()


class Clock:
    """``now()`` of the chosen clock: wall (``perf_counter``) or CPU (``process_time``)."""

    def __init__(self, kind: str, device: str):
        if kind not in ("wall", "cpu"):
            raise ValueError(f"clock must be 'wall' or 'cpu', got {kind!r}")
        if kind == "cpu" and device == "cuda":
            raise ValueError("the cpu clock does not see GPU work: use --clock wall on CUDA")
        self.kind, self.device = kind, device
        self.now = time.perf_counter if kind == "wall" else time.process_time

    def __call__(self) -> float:
        _sync(self.device)
        return self.now()


def time_update(alg, batch, clock: Clock) -> tuple[float, float, float]:
    """(time on ``clock``, wall time, CPU time) of one ``alg.update(batch)``."""
    _sync(clock.device)
    w0, c0 = time.perf_counter(), time.process_time()
    alg.update(batch)  # returns .item()s: the step has finished when it returns
    _sync(clock.device)
    wall, cpu = time.perf_counter() - w0, time.process_time() - c0
    return (wall if clock.kind == "wall" else cpu), wall, cpu


class TailProbe:
    """Times, at each cut, one PGD step's tail evaluation ``f_{l+1:L}(z)`` plus the backward
    to ``z`` (``t_tail``), and the extra backward of a clean term that trains the tail
    (``t_clean_backward``: its backward to ``z`` and the tail's weights), with the package's
    own :class:`~lpa_domainbed.perturb.tail.CutForward` on an untimed copy of the network."""

    def __init__(self, net: NetworkSpec, cut_names: list[str], device: str, batch: list,
                 clock: Clock):
        from lpa_domainbed.perturb.layers import resolve_cuts
        from lpa_domainbed.perturb.tail import CutForward

        self.device, self.clock = device, clock
        self.model = build(Variant("ERM", "-"), net, device)
        self.cuts = resolve_cuts(self.model, cut_names) if cut_names else []
        self.forward = CutForward(self.model.network, self.cuts)
        self.params = [p for p in self.model.network.parameters() if p.requires_grad]
        self.x = torch.cat([x for x, _ in batch])
        self.y = torch.cat([y for _, y in batch])

    def measure(self) -> dict[str, dict[str, float]]:
        times: dict[str, dict[str, float]] = {}
        y, clock = self.y, self.clock

        def on_cut(cut, a, forward):
            with torch.enable_grad():
                z = a.detach().requires_grad_(True)
                t0 = clock()
                losses = F.cross_entropy(forward.tail(z, cut).float(), y, reduction="none")
                torch.autograd.grad(losses.sum(), z)
                t1 = clock()
                losses = F.cross_entropy(forward.tail(z, cut).float(), y, reduction="none")
                t2 = clock()
                torch.autograd.grad(losses.sum(), [z, *self.params], allow_unused=True)
                t3 = clock()
            times[cut.name] = {"tail": t1 - t0, "clean_backward": t3 - t2}
            return None

        with torch.no_grad():  # the untimed rest of the real pass needs no graph
            self.forward.run(self.x, on_cut)
        return times


def _pgd_steps(alg) -> int | None:
    for name in ("lpa_steps", "ada_steps"):
        if name in alg.hparams:
            return int(alg.hparams[name])
    steps = [v for k, v in alg.hparams.items() if k.endswith("_steps") and k != "linear_steps"]
    return int(steps[0]) if steps else None


def _runs_pgd(alg) -> bool:
    return bool(getattr(alg, "PGD", False)) and alg.hparams.get("lpa_mode") != "amortized"


# -- memory ---------------------------------------------------------------------------------
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
    for state in alg.optimizer.state.values():
        tensors += list(_tensors_in(state))
    for value in vars(alg).values():  # the algorithm's own tensors (e.g. stored perturbations)
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


# -- one network --------------------------------------------------------------------------
def _log(msg: str, log: Callable[[str], None] | None):
    if log is not None:
        log(msg)


def benchmark_network(net: NetworkSpec, variant_list: list[Variant], settings: Settings,
                      device: str = "cpu", log: Callable[[str], None] | None = print
                      ) -> list[dict]:
    """Time and measure every variant on ``net``; returns one record per variant."""
    if variant_list[0].algorithm != "ERM":
        raise ValueError("the first variant must be ERM (the reference)")
    _log(f"==> {net.describe()}", log)
    clock = Clock(settings.clock, device)
    batch = make_batch(net, device)
    algs = {}
    for v in variant_list:
        algs[v.key] = build(v, net, device)
    keys = list(algs)
    pgd_cuts = sorted({c.name for a in algs.values() if _runs_pgd(a) for c in a.cuts})
    probe = TailProbe(net, pgd_cuts, device, batch, clock) if pgd_cuts else None

    _log(f"    warm-up: {settings.warmup} update(s) per variant; then {settings.rounds} rounds, "
         f"each timing every variant's update() once (round-robin) and the tail "
         f"(t_tail: CutForward.tail + grad to the cut) at the PGD cuts {pgd_cuts}", log)
    for _ in range(settings.warmup):
        for key in keys:
            algs[key].update(batch)
        if probe:
            probe.measure()

    times = {k: [] for k in keys}
    walls = {k: [] for k in keys}
    cpus = {k: [] for k in keys}
    tails: list[dict] = []
    items = keys + (["<tail>"] if probe else [])
    for r in range(settings.rounds):
        order = items[r % len(items):] + items[:r % len(items)]
        round_tail = []
        for item in order:
            if item == "<tail>":
                for _ in range(settings.tail_reps):
                    round_tail.append(probe.measure())
            else:
                t, wall, cpu = time_update(algs[item], batch, clock)
                times[item].append(t)
                walls[item].append(wall)
                cpus[item].append(cpu)
        tails.append({name: {part: statistics.median(t[name][part] for t in round_tail)
                             for part in ("tail", "clean_backward")}
                      for name in (round_tail[0] if round_tail else {})})
        summary = "  ".join(f"{k} {1e3 * times[k][-1]:.0f}" for k in keys)
        _log(f"    round {r + 1}/{settings.rounds} (ms): {summary}", log)

    erm = times[keys[0]]
    records = []
    for v in variant_list:
        alg = algs[v.key]
        t = times[v.key]
        ratio = statistics.median(ti / te for ti, te in zip(t, erm))
        floor = floor_clean = None
        tail_ms = {}
        if _runs_pgd(alg) and probe is not None and _pgd_steps(alg):
            steps = _pgd_steps(alg)
            clean_w = float(alg.hparams.get("ada_clean_weight", 0.0))
            floors, floors_clean = [], []
            for rt, te in zip(tails, erm):
                extra = sum(steps * rt[c.name]["tail"] for c in alg.cuts)
                clean = sum(rt[c.name]["clean_backward"] for c in alg.cuts) if clean_w > 0 else 0.0
                floors.append(1 + extra / te)
                floors_clean.append(1 + (extra + clean) / te)
            floor = statistics.median(floors)
            floor_clean = statistics.median(floors_clean)
            tail_ms = {c.name: 1e3 * statistics.median(rt[c.name]["tail"] for rt in tails)
                       for c in alg.cuts}
        records.append({
            "kind": "benchmark",
            "network": net.name,
            "algorithm": v.algorithm,
            "mode": v.mode,
            "hparams": dict(v.overrides),
            "cuts": [c.name for c in getattr(alg, "cuts", [])],
            "clock": settings.clock,
            "time_ms": 1e3 * statistics.median(t),
            "time_ms_all": [1e3 * x for x in t],
            "wall_ms": 1e3 * statistics.median(walls[v.key]),
            "cpu_ms": 1e3 * statistics.median(cpus[v.key]),
            "ratio_vs_erm": ratio,
            "ratio_vs_erm_wall": statistics.median(
                a / b for a, b in zip(walls[v.key], walls[keys[0]])),
            "floor_ratio": floor,
            "floor_with_clean_ratio": floor_clean,
            "ratio_vs_floor": None if floor is None else ratio / floor,
            "ratio_vs_floor_with_clean": None if floor_clean is None else ratio / floor_clean,
            "pgd_steps": _pgd_steps(alg) if floor is not None else None,
            "tail_ms": tail_ms or None,
            "input_shape": list(net.feed_shape),
            "batch_size": net.batch_size,
            "num_classes": net.num_classes,
            "rounds": settings.rounds,
            "warmup": settings.warmup,
            "torch_threads": torch.get_num_threads(),
        })
        _log(f"    {v.key:>24}: {records[-1]['time_ms']:8.1f} ms  x{ratio:.3f} ERM"
             + ("" if floor is None else f"  floor x{floor:.3f}  (x{ratio / floor:.3f} floor)"),
             log)

    _log(f"    peak memory ({settings.mem_reps} profiled update(s) per variant, the largest): "
         f"resident (parameters, grads, buffers, optimizer state, own state, batch) + the "
         f"update's highest net allocation ("
         + ("torch.cuda.max_memory_allocated" if device == "cuda" else
            "running sum of the CPU allocator's events from torch.profiler(profile_memory=True)")
         + ")", log)
    for rec, v in zip(records, variant_list):
        rec.update(measure_memory(algs[v.key], batch, device, settings.mem_reps))
    erm_mem = records[0]
    for rec in records:
        rec["peak_mem_ratio"] = rec["peak_bytes"] / erm_mem["peak_bytes"]
        rec["transient_mem_ratio"] = rec["transient_bytes"] / max(erm_mem["transient_bytes"], 1)
        _log(f"    {rec['algorithm'] + ('' if rec['mode'] == '-' else '[' + rec['mode'] + ']'):>24}"
             f": peak {rec['peak_bytes'] / 2**20:8.1f} MiB (x{rec['peak_mem_ratio']:.3f} ERM; "
             f"transient x{rec['transient_mem_ratio']:.3f})", log)
    return records


# -- targets --------------------------------------------------------------------------------
FLOOR_LIMIT = 1.10
CHEAP_LIMIT = 1.05
MEM_LIMIT = 1.30
LOWRANK_LIMIT = 1.00


def evaluate_targets(records: list[dict]) -> list[dict]:
    """Issue 5's targets, per network, as records with ``met``."""
    out = []
    bench = [r for r in records if r.get("kind") == "benchmark"]
    for network in dict.fromkeys(r["network"] for r in bench):
        rows = {(r["algorithm"], r["mode"]): r for r in bench if r["network"] == network}

        def target(name, value, limit, what, met=None):
            out.append({"kind": "target", "network": network, "target": name, "value": value,
                        "limit": limit, "what": what,
                        "met": (value is not None and value <= limit) if met is None else met})

        for key, label in ((("LPA", "exact"), "LPA exact (T=3, stage-3 cut)"),
                           (("ADA", "clean_w=0.5"), "ADA (default, clean weight 0.5)"),
                           (("ADA", "clean_w=0"), "ADA (clean weight 0)")):
            row = rows.get(key)
            if not row or not row["floor_ratio"]:
                continue
            if row["floor_with_clean_ratio"] != row["floor_ratio"]:
                # ADA trains on the clean loss too: its backward through the tail is part of
                # the algorithm, so the floor includes it (the plain ratio is in the record)
                target(f"{label} time / analytic floor incl. clean-loss backward",
                       row["ratio_vs_floor_with_clean"], FLOOR_LIMIT,
                       f"ratio_vs_erm / (1 + (T t_tail + t_clean_backward) / t_step) "
                       f"<= {FLOOR_LIMIT}")
            else:
                target(f"{label} time / analytic floor", row["ratio_vs_floor"], FLOOR_LIMIT,
                       f"ratio_vs_erm / (1 + T t_tail / t_step) <= {FLOOR_LIMIT}")
        for key in (("LPA", "amortized"), ("Dropout", "element"), ("ManifoldMixup", "-")):
            if key in rows:
                label = key[0] if key[1] in ("-", "element") else f"{key[0]} {key[1]}"
                target(f"{label} time vs ERM", rows[key]["ratio_vs_erm"], CHEAP_LIMIT,
                       f"ratio_vs_erm <= {CHEAP_LIMIT}")
        if ("LPA", "lowrank") in rows and ("LPA", "exact") in rows:
            low, full = rows[("LPA", "lowrank")], rows[("LPA", "exact")]
            target("LPA low-rank time / full-rank LPA time",
                   statistics.median(a / b for a, b in zip(low["time_ms_all"],
                                                           full["time_ms_all"])),
                   LOWRANK_LIMIT, "no slower than full rank (median same-round ratio <= 1.00)")
        for r in bench:
            if r["network"] != network or r["algorithm"] == "ERM":
                continue
            label = r["algorithm"] + ("" if r["mode"] == "-" else f" {r['mode']}")
            target(f"{label} peak memory vs ERM", r["peak_mem_ratio"], MEM_LIMIT,
                   f"peak_mem_ratio <= {MEM_LIMIT}")
    return out


# -- the demo's wall time -----------------------------------------------------------------
def demo_record(run_md: Path) -> dict:
    rec = {"kind": "demo", "source": str(run_md), "sweep_wall_time_s": None}
    if not run_md.exists():
        rec["note"] = f"{run_md} does not exist (run `make demo` first); skipped"
        return rec
    text = run_md.read_text()
    m = re.search(r"sweep wall time\s+([0-9.]+)\s*s", text)
    if not m:
        rec["note"] = f"no 'sweep wall time N s' in {run_md}; skipped"
        return rec
    rec["sweep_wall_time_s"] = float(m.group(1))
    total = re.search(r"sweep \+ tables\s+([0-9.]+)\s*s", text)
    if total:
        rec["sweep_and_tables_wall_time_s"] = float(total.group(1))
    jobs = re.search(r"Jobs:\s*(\d+)\s*\((\d+) run in this invocation\)", text)
    if jobs:  # a resumed sweep runs only the unfinished jobs
        rec["jobs_total"], rec["jobs_run"] = int(jobs.group(1)), int(jobs.group(2))
    machine = re.search(r"- Machine:\s*(.+)", text)
    if machine:
        rec["machine"] = machine.group(1).strip()
    return rec


# -- reports ---------------------------------------------------------------------------------
def _fmt(value, spec=".3f", none="-"):
    return none if value is None else format(value, spec)


def markdown(records: list[dict], machine: dict, nets: list[NetworkSpec], settings: Settings,
             ) -> str:
    bench = [r for r in records if r["kind"] == "benchmark"]
    targets = [r for r in records if r["kind"] == "target"]
    demo = [r for r in records if r["kind"] == "demo"]
    lines = ["# Training-update benchmark (`python -m lpa_domainbed.bench`)", "",
             f"- Machine: {_machine_line(machine)}",
             f"- Repetitions: {settings.warmup} warm-up update(s), then {settings.rounds} "
             f"interleaved rounds (round-robin over the variants); medians.",
             ]
    for net in nets:
        lines.append(f"- {net.describe()}")
    lines += [
        f"- Timed: the real `algorithm.update(minibatches)` on the {settings.clock} clock"
        + (" (process CPU time: with one torch thread it is the update's own work, little "
           "disturbed by other processes on a shared machine)" if settings.clock == "cpu" else "")
        + ". `x ERM` = median over rounds of the same-round ratio to ERM.",
        "- Floor = `1 + T t_tail / t_step` (exact PGD; `t_tail` = tail forward + backward to the "
        "cut's input with `CutForward.tail`, `t_step` = one ERM update); `+clean` adds ADA's "
        "clean-loss backward through the tail.",
        "- Peak memory = bytes the algorithm holds at the update's start (parameters, grads, "
        "buffers, optimizer state, own state, batch) + the highest net increase during the "
        + ("update (`torch.cuda.max_memory_allocated`)."
           if machine["device"] == "cuda" else
           "update (CPU: running sum of the CPU allocator's allocations/frees recorded by "
           "`torch.profiler(profile_memory=True)`). `transient` compares the increases only."),
        "",
        "| network | algorithm | mode | time (ms) | x ERM | floor | x floor | floor +clean "
        "| x floor +clean | peak mem (MiB) | mem x ERM | transient x ERM |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in bench:
        with_clean = r["floor_with_clean_ratio"] != r["floor_ratio"]
        clean = r["floor_with_clean_ratio"] if with_clean else None
        x_clean = r["ratio_vs_floor_with_clean"] if with_clean else None
        lines.append(
            f"| {r['network']} | {r['algorithm']} | {r['mode']} | {r['time_ms']:.1f} | "
            f"{r['ratio_vs_erm']:.3f} | {_fmt(r['floor_ratio'])} | {_fmt(r['ratio_vs_floor'])} | "
            f"{_fmt(clean)} | {_fmt(x_clean)} | {r['peak_bytes'] / 2**20:.1f} | "
            f"{r['peak_mem_ratio']:.3f} | {r['transient_mem_ratio']:.3f} |")
    lines += ["", "## Targets", "", "| network | target | value | limit | |",
              "|---|---|---:|---:|---|"]
    for t in targets:
        lines.append(f"| {t['network']} | {t['target']} | {_fmt(t['value'])} | {t['limit']:.2f} "
                     f"| {'MET' if t['met'] else 'MISSED'} |")
    if demo:
        d = demo[0]
        lines += ["", "## Embedded demo", ""]
        if d["sweep_wall_time_s"] is not None:
            ran = (f", {d['jobs_run']} of {d['jobs_total']} jobs run in that invocation"
                   if "jobs_run" in d else "")
            lines.append(f"- `make demo` sweep wall time: {d['sweep_wall_time_s']:.0f} s{ran} "
                         f"(from {d['source']}"
                         + (f"; machine: {d['machine']}" if d.get("machine") else "") + ")")
        else:
            lines.append(f"- {d['note']}")
    return "\n".join(lines) + "\n"


def run(nets: list[NetworkSpec], settings: Settings, device: str = "cpu",
        out: Path | None = None, log: Callable[[str], None] | None = print,
        variant_list: list[Variant] | None = None, demo_md: Path | None = None) -> list[dict]:
    """Benchmark ``nets``; write ``latest.json`` / ``latest.md`` under ``out`` (if given)."""
    saved_threads = torch.get_num_threads()
    if settings.threads:
        torch.set_num_threads(settings.threads)
    try:
        machine = describe_machine(device)
        _log(f"==> machine: {_machine_line(machine)}; clock: {settings.clock}", log)
        variant_list = variant_list or variants()
        records = []
        needs_resnet = any(n.input_shape[1:] == (224, 224) for n in nets)
        with offline_resnet_weights() if needs_resnet else contextlib.nullcontext():
            for net in nets:
                records += benchmark_network(net, variant_list, settings, device, log)
    finally:
        torch.set_num_threads(saved_threads)
    for rec in records:
        rec["machine"] = machine
    targets = evaluate_targets(records)
    records += targets
    records.append(demo_record(demo_md if demo_md is not None
                               else REPO / "results" / "demo" / "RUN.md"))
    _log("==> targets", log)
    for t in targets:
        _log(f"    [{'MET' if t['met'] else 'MISSED':>6}] {t['network']}: {t['target']} = "
             f"{_fmt(t['value'])} (limit {t['limit']:.2f})", log)
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        (out / "latest.json").write_text(json.dumps(records, indent=1, default=_json_default)
                                         + "\n")
        md = markdown(records, machine, nets, settings)
        (out / "latest.md").write_text(md)
        _log(f"==> wrote {out / 'latest.json'} and {out / 'latest.md'}", log)
    return records


def _json_default(value):
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return str(value)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lpa_domainbed.bench",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="fewer repetitions and a smaller ResNet input (a smoke run)")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--out", default=str(REPO / "results" / "benchmarks"))
    parser.add_argument("--networks", default="resnet50,mnist_cnn",
                        help=f"comma-separated, from {', '.join(NETWORKS)}")
    parser.add_argument("--rounds", type=int, default=None, help="override the rounds")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads (default: 1 on CPU, so that the CPU clock is exact "
                             "and other processes disturb little; torch's default on CUDA)")
    parser.add_argument("--clock", choices=("cpu", "wall"), default=None,
                        help="default: cpu on CPU with one thread, wall otherwise")
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: CUDA is not available")
    nets = [NETWORKS[n.strip()] for n in args.networks.split(",") if n.strip()]
    threads = args.threads if args.threads is not None else (1 if args.device == "cpu" else None)
    clock = args.clock or ("cpu" if args.device == "cpu" and threads == 1 else "wall")
    settings = (Settings.quick if args.quick else Settings)(clock=clock, threads=threads)
    if args.quick:
        nets = [dataclasses.replace(n, feed_shape=(3, 64, 64), per_domain=2)
                if n is RESNET50 else dataclasses.replace(n, per_domain=8) for n in nets]
    if args.rounds:
        settings = dataclasses.replace(settings, rounds=args.rounds)
    run(nets, settings, args.device, Path(args.out), log=lambda m: print(m, flush=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
