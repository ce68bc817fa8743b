"""How strong is a perturbation on a trained network? The predictions it leaves correct.

    python -m lpa_domainbed.tools.perturbation_strength --model RUN/model.pkl
        [--out results/style_curve] [--batches 4]

A DomainBed ERM ``model.pkl`` (the train script's) gives the network. Each setting of
:data:`SETTINGS` (an algorithm, its hparams: LPA's eps and cut, ADA's eps, MixStyle's layers)
is built with the model's hparams, loads the trained weights (``strict=False``: the
algorithm's own buffers keep their initial values) and ``probe()`` runs what its next training
update would do to the training domains' validation splits (``out``, as the train script
splits them), state-free. Reported per setting: the clean and the perturbed accuracy of those
predictions, and the relative perturbation ``E|a~ - a| / E|a|`` at each cut (paper Figure 1).

A perturbation that leaves almost no prediction correct trains the network on inputs it
cannot classify; one that leaves all of them correct changes little. Writes
``perturbation_strength.csv`` and ``.md`` in ``--out``.
"""

from __future__ import annotations

import argparse
import csv
import os
import sys

__all__ = ["SETTINGS", "measure", "main"]

#: (label, algorithm, hparams over the model's own); the layers are MNIST_CNN's
SETTINGS = (
    *((f"LPA eps {eps} at {layer}", "LPA", {"lpa_eps": eps, "perturb_layer": layer})
      for layer in ("default", "featurizer.bn3") for eps in (0.01, 0.03, 0.1, 0.3)),
    *((f"ADA eps {eps}", "ADA", {"ada_eps": eps}) for eps in (0.02, 0.05, 0.1, 0.3)),
    *((f"MixStyle p=1 at {layer}", "MixStyle", {"mixstyle_p": 1.0, "perturb_layer": layer})
      for layer in ("stage1", "stage2", "stage3", "stage4", "early_stages")),
)


def _validation(saved: dict, batch_size: int, batches: int, seed: int = 0):
    """``batches`` minibatches of ``batch_size`` per training domain from its ``out`` split,
    stacked as one update's minibatches are (domain after domain)."""
    import torch

    from lpa_domainbed.tools.evaluate import _dataset_class, _split

    run = saved["args"]
    dataset = _dataset_class(run["dataset"])(run["data_dir"], run["test_envs"],
                                             saved["model_hparams"])
    xs, ys = [], []
    g = torch.Generator().manual_seed(seed)
    for index, domain in enumerate(dataset):
        if index in run["test_envs"]:
            continue
        split = _split(domain, index, "out", run, None, None)
        take = torch.randperm(len(split), generator=g)[:batch_size * batches].tolist()
        xs.append(torch.stack([split[i][0] for i in take]))
        ys.append(torch.tensor([int(split[i][1]) for i in take]))
    return xs, ys


def measure(model: str, settings=SETTINGS, batches: int = 4) -> list[dict]:
    """One row per setting: clean and perturbed accuracy (%) of the probed predictions, and
    the relative perturbation per cut."""
    import torch
    from domainbed import algorithms

    from lpa_domainbed.tools.evaluate import load_model_file

    saved = load_model_file(model)
    hparams = dict(saved["model_hparams"])
    xs, ys = _validation(saved, int(hparams["batch_size"]), batches)
    weights = {k: v for k, v in saved["model_dict"].items() if k.startswith("network.")}
    rows = []
    for label, name, overrides in settings:
        torch.manual_seed(0)
        alg = algorithms.get_algorithm_class(name)(
            saved["model_input_shape"], saved["model_num_classes"],
            saved["model_num_domains"], {**hparams, **overrides})
        alg.load_state_dict(weights, strict=False)
        clean = perturbed = total = 0
        rel: dict[str, list] = {}
        for b in range(batches):  # one update's batch: every training domain's minibatch
            size = min(len(yd) for yd in ys) // batches
            x = torch.cat([xd[b * size:(b + 1) * size] for xd in xs])
            y = torch.cat([yd[b * size:(b + 1) * size] for yd in ys])
            domains = torch.cat([torch.full((size,), d) for d in range(len(xs))])
            r = alg.probe(x, y, domains)
            clean += int((r.clean_logits.argmax(1) == y).sum())
            perturbed += int((r.logits.argmax(1) == y).sum())
            total += len(y)
            for layer, values in r.rel_perturbation.items():
                rel.setdefault(layer, []).append(float(values.nanmean()))
        rows.append({"setting": label, "algorithm": name, "clean_acc": 100 * clean / total,
                     "perturbed_acc": 100 * perturbed / total, "samples": total,
                     "rel_perturbation": "; ".join(f"{k}: {sum(v) / len(v):.3f}"
                                                   for k, v in rel.items())})
    return rows


def _write(rows: list[dict], out: str, model: str) -> None:
    os.makedirs(out, exist_ok=True)
    path = os.path.join(out, "perturbation_strength")
    with open(path + ".csv.tmp", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    os.replace(path + ".csv.tmp", path + ".csv")
    lines = [f"# Perturbation strength on a trained ERM network ({os.path.basename(model)})",
             "", "Predictions on the training domains' validation splits, each setting's "
             "next training update probed state-free (`python -m "
             "lpa_domainbed.tools.perturbation_strength`).", "",
             "| setting | clean acc (%) | perturbed acc (%) | E|a~ - a| / E|a| |",
             "|---|---:|---:|---|"]
    lines += [f"| {r['setting']} | {r['clean_acc']:.1f} | {r['perturbed_acc']:.1f} | "
              f"{r['rel_perturbation']} |" for r in rows]
    with open(path + ".md.tmp", "w") as handle:
        handle.write("\n".join(lines) + "\n")
    os.replace(path + ".md.tmp", path + ".md")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", required=True, help="a DomainBed model.pkl of ERM")
    parser.add_argument("--out", default=".", help="folder for the CSV and the table")
    parser.add_argument("--batches", type=int, default=4,
                        help="updates' batches probed per setting (default: %(default)s)")
    args = parser.parse_args(argv)
    if args.batches < 1:
        parser.error("--batches must be positive")
    rows = measure(args.model, batches=args.batches)
    _write(rows, args.out, args.model)
    for r in rows:
        print(f"{r['setting']:<32} clean {r['clean_acc']:5.1f}  perturbed "
              f"{r['perturbed_acc']:5.1f}  {r['rel_perturbation']}")


if __name__ == "__main__":
    main(sys.argv[1:])
