"""The clocks and what is timed: one ``algorithm.update`` and, at each PGD cut, one step's
tail evaluation (``t_tail``) with the package's own tail machinery."""

from __future__ import annotations

import time

import torch
import torch.nn.functional as F

from lpa_domainbed.perturb.pgd import search_region
from lpa_domainbed.tools.bench.config import NetworkSpec, Variant
from lpa_domainbed.tools.bench.networks import build

__all__ = ["Clock", "time_update", "TailProbe"]


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
    own :class:`~lpa_domainbed.perturb.tail.CutForward` on an untimed copy of the network;
    for each of ``precisions`` other than float32, the reduced-precision search's first tail
    evaluation (``t_tail_bfloat16``, which casts the tail's weights) and a later one
    (``t_tail_bfloat16_cached``, which reuses them), in one :func:`search_region` as the
    search runs them."""

    def __init__(self, net: NetworkSpec, cut_names: list[str], device: str, batch: list,
                 clock: Clock, precisions: tuple[str, ...] = ("float32",)):
        from lpa_domainbed.perturb.layers import resolve_cuts
        from lpa_domainbed.perturb.tail import CutForward

        self.device, self.clock = device, clock
        self.reduced = [p for p in precisions if p != "float32"]  # e.g. bfloat16 autocast
        self.model = build(Variant("ERM", "-"), net, device)
        self.cuts = resolve_cuts(self.model, cut_names) if cut_names else []
        self.forward = CutForward(self.model.network, self.cuts)
        self.params = [p for p in self.model.network.parameters() if p.requires_grad]
        self.x = torch.cat([x for x, _ in batch])
        self.y = torch.cat([y for _, y in batch])

    def measure(self) -> dict[str, dict[str, float]]:
        times: dict[str, dict[str, float]] = {}
        y, clock = self.y, self.clock

        def on_cut(cut, a, tail):
            with torch.enable_grad():
                z = a.detach().requires_grad_(True)
                t0 = clock()
                losses = F.cross_entropy(tail(z).float(), y, reduction="none")
                torch.autograd.grad(losses.sum(), z)
                t1 = clock()
                losses = F.cross_entropy(tail(z).float(), y, reduction="none")
                t2 = clock()
                torch.autograd.grad(losses.sum(), [z, *self.params], allow_unused=True)
                t3 = clock()
                times[cut.name] = {"tail": t1 - t0, "clean_backward": t3 - t2}
                for precision in self.reduced:  # the search's tails, in one region
                    with search_region(z.device, precision) as evaluation:
                        for key in (f"tail_{precision}", f"tail_{precision}_cached"):
                            t4 = clock()
                            with evaluation():
                                logits = tail(z)
                            losses = F.cross_entropy(logits.float(), y, reduction="none")
                            torch.autograd.grad(losses.sum(), z)
                            times[cut.name][key] = clock() - t4
            return None

        with torch.no_grad():  # the untimed rest of the real pass needs no graph
            self.forward.run(self.x, on_cut)
        return times
