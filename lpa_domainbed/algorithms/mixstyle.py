"""MixStyle (Zhou et al., "Domain Generalization with MixStyle", ICLR 2021).

With probability ``p`` per update and layer, each sample's per-channel mean ``mu`` and standard
deviation ``sigma`` are mixed with those of a partner sample:
``a~ = sigma_mix * (a - mu) / sigma + mu_mix``, ``mu_mix = l mu + (1 - l) mu_j``,
``sigma_mix = l sigma + (1 - l) sigma_j``, ``l ~ Beta(alpha, alpha)`` per sample, statistics
detached (as in the reference code, github.com/KaiyangZhou/mixstyle-release,
``imcls/models/mixstyle.py``: ``p=0.5, alpha=0.1, eps=1e-6``, mix ``random`` or
``crossdomain``). Partners: ``random`` is a random permutation; ``crossdomain`` draws each
sample's partner from another training domain, using DomainBed's domain labels (the reference
approximates this by swapping batch halves). Layers: the outputs of all stages but the last
(the reference's ``layer1..layer3`` of a ResNet; "never the last").
As an activation perturbation, ``delta = a~ - a`` changes only the channel statistics.
"""

from __future__ import annotations

import torch

from lpa_domainbed import hparams as hp
from lpa_domainbed.algorithms import ALGORITHMS
from lpa_domainbed.algorithms.base import ActivationPerturbation
from lpa_domainbed.perturb.statistics import channel_stats, channel_view

__all__ = ["MixStyle", "cross_domain_partners"]

MIXES = ("random", "crossdomain")


def cross_domain_partners(domains: torch.Tensor) -> torch.Tensor:
    """For each sample, a uniformly drawn partner from another domain (any sample when the
    batch has a single domain)."""
    scores = torch.rand(len(domains), len(domains), device=domains.device)
    other = domains[:, None] != domains[None, :]
    # a sample with a partner domain draws from it (all do when the batch has two domains or
    # more, none when it has one); decided on the device, without a host-device sync
    scores = torch.where(other.any(1, keepdim=True), scores.masked_fill(~other, -1.0), scores)
    return scores.argmax(1)


@ALGORITHMS.register("MixStyle")
class MixStyle(ActivationPerturbation):
    """Mixes per-sample channel statistics between samples (see module docs)."""

    HPARAM_DEFAULTS = {"perturb_layer": "early_stages"}  # all stages but the last (ResNet 1-3)

    @classmethod
    def hparam_specs(cls, dataset=None):
        return super().hparam_specs(dataset) + [
            hp.HParam("mixstyle_p", 0.5, doc="probability per update (reference)",
                      check=hp.within(0, 1)),
            hp.HParam("mixstyle_alpha", 0.1, hp.choice([0.1, 0.2, 0.3]),
                      "Beta(alpha, alpha) (reference 0.1; 0.3 in its DomainBed port)",
                      check=hp.above(0)),
            hp.HParam("mixstyle_mix", "random", hp.choice(MIXES), "partner choice", choices=MIXES),
        ]

    def perturb(self, a, y, step, tail, state):
        h = self.hparams
        if float(torch.rand(())) >= h["mixstyle_p"]:
            return a
        x = channel_view(a)
        mu, sigma = channel_stats(x, eps=1e-6)
        mu, sigma = mu.detach(), sigma.detach()
        # torch.full fills on the device; torch.tensor(value, device=cuda) copies from the host
        alpha = torch.full((), float(h["mixstyle_alpha"]), device=a.device)
        # validate_args=False: the check of alpha would read it back from the device
        beta = torch.distributions.Beta(alpha, alpha, validate_args=False)
        lam = beta.sample((len(a), 1, 1)).to(a.dtype)
        if h["mixstyle_mix"] == "crossdomain":
            partner = cross_domain_partners(step.domains)
        else:
            partner = torch.randperm(len(a), device=a.device)
        mu_mix = lam * mu + (1 - lam) * mu[partner]
        sigma_mix = lam * sigma + (1 - lam) * sigma[partner]
        return ((x - mu) / sigma * sigma_mix + mu_mix).reshape(a.shape)
