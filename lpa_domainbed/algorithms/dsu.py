"""DSU: Domain Shifts with Uncertainty (Li et al., "Uncertainty Modeling for
Out-of-Distribution Generalization", ICLR 2022).

With probability ``p`` per update and layer, each sample's per-channel mean ``mu`` and standard
deviation ``sigma`` are resampled from Gaussians centred on them whose spread is the batch
standard deviation of those statistics:
``beta = mu + eps_1 Sigma_mu``, ``gamma = sigma + eps_2 Sigma_sigma``,
``Sigma_mu = sqrt(Var_batch(mu) + eps)`` (per channel), ``eps_i ~ N(0, 1)`` per sample and
channel, then ``a~ = gamma (a - mu) / sigma + beta``. Defaults from the reference code
(github.com/lixiaotong97/DSU, ``DistributionUncertainty``: ``p=0.5, eps=1e-6, factor=1``),
which inserts it after every stage of a ResNet (stem included); here: every declared stage.
"""

from __future__ import annotations

import torch
from torch.utils.checkpoint import checkpoint

from lpa_domainbed import hparams as hp
from lpa_domainbed.algorithms import ALGORITHMS
from lpa_domainbed.algorithms.base import ActivationPerturbation
from lpa_domainbed.perturb.statistics import channel_stats, channel_view

__all__ = ["DSU"]


@ALGORITHMS.register("DSU")
class DSU(ActivationPerturbation):
    """Resamples per-sample channel statistics (see module docs)."""

    HPARAM_DEFAULTS = {"perturb_layer": "all_stages"}  # reference: after each ResNet stage

    @classmethod
    def hparam_specs(cls, dataset=None):
        return super().hparam_specs(dataset) + [
            hp.HParam("dsu_p", 0.5, hp.choice([0.3, 0.5, 0.7]),
                      "probability per update (reference 0.5)", check=hp.within(0, 1)),
            hp.HParam("dsu_factor", 1.0, doc="scale of the noise (reference 1.0)",
                      check=hp.at_least(0)),
        ]

    def perturb(self, a, y, step, tail, state):
        if float(torch.rand(())) >= self.hparams["dsu_p"]:
            return a
        factor = self.hparams["dsu_factor"]
        if torch.is_grad_enabled() and a.requires_grad:
            # Same values, noise and gradients, but the backward recomputes the few
            # activation-sized intermediates (x - mu, ...) instead of keeping them from the
            # forward pass: at every stage they would otherwise add ~2 activations' memory.
            return checkpoint(_resample, a, factor, use_reentrant=False)
        return _resample(a, factor)


def _resample(a: torch.Tensor, factor: float) -> torch.Tensor:
    eps = 1e-6
    x = channel_view(a)
    mu, sigma = channel_stats(x, eps)
    spread_mu = (mu.var(0, keepdim=True) + eps).sqrt()
    spread_sigma = (sigma.var(0, keepdim=True) + eps).sqrt()
    beta = mu + factor * torch.randn_like(mu) * spread_mu
    gamma = sigma + factor * torch.randn_like(sigma) * spread_sigma
    return ((x - mu) / sigma * gamma + beta).reshape(a.shape)
