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

Modes: ``exact`` (default) runs the PGD search each update (``T`` extra evaluations of the
layers after ``l``, nothing before ``l`` recomputed). ``amortized`` (our extension,
:mod:`~lpa_domainbed.algorithms.lpa_amortized`) keeps ``delta_c`` across updates and takes
one PGD step per update from the activation gradient the training backward computes anyway.

The parts (:mod:`~lpa_domainbed.algorithms.lpa_parts`): ``s_c``, the split and the bound;
the search (:meth:`LPA.perturb`, with :func:`~lpa_domainbed.perturb.pgd.l2_pgd`); adaptive
layer selection (:meth:`LPA.select_layer`).
"""

from __future__ import annotations

import dataclasses
import functools

import torch

from lpa_domainbed import hparams as hp
from lpa_domainbed.algorithms import ALGORITHMS
from lpa_domainbed.algorithms.base import ActivationPerturbation, flat_norms, require
from lpa_domainbed.algorithms.lpa_parts import ClassStatistics, LayerChoice
from lpa_domainbed.perturb import pgd
from lpa_domainbed.perturb.direction import DIRECTIONS, norm_cone, project_cone

__all__ = ["LPA", "LPL", "LPA_LPL"]

SPLITS = ("all_positive", "mean_accuracy", "frequency")
BOUNDS = ("fixed", "varied")
RADII = ("relative", "absolute")
MODES = ("exact", "amortized")
LAYER_SELECTION = ("fixed", "adaptive")
BN_STATS = ("batch", "clean")


@dataclasses.dataclass
class LPAPass:
    """What one pass of LPA keeps until the optimizer step: the clean logits of the first tail
    evaluation (for ``s_c``; computed before any later cut is perturbed) and the first searched
    layer's per-sample clean losses (``update()``'s ``clean_loss``)."""

    clean_logits: torch.Tensor | None = None
    clean_losses: torch.Tensor | None = None
    amortized: list = dataclasses.field(default_factory=list)  # LPA_Amortized's pending steps


@ALGORITHMS.register("LPA")
class LPA(ActivationPerturbation):
    """Class-level learned activation perturbation (paper Algorithm 1). See module docs."""

    @classmethod
    def hparam_specs(cls, dataset=None):
        return super().hparam_specs(dataset) + [
            hp.HParam("lpa_eps", 0.1, hp.uniform(0.05, 0.3), "eps, base bound (eq. 14)",
                      check=hp.at_least(0)),
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

    def __new__(cls, input_shape=None, num_classes=None, num_domains=None, hparams=None):
        # lpa_mode = amortized on an exact class builds its amortized variant (the same
        # subclass LPA_Amortized is), so each computation has one implementation.
        if (hparams or {}).get("lpa_mode") == "amortized" and not cls.amortized:
            from lpa_domainbed.algorithms.lpa_amortized import amortized_variant

            cls = amortized_variant(cls)
        return super().__new__(cls)

    #: whether this class is amortized LPA (set by its subclass)
    amortized = False

    def __init__(self, input_shape, num_classes, num_domains, hparams):
        super().__init__(input_shape, num_classes, num_domains, hparams)
        if (self.hparams["lpa_mode"] == "amortized") != self.amortized:
            raise ValueError(f"hparam lpa_mode={self.hparams['lpa_mode']!r} is invalid for "
                             f"{type(self).__name__}: use the algorithm LPA for exact LPA")
        self.statistics = ClassStatistics(num_classes, self.hparams)
        self.layer_choice = LayerChoice()
        self._pass = LPAPass()

    @property
    def class_accuracy(self) -> torch.Tensor:
        return self.statistics.class_accuracy

    @property
    def class_frequency(self) -> torch.Tensor:
        return self.statistics.class_frequency

    # -- eqs. 14, 15: the radius ---------------------------------------------------------
    def radius(self, a: torch.Tensor, step, depth: int) -> torch.Tensor:
        """``r_c`` ``[C]``: ``eps_c^(l)``, times the class's mean activation norm
        (``relative``, default); 0 for the classes absent from the batch."""
        bound = self.statistics.bounds(depth)
        if self.hparams["lpa_radius"] == "absolute":
            return bound * step.present
        return bound * pgd.group_mean(flat_norms(a), step.y, self.num_classes, step.counts)

    # -- the search (eqs. 8-11) ------------------------------------------------------------
    def uses_tail(self, cut):
        return True

    @property
    def search_steps(self) -> int:
        """``T`` (lpa_steps): tail evaluations of the exact search per cut and update."""
        return int(self.hparams["lpa_steps"])

    def before_pass(self, step):
        self._pass = LPAPass()

    def perturb(self, a, y, step, tail):
        h = self.hparams
        radius = self.radius(a, step, tail.cut.depth)
        # "clean": PGD's first evaluation (z = a) fixes the BatchNorm statistics, so class c's
        # direction g_c no longer moves with the other classes' perturbations.
        bn_stats = {} if h["lpa_bn_stats"] == "clean" else None
        first_cut = self._pass.clean_logits is None  # earlier cuts unperturbed: tail is clean

        def evaluate(z):
            logits = tail(z, bn_stats=bn_stats)
            if first_cut and self._pass.clean_logits is None:  # PGD's t = 0 evaluates z = a
                self._pass.clean_logits = logits.detach()
            return logits

        signs = self.statistics.signs()
        projection = pgd.l2_ball(radius)
        if h["lpa_direction"] == "conjecture":  # eqs. 6-7: a cone on each delta_c, then the ball
            axis, k = norm_cone(a, y, signs, radius)
            projection = pgd.compose(functools.partial(project_cone, axis=axis, k=k), projection)
        delta, clean = pgd.l2_pgd(evaluate, a, y, y, radius, signs,
                                  self.search_steps, lowrank=h["lpa_lowrank"],
                                  precision=h["lpa_search_precision"], counts=step.counts,
                                  projection=projection)
        if self._pass.clean_losses is None:
            self._pass.clean_losses = clean
        return a + delta[y].to(a.dtype)

    def diagnostics(self):
        if self._pass.clean_losses is None:
            return {}
        return {"clean_loss": self._pass.clean_losses.float().mean()}

    def after_optimizer_step(self, step):
        """The EMA of ``s_c`` (update() only; probe() never gets here)."""
        self.statistics.update(self._pass.clean_logits, step.y, step.counts)

    # -- adaptive layer selection (eq. 13) -------------------------------------------------
    def active_cuts(self, training):
        if self.hparams["lpa_layer_select"] == "adaptive":
            return [self.cuts[self.layer_choice.current]]
        return self.cuts

    def update(self, minibatches, unlabeled=None):
        h = self.hparams
        if (h["lpa_layer_select"] == "adaptive" and len(self.cuts) > 1
                and self.steps_done % int(h["lpa_select_every"]) == 0):
            x = torch.cat([x for x, _ in minibatches])
            y = torch.cat([y for _, y in minibatches])
            self.layer_choice.choose(self.cuts.index(self.select_layer(x, y)))
        return super().update(minibatches, unlabeled)

    def select_layer(self, x, y):
        """Eq. 13: the candidate layer whose perturbation changes the per-class loss most,
        ``argmax_l sum_c |mean_c l(perturbed) - mean_c l(clean)|`` (state-free)."""
        scores = []
        for cut in self.cuts:
            result = self.probe(x, y, cuts=[cut])
            scores.append(torch.nansum((result.perturbed_loss - result.clean_loss).abs()))
        self.layer_scores = {c.name: float(s) for c, s in zip(self.cuts, scores)}
        return self.cuts[int(torch.stack(scores).argmax())]


@ALGORITHMS.register("LPL")
class LPL(LPA):
    """LPA at the logits (paper 3.4.2): the logit perturbation of LPL (Li et al., 2022)."""

    HPARAM_DEFAULTS = {"perturb_layer": "logits"}


@ALGORITHMS.register("LPA_LPL")
class LPA_LPL(LPA):
    """LPA at the default layer and at the logits together (paper Figure 3), each layer with
    its own bound ``eps_c^(l)``."""

    HPARAM_DEFAULTS = {"perturb_layer": "default,logits"}  # the default layer and the logits
