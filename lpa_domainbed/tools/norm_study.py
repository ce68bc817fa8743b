"""Do positive/negative classes expand/contract the activation norm (Conjectures 1-2)?

Trains LPA (``lpa_split=mean_accuracy``, so both P_a and N_a are non-empty; the default
``lpa_direction = 'loss'``, eqs. 8-11) on an embedded dataset (RotatedDigits: MLP;
StyleDigits: MNIST_CNN; domains 0-2 for training), then probes that one network, state-free
(``probe()`` on all training samples), under each reading of the search (``loss`` and
``conjecture``) and reports per class, at the default layer, the norm ratio
``E|a + delta| / E|a|`` and the perturbed-loss change ``E l(a + delta) - E l(a)``.

    python -m lpa_domainbed.tools.norm_study [steps] [seed] [--dataset StyleDigits]
"""

from __future__ import annotations

import argparse
import copy
import json

import torch

__all__ = ["measure", "READINGS", "with_direction"]

#: the values of ``lpa_direction`` compared
READINGS = ("loss", "conjecture")


def _train(dataset: str, steps: int, seed: int, eps: float, batch: int):
    from domainbed import algorithms, datasets, hparams_registry

    import lpa_domainbed

    lpa_domainbed.register()
    data = vars(datasets)[dataset](None, [3], {})
    hparams = hparams_registry.default_hparams("LPA", dataset)
    hparams.update(lpa_split="mean_accuracy", lpa_eps=eps)
    torch.manual_seed(seed)
    alg = algorithms.get_algorithm_class("LPA")(data.input_shape, data.num_classes, 3, hparams)
    g = torch.Generator().manual_seed(seed)
    envs = [data[i].tensors for i in range(3)]
    for _ in range(steps):
        batches = []
        for x, y in envs:
            idx = torch.randint(len(y), (batch,), generator=g)
            batches.append((x[idx], y[idx]))
        alg.update(batches)
    return alg, torch.cat([e[0] for e in envs]), torch.cat([e[1] for e in envs])


def with_direction(alg, direction: str):
    """A copy of the trained LPA ``alg`` whose search reads ``lpa_direction = direction``.

    The search reads its hparams when it is built, so the copy builds its own; the network,
    the class statistics and the original are untouched."""
    twin = copy.deepcopy(alg)
    twin.hparams["lpa_direction"] = direction
    twin.search = type(alg.search)(twin.hparams, alg.num_classes, [c.name for c in alg.cuts],
                                   alg.statistics.needs_accuracy)
    return twin


def _per_class(alg, x, y) -> dict:
    r = alg.probe(x, y)
    clean, perturbed = r.clean[r.layers[0]], r.perturbed[r.layers[0]]  # the default layer
    positive = alg.statistics.positive()
    out = {"positive": [], "negative": [], "loss_change_positive": [], "loss_change_negative": []}
    for c in range(alg.num_classes):
        rows = y == c
        ratio = float(perturbed[rows].flatten(1).norm(dim=1).mean()
                      / clean[rows].flatten(1).norm(dim=1).mean())
        side = "positive" if positive[c] else "negative"
        out[side].append(round(ratio, 4))
        change = float(r.perturbed_loss[c] - r.clean_loss[c])
        out[f"loss_change_{side}"].append(round(change, 4))
    return out


def measure(steps: int = 300, seed: int = 0, eps: float = 0.3, dataset: str = "RotatedDigits",
            batch: int = 32) -> dict:
    """``{reading: {"positive": [ratio per class], "negative": [...], "loss_change_positive":
    [...], "loss_change_negative": [...]}}`` for one network trained ``steps`` updates."""
    alg, x, y = _train(dataset, steps, seed, eps, batch)
    return {reading: _per_class(with_direction(alg, reading), x, y) for reading in READINGS}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("steps", type=int, nargs="?", default=300)
    parser.add_argument("seed", type=int, nargs="?", default=0)
    parser.add_argument("--dataset", default="RotatedDigits")
    parser.add_argument("--eps", type=float, default=0.3)
    parser.add_argument("--batch", type=int, default=32, help="per training domain")
    args = parser.parse_args(argv)
    print(json.dumps(measure(args.steps, args.seed, args.eps, args.dataset, args.batch)))


if __name__ == "__main__":
    main()
