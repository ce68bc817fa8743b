"""Manifold Mixup (Verma et al., 2019) as an activation perturbation (paper eq. 4).

``delta_i = lambda (a_j - a_i)``, ``lambda ~ Beta(alpha, alpha)`` once per update, ``j`` a
random permutation of the concatenated batch of all training domains; the loss is the mixed
``(1 - lambda) l(u, y_i) + lambda l(u, y_j)``. The layer is ``perturb_layer``; when it lists
several, one of them is drawn uniformly per update (torch's RNG, seeded by DomainBed).

Deviation from Verma et al.: their layer set is ``{input, block 1, block 2}``, the raw input
included, drawn every step. Our default is one fixed layer (``default``, as for every method
here), so the input is never mixed; ``perturb_layer = "network_input,stage1,stage2"`` is the
original's set (``network_input`` is the raw ``x``).
"""

from __future__ import annotations

import dataclasses

import numpy as np
import torch
import torch.nn.functional as F

from lpa_domainbed import hparams as hp
from lpa_domainbed.algorithms import ALGORITHMS
from lpa_domainbed.algorithms.base import ActivationPerturbation

__all__ = ["ManifoldMixup"]


@dataclasses.dataclass
class Mix:
    """One pass's mixing (eq. 4), drawn by ``perturb`` and read by ``loss``: ``lambda`` and
    each sample's partner ``j`` (None until the cut has fired)."""

    lam: float = 0.0
    partners: torch.Tensor | None = None


@ALGORITHMS.register("ManifoldMixup")
class ManifoldMixup(ActivationPerturbation):
    """Interpolation towards another sample's activation, with mixed labels (eq. 4)."""

    @classmethod
    def hparam_specs(cls, dataset=None):
        return super().hparam_specs(dataset) + [
            hp.HParam("mmix_alpha", 0.2, hp.log_uniform(-1, 1), "alpha of Beta(alpha, alpha)",
                      check=hp.above(0)),
        ]

    def active_cuts(self, training):
        if len(self.cuts) == 1:
            return self.cuts
        return [self.cuts[int(torch.randint(len(self.cuts), ()))]]  # seeded by train.py

    def begin(self, x, step):
        return Mix()

    def perturb(self, a, y, step, tail, mix):
        mix.lam = float(np.random.beta(self.hparams["mmix_alpha"], self.hparams["mmix_alpha"]))
        mix.partners = torch.randperm(len(a), device=a.device)
        return a + mix.lam * (a[mix.partners] - a)

    def loss(self, logits, y, step, mix):
        lam, perm = mix.lam, mix.partners
        return (1 - lam) * F.cross_entropy(logits, y) + lam * F.cross_entropy(logits, y[perm])
