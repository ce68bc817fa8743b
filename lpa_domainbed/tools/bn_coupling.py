"""How much BatchNorm couples LPA's class directions (docs/algorithms.md, "BatchNorm coupling").

With BatchNorm in train mode after the cut, class c's search direction ``g_c`` (eq. 10: the
class-mean gradient of the *batch's* loss w.r.t. ``a_i``, ``i`` in c) also carries the other
classes' losses, through the batch statistics. This script compares LPA's one-step direction
(``lpa_steps = 1``: ``delta_c = r_c g_c / |g_c|``) on DomainBed's ResNet-18 (random weights,
cut at ``layer3``) with two references computed directly on the network:

* ``own_live``: the gradient of class c's own loss, statistics computed from the batch (only
  the other classes' losses are left out);
* ``own_constant``: the gradient of class c's own loss with every BatchNorm normalizing by the
  clean batch's statistics held constant (what ``lpa_bn_stats = "clean"`` searches along).

Run: ``python -m lpa_domainbed.tools.bn_coupling [--classes 4] [--per_class 8] [--seed 0]``
(input 3x224x224, the size DomainBed builds a ResNet for).
"""

from __future__ import annotations

import argparse
import copy

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["own_class_direction", "search_directions", "measure"]


def _grad_at_cut(network, cut_module, a, x, y, mask):
    """d (sum of the losses of ``mask``'s samples) / d a, with ``a`` replacing the cut output."""
    z = a.detach().clone().requires_grad_(True)
    handle = cut_module.register_forward_hook(lambda *_: z)
    try:
        losses = F.cross_entropy(network(x), y, reduction="none")
    finally:
        handle.remove()
    (g,) = torch.autograd.grad(losses[mask].sum(), z)
    return g


def own_class_direction(alg, cut_module, a, x, y, c: int, constant_stats: bool):
    """Unit direction of class ``c``'s own-loss gradient at the cut (class mean over its rows).
    ``constant_stats``: BatchNorm normalizes by the clean batch's statistics, as constants (a
    copy of the network in eval mode whose running statistics are those batch statistics)."""
    network, module = alg.network, cut_module
    if constant_stats:
        network = copy.deepcopy(alg.network)
        module = dict(network.named_modules())[_path(alg.network, cut_module)]
        bns = [m for m in network.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
        seen = {}
        hooks = [bn.register_forward_pre_hook(lambda m, i: seen.__setitem__(m, i[0].detach()))
                 for bn in bns]
        with torch.no_grad():
            network.train()
            network(x)  # the clean pass: record every BatchNorm's input
        for h in hooks:
            h.remove()
        for bn in bns:
            dims = [0, *range(2, seen[bn].dim())]
            bn.running_mean.copy_(seen[bn].mean(dims))
            bn.running_var.copy_(seen[bn].var(dims, unbiased=False))  # as train mode divides
        network.eval()
    g = _grad_at_cut(network, module, a, x, y, y == c)[y == c].mean(0)
    return g / g.norm()


def _path(root, module) -> str:
    return next(n for n, m in root.named_modules() if m is module)


def search_directions(alg, x, y) -> dict[int, torch.Tensor]:
    """LPA's one-step ``delta_c`` per class, as unit vectors (from ``probe()``, state-free)."""
    r = alg.probe(x, y)
    (name,) = r.layers
    delta = r.perturbed[name] - r.clean[name]
    return {int(c): delta[y == c][0] / delta[y == c][0].norm() for c in y.unique()}


def measure(classes=4, per_class=8, seed=0) -> dict[str, list[float]]:
    """Cosines, per class, between LPA's direction (``lpa_bn_stats`` batch and clean) and the
    two own-class references (module docs)."""
    from domainbed import algorithms, hparams_registry

    from lpa_domainbed.tools.bench.weights import offline_weights

    out, refs = {}, {}
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(classes * per_class, 3, 224, 224, generator=g)
    y = torch.arange(classes * per_class) % classes
    for bn_stats in ("batch", "clean"):
        hparams = {**hparams_registry.default_hparams("LPA", "Debug224"), "resnet18": True,
                   "resnet50_augmix": False, "lpa_steps": 1, "lpa_bn_stats": bn_stats}
        with offline_weights(("resnet18",)):
            torch.manual_seed(seed)  # the same random network for both settings
            alg = algorithms.get_algorithm_class("LPA")((3, 224, 224), classes, 1, hparams)
        found = search_directions(alg, x, y)
        if not refs:
            alg.train()
            cut, seen = alg.cuts[0].module, {}
            handle = cut.register_forward_hook(lambda m, i, o: seen.setdefault("a", o.detach()))
            with torch.no_grad():
                alg.network(x)
            handle.remove()
            refs = {(ref, c): own_class_direction(alg, cut, seen["a"], x, y, c,
                                                  ref == "own_constant")
                    for ref in ("own_live", "own_constant") for c in range(classes)}
        for ref in ("own_live", "own_constant"):
            out[f"{bn_stats} vs {ref}"] = [round(float((found[c] * refs[ref, c]).sum()), 4)
                                           for c in range(classes)]
    return out

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--classes", type=int, default=4)
    parser.add_argument("--per_class", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    for key, values in measure(args.classes, args.per_class, args.seed).items():
        print(f"{key:>22}: {values}")
