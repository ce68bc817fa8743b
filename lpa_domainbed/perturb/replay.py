"""The pieces a tail evaluation is made of: patching a module's ``forward`` for one call of
the network, the recorded outputs' tensors (detached, listed), and BatchNorm without state
updates. The replay of recorded outputs itself is in :mod:`~lpa_domainbed.perturb.tail`."""

from __future__ import annotations

import contextlib
from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["constant_stats_batchnorm", "detach_outputs", "frozen_batchnorm_stats",
           "patched_forwards", "tensors_in"]

_MISSING = object()


def detach_outputs(value):
    """A module's output (a tensor, or a tuple/list of them) without graph."""
    if isinstance(value, torch.Tensor):
        return value.detach()
    if isinstance(value, (tuple, list)):
        return type(value)(detach_outputs(v) for v in value)
    return value


def tensors_in(value) -> list:
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, (tuple, list)):
        return [t for v in value for t in tensors_in(v)]
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
def patched_forwards(patches: dict[nn.Module, Callable]):
    """Each module's ``forward`` replaced by the given callable inside the context."""
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


def constant_stats_batchnorm(bn, stats: dict, x: torch.Tensor) -> torch.Tensor:
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
