"""A forward pass with perturbation hooks, and cheap evaluation of the rest of the network.

PGD-based algorithms need ``f_{l+1:L}(a + delta)`` several times per step (paper eqs. 5, 8).
:class:`CutForward` runs the network once with a forward hook at each cut; inside the hook,
``forward.tail(z, cut)`` evaluates the network again from the cut onwards *without
recomputing the layers before it*: while the network's own ``forward`` runs, every module that
finished before the cut returns the output it produced in the real pass (recorded by a hook),
and the cut module returns ``z``. This works for any network whose modules are called in the
same order on every pass, with no graph tracing, so DomainBed's ResNets (torchvision and
timm), MNIST_CNN, Wide-ResNet and MLP all work unchanged, residual connections across the cut
included.

Tail evaluations leave the network's state untouched: BatchNorm layers still normalize with
batch statistics in training mode but do not update their running statistics, and nothing
writes ``.grad`` (callers differentiate with ``torch.autograd.grad`` w.r.t. ``z`` only).
"""

from __future__ import annotations

import contextlib
import functools
from typing import Callable

import torch
import torch.nn as nn

from lpa_domainbed.perturb.layers import Cut

__all__ = ["CutForward", "frozen_batchnorm_stats"]

_MISSING = object()


def _detach(value):
    if isinstance(value, torch.Tensor):
        return value.detach()
    if isinstance(value, (tuple, list)):
        return type(value)(_detach(v) for v in value)
    return value


@contextlib.contextmanager
def frozen_batchnorm_stats(batchnorms: list[nn.modules.batchnorm._BatchNorm]):
    """Forward passes inside keep BatchNorm's behaviour but not its running-stat updates."""
    saved = [bn.track_running_stats for bn in batchnorms]
    for bn in batchnorms:
        bn.track_running_stats = False  # train mode: batch stats, no update; eval: running
    try:
        yield
    finally:
        for bn, flag in zip(batchnorms, saved):
            bn.track_running_stats = flag


@contextlib.contextmanager
def _patched_forwards(patches: dict[nn.Module, Callable]):
    saved = {m: m.__dict__.get("forward", _MISSING) for m in patches}
    for module, forward in patches.items():
        module.__dict__["forward"] = forward
    try:
        yield
    finally:
        for module, old in saved.items():
            if old is _MISSING:
                module.__dict__.pop("forward", None)
            else:
                module.__dict__["forward"] = old


def _replayer(outputs: list, original: Callable) -> Callable:
    pending = iter(outputs)

    def forward(*args, **kwargs):
        for output in pending:
            return output
        return original(*args, **kwargs)  # calls after the cut compute normally

    return forward


class CutForward:
    """Run ``root`` with a hook at each cut that may replace the cut's output.

    Args:
        root: the network (DomainBed's ``algorithm.network``: featurizer then classifier).
        cuts: the perturbation layers; each cut module must run once per forward.

    Call ``run(x, on_cut)``: ``on_cut(cut, a, self)`` gets the cut's output ``a`` and returns
    the tensor the rest of the network sees. Inside ``on_cut``, :meth:`tail` is available.
    """

    def __init__(self, root: nn.Module, cuts: list[Cut]):
        self.root = root
        self.cuts = cuts
        self._batchnorms = [m for m in root.modules()
                            if isinstance(m, nn.modules.batchnorm._BatchNorm)]
        paths = {module: name for name, module in root.named_modules()}
        by_path = dict(root.named_modules())
        self._replayable: list[nn.Module] = []
        for cut in cuts:
            if cut.module not in paths:
                raise ValueError(f"layer {cut.name!r} is not inside the network")
            parts = paths[cut.module].split(".") if paths[cut.module] else []
            for i in range(len(parts)):
                ancestor = ".".join(parts[:i])
                for child_name, child in by_path[ancestor].named_children():
                    if child_name != parts[i] and child not in self._replayable:
                        self._replayable.append(child)
        self._x = None
        self._in_tail = False
        self._seq = 0
        self._records: dict[nn.Module, list] = {}
        self._fired: dict[str, int] = {}

    # -- the real pass ---------------------------------------------------------------------
    def run(self, x: torch.Tensor, on_cut: Callable) -> torch.Tensor:
        self._x, self._seq, self._fired = x, 0, {}
        self._records = {m: [] for m in self._replayable}
        handles = []
        try:
            # Cut hooks first: a cut that is also replayable is recorded after perturbation.
            for cut in self.cuts:
                handles.append(cut.module.register_forward_hook(
                    functools.partial(self._cut_hook, cut, on_cut)))
            for module in self._replayable:
                handles.append(module.register_forward_hook(
                    functools.partial(self._record_hook, module)))
            out = self.root(x)
            missing = [c.name for c in self.cuts if c.name not in self._fired]
            if missing:
                raise RuntimeError(f"layers {missing} were never called in the forward pass; "
                                   f"they cannot be perturbed")
            return out
        finally:
            for handle in handles:
                handle.remove()
            self._records, self._x = {}, None

    def _cut_hook(self, cut, on_cut, module, args, output):
        if self._in_tail:
            return None
        if cut.name in self._fired:
            raise RuntimeError(
                f"layer {cut.name!r} runs more than once per forward pass (a shared module, "
                f"e.g. a ReLU reused in a block), so its output is not one activation; "
                f"choose the module that produces it, e.g. its parent block.")
        self._fired[cut.name] = self._seq
        self._seq += 1
        return on_cut(cut, output, self)

    def _record_hook(self, module, _, args, output):
        if not self._in_tail:
            self._records[module].append((self._seq, output))
            self._seq += 1

    # -- tail evaluations ------------------------------------------------------------------
    def tail(self, z: torch.Tensor, cut: Cut, detach_head: bool = True) -> torch.Tensor:
        """Logits ``f_{l+1:L}(z)`` for the activation ``z`` at ``cut`` (paper eq. 2).

        Nothing before the cut is recomputed. With ``detach_head`` (PGD searches) the
        replayed outputs carry no graph, so gradients reach ``z`` only; without it, a
        backward from the result also reaches the layers before the cut.
        Later cuts are not perturbed in a tail evaluation.
        """
        if cut.is_logits:
            return z
        fired_at = self._fired[cut.name]
        patches = {}
        for module, records in self._records.items():
            outputs = [_detach(o) if detach_head else o for seq, o in records if seq < fired_at]
            if outputs:
                patches[module] = _replayer(outputs, module.forward)
        patches[cut.module] = lambda *args, **kwargs: z
        self._in_tail = True
        try:
            with _patched_forwards(patches), frozen_batchnorm_stats(self._batchnorms):
                return self.root(self._x)
        finally:
            self._in_tail = False
