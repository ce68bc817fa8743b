"""A forward pass with perturbation hooks, and cheap evaluation of the rest of the network.

PGD-based algorithms need ``f_{l+1:L}(a + delta)`` several times per step (paper eqs. 5, 8).
:class:`CutForward` runs the network once with a forward hook at each cut; the hook hands
``on_cut(cut, a, tail)`` a :class:`Tail` bound to that cut, and ``tail(z)`` evaluates the
network again from the cut onwards *without recomputing the layers before it*: while the
network's own ``forward`` runs, every module that finished before the cut returns the output
it produced in the real pass (recorded by a hook), and the cut module returns ``z``. No graph
tracing, so DomainBed's ResNets (torchvision and timm), MNIST_CNN, Wide-ResNet and MLP all work
unchanged, residual connections across the cut included.

Assumptions, each enforced where it matters:

* every cut module runs exactly once per forward (:meth:`CutForward._on_cut_fired` raises);
* modules are called in the same order on every pass (the replay returns a module's recorded
  outputs in call order);
* a tail never writes in place into a replayed output (:meth:`CutForward._evaluate` raises);
* a tail is used only while its cut's ``on_cut`` runs (:class:`Tail` raises after).

Tail evaluations leave the network's state untouched: BatchNorm layers still normalize with
batch statistics in training mode but do not update their running statistics, and nothing
writes ``.grad`` (callers differentiate with ``torch.autograd.grad`` w.r.t. ``z`` only).
With ``tail(..., bn_stats={})`` the BatchNorm layers after the cut instead normalize with
statistics held constant: those of the first evaluation that fills the dict (PGD's clean one).

Memory. Outputs are recorded only for the cuts whose ``on_cut`` may call the tail
(``run(..., tail_cuts=...)``) and only until the last of them has fired. In-place operations
after the cut (``ReLU(inplace=True)``) never write into ``z``: a tail evaluation starts from a
copy of ``z`` (the leaf PGD differentiates).
"""

from __future__ import annotations

import functools
from typing import Callable

import torch
import torch.nn as nn

from lpa_domainbed.perturb.layers import Cut
from lpa_domainbed.perturb.replay import (constant_stats_batchnorm, detach_outputs,
                                          frozen_batchnorm_stats, patched_forwards,
                                          tensors_in)

__all__ = ["CutForward", "Tail", "frozen_batchnorm_stats"]


def _replayer(outputs: list, original: Callable) -> Callable:
    """A ``forward`` that returns ``outputs`` in order, then computes as ``original``.

    Beside the recording hook (:meth:`CutForward._record_hook`): in a tail evaluation each
    replayed module runs its replayer and then that hook, both from inside
    :meth:`CutForward._evaluate`, so the replay is read in one file."""
    pending = iter(outputs)

    def forward(*args, **kwargs):
        for output in pending:
            return output
        return original(*args, **kwargs)  # calls after the cut compute normally

    return forward


class _Recording:
    """What one :meth:`CutForward.run` keeps: its input, the order in which modules finished,
    and the outputs of the replayable modules while a later tail may need them."""

    def __init__(self, x, replayable, tail_cuts: set[str], waiting: set[str]):
        self.x = x
        self.tail_cuts = tail_cuts
        self.waiting = waiting  # tail cuts (not at the logits) that have not fired yet
        self.records: dict[nn.Module, list] = {m: [] for m in replayable} if waiting else {}
        self.seq = 0
        self.fired: dict[str, int] = {}
        self.in_tail = False

    def tick(self) -> int:
        self.seq += 1
        return self.seq - 1


class Tail:
    """``f_{l+1:L}`` at one cut of one pass: ``tail(z)`` returns the logits for the activation
    ``z`` at :attr:`cut` (paper eq. 2). Valid only while that cut's ``on_cut`` runs."""

    def __init__(self, forward: "CutForward", recording: _Recording, cut: Cut):
        self.cut = cut
        self._forward, self._recording = forward, recording
        self._fired_at = recording.fired[cut.name]
        self._open = True

    def __call__(self, z: torch.Tensor, detach_head: bool = True,
                 bn_stats: dict | None = None) -> torch.Tensor:
        """Nothing before the cut is recomputed. With ``detach_head`` (PGD searches) the
        replayed outputs carry no graph, so gradients reach ``z`` only; without it, a backward
        from the result also reaches the layers before the cut. Later cuts are not perturbed.

        ``bn_stats``: None lets BatchNorm layers in train mode normalize with this evaluation's
        batch statistics (every sample's loss then depends on every other sample's
        activation). A dict makes them constants: an empty dict is filled with this
        evaluation's batch statistics (detached), later evaluations given it reuse them."""
        if self.cut.is_logits:
            return z
        if self.cut.name not in self._recording.tail_cuts:
            raise RuntimeError(
                f"tail at {self.cut.name!r}: this pass kept no records for it (it was not in "
                f"run(..., tail_cuts=...); for an ActivationPerturbation, its uses_tail is "
                f"False: set the class attribute uses_tail = True when perturb() calls its "
                f"tail)")
        if not self._open:
            raise RuntimeError(f"the tail at {self.cut.name!r} is only available inside its "
                               f"on_cut (perturb): its records are gone")
        return self._forward._evaluate(self._recording, self.cut, self._fired_at, z,
                                       detach_head, bn_stats)

    def close(self) -> None:
        self._open = False


class CutForward:
    """Run ``root`` with a hook at each cut that may replace the cut's output.

    Args:
        root: the network (DomainBed's ``algorithm.network``: featurizer then classifier).
        cuts: the perturbation layers; each cut module must run once per forward.

    ``run(x, on_cut, tail_cuts)``: ``on_cut(cut, a, tail)`` gets the cut's output ``a`` and a
    :class:`Tail` bound to the cut, and returns the tensor the rest of the network sees
    (``None``: unchanged). The instance holds no per-pass state: each run has its own
    recording, so nothing is left between passes.
    """

    def __init__(self, root: nn.Module, cuts: list[Cut]):
        self.root = root
        self.cuts = cuts
        self._batchnorms = [m for m in root.modules()
                            if isinstance(m, nn.modules.batchnorm._BatchNorm)]
        self._paths = {module: name for name, module in root.named_modules()}
        by_path = dict(root.named_modules())
        # Replayable: the siblings of every cut's ancestors, i.e. what finishes before the cut.
        self._replayable: list[nn.Module] = []
        for cut in cuts:
            if cut.module not in self._paths:
                raise ValueError(f"layer {cut.name!r} is not inside the network")
            parts = self._paths[cut.module].split(".") if self._paths[cut.module] else []
            for i in range(len(parts)):
                for child_name, child in by_path[".".join(parts[:i])].named_children():
                    if child_name != parts[i] and child not in self._replayable:
                        self._replayable.append(child)

    def frozen_statistics(self):
        """Context manager: forward passes inside keep BatchNorm's behaviour (batch statistics
        in train mode) but leave its running statistics unchanged."""
        return frozen_batchnorm_stats(self._batchnorms)

    # -- the real pass ---------------------------------------------------------------------
    def run(self, x: torch.Tensor, on_cut: Callable, tail_cuts=None) -> torch.Tensor:
        """Forward ``x``; ``tail_cuts``: names of the cuts whose ``on_cut`` may call its tail
        (default: every cut). Outputs are recorded for those only."""
        names = {c.name for c in self.cuts} if tail_cuts is None else set(tail_cuts)
        tails = {c.name for c in self.cuts if c.name in names}
        rec = _Recording(x, self._replayable, tails,
                         {c.name for c in self.cuts if c.name in tails and not c.is_logits})
        handles = []
        try:
            # Cut hooks first: a cut that is also replayable is recorded after perturbation.
            for cut in self.cuts:
                hook = functools.partial(self._cut_hook, rec, cut, on_cut)
                if cut.at_input:  # the activation is the module's first input (pre-hook)
                    handles.append(cut.module.register_forward_pre_hook(
                        lambda m, args, hook=hook: self._input_cut(hook, m, args)))
                else:
                    handles.append(cut.module.register_forward_hook(hook))
            for module in rec.records:
                handles.append(module.register_forward_hook(
                    functools.partial(self._record_hook, rec, module)))
            out = self.root(x)
            missing = [c.name for c in self.cuts if c.name not in rec.fired]
            if missing:
                raise RuntimeError(f"layers {missing} were never called in the forward pass; "
                                   f"they cannot be perturbed")
            return out
        finally:
            for handle in handles:
                handle.remove()

    @staticmethod
    def _input_cut(hook, module, args):
        result = hook(module, args, args[0])
        return None if result is None else (result, *args[1:])

    def _cut_hook(self, rec: _Recording, cut: Cut, on_cut, module, args, output):
        if rec.in_tail:
            return None
        self._on_cut_fired(rec, cut)
        tail = Tail(self, rec, cut)
        try:
            result = on_cut(cut, output, tail)
        finally:
            tail.close()
        rec.waiting.discard(cut.name)
        if not rec.waiting:  # no later tail needs the records
            rec.records = {}
        return result

    @staticmethod
    def _on_cut_fired(rec: _Recording, cut: Cut) -> None:
        if cut.name in rec.fired:
            raise RuntimeError(
                f"layer {cut.name!r} runs more than once per forward pass (a shared module, "
                f"e.g. a ReLU reused in a block), so its output is not one activation; "
                f"choose the module that produces it, e.g. its parent block.")
        rec.fired[cut.name] = rec.tick()

    @staticmethod
    def _record_hook(rec: _Recording, module, _, args, output):
        if not rec.in_tail and module in rec.records:
            rec.records[module].append((rec.tick(), output))

    # -- tail evaluations ------------------------------------------------------------------
    def _evaluate(self, rec: _Recording, cut: Cut, fired_at: int, z, detach_head, bn_stats):
        patches, versions = {}, []
        for module, records in rec.records.items():
            outputs = [detach_outputs(o) if detach_head else o
                       for seq, o in records if seq < fired_at]
            if outputs:
                patches[module] = _replayer(outputs, module.forward)
                versions += [(module, t, t._version) for t in tensors_in(outputs)]
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
                    patches[bn] = functools.partial(constant_stats_batchnorm, bn, bn_stats)
        rec.in_tail = True
        try:
            with patched_forwards(patches), frozen_batchnorm_stats(self._batchnorms):
                logits = self.root(rec.x)
        finally:
            rec.in_tail = False
        changed = [self._paths.get(m, "?") for m, t, v in versions if t._version != v]
        if changed:
            raise RuntimeError(
                f"a tail evaluation at {cut.name!r} wrote in place into the recorded output of "
                f"{sorted(set(changed))} (e.g. 'out += identity' after the cut), so the next "
                f"evaluation would see a changed value; choose a layer after that operation, "
                f"e.g. the enclosing block")
        return logits
