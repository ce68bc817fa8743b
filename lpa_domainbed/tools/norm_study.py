"""Do positive/negative classes expand/contract the activation norm (Conjectures 1-2)?

Trains LPA (``lpa_split=mean_accuracy``, so both P_a and N_a are non-empty) on the embedded
RotatedDigits dataset (MLP, domains 0-2 for training), then reports, per class and via the
state-free ``probe()``, the ratio ``E|a + delta| / E|a|`` at the default layer.

    python -m lpa_domainbed.tools.norm_study [steps] [seed]
"""

from __future__ import annotations

import sys

import torch

__all__ = ["measure"]


def measure(steps: int = 300, seed: int = 0, eps: float = 0.3) -> dict:
    """Per-class norm ratios after ``steps`` updates: ``{"positive": [...], "negative": [...]}``."""
    from domainbed import algorithms, hparams_registry

    import lpa_domainbed
    from lpa_domainbed.datasets.rotated_digits import RotatedDigits

    lpa_domainbed.register()
    data = RotatedDigits(None, [3], {})
    hparams = hparams_registry.default_hparams("LPA", "RotatedDigits")
    hparams.update(lpa_split="mean_accuracy", lpa_eps=eps)
    torch.manual_seed(seed)
    alg = algorithms.get_algorithm_class("LPA")((64,), 10, 3, hparams)
    g = torch.Generator().manual_seed(seed)
    envs = [data[i].tensors for i in range(3)]
    for _ in range(steps):
        batch = []
        for x, y in envs:
            idx = torch.randint(len(y), (32,), generator=g)
            batch.append((x[idx], y[idx]))
        alg.update(batch)
    x = torch.cat([e[0] for e in envs])
    y = torch.cat([e[1] for e in envs])
    r = alg.probe(x, y)
    clean, perturbed = r.clean[r.layers[0]], r.perturbed[r.layers[0]]  # the default layer
    positive = alg.statistics.positive()
    out = {"positive": [], "negative": []}
    for c in range(10):
        rows = y == c
        ratio = float(perturbed[rows].norm(dim=1).mean() / clean[rows].norm(dim=1).mean())
        out["positive" if positive[c] else "negative"].append(round(ratio, 4))
    return out


if __name__ == "__main__":
    args = [int(a) for a in sys.argv[1:3]]
    print(measure(*args))
