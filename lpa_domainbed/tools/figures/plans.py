"""Which runs each figure needs: the protocol (:class:`Settings`), one run (:class:`RunSpec`),
the figures' method lists and grids, and :func:`plan_figures`, which maps every figure to its
runs so that the same experiment is trained once for all figures."""

from __future__ import annotations

import dataclasses
from typing import Any, Iterable

from lpa_domainbed.tools.figures.algorithms import algorithm_class, resolve_hparams
from lpa_domainbed.tools.figures.data import make_dataset

__all__ = [
    "FIGURES", "FIG1_ALGORITHMS", "FIG1_VARIANTS", "FIG1_GROUPS", "FIG3A_METHODS",
    "FIG7_GRIDS", "DEFAULT_STEPS", "DEFAULT_TRIALS", "Settings", "RunSpec", "fig1_spec",
    "perturbation_layers", "plan_figures", "unique_specs",
]

#: every figure this package draws, in the order they are made.
FIGURES = ("fig1", "fig4a", "fig7", "fig3a")
#: the algorithms compared in Figure 1, all at their default layer and hparams.
FIG1_ALGORITHMS = ("LPA", "Dropout", "ADA", "ManifoldMixup")
#: Figure 1's extra bar groups: label -> (algorithm, hparam overrides). With the DG defaults
#: (``lpa_split=all_positive``, ``lpa_bound=fixed``, ``lpa_radius=relative``) LPA's relative
#: variation is ``eps * beta^(L-l)`` for every class by construction; the paper's Figure 1(a)
#: shows the class-adaptive setting: below-mean-accuracy classes expanded, the others
#: contracted, each with its own bound ``eps + delta_eps * |tau - s_c|`` (eq. 14).
FIG1_VARIANTS = {"LPA (mean_accuracy + varied)":
                 ("LPA", {"lpa_split": "mean_accuracy", "lpa_bound": "varied"})}
#: Figure 1's bar groups in plotting order (each variant beside its algorithm).
FIG1_GROUPS = (FIG1_ALGORITHMS[0], *FIG1_VARIANTS, *FIG1_ALGORITHMS[1:])
#: Figure 3a's bars: label -> algorithm (LPA+Dropout is :class:`LPADropout`).
FIG3A_METHODS = {"ERM": "ERM", "Dropout": "Dropout", "LPA": "LPA",
                 "LPA+Dropout": "LPA_Dropout", "LPL": "LPL", "LPA+LPL": "LPA_LPL"}
#: Figure 7's grids; each contains LPA's default, whose run is shared with the other figures.
FIG7_GRIDS = {"lpa_eps": (0.05, 0.1, 0.2, 0.3, 0.5),
              "lpa_beta": (0.5, 0.6, 0.7, 0.8, 0.9),
              "lpa_lowrank": (0.0, 0.1, 0.25, 0.5, 1.0)}
DEFAULT_STEPS = 300
DEFAULT_TRIALS = 3


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
    dataset = make_dataset(settings.dataset, settings.data_dir, settings.test_envs[0],
                           hparams)
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


def fig1_spec(group: str, test_env: int, trial: int) -> RunSpec:
    """The run behind one of Figure 1's bar groups (an algorithm or a :data:`FIG1_VARIANTS`)."""
    if group in FIG1_VARIANTS:
        algorithm, overrides = FIG1_VARIANTS[group]
        return RunSpec.make(algorithm, test_env, trial, **overrides)
    return RunSpec.make(group, test_env, trial)


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
        plan["fig1"] = [(fig1_spec(group, e, t), {"algorithm": group})
                        for e, t in _each_run(settings) for group in FIG1_GROUPS]
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
