"""The paper's analysis figures (1, 3a, 4a, 7) on a small DomainBed protocol.

    python -m lpa_domainbed.tools.figures [--dataset RotatedDigits] [--data_dir DIR]
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
  for LPA (DG defaults, and with ``lpa_split=mean_accuracy``, ``lpa_bound=varied``), Dropout,
  ADA and ManifoldMixup, from ``probe`` on the held-out domain's data with the selected
  checkpoint (paper Figure 1).
* ``fig4a``: held-out accuracy of LPA against the perturbation layer, every stage-level cut of
  the network, the logits (= LPL) last, with ERM as a band (paper Figure 4a).
* ``fig7``: sensitivity to ``lpa_eps``, ``lpa_beta`` and ``lpa_lowrank`` (paper Figure 7).
* ``fig3a``: LPA combined with Dropout and with LPL against each alone (paper Figure 3a).

Accuracies are the held-out domain's in-split accuracy (%) at the selected checkpoint. Each
trial's accuracy is averaged over the held-out domains (DomainBed's "Avg" column); figures show
the mean over trials with DomainBed's standard error ``std(values / sqrt(n))`` (population std,
as ``collect_results.format_mean``). See ``docs/figures.md``.

Modules, one job each: ``plans`` (Settings, RunSpec, which runs each figure needs),
``algorithms`` (algorithm classes, resolved hparams), ``lpa_dropout`` (Figure 3a's
figure-only LPA+Dropout), ``data`` (dataset and splits
as train.py builds them), ``cache`` (the JSON run cache), ``training`` (the trainer and
``run_all``), ``tables`` (records -> tidy tables, mean ± SE), ``canvas`` and ``plots``
(matplotlib), ``summary`` (findings, ``summary.md``), ``pipeline`` (``make_figures``),
``cli`` and ``__main__`` (the command line). Importing this package needs no torch.
"""

from __future__ import annotations

from lpa_domainbed.tools.figures.algorithms import algorithm_class, resolve_hparams
from lpa_domainbed.tools.figures.cache import CACHE_VERSION, RunCache, cache_key
from lpa_domainbed.tools.figures.cli import DEFAULT_OUT, main
from lpa_domainbed.tools.figures.data import default_test_envs
from lpa_domainbed.tools.figures.pipeline import make_figures
from lpa_domainbed.tools.figures.plans import (DEFAULT_STEPS, DEFAULT_TRIALS, FIG1_ALGORITHMS,
                                         FIG1_GROUPS, FIG1_VARIANTS, FIG3A_METHODS,
                                         FIG7_GRIDS, FIGURES, RunSpec, Settings, fig1_spec,
                                         perturbation_layers, plan_figures, unique_specs)
from lpa_domainbed.tools.figures.plots import (FIG1_LEGEND, FIG7_LABELS, FigureOutput, plot_fig1,
                                         plot_fig3a, plot_fig4a, plot_fig7)
from lpa_domainbed.tools.figures.summary import summary_lines
from lpa_domainbed.tools.figures.tables import accuracy_table, fig1_table, summarize
from lpa_domainbed.tools.figures.training import PROBE_SAMPLES, run_all, train_run

__all__ = [
    "FIGURES", "FIG1_ALGORITHMS", "FIG1_VARIANTS", "FIG1_GROUPS", "FIG1_LEGEND",
    "FIG3A_METHODS", "FIG7_GRIDS", "FIG7_LABELS",
    "CACHE_VERSION", "DEFAULT_STEPS", "DEFAULT_TRIALS", "DEFAULT_OUT", "PROBE_SAMPLES",
    "Settings", "RunSpec", "FigureOutput", "RunCache", "LPADropout", "algorithm_class",
    "resolve_hparams", "cache_key", "train_run", "run_all", "fig1_spec", "perturbation_layers",
    "plan_figures", "unique_specs", "fig1_table", "accuracy_table", "summarize",
    "summary_lines", "plot_fig1", "plot_fig4a", "plot_fig7", "plot_fig3a", "make_figures",
    "default_test_envs", "main",
]


def __getattr__(name):
    """``figures.LPADropout``, imported on first access (importing this package needs no torch)."""
    if name == "LPADropout":
        return algorithm_class("LPA_Dropout")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
