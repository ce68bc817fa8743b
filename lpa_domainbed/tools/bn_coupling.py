"""How much BatchNorm couples LPA's class directions (docs/algorithms.md, "BatchNorm coupling").

With BatchNorm in train mode after the cut, class c's direction ``g_c`` (eq. 10, the class mean
of the *batch* loss's gradient) also carries the other classes' losses through the batch
statistics. LPA's one-step direction (``lpa_steps = 1``: ``delta_c = r_c g_c / |g_c|``) on
DomainBed's ResNet-18 (random weights, cut ``layer3``, 3x224x224) is compared with class c's
own-loss gradient, statistics from the batch (``own_live``) or the clean batch's held constant
(``own_constant``, what ``lpa_bn_stats = "clean"`` searches along).

Run: ``python -m lpa_domainbed.tools.bn_coupling [--classes 4] [--per_class 8] [--seed 0]``.
"""

from __future__ import annotations

import argparse
import copy

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["own_class_direction", "search_directions", "measure"]


def own_class_direction(alg, cut_module, a, x, y, c: int, constant_stats: bool):
    """Unit direction of class ``c``'s own-loss gradient at the cut (class mean over its rows).
    ``constant_stats``: BatchNorm normalizes by the clean batch's statistics, as constants (a
    copy of the network in eval mode whose running statistics are those batch statistics)."""
    network, module = alg.network, cut_module
    if constant_stats:
        path = next(n for n, m in alg.network.named_modules() if m is cut_module)
        network = copy.deepcopy(alg.network)
        module = network.get_submodule(path)
        bns = [m for m in network.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
        seen = {}
        hooks = [bn.register_forward_pre_hook(lambda m, i: seen.__setitem__(m, i[0].detach()))
                 for bn in bns]
        with torch.no_grad():
            network.train()(x)  # the clean pass: record every BatchNorm's input
        for bn, h in zip(bns, hooks):
            h.remove()
            dims = [0, *range(2, seen[bn].dim())]
            bn.running_mean.copy_(seen[bn].mean(dims))
            bn.running_var.copy_(seen[bn].var(dims, unbiased=False))  # as train mode divides
        network.eval()
    z = a.detach().clone().requires_grad_(True)
    handle = module.register_forward_hook(lambda *_: z)  # the network sees z at the cut
    losses = F.cross_entropy(network(x), y, reduction="none")
    handle.remove()
    (g,) = torch.autograd.grad(losses[y == c].sum(), z)
    g = g[y == c].mean(0)
    return g / g.norm()


def search_directions(alg, x, y):
    """LPA's one-step ``delta_c`` per class as unit vectors, and the clean activation at the
    cut (both from the state-free ``probe()``)."""
    r = alg.probe(x, y)
    (name,) = r.layers
    delta = r.perturbed[name] - r.clean[name]
    return {int(c): delta[y == c][0] / delta[y == c][0].norm() for c in y.unique()}, r.clean[name]


def measure(classes=4, per_class=8, seed=0) -> dict[str, list[float]]:
    """Per class, the cosine between LPA's direction (``lpa_bn_stats`` batch and clean) and
    each own-class reference (module docs)."""
    from domainbed import algorithms, hparams_registry

    from lpa_domainbed.tools.bench.weights import offline_weights

    out, refs = {}, {}
    x = torch.randn(classes * per_class, 3, 224, 224, generator=torch.Generator().manual_seed(seed))
    y = torch.arange(classes * per_class) % classes
    algs = {}
    with offline_weights(("resnet18",)):  # one weights file: the same network for both
        for bn_stats in ("batch", "clean"):
            hparams = {**hparams_registry.default_hparams("LPA", "Debug224"), "resnet18": True,
                       "resnet50_augmix": False, "lpa_steps": 1, "lpa_bn_stats": bn_stats}
            torch.manual_seed(seed)  # the same classifier
            algs[bn_stats] = algorithms.get_algorithm_class("LPA")((3, 224, 224), classes, 1,
                                                                   hparams)
    for bn_stats, alg in algs.items():
        found, a = search_directions(alg, x, y)
        for ref in ("own_live", "own_constant"):
            for c in range(classes):  # the references do not depend on lpa_bn_stats
                if (ref, c) not in refs:
                    refs[ref, c] = own_class_direction(alg, alg.cuts[0].module, a, x, y, c,
                                                       ref == "own_constant")
            out[f"{bn_stats} vs {ref}"] = [round(float((found[c] * refs[ref, c]).sum()), 4)
                                           for c in range(classes)]
    return out


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    for flag, default in (("--classes", 4), ("--per_class", 8), ("--seed", 0)):
        parser.add_argument(flag, type=int, default=default)
    args = parser.parse_args()
    for key, values in measure(args.classes, args.per_class, args.seed).items():
        print(f"{key:>22}: {values}")
