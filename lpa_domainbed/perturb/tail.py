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
With ``tail(..., bn_stats={})`` the BatchNorm layers after the cut instead normalize with
statistics held constant: those of the first evaluation that fills the dict (PGD's clean one).

Memory. Recorded outputs are kept only for the cuts whose ``on_cut`` may call :meth:`tail`
(``run(..., tail_cuts=...)``) and only until the last of them has fired.

In-place operations after the cut (a ResNet block's ``ReLU(inplace=True)``, ``out += identity``)
never write into ``z``: a tail evaluation starts from a copy of ``z`` (the leaf PGD
differentiates); ``probe()`` keeps copies of the activations it reports.
A tail that writes into a *replayed* output would change the next tail's result; it raises.
"""

from __future__ import annotations

import contextlib
import functools
from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from lpa_domainbed.perturb.layers import Cut

__all__ = ["CutForward", "frozen_batchnorm_stats"]

_MISSING = object()


def _detach(value):
    if isinstance(value, torch.Tensor):
        return value.detach()
    if isinstance(value, (tuple, list)):
        return type(value)(_detach(v) for v in value)
    return value


def _tensors(value) -> list:
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, (tuple, list)):
        return [t for v in value for t in _tensors(v)]
    return []


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


def _constant_stats_batchnorm(bn, stats: dict, x: torch.Tensor) -> torch.Tensor:
    """``bn`` in train mode with its batch statistics taken as constants: recorded (without
    graph) on the first call for a given ``stats`` dict, reused on later calls."""
    if bn not in stats:
        dims = [0, *range(2, x.dim())]
        detached = x.detach().float()
        stats[bn] = (detached.mean(dims), detached.var(dims, unbiased=False))  # as BN's forward
    mean, var = stats[bn]
    # The statistics take the dtype of BatchNorm's own parameters, not the activation's: under
    # autocast a bfloat16 activation meets float32 weight and bias, and the kernels (CPU and
    # cuDNN) accept that only with float32 statistics.
    dtype = bn.weight.dtype if bn.weight is not None else x.dtype
    return F.batch_norm(x, mean.to(dtype), var.to(dtype), bn.weight, bn.bias,
                        training=False, eps=bn.eps)


class CutForward:
    """Run ``root`` with a hook at each cut that may replace the cut's output.

    Args:
        root: the network (DomainBed's ``algorithm.network``: featurizer then classifier).
        cuts: the perturbation layers; each cut module must run once per forward.

    Call ``run(x, on_cut, tail_cuts)``: ``on_cut(cut, a, self)`` gets the cut's output ``a``
    and returns the tensor the rest of the network sees (``None``: unchanged). Inside
    ``on_cut``, :meth:`tail` is available for the cuts named in ``tail_cuts`` (default: all).
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
        self._tail_cuts: set[str] = set()
        self._pending: set[str] = set()  # tail cuts (not at the logits) yet to fire
        self._recording = False

    def frozen_statistics(self):
        """Context manager: forward passes inside keep BatchNorm's behaviour (batch statistics
        in train mode) but leave its running statistics unchanged, e.g. for state-free
        diagnostics."""
        return frozen_batchnorm_stats(self._batchnorms)

    # -- the real pass ---------------------------------------------------------------------
    def run(self, x: torch.Tensor, on_cut: Callable, tail_cuts=None) -> torch.Tensor:
        """Forward ``x``; ``tail_cuts``: names of the cuts whose ``on_cut`` may call
        :meth:`tail` (default: every cut). Outputs are recorded for those only."""
        names = {c.name for c in self.cuts} if tail_cuts is None else set(tail_cuts)
        self._x, self._seq, self._fired = x, 0, {}
        self._tail_cuts = {c.name for c in self.cuts if c.name in names}
        self._pending = {c.name for c in self.cuts if c.name in names and not c.is_logits}
        self._recording = bool(self._pending)
        self._records = {m: [] for m in self._replayable}
        handles = []
        try:
            # Cut hooks first: a cut that is also replayable is recorded after perturbation.
            for cut in self.cuts:
                if cut.at_input:
                    handles.append(cut.module.register_forward_pre_hook(
                        functools.partial(self._input_cut_hook, cut, on_cut)))
                else:
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
            self._recording, self._pending = False, set()

    def _input_cut_hook(self, cut, on_cut, module, args):
        """Pre-hook of an ``at_input`` cut: the activation is ``module``'s first input."""
        result = self._cut_hook(cut, on_cut, module, args, args[0])
        return None if result is None else (result, *args[1:])

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
        result = on_cut(cut, output, self)
        self._pending.discard(cut.name)
        if self._recording and not self._pending:  # no later tail needs the records
            self._recording, self._records = False, {}
        return result

    def _record_hook(self, module, _, args, output):
        if self._in_tail or not self._recording:
            return
        self._records[module].append((self._seq, output))
        self._seq += 1

    # -- tail evaluations ------------------------------------------------------------------
    def tail(self, z: torch.Tensor, cut: Cut, detach_head: bool = True,
             bn_stats: dict | None = None) -> torch.Tensor:
        """Logits ``f_{l+1:L}(z)`` for the activation ``z`` at ``cut`` (paper eq. 2).

        Nothing before the cut is recomputed. With ``detach_head`` (PGD searches) the
        replayed outputs carry no graph, so gradients reach ``z`` only; without it, a
        backward from the result also reaches the layers before the cut.
        Later cuts are not perturbed in a tail evaluation.

        ``bn_stats``: None (default) lets BatchNorm layers in train mode normalize with this
        evaluation's batch statistics, through which every sample's loss depends on every
        other sample's activation. A dict makes them constants: an empty dict is filled with
        this evaluation's batch statistics (detached), later evaluations given the same dict
        reuse them, so each sample's loss depends on its own activation only.
        """
        if cut.is_logits:
            return z
        if cut.name not in self._tail_cuts:
            raise RuntimeError(
                f"tail() at {cut.name!r}: this pass kept no records for it (it was not in "
                f"run(..., tail_cuts=...); for an ActivationPerturbation, uses_tail() "
                f"returned False for this layer: override uses_tail() to return True where "
                f"perturb() calls ctx.tail)")
        if cut.name not in self._fired or cut.name not in self._pending:
            raise RuntimeError(f"tail() at {cut.name!r} is only available inside its on_cut")
        fired_at = self._fired[cut.name]
        return self._evaluate(cut, fired_at, z, detach_head, bn_stats)

    def _evaluate(self, cut, fired_at, z, detach_head, bn_stats):
        patches, versions = {}, []
        for module, records in self._records.items():
            outputs = [_detach(o) if detach_head else o
                       for seq, o in records if seq < fired_at]
            if outputs:
                patches[module] = _replayer(outputs, module.forward)
                versions += [(module, t, t._version) for t in _tensors(outputs)]
        # A copy of z: an in-place op after the cut (ReLU(inplace=True)) must not write into
        # the leaf PGD differentiates; gradients flow through the copy.
        if cut.at_input:
            original = cut.module.forward
            patches[cut.module] = lambda *args, **kwargs: original(z.clone(), *args[1:],
                                                                   **kwargs)
        else:
            patches[cut.module] = lambda *args, **kwargs: z.clone()
        if bn_stats is not None:
            for bn in self._batchnorms:
                if bn.training and bn not in patches:
                    patches[bn] = functools.partial(_constant_stats_batchnorm, bn, bn_stats)
        self._in_tail = True
        try:
            with _patched_forwards(patches), frozen_batchnorm_stats(self._batchnorms):
                logits = self.root(self._x)
        finally:
            self._in_tail = False
        changed = [self._path(m) for m, t, v in versions if t._version != v]
        if changed:
            raise RuntimeError(
                f"a tail evaluation at {cut.name!r} wrote in place into the recorded output of "
                f"{sorted(set(changed))} (e.g. 'out += identity' after the cut), so the next "
                f"evaluation would see a changed value; choose a layer after that operation, "
                f"e.g. the enclosing block")
        return logits

    def _path(self, module) -> str:
        return next((n for n, m in self.root.named_modules() if m is module), "?")
