"""Building a variant's DomainBed algorithm on a network, and the batch it is fed."""

from __future__ import annotations

import warnings

import torch

from lpa_domainbed.tools.bench.config import NetworkSpec, Variant

__all__ = ["build", "make_batch"]


def build(variant: Variant, net: NetworkSpec, device: str):
    """The algorithm of ``variant`` on ``net`` (DomainBed's default hparams of the network's
    dataset, the network's and the variant's overrides), seeded so that every variant starts
    from the same weights. ResNets need :func:`~lpa_domainbed.tools.bench.weights.offline_weights`."""
    from domainbed import algorithms, hparams_registry

    hparams = hparams_registry.default_hparams(variant.algorithm, net.dataset)
    hparams.update(net.hparams)
    hparams.update(variant.overrides)
    torch.manual_seed(0)
    with warnings.catch_warnings():  # torchvision's notes on DomainBed's pretrained=True
        warnings.filterwarnings("ignore", message=".*(pretrained|weight enum).*",
                                category=UserWarning)
        alg = algorithms.get_algorithm_class(variant.algorithm)(
            net.input_shape, net.num_classes, net.num_domains + 1, hparams)
    if getattr(alg, "WRAPPED", None):  # SWAD: no validation split here; it validates once,
        alg.validate_with([], every=10**9, total_steps=10**9)  # at step 0 (a warm-up round)
    return alg.to(device).train()


def make_batch(net: NetworkSpec, device: str, seed: int = 0) -> list:
    """``num_domains`` minibatches of random images and labels, as DomainBed's loop passes."""
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(net.per_domain, *net.feed_shape, generator=g).to(device),
             torch.randint(0, net.num_classes, (net.per_domain,), generator=g).to(device))
            for _ in range(net.num_domains)]
