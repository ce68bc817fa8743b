"""The paper's analysis figures (1, 3a, 4a, 7) on a small DomainBed protocol.

    python -m lpa_domainbed.figures [--dataset RotatedDigits] [--data_dir DIR]
        [--out results/figures] [--steps N] [--trials K] [--test_env E ...]
        [--only fig1,fig4a,fig7,fig3a]

(``make figures``.) Every point of every figure is a DomainBed training run, done in this
process by :func:`train_run`, which mirrors ``domainbed/scripts/train.py`` step for step (same
splits, seeds, loaders, ``algorithm.update``, ``misc.accuracy`` at the checkpoints) and selects
the checkpoint by training-domain validation like DomainBed's
``IIDAccuracySelectionMethod``. The seed of a run is the one DomainBed's sweep gives it
(``seed_hash(dataset, algorithm, [test_env], hparams_seed=0, trial)``), so a run with 600
steps reproduces the corresponding job of ``make demo``. Finished runs are cached as JSON under
``<out>/cache/`` and reused.

Figures (PNG, and the CSV of the plotted numbers beside each):

* ``fig1``: relative activation variation ``E|a~ - a| / E|a|`` per class at the default layer
  for LPA, Dropout, ADA and ManifoldMixup, from ``probe`` on the held-out domain's data with the
  selected checkpoint (paper Figure 1).
* ``fig4a``: held-out accuracy of LPA against the perturbation layer, every stage-level cut of
  the network, the logits (= LPL) last, with ERM as a band (paper Figure 4a).
* ``fig7``: sensitivity to ``lpa_eps``, ``lpa_beta`` and ``lpa_lowrank`` (paper Figure 7).
* ``fig3a``: LPA combined with Dropout and with LPL against each alone (paper Figure 3a).

Accuracies are the held-out domain's in-split accuracy (%) at the selected checkpoint. Each
trial's accuracy is averaged over the held-out domains (DomainBed's "Avg" column); figures show
the mean over trials with DomainBed's standard error ``std(values / sqrt(n))`` (population std,
as ``collect_results.format_mean``). See ``docs/figures.md``.
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import hashlib
import json
import math
import os
import random
import sys
import time
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np
import pandas as pd

__all__ = [
    "FIGURES", "FIG1_ALGORITHMS", "FIG3A_METHODS", "FIG7_GRIDS", "Settings", "RunSpec",
    "FigureOutput", "RunCache", "LPADropout", "algorithm_class", "resolve_hparams",
    "cache_key", "train_run", "run_all", "perturbation_layers", "plan_figures",
    "fig1_table", "accuracy_table", "summarize", "plot_fig1", "plot_fig4a", "plot_fig7",
    "plot_fig3a", "make_figures", "main",
]

#: every figure this module draws, in the order they are made.
FIGURES = ("fig1", "fig4a", "fig7", "fig3a")
#: the algorithms compared in Figure 1, all at their default layer.
FIG1_ALGORITHMS = ("LPA", "Dropout", "ADA", "ManifoldMixup")
#: Figure 3a's bars: label -> algorithm (LPA+Dropout is :class:`LPADropout`).
FIG3A_METHODS = {"ERM": "ERM", "Dropout": "Dropout", "LPA": "LPA",
                 "LPA+Dropout": "LPA_Dropout", "LPL": "LPL", "LPA+LPL": "LPA_LPL"}
#: Figure 7's grids; each contains LPA's default, whose run is shared with the other figures.
FIG7_GRIDS = {"lpa_eps": (0.05, 0.1, 0.2, 0.3, 0.5),
              "lpa_beta": (0.5, 0.6, 0.7, 0.8, 0.9),
              "lpa_lowrank": (0.0, 0.1, 0.25, 0.5, 1.0)}
#: what each hparam means, for axis labels.
FIG7_LABELS = {"lpa_eps": "eps (lpa_eps): bound relative to |a|",
               "lpa_beta": "beta (lpa_beta): gamma_l = beta^(L-l)",
               "lpa_lowrank": "low-rank ratio k/d_l (lpa_lowrank; 0 = full rank)"}
#: bump when the trainer's output changes, so that old cache entries are not reused.
CACHE_VERSION = 1
DEFAULT_STEPS = 300
DEFAULT_TRIALS = 3
DEFAULT_OUT = "results/figures"
#: held-out samples probed per checkpoint (Figure 1); all of RotatedDigits' held-out in-split.
PROBE_SAMPLES = 512


# ----------------------------------------------------------------------------- settings, specs
@dataclasses.dataclass(frozen=True)
class Settings:
    """The protocol shared by every run (DomainBed's train.py arguments)."""

    dataset: str = "RotatedDigits"
    data_dir: str = "sweeps_output/data"
    steps: int = DEFAULT_STEPS
    trials: int = DEFAULT_TRIALS
    test_envs: tuple[int, ...] = (0, 3)
    holdout_fraction: float = 0.2
    checkpoint_freq: int | None = None  # None: the dataset's CHECKPOINT_FREQ, as train.py

    def describe(self) -> str:
        """One line for figure subtitles."""
        envs = ",".join(map(str, self.test_envs))
        return (f"{self.dataset}, {self.steps} steps, {self.trials} trial(s), "
                f"held-out domain(s) {envs}")


@dataclasses.dataclass(frozen=True)
class RunSpec:
    """One DomainBed training run: an algorithm with hparam overrides, one held-out domain.

    ``overrides`` is a sorted tuple of ``(name, value)`` so that specs hash and compare; equal
    specs from different figures are trained once.
    """

    algorithm: str
    test_env: int
    trial: int
    overrides: tuple[tuple[str, Any], ...] = ()

    @classmethod
    def make(cls, algorithm: str, test_env: int, trial: int, **overrides) -> "RunSpec":
        """``RunSpec.make("LPA", 0, 1, lpa_eps=0.2)``."""
        return cls(algorithm, test_env, trial, tuple(sorted(overrides.items())))

    def describe(self) -> str:
        """``LPA lpa_eps=0.2 test_env=0 trial=1``, for progress lines."""
        words = [self.algorithm, *(f"{k}={v}" for k, v in self.overrides),
                 f"test_env={self.test_env}", f"trial={self.trial}"]
        return " ".join(words)


@dataclasses.dataclass
class FigureOutput:
    """What a plotting function wrote, and what it has to say."""

    name: str
    png: Path
    csv: Path
    table: pd.DataFrame
    notes: list[str] = dataclasses.field(default_factory=list)


# ----------------------------------------------------------------------------- algorithms
def _lpa_dropout_class():
    """Build :class:`LPADropout` lazily: it subclasses LPA, which imports torch and DomainBed."""
    from lpa_domainbed.algorithms.base import merge_specs
    from lpa_domainbed.algorithms.dropout import Dropout, dropout_mask
    from lpa_domainbed.algorithms.lpa import LPA

    class _LPADropout(LPA):
        """LPA, then dropout on LPA's output, at the same layer in one ``perturb``:
        ``a~ = (a + delta_c) * m / (1 - p)``. The PGD search sees the clean activation (it is
        LPA's own); the dropout mask is drawn afterwards, as a dropout layer placed after the
        perturbation would. Only for Figure 3a, so it is not registered in DomainBed."""

        @classmethod
        def hparam_specs(cls, dataset=None):
            return merge_specs(super().hparam_specs(dataset),
                               [s for s in Dropout.hparam_specs(dataset)
                                if s.name.startswith("dropout_")])

        def check_hparams(self):
            super().check_hparams()
            Dropout.check_hparams(self)

        def perturb(self, a, y, ctx):
            a_lpa = super().perturb(a, y, ctx)
            h = self.hparams
            mask = dropout_mask(a_lpa, h["dropout_p"], h["dropout_kind"],
                                int(h["dropout_block_size"]))
            return a_lpa * mask.to(a_lpa.dtype)

    _LPADropout.__name__ = _LPADropout.__qualname__ = "LPADropout"
    return _LPADropout


_LOCAL_ALGORITHMS: dict[str, Any] = {}


def __getattr__(name):
    """``figures.LPADropout``, built on first access (importing this module needs no torch)."""
    if name == "LPADropout":
        return algorithm_class("LPA_Dropout")
    raise AttributeError(name)


def algorithm_class(name: str):
    """The class of ``name``: this module's ``LPA_Dropout`` or DomainBed's (with ours)."""
    if name == "LPA_Dropout":
        if name not in _LOCAL_ALGORITHMS:
            _LOCAL_ALGORITHMS[name] = _lpa_dropout_class()
        return _LOCAL_ALGORITHMS[name]
    from domainbed import algorithms

    return algorithms.get_algorithm_class(name)


def resolve_hparams(algorithm: str, dataset: str, overrides: Iterable = ()) -> dict:
    """DomainBed's default hparams of ``algorithm`` on ``dataset`` (``hparams_seed=0``),
    completed with the algorithm's own defaults and ``overrides`` applied, so the cache key
    names every value the run used."""
    from domainbed import hparams_registry

    base = "LPA" if algorithm == "LPA_Dropout" else algorithm  # DomainBed doesn't know ours
    hparams = hparams_registry.default_hparams(base, dataset)
    cls = algorithm_class(algorithm)
    if hasattr(cls, "hparam_specs"):
        for spec in cls.hparam_specs(dataset):
            hparams.setdefault(spec.name, spec.default)
    unknown = [k for k, _ in overrides if k not in hparams]
    if unknown:
        raise ValueError(f"{algorithm} has no hparam(s) {unknown}")
    hparams.update(dict(overrides))
    return hparams


# ----------------------------------------------------------------------------- cache
def cache_key(spec: RunSpec, settings: Settings, hparams: dict) -> dict:
    """Everything that determines a run's result (data_dir does not: it only locates data)."""
    return {"version": CACHE_VERSION, "dataset": settings.dataset,
            "algorithm": spec.algorithm, "hparams": hparams, "test_env": spec.test_env,
            "trial": spec.trial, "steps": settings.steps,
            "holdout_fraction": settings.holdout_fraction,
            "checkpoint_freq": settings.checkpoint_freq}


def _json_default(value):
    """numpy scalars (DomainBed's random hparams) as Python numbers."""
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"not JSON serializable: {value!r}")


class RunCache:
    """Finished runs as ``<dir>/<algorithm>_env<E>_trial<K>_<steps>steps_<hash>.json``."""

    def __init__(self, directory: Path):
        self.directory = Path(directory)

    def path(self, key: dict) -> Path:
        """The file of ``key``: readable names, and a hash of the whole key."""
        text = json.dumps(key, sort_keys=True, default=_json_default)
        digest = hashlib.sha1(text.encode()).hexdigest()[:12]
        return self.directory / (f"{key['algorithm']}_env{key['test_env']}_trial{key['trial']}"
                                 f"_{key['steps']}steps_{digest}.json")

    def get(self, key: dict) -> dict | None:
        """The cached record of ``key``, or None (also for an unreadable or foreign file)."""
        path = self.path(key)
        if not path.exists():
            return None
        try:
            record = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            return None  # a half-written file from an interrupted run: train again
        same = json.dumps(record.get("key"), sort_keys=True, default=_json_default) == \
            json.dumps(key, sort_keys=True, default=_json_default)
        return record if same else None

    def put(self, key: dict, record: dict) -> Path:
        """Write atomically (temporary file, then rename), so a crash never leaves half a file."""
        path = self.path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps({**record, "key": key}, sort_keys=True, indent=1,
                                  default=_json_default))
        os.replace(tmp, path)
        return path


# ----------------------------------------------------------------------------- the trainer
def _seed_everything(seed: int) -> None:
    """As train.py: Python, numpy and torch RNGs, deterministic cuDNN."""
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.backends.cudnn.deterministic = True
    torch.backends.cudnn.benchmark = False


def _make_dataset(settings: Settings, test_env: int, hparams: dict):
    """The DomainBed dataset object, built as train.py builds it (after seeding)."""
    from domainbed import datasets

    if settings.dataset not in vars(datasets):
        raise ValueError(f"unknown dataset {settings.dataset!r}; DomainBed knows "
                         f"{', '.join(datasets.DATASETS)}")
    return vars(datasets)[settings.dataset](settings.data_dir, [test_env], hparams)


def _split_environments(dataset, test_env: int, holdout_fraction: float, trial: int,
                        class_balanced: bool):
    """train.py's in/out splits (uda_holdout_fraction = 0), with their sampling weights."""
    from domainbed.lib import misc

    in_splits, out_splits = [], []
    for env_i, env in enumerate(dataset):
        out, in_ = misc.split_dataset(env, int(len(env) * holdout_fraction),
                                      misc.seed_hash(trial, env_i))
        if env_i == test_env:
            # train.py splits the held-out in-split once more (an empty uda split); this
            # reorders it, which changes the evaluation order, so we do it too.
            _, in_ = misc.split_dataset(in_, 0, misc.seed_hash(trial, env_i))
        if class_balanced:
            in_weights = misc.make_weights_for_balanced_classes(in_)
            out_weights = misc.make_weights_for_balanced_classes(out)
        else:
            in_weights, out_weights = None, None
        in_splits.append((in_, in_weights))
        out_splits.append((out, out_weights))
    return in_splits, out_splits


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
        clean = result.clean if isinstance(result.clean, list) else [result.clean]
        perturbed = result.perturbed if isinstance(result.perturbed, list) else [result.perturbed]
        for name, a, a_tilde in zip(result.layers, clean, perturbed):
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
    dataset = _make_dataset(settings, spec.test_env, hparams)
    in_splits, out_splits = _split_environments(dataset, spec.test_env,
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


def _format_seconds(seconds: float) -> str:
    """``m:ss``."""
    minutes, seconds = divmod(int(round(seconds)), 60)
    return f"{minutes}:{seconds:02d}"


def run_all(specs: list[RunSpec], settings: Settings, cache: RunCache,
            trainer: Callable[[RunSpec, Settings], dict] | None = None,
            log=print) -> dict[RunSpec, dict]:
    """Train every spec not in the cache (printing ``run i/n`` and the elapsed time) and
    return ``{spec: record}``. ``trainer`` defaults to :func:`train_run` (looked up at call
    time, so tests can replace it)."""
    trainer = trainer or globals()["train_run"]
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
            f"elapsed {_format_seconds(time.time() - started)})", flush=True)
        records[spec] = record
    log(f"{len(specs)} runs: {trained} trained, {len(specs) - trained} from the cache "
        f"({cache.directory}), {_format_seconds(time.time() - started)}", flush=True)
    return records


# ----------------------------------------------------------------------------- plans
def perturbation_layers(settings: Settings) -> tuple[list[tuple[str, str]], str]:
    """Every stage-level cut of the dataset's network, then ``features`` and ``logits``.

    Returns ``([(layer to train with, label)], default layer)``. Cuts that give the very same
    activation at the same depth ``L - l`` (the MLP's ``featurizer.output`` is its
    ``features``) would train identically; they are merged into one point labelled with both
    names. The default layer is LPA's ``default`` (canonical name).
    """
    import torch
    from domainbed import hparams_registry

    from lpa_domainbed.perturb.layers import network_stages, resolve_cuts

    hparams = hparams_registry.default_hparams("ERM", settings.dataset)
    dataset = _make_dataset(settings, settings.test_envs[0], hparams)
    lpa = algorithm_class("LPA")(dataset.input_shape, dataset.num_classes, len(dataset) - 1,
                                 resolve_hparams("LPA", settings.dataset))
    stages = network_stages(lpa.featurizer)
    cuts = [resolve_cuts(lpa, name)[0] for name in [*stages.names, "features", "logits"]]
    outputs = {}
    hooks = [c.module.register_forward_hook(
        lambda m, i, o, name=c.name: outputs.setdefault(name, o)) for c in cuts]
    try:
        lpa.eval()
        with torch.no_grad():
            lpa.network(torch.randn(2, *dataset.input_shape,
                                    generator=torch.Generator().manual_seed(0)))
    finally:
        for hook in hooks:
            hook.remove()
    merged: list[tuple[Any, list[str]]] = []
    for cut in cuts:
        for first, labels in merged:
            a, b = outputs[first.name], outputs[cut.name]
            if first.depth == cut.depth and a.shape == b.shape and torch.equal(a, b):
                labels.append(cut.name)
                break
        else:
            merged.append((cut, [cut.name]))
    default = resolve_cuts(lpa, "default")[0].name
    return [(cut.name, " = ".join(labels)) for cut, labels in merged], default


def _each_run(settings: Settings):
    """Every ``(held-out domain, trial)`` of the protocol."""
    for trial in range(settings.trials):
        for test_env in settings.test_envs:
            yield test_env, trial


def plan_figures(figures: Iterable[str], settings: Settings,
                 layers: list[tuple[str, str]] | None = None,
                 default_layer: str | None = None) -> dict[str, list[tuple[RunSpec, dict]]]:
    """``{figure: [(spec, labels)]}``: the runs behind each figure and what they stand for.

    Runs that are the same experiment get the same spec (LPA's defaults in Figure 7 are the
    Figure 1/3a LPA run; Figure 4a's default layer too; its logits point is LPL), so they are
    trained once.
    """
    figures = list(figures)
    plan: dict[str, list[tuple[RunSpec, dict]]] = {}
    lpa_defaults = resolve_hparams("LPA", settings.dataset)
    if "fig1" in figures:
        plan["fig1"] = [(RunSpec.make(name, e, t), {"algorithm": name})
                        for e, t in _each_run(settings) for name in FIG1_ALGORITHMS]
    if "fig4a" in figures:
        if layers is None:
            layers, default_layer = perturbation_layers(settings)
        rows = []
        for e, t in _each_run(settings):
            rows.append((RunSpec.make("ERM", e, t), {"algorithm": "ERM", "layer": "",
                                                     "layer_index": -1, "is_default": False}))
            for index, (layer, label) in enumerate(layers):
                if layer == "logits":
                    spec = RunSpec.make("LPL", e, t)
                elif layer == default_layer:
                    spec = RunSpec.make("LPA", e, t)
                else:
                    spec = RunSpec.make("LPA", e, t, perturb_layer=layer)
                rows.append((spec, {"algorithm": "LPA", "layer": label, "layer_index": index,
                                    "is_default": layer == default_layer}))
        plan["fig4a"] = rows
    if "fig7" in figures:
        rows = []
        for e, t in _each_run(settings):
            rows.append((RunSpec.make("ERM", e, t), {"algorithm": "ERM", "param": "",
                                                     "value": float("nan"),
                                                     "is_default": False}))
            for param, grid in FIG7_GRIDS.items():
                for value in grid:
                    is_default = value == lpa_defaults[param]
                    spec = (RunSpec.make("LPA", e, t) if is_default
                            else RunSpec.make("LPA", e, t, **{param: value}))
                    rows.append((spec, {"algorithm": "LPA", "param": param, "value": value,
                                        "is_default": is_default}))
        plan["fig7"] = rows
    if "fig3a" in figures:
        plan["fig3a"] = [(RunSpec.make(algorithm, e, t), {"method": label,
                                                          "algorithm": algorithm})
                         for e, t in _each_run(settings)
                         for label, algorithm in FIG3A_METHODS.items()]
    return plan


def unique_specs(plan: dict[str, list[tuple[RunSpec, dict]]]) -> list[RunSpec]:
    """Every spec of the plan once, in plan order."""
    return list(dict.fromkeys(spec for rows in plan.values() for spec, _ in rows))


# ----------------------------------------------------------------------------- tables
def accuracy_table(rows: list[tuple[RunSpec, dict]], records: dict[RunSpec, dict]
                   ) -> pd.DataFrame:
    """One row per run: the labels, ``test_env``, ``trial``, ``acc`` (held-out in-split
    accuracy, %, at the selected checkpoint) and ``step`` (the selected checkpoint)."""
    out = []
    for spec, labels in rows:
        if spec not in records:
            continue
        selected = records[spec]["selected"]
        out.append({**labels, "test_env": spec.test_env, "trial": spec.trial,
                    "acc": 100 * selected["test_acc"], "step": selected["step"]})
    return pd.DataFrame(out)


def fig1_table(rows: list[tuple[RunSpec, dict]], records: dict[RunSpec, dict]
               ) -> pd.DataFrame:
    """One row per run and class: ``algorithm``, ``layer``, ``test_env``, ``trial``,
    ``class``, ``rel`` (``E|a~ - a| / E|a|`` on the held-out in-split, selected checkpoint)."""
    out = []
    for spec, labels in rows:
        probe = records.get(spec, {}).get("selected", {}).get("probe")
        if not probe:
            continue
        for layer, stats in probe.items():
            for cls, rel in enumerate(stats["rel"]):
                out.append({**labels, "layer": layer, "test_env": spec.test_env,
                            "trial": spec.trial, "class": cls,
                            "rel": float("nan") if rel is None else rel})
    return pd.DataFrame(out)


def summarize(table: pd.DataFrame, by: list[str], value: str = "acc") -> pd.DataFrame:
    """Mean and standard error over trials of the per-trial average over held-out domains.

    Columns: ``by``, ``mean``, ``se`` (DomainBed's ``std(v / sqrt(n))``, 0 for one trial),
    ``n_trials``, ``n_test_envs``.
    """
    columns = [*by, "mean", "se", "n_trials", "n_test_envs"]
    if table.empty:
        return pd.DataFrame(columns=columns)
    # dropna=False: ERM has no layer / hparam value (NaN) but is a group of its own.
    per_trial = table.groupby([*by, "trial"], sort=False, dropna=False)[value].mean()
    grouped = per_trial.reset_index().groupby(by, sort=False, dropna=False)[value]
    summary = pd.DataFrame({
        "mean": grouped.mean(),
        "se": grouped.agg(lambda v: float(np.std(np.asarray(v) / math.sqrt(len(v))))),
        "n_trials": grouped.count(),
        "n_test_envs": table.groupby(by, sort=False, dropna=False)["test_env"].nunique(),
    }).reset_index()
    return summary[columns]


# ----------------------------------------------------------------------------- plotting
def _new_figure(width: float, height: float, ncols: int = 1):
    """A matplotlib figure on the Agg canvas (no pyplot global state) and its axes."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height))
    FigureCanvasAgg(figure)
    axes = figure.subplots(1, ncols, squeeze=False)[0]
    return figure, list(axes)


def _finish(figure, axes, title: str, subtitle: str, notes: list[str], path: Path) -> None:
    """Title, subtitle, notes (missing inputs) under the plot, then save as PNG."""
    figure.suptitle(title, fontsize="medium", fontweight="bold")
    lines = [subtitle] + [f"Note: {n}" for n in notes]
    figure.text(0.5, 0.005, "\n".join(lines), ha="center", va="bottom", fontsize="x-small",
                wrap=True)
    figure.tight_layout(rect=(0, 0.04 + 0.03 * len(lines), 1, 0.97))
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=130)


def _no_data(axes, message: str) -> None:
    """An empty panel that says why it is empty."""
    axes.text(0.5, 0.5, message, ha="center", va="center", transform=axes.transAxes)
    axes.set_xticks([])
    axes.set_yticks([])


def _flag(table: pd.DataFrame, column: str) -> pd.Series:
    """A boolean column, all False where the table lacks it (fabricated or partial inputs)."""
    if column not in table:
        return pd.Series(False, index=table.index)
    return table[column].fillna(False).astype(bool)


def _erm_band(axes, erm: pd.DataFrame, label: str = "ERM") -> None:
    """ERM's mean as a horizontal line and ± one standard error as a band."""
    mean, se = float(erm["mean"].iloc[0]), float(erm["se"].iloc[0])
    axes.axhline(mean, color="0.3", linestyle="--", linewidth=1.2,
                 label=f"{label} {mean:.1f} ± {se:.1f}")
    axes.axhspan(mean - se, mean + se, color="0.6", alpha=0.25, linewidth=0)


def plot_fig1(table: pd.DataFrame, out_dir: Path, subtitle: str = "",
              algorithms: Iterable[str] = FIG1_ALGORITHMS) -> FigureOutput:
    """Figure 1: grouped bars of per-class relative activation variation, one group per class,
    one bar per algorithm, error bars = standard error over trials. Writes
    ``fig1_activation_variation.{png,csv}`` (CSV: algorithm, layer, class, mean, se, ...)."""
    out_dir = Path(out_dir)
    png, csv = out_dir / "fig1_activation_variation.png", out_dir / "fig1_activation_variation.csv"
    wanted = list(algorithms)
    present = [a for a in wanted if not table.empty and a in set(table["algorithm"])]
    notes = [f"no results for {', '.join(a for a in wanted if a not in present)} "
             f"(left out)"] if len(present) < len(wanted) else []
    by = ["algorithm", "layer", "class"]
    summary = summarize(table[table["algorithm"].isin(present)] if present else pd.DataFrame(),
                        by, "rel")
    summary.to_csv(csv, index=False)
    figure, (axes,) = _new_figure(10, 4.6)
    layer_text = ""
    if not present:
        _no_data(axes, "no probe results to plot")
    else:
        classes = sorted(summary["class"].unique())
        width = 0.8 / len(present)
        for i, name in enumerate(present):
            rows = summary[summary["algorithm"] == name].set_index("class").reindex(classes)
            x = np.arange(len(classes)) + (i - (len(present) - 1) / 2) * width
            axes.bar(x, rows["mean"], width, yerr=rows["se"].fillna(0), capsize=2,
                     label=f"{name} (mean {rows['mean'].mean():.3f})")
        axes.set_xticks(np.arange(len(classes)), [str(c) for c in classes])
        axes.set_xlabel("class")
        axes.set_ylabel("relative variation  E|a~ - a| / E|a|")
        # Legend in a row above the bars, with head room, so it never hides a bar.
        axes.set_ylim(0, 1.25 * float((summary["mean"] + summary["se"].fillna(0)).max()))
        axes.legend(fontsize="small", ncols=len(present), loc="upper center")
        axes.grid(axis="y", alpha=0.3)
        layers = list(dict.fromkeys(summary["layer"]))
        layer_text = f" at {', '.join(layers)}"
        if len(layers) > 1:
            notes.append(f"the algorithms perturb different layers: {', '.join(layers)}")
    _finish(figure, [axes], f"Fig. 1: relative activation variation per class{layer_text} "
            "(held-out domain, selected checkpoint)", subtitle, notes, png)
    return FigureOutput("fig1", png, csv, summary, notes)


def plot_fig4a(table: pd.DataFrame, out_dir: Path, subtitle: str = "") -> FigureOutput:
    """Figure 4a: LPA's held-out accuracy at each layer (error bars = SE over trials), ERM as a
    line with a ±SE band. Writes ``fig4a_accuracy_vs_layer.{png,csv}`` (CSV: algorithm, layer,
    layer_index, mean, se, n_trials, n_test_envs; ERM has layer_index -1)."""
    out_dir = Path(out_dir)
    png, csv = out_dir / "fig4a_accuracy_vs_layer.png", out_dir / "fig4a_accuracy_vs_layer.csv"
    notes = []
    summary = (summarize(table, ["algorithm", "layer", "layer_index"]) if not table.empty
               else summarize(table, ["algorithm", "layer", "layer_index"]))
    summary.to_csv(csv, index=False)
    lpa = summary[summary["algorithm"] == "LPA"].sort_values("layer_index")
    erm = summary[summary["algorithm"] == "ERM"]
    figure, (axes,) = _new_figure(9, 4.8)
    if erm.empty:
        notes.append("no ERM results: no reference line")
    if lpa.empty:
        notes.append("no LPA results")
        _no_data(axes, "no LPA results to plot")
    else:
        x = np.arange(len(lpa))
        if not erm.empty:
            _erm_band(axes, erm)
        axes.errorbar(x, lpa["mean"], yerr=lpa["se"], marker="o", capsize=3, color="C0",
                      label="LPA at this layer (last: logits = LPL)")
        default = table[(table["algorithm"] == "LPA") & _flag(table, "is_default")]
        labels = []
        for name in lpa["layer"]:
            label = name.replace(" = ", "\n= ")
            if name == "logits":
                label += "\n(LPL)"
            if not default.empty and name in set(default["layer"]):
                label += "\n(default)"
            labels.append(label)
        axes.set_xticks(x, labels, fontsize="small")
        for xi, mean in zip(x, lpa["mean"]):
            axes.annotate(f"{mean:.1f}", (xi, mean), textcoords="offset points",
                          xytext=(6, 4), fontsize="x-small")
        axes.legend(fontsize="small")
    axes.set_xlabel("perturbation layer (input -> logits)")
    axes.set_ylabel("held-out accuracy (%)")
    axes.grid(axis="y", alpha=0.3)
    _finish(figure, [axes], "Fig. 4a: held-out accuracy vs. LPA's perturbation layer",
            subtitle + "; mean ± SE over trials of the average over held-out domains",
            notes, png)
    return FigureOutput("fig4a", png, csv, summary, notes)


def plot_fig7(table: pd.DataFrame, out_dir: Path, subtitle: str = "") -> FigureOutput:
    """Figure 7: three panels, LPA's held-out accuracy against ``lpa_eps``, ``lpa_beta`` and
    ``lpa_lowrank`` (error bars = SE over trials; default value marked), ERM band in each.
    Writes ``fig7_sensitivity.{png,csv}`` (CSV: algorithm, param, value, mean, se, ...)."""
    out_dir = Path(out_dir)
    png, csv = out_dir / "fig7_sensitivity.png", out_dir / "fig7_sensitivity.csv"
    notes = []
    by = ["algorithm", "param", "value"]
    summary = summarize(table, by)
    summary.to_csv(csv, index=False)
    erm = summary[summary["algorithm"] == "ERM"]
    if erm.empty:
        notes.append("no ERM results: no reference line")
    figure, axes_list = _new_figure(13, 4.4, ncols=len(FIG7_GRIDS))
    for axes, param in zip(axes_list, FIG7_GRIDS):
        rows = summary[(summary["algorithm"] == "LPA") & (summary["param"] == param)]
        rows = rows.sort_values("value")
        if rows.empty:
            notes.append(f"no LPA results for {param}")
            _no_data(axes, f"no results for {param}")
            continue
        if not erm.empty:
            _erm_band(axes, erm)
        axes.errorbar(rows["value"], rows["mean"], yerr=rows["se"], marker="o", capsize=3,
                      color="C0", label="LPA")
        defaults = table[(table["param"] == param) & _flag(table, "is_default")]
        for value in sorted(set(defaults["value"])):
            full = " (full rank)" if param == "lpa_lowrank" and value == 0 else ""
            axes.axvline(value, color="C0", linestyle=":", linewidth=1,
                         label=f"default {value:g}{full}")
        axes.set_xlabel(FIG7_LABELS.get(param, param), fontsize="small")
        axes.grid(alpha=0.3)
        axes.legend(fontsize="x-small")
    axes_list[0].set_ylabel("held-out accuracy (%)")
    _finish(figure, axes_list, "Fig. 7: sensitivity of LPA to eps, beta and the low-rank ratio",
            subtitle + "; mean ± SE over trials of the average over held-out domains",
            notes, png)
    return FigureOutput("fig7", png, csv, summary, notes)


def plot_fig3a(table: pd.DataFrame, out_dir: Path, subtitle: str = "",
               methods: Iterable[str] = tuple(FIG3A_METHODS)) -> FigureOutput:
    """Figure 3a: one bar per method (ERM, the single perturbations and their combinations),
    error bars = SE over trials. Writes ``fig3a_combinations.{png,csv}`` (CSV: method, mean,
    se, n_trials, n_test_envs)."""
    out_dir = Path(out_dir)
    png, csv = out_dir / "fig3a_combinations.png", out_dir / "fig3a_combinations.csv"
    wanted = list(methods)
    summary = summarize(table, ["method"])
    present = [m for m in wanted if m in set(summary["method"])]
    notes = [f"no results for {', '.join(m for m in wanted if m not in present)} "
             f"(left out)"] if len(present) < len(wanted) else []
    summary = summary.set_index("method").reindex(present).reset_index() if present else summary
    summary.to_csv(csv, index=False)
    figure, (axes,) = _new_figure(8, 4.8)
    if not present:
        _no_data(axes, "no results to plot")
    else:
        colors = ["0.55" if m == "ERM" else ("C1" if "+" in m else "C0") for m in present]
        x = np.arange(len(present))
        axes.bar(x, summary["mean"], 0.65, yerr=summary["se"], capsize=4, color=colors)
        axes.set_xticks(x, present)
        low = float((summary["mean"] - summary["se"]).min())
        high = float((summary["mean"] + summary["se"]).max())
        bottom = max(0.0, low - 0.25 * (high - low) - 1)
        axes.set_ylim(bottom, high + 0.15 * (high - low) + 1)
        # Values inside the bars, at their foot, where no error bar can cover them.
        for xi, mean in zip(x, summary["mean"]):
            axes.annotate(f"{mean:.1f}", (xi, bottom), textcoords="offset points",
                          xytext=(0, 4), ha="center", fontsize="small", color="white",
                          fontweight="bold")
        axes.set_ylabel("held-out accuracy (%)  [axis does not start at 0]")
        axes.grid(axis="y", alpha=0.3)
        from matplotlib.patches import Patch

        axes.legend(handles=[Patch(color="0.55", label="ERM"), Patch(color="C0", label="alone"),
                             Patch(color="C1", label="combined")], fontsize="small")
    _finish(figure, [axes], "Fig. 3a: LPA combined with Dropout and with LPL",
            subtitle + "; mean ± SE over trials of the average over held-out domains",
            notes, png)
    return FigureOutput("fig3a", png, csv, summary, notes)


# ----------------------------------------------------------------------------- summary, main
def _paired_difference(table: pd.DataFrame, mask_a, mask_b) -> str:
    """A - B over the (test_env, trial) runs both have: mean ± SE (DomainBed's formula) over
    those runs and how many A wins. Pairing removes the domain's and the trial's difficulty."""
    a = table[mask_a].groupby(["test_env", "trial"])["acc"].mean()
    b = table[mask_b].groupby(["test_env", "trial"])["acc"].mean()
    both = a.index.intersection(b.index)
    if not len(both):
        return "no paired runs"
    diff = (a[both] - b[both]).to_numpy()
    se = float(np.std(diff / math.sqrt(len(diff))))
    return (f"{diff.mean():+.1f} ± {se:.1f} points over {len(diff)} paired held-out runs, "
            f"better in {int((diff > 0).sum())}, worse in {int((diff < 0).sum())}")


def _fmt(row) -> str:
    """``mean ± se`` of a summary row."""
    return f"{row['mean']:.1f} ± {row['se']:.1f}"


def summary_lines(outputs: dict[str, FigureOutput], tables: dict[str, pd.DataFrame]
                  ) -> list[str]:
    """Plain-text findings of each figure (printed at the end and saved as summary.md)."""
    lines = []
    if "fig1" in outputs:
        s = outputs["fig1"].table
        for name, rows in s.groupby("algorithm", sort=False):
            lines.append(f"fig1: {name} at {rows['layer'].iloc[0]}: relative variation "
                         f"{rows['mean'].min():.3f}..{rows['mean'].max():.3f} over classes "
                         f"(mean {rows['mean'].mean():.3f})")
    for fig in ("fig4a", "fig7", "fig3a"):
        if fig not in outputs:
            continue
        s, t = outputs[fig].table, tables[fig]
        erm = s[s["algorithm" if fig != "fig3a" else "method"] == "ERM"]
        erm_text = _fmt(erm.iloc[0]) if not erm.empty else "n/a"
        if fig == "fig4a":
            lpa = s[s["algorithm"] == "LPA"].sort_values("layer_index")
            points = ", ".join(f"{r['layer']}: {_fmt(r)}" for _, r in lpa.iterrows())
            lines.append(f"fig4a: ERM {erm_text}; LPA by layer: {points}")
            for layer in lpa["layer"]:
                paired = _paired_difference(t, (t["algorithm"] == "LPA") & (t["layer"] == layer),
                                            t["algorithm"] == "ERM")
                lines.append(f"  LPA at {layer} - ERM: {paired}")
        elif fig == "fig7":
            lines.append(f"fig7: ERM {erm_text}")
            for param, rows in s[s["algorithm"] == "LPA"].groupby("param", sort=False):
                points = ", ".join(f"{r['value']:g}: {_fmt(r)}" for _, r in rows.iterrows())
                lines.append(f"  {param}: {points}")
        else:
            points = ", ".join(f"{r['method']}: {_fmt(r)}" for _, r in s.iterrows())
            lines.append(f"fig3a: {points}")
            for method in s["method"]:
                if method == "ERM":
                    continue
                paired = _paired_difference(t, t["method"] == method, t["method"] == "ERM")
                lines.append(f"  {method} - ERM: {paired}")
    for name, output in outputs.items():
        lines += [f"{name}: note: {n}" for n in output.notes]
    return lines


def make_figures(settings: Settings, out_dir: Path, figures: Iterable[str] = FIGURES,
                 log=print) -> dict[str, FigureOutput]:
    """Plan, train (or reuse) every run, draw the figures; return their outputs."""
    out_dir = Path(out_dir)
    plan = plan_figures(figures, settings)
    specs = unique_specs(plan)
    log(f"==> {len(specs)} distinct runs for {', '.join(plan)} ({settings.describe()})",
        flush=True)
    records = run_all(specs, settings, RunCache(out_dir / "cache"), log=log)
    subtitle = settings.describe()
    outputs, tables = {}, {}
    if "fig1" in plan:
        tables["fig1"] = fig1_table(plan["fig1"], records)
        outputs["fig1"] = plot_fig1(tables["fig1"], out_dir, subtitle)
    plotters = {"fig4a": plot_fig4a, "fig7": plot_fig7, "fig3a": plot_fig3a}
    for fig, plot in plotters.items():
        if fig in plan:
            tables[fig] = accuracy_table(plan[fig], records)
            tables[fig].to_csv(out_dir / f"{fig}_runs.csv", index=False)
            outputs[fig] = plot(tables[fig], out_dir, subtitle)
    if "fig1" in tables:
        tables["fig1"].to_csv(out_dir / "fig1_runs.csv", index=False)
    lines = summary_lines(outputs, tables)
    train_seconds = sum(r.get("train_seconds", 0.0) for r in records.values())
    lines.append(f"training time of the {len(records)} runs (when they were trained): "
                 f"{_format_seconds(train_seconds)}")
    log("==> summary", flush=True)
    for line in lines:
        log(line, flush=True)
    (out_dir / "summary.md").write_text(
        f"# Figures: {subtitle}\n\nCommand: `python -m lpa_domainbed.figures "
        f"{' '.join(sys.argv[1:])}`\n\n```\n" + "\n".join(lines) + "\n```\n")
    for output in outputs.values():
        log(f"wrote {output.png} and {output.csv}", flush=True)
    return outputs


def _parse_figures(text: str) -> list[str]:
    """``--only fig1,fig7`` -> ``["fig1", "fig7"]``; unknown names are an argparse error."""
    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in FIGURES]
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown figure(s) {unknown}; choose from {FIGURES}")
    return names


def default_test_envs(dataset: str) -> tuple[int, ...]:
    """The first and the last domain (RotatedDigits: 0 and 45 degrees, the two extremes)."""
    from domainbed import datasets

    n = len(vars(datasets)[dataset].ENVIRONMENTS)
    return (0, n - 1) if n > 1 else (0,)


def main(argv: list[str] | None = None) -> int:
    """The command line (see the module docs); returns the exit status."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", default="RotatedDigits")
    parser.add_argument("--data_dir", default="sweeps_output/data",
                        help="DomainBed's data directory (RotatedDigits needs none)")
    parser.add_argument("--out", default=DEFAULT_OUT)
    parser.add_argument("--steps", type=int, default=DEFAULT_STEPS)
    parser.add_argument("--trials", type=int, default=DEFAULT_TRIALS)
    parser.add_argument("--test_env", type=int, nargs="+", default=None,
                        help="held-out domains (default: the first and the last)")
    parser.add_argument("--only", type=_parse_figures, default=list(FIGURES),
                        help=f"comma-separated subset of {','.join(FIGURES)}")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch CPU threads (default 1; see the module docs)")
    args = parser.parse_args(argv)
    import torch

    import lpa_domainbed

    lpa_domainbed.register()  # also when the autoload is off (LPA_DOMAINBED_AUTOLOAD=0)
    # The networks here are tiny: on a shared CPU, several intra-op threads spin against the
    # other jobs and made a run 20x slower in our measurements; one thread is fastest.
    torch.set_num_threads(args.threads)
    test_envs = tuple(args.test_env) if args.test_env else default_test_envs(args.dataset)
    settings = Settings(dataset=args.dataset, data_dir=args.data_dir, steps=args.steps,
                        trials=args.trials, test_envs=test_envs)
    started = time.time()
    make_figures(settings, Path(args.out), args.only)
    print(f"done in {_format_seconds(time.time() - started)}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
