"""Manifold Mixup (Verma et al., 2019) as an activation perturbation (paper eq. 4).

``delta_i = lambda (a_j - a_i)``, ``lambda ~ Beta(alpha, alpha)`` once per update, ``j`` a
random permutation of the concatenated batch of all training domains; the loss is the mixed
``(1 - lambda) l(u, y_i) + lambda l(u, y_j)``. The layer is ``perturb_layer``, or, when
``mmix_layers`` lists several, one of them drawn uniformly per update.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from lpa_domainbed import hparams as hp
from lpa_domainbed.algorithms import ALGORITHMS
from lpa_domainbed.algorithms.base import ActivationPerturbation, merge_specs, require
from lpa_domainbed.perturb.layers import resolve_cuts

__all__ = ["ManifoldMixup"]


@ALGORITHMS.register("ManifoldMixup")
class ManifoldMixup(ActivationPerturbation):
    """Interpolation towards another sample's activation, with mixed labels (eq. 4)."""

    @classmethod
    def hparam_specs(cls, dataset=None):
        return merge_specs(super().hparam_specs(dataset), [
            hp.HParam("mmix_alpha", 0.2, hp.log_uniform(-1, 1), "alpha of Beta(alpha, alpha)"),
            hp.HParam("mmix_layers", "", hp.fixed(""),
                      "layers to draw from per update ('' = perturb_layer only)"),
        ])

    def check_hparams(self):
        require(self.hparams, "mmix_alpha", self.hparams["mmix_alpha"] > 0, "alpha > 0")

    def __init__(self, input_shape, num_classes, num_domains, hparams):
        layers = hparams.get("mmix_layers") or ""
        if layers:  # the candidate layers become the cuts; one is active per update
            hparams = {**hparams, "perturb_layer": layers}
        super().__init__(input_shape, num_classes, num_domains, hparams)

    def active_cuts(self, training):
        if len(self.cuts) == 1:
            return self.cuts
        return [self.cuts[int(torch.randint(len(self.cuts), ()))]]  # seeded by train.py

    def uses_tail(self, cut):
        return False

    def perturb(self, a, y, ctx):
        lam = float(np.random.beta(self.hparams["mmix_alpha"], self.hparams["mmix_alpha"]))
        perm = torch.randperm(len(a), device=a.device)
        ctx.scratch["mixup"] = (lam, perm)
        return a + lam * (a[perm] - a)

    def loss(self, logits, y, ctx):
        lam, perm = ctx.scratch["mixup"]
        return (1 - lam) * F.cross_entropy(logits, y) + lam * F.cross_entropy(logits, y[perm])
