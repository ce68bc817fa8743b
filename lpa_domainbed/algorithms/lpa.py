"""LPA: Learning to Perturb Activations (paper 3.4-3.6, Algorithm 1), and LPL / LPA_LPL.

Each class ``c`` in the batch gets one perturbation ``delta_c`` at layer ``l`` (eq. 8),
found by ``T``-step l2 PGD (eqs. 9-11): classes in the positive set ``P_a`` maximize the
perturbed loss (expansive, positive augmentation, eq. 6), the others minimize it
(contractive, negative augmentation, eq. 7). The radius is

    eps_c = eps                                  (lpa_bound = fixed)
    eps_c = eps + delta_eps * |tau - s_c|        (lpa_bound = varied, eq. 14)
    eps_c^(l) = beta ** (L - l) * eps_c          (eq. 15; L - l from perturb.layers)
    r_c = eps_c^(l) * mean_{i: y_i = c} |a_i|    (lpa_radius = relative, default)
    r_c = eps_c^(l)                              (lpa_radius = absolute)

``s_c`` is a running per-class statistic (exponential moving average over updates):
training accuracy on the *clean* logits for ``all_positive`` and ``mean_accuracy`` (measuring it
on the perturbed logits would feed the perturbation back into the split), relative frequency
(``count_c / max count``) for ``frequency``. The split (3.6): ``all_positive`` puts every
class in ``P_a`` (domain generalization, default); ``mean_accuracy`` and ``frequency`` put the
classes with ``s_c <= mean(s)`` there (below-mean accuracy / rarer than average).

Modes (``lpa_mode``, the search LPA composes, :mod:`~lpa_domainbed.algorithms.lpa_search`):
``exact`` (default) runs the PGD search each update (``T`` extra evaluations of the layers
after ``l``, nothing before ``l`` recomputed). ``amortized`` (our extension) keeps ``delta_c``
across updates and takes one PGD step per update from the activation gradient the training
backward computes anyway; ``LPA_Amortized`` is LPA with that default.

The parts (:mod:`~lpa_domainbed.algorithms.lpa_parts`): ``s_c``, the split and the bound;
the search; adaptive layer selection (:meth:`LPA.select_layer`).
"""

from __future__ import annotations

import torch

from lpa_domainbed import hparams as hp
from lpa_domainbed.algorithms import ALGORITHMS
from lpa_domainbed.algorithms.base import ActivationPerturbation, require
from lpa_domainbed.algorithms.lpa_parts import ClassStatistics, LayerChoice
from lpa_domainbed.algorithms.lpa_search import SEARCHES, LPAPass
from lpa_domainbed.perturb import pgd
from lpa_domainbed.perturb.direction import DIRECTIONS

__all__ = ["LPA", "LPA_Amortized", "LPL", "LPA_LPL"]

SPLITS = ("all_positive", "mean_accuracy", "frequency")
BOUNDS = ("fixed", "varied")
RADII = ("relative", "absolute")
MODES = tuple(SEARCHES)
LAYER_SELECTION = ("fixed", "adaptive")
BN_STATS = ("batch", "clean")


@ALGORITHMS.register("LPA")
class LPA(ActivationPerturbation):
    """Class-level learned activation perturbation (paper Algorithm 1). See module docs."""

    uses_tail = True  # the exact search; the amortized one only for s_c (set per instance)

    @classmethod
    def hparam_specs(cls, dataset=None):
        return super().hparam_specs(dataset) + [
            hp.HParam("lpa_eps", 0.1, hp.uniform(0.05, 0.3), "eps, base bound (eq. 14)",
                      check=hp.at_least(0), sensible=hp.RELATIVE_RADIUS),
            hp.HParam("lpa_delta_eps", 0.05, hp.uniform(0.0, 0.1), "Delta eps (eq. 14)",
                      check=hp.at_least(0)),
            hp.HParam("lpa_tau", 0.5, hp.uniform(0.3, 0.9), "tau (eq. 14)"),
            hp.HParam("lpa_beta", 0.7, hp.uniform(0.5, 0.8), "beta, layer scaling (eq. 15)",
                      check=hp.within(0, 1, "(]")),
            hp.HParam("lpa_steps", 3, doc="T, PGD steps (step 2 eps_c / T)", check=hp.at_least(1)),
            hp.HParam("lpa_split", "all_positive", doc="category split (3.6)", choices=SPLITS),
            hp.HParam("lpa_bound", "fixed", hp.choice(BOUNDS), "eq. 14", choices=BOUNDS),
            hp.HParam("lpa_radius", "relative", doc="r_c relative to |a| or not", choices=RADII),
            hp.HParam("lpa_lowrank", 0.0, doc="k / d_l of eq. 12; 0 = full rank",
                      check=hp.within(0, 1)),
            hp.HParam("lpa_mode", "exact", doc="search each update or amortize", choices=MODES),
            hp.HParam("lpa_layer_select", "fixed", doc="adaptive: eq. 13, among perturb_layer's",
                      choices=LAYER_SELECTION),
            hp.HParam("lpa_select_every", 100, doc="K: adaptive re-selection period",
                      check=hp.at_least(1)),
            hp.HParam("lpa_stat_momentum", 0.9, doc="EMA momentum of s_c",
                      check=hp.within(0, 1, "[)")),
            hp.HParam("lpa_bn_stats", "batch", doc="BatchNorm statistics in the search (clean: "
                      "ours)", choices=BN_STATS),
            hp.HParam("lpa_search_precision", "float32", doc="the search's tail evaluations "
                      "(autocast)", choices=pgd.PRECISIONS),
            hp.HParam("lpa_direction", "loss", doc="loss (eqs. 8-11) | conjecture (eqs. 6-7 as a "
                      "cone on delta_c; ours)", choices=DIRECTIONS),
        ]

    def check_hparams(self):
        h = self.hparams
        require(h, "lpa_direction", h["lpa_direction"] == "loss" or (
            h["lpa_mode"] == "exact" and not h["lpa_lowrank"]), "'loss' with lpa_mode="
            "'amortized' or lpa_lowrank > 0 ('conjecture' needs the exact, full-rank search)")

    def __init__(self, input_shape, num_classes, num_domains, hparams):
        super().__init__(input_shape, num_classes, num_domains, hparams)
        self.statistics = ClassStatistics(num_classes, self.hparams)
        self.layer_choice = LayerChoice()
        self.search = SEARCHES[self.hparams["lpa_mode"]](
            self.hparams, num_classes, [c.name for c in self.cuts],
            self.statistics.needs_accuracy)
        self.uses_tail = self.search.uses_tail

    @property
    def class_accuracy(self) -> torch.Tensor:
        return self.statistics.class_accuracy

    @property
    def class_frequency(self) -> torch.Tensor:
        return self.statistics.class_frequency

    # -- one update's hooks: the search (eqs. 8-11) and s_c -------------------------------
    @property
    def search_steps(self) -> int:
        """``T`` (lpa_steps) tail evaluations per cut and update for the exact search, 0 for
        the amortized one."""
        return self.search.search_steps

    def begin(self, x, step):
        """Adaptive layer selection (eq. 13) every ``K`` updates, in training only."""
        h = self.hparams
        if (step.training and h["lpa_layer_select"] == "adaptive" and len(self.cuts) > 1
                and step.number % int(h["lpa_select_every"]) == 0):
            self.layer_choice.choose(self.cuts.index(self.select_layer(x, step.y)))
        return LPAPass()

    def perturb(self, a, y, step, tail, state):
        """The search at this cut, for the split's signs and the radius ``r_c`` (eqs. 14, 15)."""
        signs = self.statistics.signs()
        radius = self.statistics.radius(a, step, tail.cut.depth)
        return self.search.perturb(a, y, step, tail, state, radius, signs)

    def report(self, logits, y, step, state):
        if state.clean_losses is None:  # no search evaluated anything (amortized)
            return {}
        return {"perturbed_loss": torch.nn.functional.cross_entropy(logits.detach().float(), y),
                "clean_loss": state.clean_losses.float().mean()}

    def end(self, step, state):
        """The search's own step (amortized), then the EMA of ``s_c``."""
        self.search.end(step, state)
        self.statistics.update(state.clean_logits, step.y, step.counts)

    # -- adaptive layer selection (eq. 13) -------------------------------------------------
    def active_cuts(self, training):
        if self.hparams["lpa_layer_select"] == "adaptive":
            return [self.cuts[self.layer_choice.current]]
        return self.cuts

    def layer_scores(self, x, y) -> dict[str, float]:
        """Eq. 13's score of each candidate layer, ``sum_c |mean_c l(perturbed) - mean_c
        l(clean)|`` (state-free: one ``probe()`` per layer)."""
        scores = {}
        for cut in self.cuts:
            result = self.probe(x, y, cuts=[cut])
            scores[cut.name] = torch.nansum((result.perturbed_loss - result.clean_loss).abs())
        return scores

    def select_layer(self, x, y):
        """Eq. 13: the candidate layer whose perturbation changes the per-class loss most."""
        scores = self.layer_scores(x, y)
        return self.cuts[int(torch.stack(list(scores.values())).argmax())]


@ALGORITHMS.register("LPL")
class LPL(LPA):
    """LPA at the logits (paper 3.4.2): the logit perturbation of LPL (Li et al., 2022)."""

    HPARAM_DEFAULTS = {"perturb_layer": "logits"}


@ALGORITHMS.register("LPA_LPL")
class LPA_LPL(LPA):
    """LPA at the default layer and at the logits together (paper Figure 3), each layer with
    its own bound ``eps_c^(l)``."""

    HPARAM_DEFAULTS = {"perturb_layer": "default,logits"}  # the default layer and the logits


@ALGORITHMS.register("LPA_Amortized")
class LPA_Amortized(LPA):
    """Amortized LPA under its own name, so that sweeps and tables hold it beside exact LPA."""

    HPARAM_DEFAULTS = {"lpa_mode": "amortized"}
