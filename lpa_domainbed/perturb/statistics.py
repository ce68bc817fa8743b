"""Per-sample, per-channel activation statistics (the "style" of MixStyle and DSU)."""

from __future__ import annotations

import torch

__all__ = ["channel_view", "channel_stats"]


def channel_view(a: torch.Tensor) -> torch.Tensor:
    """``[B, C, ...] -> [B, C, N]`` (N spatial positions). A flat ``[B, d]`` activation has no
    channels: it is read as one channel whose ``d`` entries are the positions."""
    return a.flatten(2) if a.dim() > 2 else a.unsqueeze(1)


def channel_stats(x: torch.Tensor, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and ``sqrt(var + eps)`` over positions of ``x [B, C, N]``, each ``[B, C, 1]``."""
    if x.shape[2] < 2:
        raise ValueError("channel statistics need at least 2 positions per channel; this "
                         "layer's activation has 1. Choose an earlier layer.")
    return x.mean(2, keepdim=True), (x.var(2, keepdim=True) + eps).sqrt()
