"""``lpa-domainbed evaluate``: the accuracy of a trained DomainBed ``model.pkl`` (any
algorithm registered in DomainBed, ours included) on one domain of a dataset.

The model is rebuilt with DomainBed's ``get_algorithm_class`` from what its ``model.pkl``
holds (``args``, ``model_input_shape``, ``model_num_classes``, ``model_num_domains``,
``model_hparams``, ``model_dict``) and its state loaded, buffers included; the accuracy is
DomainBed's ``misc.accuracy``. ``--split in`` / ``out`` are the splits of DomainBed's train
script (``env<K>_in`` / ``env<K>_out`` in its ``results.jsonl``), made with the run's
``holdout_fraction`` and ``trial_seed`` unless given; ``all`` (the default) is the whole domain.
Domains are read without training augmentation.
"""

from __future__ import annotations

import importlib
import json
from pathlib import Path

__all__ = ["MODEL_KEYS", "load_model_file", "rebuild", "evaluate", "cmd_evaluate", "add_parser"]

#: what DomainBed's train script saves in model.pkl
MODEL_KEYS = ("args", "model_input_shape", "model_num_classes", "model_num_domains",
              "model_hparams", "model_dict")
SPLITS = ("all", "in", "out")


def load_model_file(path) -> dict:
    """``model.pkl`` as saved by DomainBed's train script, loaded with ``torch.load`` in its
    safe mode (tensors, plain values and numpy scalars only: nothing else is unpickled)."""
    import torch

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"--model {path}: no such file. DomainBed's train script writes "
                                f"model.pkl in its --output_dir at the end of a run (unless "
                                f"--skip_model_save); pass that file")
    try:
        unsafe = torch.serialization.get_unsafe_globals_in_checkpoint(str(path))
    except Exception as error:  # not a torch file at all
        raise ValueError(f"--model {path} is not a model saved by torch.save "
                         f"({type(error).__name__}: {error}); pass a DomainBed model.pkl") from None
    others = [name for name in unsafe if not name.startswith("numpy.")]
    if others:
        raise ValueError(f"--model {path} holds objects other than tensors, plain values and "
                         f"numpy scalars ({', '.join(others)}), which are not loaded; pass a "
                         f"DomainBed model.pkl")
    with torch.serialization.safe_globals([_resolve(name) for name in unsafe] + _numpy_dtypes()):
        saved = torch.load(path, map_location="cpu", weights_only=True)
    missing = [k for k in MODEL_KEYS if not isinstance(saved, dict) or k not in saved]
    if missing:
        raise ValueError(f"--model {path} lacks {', '.join(missing)}: it is not a model.pkl "
                         f"of DomainBed's train script (which saves {', '.join(MODEL_KEYS)})")
    return saved


def _numpy_dtypes() -> list:
    """numpy's dtype classes (a numpy scalar in the hparams is saved with its dtype's class,
    which torch does not list among a file's globals)."""
    import numpy as np

    dtypes = getattr(np, "dtypes", None)
    return [getattr(dtypes, n) for n in dir(dtypes) if n.endswith("DType")] if dtypes else []


def _resolve(name: str):
    module, _, attribute = name.rpartition(".")
    return getattr(importlib.import_module(module), attribute)


def _dataset_class(name: str):
    from domainbed import datasets

    import lpa_domainbed

    lpa_domainbed.register()
    try:
        return datasets.get_dataset_class(name)
    except NotImplementedError:
        known = sorted(getattr(datasets, "DATASETS", []))
        raise ValueError(f"--dataset {name}: no such DomainBed dataset; known: "
                         f"{', '.join(known)}") from None


def _split(domain, index: int, split: str, run: dict, holdout_fraction, trial_seed):
    """Domain ``index`` split as DomainBed's train script splits it for ``run`` (its args)."""
    from domainbed.lib import misc

    if split == "all":
        return domain
    fraction = run.get("holdout_fraction", 0.2) if holdout_fraction is None else holdout_fraction
    seed = misc.seed_hash(run.get("trial_seed", 0) if trial_seed is None else trial_seed, index)
    out, in_ = misc.split_dataset(domain, int(len(domain) * fraction), seed)
    if split == "out":
        return out
    uda_fraction = run.get("uda_holdout_fraction", 0) or 0
    if index in run.get("test_envs", []) and uda_fraction:  # the train script's uda split
        _, in_ = misc.split_dataset(in_, int(len(in_) * uda_fraction), seed)
    return in_


def rebuild(saved: dict):
    """The algorithm of a loaded model.pkl (:func:`load_model_file`), built as DomainBed's
    train script builds it, with its saved state (parameters and buffers) loaded."""
    from domainbed import algorithms

    import lpa_domainbed
    from lpa_domainbed.weights import explain_weight_errors

    lpa_domainbed.register()  # ours, and the plugins named by LPA_DOMAINBED_PLUGINS
    name = saved["args"]["algorithm"]
    try:
        algorithm_class = algorithms.get_algorithm_class(name)
    except NotImplementedError:
        raise ValueError(f"the model's algorithm {name!r} is not registered in DomainBed: "
                         f"install or register the package that defines it") from None
    hparams = dict(saved["model_hparams"])
    with explain_weight_errors(saved["model_input_shape"], hparams):
        algorithm = algorithm_class(saved["model_input_shape"], saved["model_num_classes"],
                                    saved["model_num_domains"], hparams)
    algorithm.load_state_dict(saved["model_dict"])
    return algorithm


def evaluate(model, env: int, dataset=None, data_dir=None, split="all",
             holdout_fraction=None, trial_seed=None, device=None) -> dict:
    """Accuracy of ``model`` (a model.pkl path) on domain ``env`` of ``dataset`` (default: the
    run's), read from ``data_dir`` (default: the run's). Returns a dict with ``accuracy``,
    ``n`` (examples), ``domain`` (its name) and what was evaluated."""
    import torch
    from domainbed.lib import misc
    from domainbed.lib.fast_data_loader import FastDataLoader

    if split not in SPLITS:
        raise ValueError(f"--split {split}: choose one of {', '.join(SPLITS)}")
    if holdout_fraction is not None and not 0 <= holdout_fraction < 1:
        raise ValueError(f"--holdout_fraction {holdout_fraction}: the fraction of each domain "
                         f"in the 'out' split must be in [0, 1), as in DomainBed's train script")
    saved = load_model_file(model)
    run, hparams = saved["args"], dict(saved["model_hparams"])
    dataset = dataset or run["dataset"]
    cls = _dataset_class(dataset)
    names = list(cls.ENVIRONMENTS or [])
    if not 0 <= env < len(names):
        raise ValueError(f"--env {env}: {dataset} has {len(names)} domains, numbered 0 to "
                         f"{len(names) - 1}: " + ", ".join(f"{i} {n}" for i, n in enumerate(names)))
    test_envs = list(run.get("test_envs", [])) if dataset == run["dataset"] else [env]
    data_hparams = {**hparams, "data_augmentation": False}  # no training augmentation
    data = cls(data_dir or run["data_dir"], test_envs, data_hparams)
    if (tuple(data.input_shape) != tuple(saved["model_input_shape"])
            or data.num_classes != saved["model_num_classes"]):
        raise ValueError(f"--dataset {dataset} has inputs {tuple(data.input_shape)} and "
                         f"{data.num_classes} classes; the model takes "
                         f"{tuple(saved['model_input_shape'])} and "
                         f"{saved['model_num_classes']}: pass a dataset it was made for")
    algorithm = rebuild(saved)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    algorithm.to(device)
    part = _split(data[env], env, split, run, holdout_fraction, trial_seed)
    loader = FastDataLoader(dataset=part, batch_size=64, num_workers=data.N_WORKERS)
    return {"model": str(model), "algorithm": run["algorithm"], "dataset": dataset, "env": env,
            "domain": names[env], "split": split, "n": len(part),
            "accuracy": misc.accuracy(algorithm, loader, None, device)}


def cmd_evaluate(args) -> int:
    result = evaluate(args.model, args.env, args.dataset, args.data_dir, args.split,
                      args.holdout_fraction, args.trial_seed, args.device)
    if args.json:
        print(json.dumps(result))
    else:
        print(f"{result['algorithm']} on {result['dataset']} env {result['env']} "
              f"({result['domain']}), {result['split']} ({result['n']} examples): "
              f"accuracy {result['accuracy']:.4f}")
    return 0


def add_parser(sub) -> None:
    p = sub.add_parser(
        "evaluate", help="accuracy of a trained model.pkl on one domain",
        description="Accuracy of a model.pkl written by DomainBed's train script (any "
                    "algorithm registered in DomainBed) on one domain of a dataset.")
    p.add_argument("--model", required=True, help="the run's model.pkl")
    p.add_argument("--env", type=int, required=True,
                   help="the domain, by index (as --test_envs of DomainBed's train script)")
    p.add_argument("--dataset", default=None, help="DomainBed dataset (default: the run's)")
    p.add_argument("--data_dir", default=None,
                   help="where the dataset's files are (default: the run's --data_dir)")
    p.add_argument("--split", choices=SPLITS, default="all",
                   help="'all': the whole domain; 'in' / 'out': the train script's splits "
                        "(env<K>_in / env<K>_out of its results.jsonl); default: all")
    p.add_argument("--holdout_fraction", type=float, default=None,
                   help="for --split in/out (default: the run's)")
    p.add_argument("--trial_seed", type=int, default=None,
                   help="for --split in/out (default: the run's)")
    p.add_argument("--device", default=None, help="where the model runs (default: cuda when available, else cpu)")
    p.add_argument("--json", action="store_true",
                   help="print one JSON object (accuracy at full precision)")
    p.set_defaults(func=cmd_evaluate)
