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

Memory. Recorded outputs are kept only for the cuts whose ``on_cut`` may call :meth:`tail`
(``run(..., tail_cuts=...)``) and only until the last of them has fired. Most recorded outputs
cannot influence the tail at all: a replayed module ignores its input, so an output that only
feeds the next replayed module (a chain ``conv -> relu -> norm`` of MNIST_CNN, every stage
before the cut of a ResNet) is never read. Keeping such an output alive costs memory when the
network itself would have freed it (MNIST_CNN's convolution outputs). So the first tail
evaluation at a cut (for a given input shape and train/eval mode) runs once more with each
recorded output, and ``z``, replaced by a data-free stand-in (:class:`_Unused`: shape, dtype
and device only; every operation on it returns another stand-in, computed on the ``meta``
device, so the check costs no arithmetic) and notes which outputs reached the result. Those that did not are replaced by stand-ins from
then on; the others are kept. Anything the check cannot follow (data-dependent Python, an
in-place write into a real tensor, an operation without a meta kernel) keeps every output, as
before. Set ``CutForward.drop_unused_records = False`` to switch this off.
"""

from __future__ import annotations

import contextlib
import functools
from typing import Callable

import torch
import torch.nn as nn
from torch.utils._pytree import tree_flatten, tree_map

from lpa_domainbed.perturb.layers import Cut

__all__ = ["CutForward", "frozen_batchnorm_stats"]

_MISSING = object()


class _NeedsValue(Exception):
    """A stand-in's value would be read: the recorded output it replaces is needed."""


# Operations that read only metadata (answered by the stand-in itself), and those that read
# values (a stand-in has none).
_METADATA = frozenset({
    "shape", "size", "dim", "ndim", "ndimension", "dtype", "device", "numel", "nelement",
    "__len__", "is_floating_point", "is_complex", "layout", "requires_grad", "is_cuda",
    "is_meta", "is_sparse", "stride", "is_contiguous", "element_size", "grad_fn", "is_leaf",
    "names", "__hash__"})
_READS_VALUES = frozenset({
    "item", "tolist", "numpy", "__bool__", "__int__", "__float__", "__index__", "__complex__",
    "data_ptr", "__array__", "__repr__", "__str__", "__format__", "__reduce_ex__",
    "__deepcopy__", "storage", "untyped_storage", "_typed_storage", "__dlpack__", "equal",
    "allclose", "__iter__", "__contains__", "backward", "register_hook", "retain_grad"})
_INPLACE_DUNDERS = frozenset({
    "__setitem__", "__iadd__", "__isub__", "__imul__", "__itruediv__", "__ifloordiv__",
    "__imod__", "__ipow__", "__iand__", "__ior__", "__ixor__", "__ilshift__", "__irshift__",
    "__imatmul__"})


def _func_name(func) -> str:
    name = getattr(func, "__name__", "")
    if name == "__get__":  # a property such as Tensor.shape
        name = getattr(getattr(func, "__self__", None), "__name__", name)
    return name


class _Unused(torch.Tensor):
    """A data-free stand-in for a recorded output (shape, dtype, device). Operations on it
    return stand-ins computed on the ``meta`` device; ``sources`` names the recorded outputs
    it derives from. Reading its values raises :class:`_NeedsValue`."""

    @staticmethod
    def __new__(cls, shape, dtype, device, sources):
        t = torch.Tensor._make_wrapper_subclass(cls, shape, dtype=dtype, device=device)
        t._lpa_sources = frozenset(sources)
        return t

    @classmethod
    def __torch_dispatch__(cls, func, types, args=(), kwargs=None):
        raise _NeedsValue(f"{func} reached the dispatcher with a stand-in")

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        flat, _ = tree_flatten((args, kwargs))
        unused = [t for t in flat if isinstance(t, _Unused)]
        name = _func_name(func)
        if not unused or name in _METADATA:
            with torch._C.DisableTorchFunctionSubclass():
                return func(*args, **kwargs)
        sources = frozenset().union(*(t._lpa_sources for t in unused))
        if name in _READS_VALUES:
            raise _NeedsValue(name)
        inplace = (kwargs.get("out") is not None or bool(kwargs.get("inplace"))
                   or name in _INPLACE_DUNDERS or (name.endswith("_") and not name.endswith("__")))
        if inplace:  # writing a stand-in into a real tensor would change a real value
            target = kwargs.get("out", args[0] if args else None)
            if any(isinstance(t, torch.Tensor) and not isinstance(t, _Unused)
                   for t in tree_flatten(target)[0]):
                raise _NeedsValue(name)
        device = unused[0].device

        def to_meta(x):
            if isinstance(x, _Unused):
                return torch.empty(x.shape, dtype=x.dtype, device="meta")
            if isinstance(x, torch.Tensor):
                return x.detach().to("meta")
            return x

        try:
            with torch._C.DisableTorchFunctionSubclass():
                margs, mkwargs = tree_map(to_meta, (args, kwargs))
                out = func(*margs, **mkwargs)
            return tree_map(lambda o: _Unused(o.shape, o.dtype, device, sources)
                            if isinstance(o, torch.Tensor) else o, out)
        except _NeedsValue:
            raise
        except Exception as error:  # no meta kernel, data-dependent shape, ...
            raise _NeedsValue(name) from error


def _stand_in(value, source):
    """``value`` with every tensor replaced by a stand-in (``value`` itself if it holds none)."""
    leaves, _ = tree_flatten(value)
    if not any(isinstance(t, torch.Tensor) for t in leaves):
        return value
    return tree_map(lambda t: _Unused(t.shape, t.dtype, t.device, {source})
                    if isinstance(t, torch.Tensor) else t, value)


_CUT_INPUT = "<z>"  # the source name of the cut's own stand-in in the check


def _stand_in_sources(value) -> set:
    return set().union(*(t._lpa_sources for t in tree_flatten(value)[0]
                         if isinstance(t, _Unused)))


def _detach(value):
    if isinstance(value, _Unused):
        return value
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

    Call ``run(x, on_cut, tail_cuts)``: ``on_cut(cut, a, self)`` gets the cut's output ``a``
    and returns the tensor the rest of the network sees (``None``: unchanged). Inside
    ``on_cut``, :meth:`tail` is available for the cuts named in ``tail_cuts`` (default: all).
    """

    #: Replace recorded outputs that cannot reach the tail's result by data-free stand-ins
    #: (checked once per cut, input shape and train/eval mode; see the module docs).
    drop_unused_records: bool = True

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
        self._stand_ins: frozenset = frozenset()
        # (cut, input shape, mode...) -> recorded outputs, as (module, call index), that
        # cannot reach the tail's result at that cut
        self._unused: dict[tuple, frozenset] = {}

    # -- the real pass ---------------------------------------------------------------------
    def run(self, x: torch.Tensor, on_cut: Callable, tail_cuts=None) -> torch.Tensor:
        """Forward ``x``; ``tail_cuts``: names of the cuts whose ``on_cut`` may call
        :meth:`tail` (default: every cut). Outputs are recorded for those only."""
        names = {c.name for c in self.cuts} if tail_cuts is None else set(tail_cuts)
        self._x, self._seq, self._fired = x, 0, {}
        self._tail_cuts = {c.name for c in self.cuts if c.name in names}
        self._pending = {c.name for c in self.cuts if c.name in names and not c.is_logits}
        self._recording = bool(self._pending)
        self._stand_ins = self._known_unused(self._pending)
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
            self._recording, self._pending, self._stand_ins = False, set(), frozenset()

    def _key(self, cut_name: str) -> tuple:
        x = self._x
        return (cut_name, self.root.training, tuple(x.shape), x.dtype, str(x.device))

    def _known_unused(self, cut_names) -> frozenset:
        """Recorded outputs that no tail at ``cut_names`` reads (empty until all are checked)."""
        if not self.drop_unused_records or not cut_names:
            return frozenset()
        sets = [self._unused.get(self._key(name)) for name in cut_names]
        if any(s is None for s in sets):
            return frozenset()
        return frozenset.intersection(*sets)

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
        records = self._records[module]
        source = (module, len(records))
        if source in self._stand_ins:
            output = _stand_in(output, source)
        records.append((self._seq, output))
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
        if cut.name not in self._tail_cuts:
            raise RuntimeError(
                f"tail() at {cut.name!r}: this pass kept no records for it (it was not in "
                f"run(..., tail_cuts=...); for an ActivationPerturbation, uses_tail() "
                f"returned False for this layer)")
        if cut.name not in self._fired or cut.name not in self._pending:
            raise RuntimeError(f"tail() at {cut.name!r} is only available inside its on_cut")
        fired_at = self._fired[cut.name]
        key = self._key(cut.name)
        if self.drop_unused_records and key not in self._unused:
            self._unused[key] = self._find_unused(cut, fired_at, z)
            drop = self._known_unused(self._pending)
            for module, records in self._records.items():  # free them for this pass already
                records[:] = [(seq, _stand_in(o, (module, i))) if (module, i) in drop
                              else (seq, o) for i, (seq, o) in enumerate(records)]
        logits = self._evaluate(cut, fired_at, z, lambda module, i, o: (
            _detach(o) if detach_head else o))
        if _stand_in_sources(logits):
            raise RuntimeError(
                f"the tail at {cut.name!r} read a recorded output that an earlier check found "
                f"unused (does the network's forward change from pass to pass?); set "
                f"CutForward.drop_unused_records = False")
        return logits

    def _evaluate(self, cut, fired_at, z, replay):
        patches = {}
        for module, records in self._records.items():
            outputs = [replay(module, i, o) for i, (seq, o) in enumerate(records) if seq < fired_at]
            if outputs:
                patches[module] = _replayer(outputs, module.forward)
        patches[cut.module] = lambda *args, **kwargs: z
        self._in_tail = True
        try:
            with _patched_forwards(patches), frozen_batchnorm_stats(self._batchnorms):
                return self.root(self._x)
        finally:
            self._in_tail = False

    def _find_unused(self, cut, fired_at, z) -> frozenset:
        """The recorded outputs before ``cut`` that cannot reach the tail's result: one tail
        evaluation in which they and ``z`` are all stand-ins (so nothing is computed but
        shapes; no grad, RNG restored), then the sources of the stand-in it returns."""
        candidates = frozenset((module, i) for module, records in self._records.items()
                               for i, (seq, _) in enumerate(records) if seq < fired_at)
        if not candidates:
            return frozenset()
        z = _Unused(z.shape, z.dtype, z.device, {_CUT_INPUT})
        devices = [z.device.index or 0] if z.device.type == "cuda" else []
        try:
            with torch.random.fork_rng(devices=devices), torch.no_grad():
                out = self._evaluate(cut, fired_at, z, lambda module, i, o: (
                    _stand_in(o, (module, i))))
            needed = _stand_in_sources(out)
        except Exception:  # _NeedsValue, or anything the check cannot follow: keep them all
            needed = candidates
        return candidates - needed
