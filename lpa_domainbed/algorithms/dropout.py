"""Dropout at a hidden layer, as an activation perturbation (paper eq. 3).

``delta = a * (m / q - 1)`` with ``m ~ Bernoulli(q)``, ``q = 1 - dropout_p`` the keep
probability (the paper's ``p``), and inverted scaling ``1 / q`` so that ``E[a~] = a``. Note the
hparam is the *drop* rate, as in ``torch.nn.Dropout``. Variants (``dropout_kind``):

* ``element``: one mask entry per activation entry;
* ``channel``: one per (sample, channel), shared over spatial positions (``Dropout2d``);
* ``block``: DropBlock (Ghiasi et al., 2018): contiguous ``dropout_block_size`` squares,
  seeded with rate ``gamma = p / s^2 * HW / ((H - s + 1)(W - s + 1))``, rescaled by
  ``numel / kept``. Needs a spatial ``[B, C, H, W]`` activation.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from lpa_domainbed import hparams as hp
from lpa_domainbed.algorithms import ALGORITHMS
from lpa_domainbed.algorithms.base import ActivationPerturbation

__all__ = ["Dropout", "dropout_mask"]

KINDS = ("element", "channel", "block")


def _bernoulli_like(a: torch.Tensor, prob: float) -> torch.Tensor:
    """``torch.bernoulli(torch.full_like(a, prob))``. On the CPU, for float32/float64, the same
    mask (and the same RNG state after it) comes from ``rand_like(a) < prob`` about 2.5x faster:
    the CPU Bernoulli kernel with a tensor of probabilities draws one uniform per entry in
    order, exactly as ``rand_like`` does, but element by element."""
    if a.device.type == "cpu" and a.dtype in (torch.float32, torch.float64) and a.is_contiguous():
        return (torch.rand_like(a) < prob).to(a.dtype)
    return torch.bernoulli(torch.full_like(a, prob))


def dropout_mask(a: torch.Tensor, p: float, kind: str, block_size: int = 3) -> torch.Tensor:
    """The scaled mask ``m / q`` (same shape as ``a``), so that ``a~ = a * mask``."""
    if p == 0:
        return torch.ones_like(a)
    keep = 1.0 - p
    if kind == "element" or (kind == "channel" and a.dim() == 2):
        return _bernoulli_like(a, keep) / keep
    if kind == "channel":
        shape = a.shape[:2] + (1,) * (a.dim() - 2)
        return (torch.bernoulli(a.new_full(shape, keep)) / keep).expand_as(a)
    if a.dim() != 4:
        raise ValueError(f"dropout_kind='block' needs a [B, C, H, W] activation; this layer "
                         f"gives {tuple(a.shape)}. Use dropout_kind='element' or 'channel'.")
    H, W = a.shape[2:]
    s = min(block_size, H, W)
    gamma = p / s ** 2 * H * W / ((H - s + 1) * (W - s + 1))
    seeds = torch.bernoulli(a.new_full((a.shape[0], a.shape[1], H - s + 1, W - s + 1),
                                       min(gamma, 1.0)))
    # A seed at (i, j) drops the full block [i, i + s) x [j, j + s), which always fits: cell
    # (u, v) is dropped iff a seed lies in [u - s + 1, u] x [v - s + 1, v]. Padding by s - 1
    # on every side and an s x s max-pool compute exactly that, for odd and even s.
    seeds = F.pad(seeds, (s - 1, s - 1, s - 1, s - 1))
    block = F.max_pool2d(seeds, kernel_size=s, stride=1)
    kept = 1.0 - block
    return kept * (kept.numel() / kept.sum().clamp_min(1.0))


@ALGORITHMS.register("Dropout")
class Dropout(ActivationPerturbation):
    """Random multiplicative, class-agnostic perturbation at the chosen layer (eq. 3)."""

    @classmethod
    def hparam_specs(cls, dataset=None):
        return super().hparam_specs(dataset) + [
            hp.HParam("dropout_p", 0.1, hp.choice([0.05, 0.1, 0.2, 0.3]), "drop rate, 1 - p",
                      check=hp.within(0, 1, "[)")),
            hp.HParam("dropout_kind", "element", doc="mask granularity", choices=KINDS),
            hp.HParam("dropout_block_size", 3, doc="DropBlock square side", check=hp.at_least(1)),
        ]

    def perturb(self, a, y, step, tail, state):
        h = self.hparams
        return a * dropout_mask(a, h["dropout_p"], h["dropout_kind"],
                                int(h["dropout_block_size"])).to(a.dtype)
