"""The in-process DomainBed trainer (:func:`train_run`, step for step
``domainbed/scripts/train.py`` with training-domain validation) and :func:`run_all`, which
trains every run the cache does not have yet."""

from __future__ import annotations

import collections
import random
import time
from typing import Callable

import numpy as np

from lpa_domainbed.tools.figures.algorithms import algorithm_class, resolve_hparams
from lpa_domainbed.tools.figures.cache import RunCache, cache_key
from lpa_domainbed.tools.figures.data import make_dataset, split_environments
from lpa_domainbed.tools.figures.plans import RunSpec, Settings

__all__ = ["PROBE_SAMPLES", "train_run", "run_all", "format_seconds"]

#: held-out samples probed per checkpoint (Figure 1); all of RotatedDigits' held-out in-split.
PROBE_SAMPLES = 512


def _seed_everything(seed: int) -> None:
    """As train.py: Python, numpy and torch RNGs, deterministic cuDNN."""
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.backends.cudnn.deterministic = True
    torch.backends.cudnn.benchmark = False


def _rng_neutral(function, *args):
    """Call ``function`` and restore numpy's and Python's global RNGs afterwards. ``probe``
    restores torch's RNG itself, but an algorithm may draw from numpy (ManifoldMixup's
    lambda): without this, probing at a checkpoint would change the rest of the training."""
    numpy_state, python_state = np.random.get_state(), random.getstate()
    try:
        return function(*args)
    finally:
        np.random.set_state(numpy_state)
        random.setstate(python_state)


def _probe_held_out(algorithm, split, batch_size: int, num_classes: int, device: str) -> dict:
    """Per class ``E|a~ - a| / E|a|`` over the first :data:`PROBE_SAMPLES` held-out samples,
    probed in batches of the training batch size (LPA's delta is per class and batch).
    Returns ``{layer: {"rel": [C], "count": [C]}}``; ``rel`` is None for absent classes."""
    import torch

    from lpa_domainbed.algorithms.base import flat_norms

    n = min(len(split), PROBE_SAMPLES)
    items = [split[i] for i in range(n)]
    x = torch.stack([torch.as_tensor(item[0]) for item in items]).to(device)
    y = torch.as_tensor([int(item[1]) for item in items]).to(device)
    sums: dict[str, list] = {}
    for start in range(0, n, batch_size):
        xb, yb = x[start:start + batch_size], y[start:start + batch_size]
        result = _rng_neutral(algorithm.probe, xb, yb)
        for name in result.layers:
            a, a_tilde = result.clean[name], result.perturbed[name]
            delta_sum, clean_sum, count = sums.setdefault(
                name, [torch.zeros(num_classes), torch.zeros(num_classes),
                       torch.zeros(num_classes)])
            yc = yb.cpu()
            delta_sum.index_add_(0, yc, flat_norms(a_tilde - a).cpu())
            clean_sum.index_add_(0, yc, flat_norms(a).cpu())
            count.index_add_(0, yc, torch.ones(len(yc)))
    out = {}
    for name, (delta_sum, clean_sum, count) in sums.items():
        rel = [float(d / c) if k > 0 and c > 0 else None
               for d, c, k in zip(delta_sum, clean_sum, count)]
        out[name] = {"rel": rel, "count": [int(k) for k in count]}
    return out


def _select_checkpoint(checkpoints: list[dict], test_env: int, n_envs: int) -> dict:
    """DomainBed's training-domain validation: the first checkpoint with the highest mean
    out-split accuracy of the training domains; its score is the held-out in-split accuracy."""
    def val_acc(c):
        return float(np.mean([c[f"env{i}_out_acc"] for i in range(n_envs) if i != test_env]))

    best = max(checkpoints, key=val_acc)  # max() keeps the first maximum, like Q.argmax
    return {"step": best["step"], "val_acc": val_acc(best),
            "test_acc": best[f"env{test_env}_in_acc"], "probe": best.get("probe")}


def train_run(spec: RunSpec, settings: Settings) -> dict:
    """Train one run as ``domainbed/scripts/train.py`` would, in this process.

    Same order of operations as train.py (hparams, seeds, dataset, splits, loaders, algorithm)
    so the RNG streams match; the seed is the one DomainBed's sweep passes
    (``seed_hash(dataset, algorithm, [test_env], 0, trial)``). At each checkpoint every split
    is scored with ``misc.accuracy`` and, for perturbation algorithms, the held-out in-split
    is probed (``probe`` restores the RNG, so training is unchanged by it).

    Returns the record cached by :class:`RunCache`: ``checkpoints`` (step, ``env{i}_in_acc``,
    ``env{i}_out_acc``, ``probe``), ``selected`` (step, val_acc, test_acc, probe) and
    ``train_seconds``.
    """
    import torch
    from domainbed.lib import misc
    from domainbed.lib.fast_data_loader import FastDataLoader, InfiniteDataLoader

    started = time.time()
    hparams = resolve_hparams(spec.algorithm, settings.dataset, spec.overrides)
    _seed_everything(misc.seed_hash(settings.dataset, spec.algorithm, [spec.test_env], 0,
                                    spec.trial))
    device = "cuda" if torch.cuda.is_available() else "cpu"
    dataset = make_dataset(settings.dataset, settings.data_dir, spec.test_env, hparams)
    in_splits, out_splits = split_environments(dataset, spec.test_env,
                                               settings.holdout_fraction, spec.trial,
                                               hparams["class_balanced"])
    train_loaders = [InfiniteDataLoader(dataset=env, weights=weights,
                                        batch_size=hparams["batch_size"],
                                        num_workers=dataset.N_WORKERS)
                     for i, (env, weights) in enumerate(in_splits) if i != spec.test_env]
    # Created in train.py's order: each draws from the global RNG when first iterated.
    eval_loaders = [FastDataLoader(dataset=env, batch_size=64, num_workers=dataset.N_WORKERS)
                    for env, _ in in_splits + out_splits]
    eval_names = ([f"env{i}_in" for i in range(len(in_splits))]
                  + [f"env{i}_out" for i in range(len(out_splits))])
    algorithm = algorithm_class(spec.algorithm)(dataset.input_shape, dataset.num_classes,
                                                len(dataset) - 1, hparams)
    algorithm.to(device)
    minibatches_iterator = zip(*train_loaders)
    checkpoint_freq = settings.checkpoint_freq or dataset.CHECKPOINT_FREQ
    probe_batch = hparams["batch_size"] * len(train_loaders)
    checkpoints, losses = [], collections.defaultdict(list)
    for step in range(settings.steps):
        minibatches = [(x.to(device), y.to(device)) for x, y in next(minibatches_iterator)]
        for key, value in algorithm.update(minibatches, None).items():
            losses[key].append(value)
        if step % checkpoint_freq == 0 or step == settings.steps - 1:
            record = {"step": step, **{k: float(np.mean(v)) for k, v in losses.items()}}
            for name, loader in zip(eval_names, eval_loaders):
                record[f"{name}_acc"] = misc.accuracy(algorithm, loader, None, device)
            if hasattr(algorithm, "probe"):
                record["probe"] = _probe_held_out(algorithm, in_splits[spec.test_env][0],
                                                  probe_batch, dataset.num_classes, device)
            checkpoints.append(record)
            losses = collections.defaultdict(list)
    return {"checkpoints": checkpoints,
            "selected": _select_checkpoint(checkpoints, spec.test_env, len(in_splits)),
            "train_seconds": time.time() - started}


def format_seconds(seconds: float) -> str:
    """``m:ss``."""
    minutes, seconds = divmod(int(round(seconds)), 60)
    return f"{minutes}:{seconds:02d}"


def _default_trainer() -> Callable[[RunSpec, Settings], dict]:
    """``lpa_domainbed.tools.figures.train_run``, looked up at call time, so that a test can replace
    it on the package (``monkeypatch.setattr(figures, "train_run", ...)``)."""
    from lpa_domainbed.tools import figures

    return figures.train_run


def run_all(specs: list[RunSpec], settings: Settings, cache: RunCache,
            trainer: Callable[[RunSpec, Settings], dict] | None = None,
            log=print) -> dict[RunSpec, dict]:
    """Train every spec not in the cache (printing ``run i/n`` and the elapsed time) and
    return ``{spec: record}``. ``trainer`` defaults to the package's ``train_run`` (looked up
    at call time, so tests can replace it)."""
    trainer = trainer or _default_trainer()
    started = time.time()
    records, trained = {}, 0
    for i, spec in enumerate(specs, 1):
        key = cache_key(spec, settings, resolve_hparams(spec.algorithm, settings.dataset,
                                                        spec.overrides))
        record = cache.get(key)
        if record is None:
            run_started = time.time()
            record = {**trainer(spec, settings), "key": key}  # as the cache returns it
            cache.put(key, record)
            trained += 1
            how = f"trained in {time.time() - run_started:.1f} s"
        else:
            how = "cached"
        acc = 100 * record["selected"]["test_acc"]
        log(f"[run {i}/{len(specs)}] {spec.describe()}: held-out acc {acc:.1f}% ({how}, "
            f"elapsed {format_seconds(time.time() - started)})", flush=True)
        records[spec] = record
    log(f"{len(specs)} runs: {trained} trained, {len(specs) - trained} from the cache "
        f"({cache.directory}), {format_seconds(time.time() - started)}", flush=True)
    return records
