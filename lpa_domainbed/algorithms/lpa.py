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
layers after ``l``, nothing before ``l`` recomputed). ``amortized`` (our extension) keeps
``delta_c`` across updates and takes one PGD step per update from the activation gradient the
training backward computes anyway, so it costs almost nothing.
"""

from __future__ import annotations

import functools

import torch

from lpa_domainbed import hparams as hp
from lpa_domainbed.algorithms import ALGORITHMS
from lpa_domainbed.algorithms.base import ActivationPerturbation, flat_norms, require
from lpa_domainbed.hparams import merge_specs
from lpa_domainbed.perturb import pgd
from lpa_domainbed.perturb.direction import DIRECTIONS, norm_cone, project_cone

__all__ = ["LPA", "LPL", "LPA_LPL", "LPA_Amortized"]

SPLITS = ("all_positive", "mean_accuracy", "frequency")
BOUNDS = ("fixed", "varied")
RADII = ("relative", "absolute")
MODES = ("exact", "amortized")
LAYER_SELECTION = ("fixed", "adaptive")
BN_STATS = ("batch", "clean")


def _keep_group_mean(store: dict, groups, num_groups: int, grad: torch.Tensor) -> None:
    """Tensor hook: the per-class mean of the gradient w.r.t. a~ (eq. 10's g_c)."""
    store["mean"] = pgd.group_mean(grad, groups, num_groups)


@ALGORITHMS.register("LPA")
class LPA(ActivationPerturbation):
    """Class-level learned activation perturbation (paper Algorithm 1). See module docs."""

    @classmethod
    def hparam_specs(cls, dataset=None):
        return merge_specs(super().hparam_specs(dataset), [
            hp.HParam("lpa_eps", 0.1, hp.uniform(0.05, 0.3), "eps, base bound (eq. 14)"),
            hp.HParam("lpa_delta_eps", 0.05, hp.uniform(0.0, 0.1), "Delta eps (eq. 14)"),
            hp.HParam("lpa_tau", 0.5, hp.uniform(0.3, 0.9), "tau (eq. 14)"),
            hp.HParam("lpa_beta", 0.7, hp.uniform(0.5, 0.8), "beta, layer scaling (eq. 15)"),
            hp.HParam("lpa_steps", 3, hp.fixed(3), "T, PGD steps (step 2 eps_c / T)"),
            hp.HParam("lpa_split", "all_positive", hp.fixed("all_positive"),
                      "category split (3.6): all_positive | mean_accuracy | frequency"),
            hp.HParam("lpa_bound", "fixed", hp.choice(BOUNDS), "fixed | varied (eq. 14)"),
            hp.HParam("lpa_radius", "relative", hp.fixed("relative"), "relative | absolute"),
            hp.HParam("lpa_lowrank", 0.0, hp.fixed(0.0), "k / d_l of eq. 12; 0 = full rank"),
            hp.HParam("lpa_mode", "exact", hp.fixed("exact"), "exact | amortized"),
            hp.HParam("lpa_layer_select", "fixed", hp.fixed("fixed"),
                      "fixed | adaptive (eq. 13, among perturb_layer's layers)"),
            hp.HParam("lpa_select_every", 100, hp.fixed(100), "K: adaptive re-selection period"),
            hp.HParam("lpa_stat_momentum", 0.9, hp.fixed(0.9), "EMA momentum of s_c"),
            hp.HParam("lpa_bn_stats", "batch", hp.fixed("batch"),
                      "BatchNorm statistics in the search: batch | clean (ours)"),
            hp.HParam("lpa_direction", "loss", hp.fixed("loss"),
                      "loss (eqs. 8-11) | conjecture (eqs. 6-7 as a cone on delta_c; ours)"),
        ])

    def check_hparams(self):
        h = self.hparams
        require(h, "lpa_eps", h["lpa_eps"] >= 0, "eps >= 0")
        require(h, "lpa_delta_eps", h["lpa_delta_eps"] >= 0, "Delta eps >= 0")
        require(h, "lpa_beta", 0 < h["lpa_beta"] <= 1, "beta in (0, 1]")
        require(h, "lpa_steps", int(h["lpa_steps"]) == h["lpa_steps"] and h["lpa_steps"] >= 1,
                "an integer T >= 1")
        require(h, "lpa_lowrank", 0 <= h["lpa_lowrank"] <= 1, "a ratio k/d_l in [0, 1]")
        require(h, "lpa_stat_momentum", 0 <= h["lpa_stat_momentum"] < 1, "a value in [0, 1)")
        require(h, "lpa_select_every", int(h["lpa_select_every"]) >= 1, "an integer K >= 1")
        for name, allowed in (("lpa_split", SPLITS), ("lpa_bound", BOUNDS),
                              ("lpa_radius", RADII), ("lpa_mode", MODES),
                              ("lpa_layer_select", LAYER_SELECTION),
                              ("lpa_bn_stats", BN_STATS), ("lpa_direction", DIRECTIONS)):
            require(h, name, h[name] in allowed, f"one of {allowed}")
        require(h, "lpa_direction", h["lpa_direction"] == "loss" or (
            h["lpa_mode"] == "exact" and not h["lpa_lowrank"]), "'loss' with lpa_mode="
            "'amortized' or lpa_lowrank > 0 ('conjecture' needs the exact, full-rank search)")

    def __init__(self, input_shape, num_classes, num_domains, hparams):
        super().__init__(input_shape, num_classes, num_domains, hparams)
        # s_c: running class accuracy and running class frequency (saved with the model).
        self.register_buffer("class_accuracy", torch.full((num_classes,), 1.0 / num_classes))
        self.register_buffer("class_frequency", torch.full((num_classes,), 1.0 / num_classes))
        self._amortized: dict[str, torch.Tensor] = {}  # cut name -> delta [C, ...]
        self._selected = self.cuts[0]

    # -- eqs. 14, 15 and the category split -----------------------------------------------
    def split_statistic(self) -> torch.Tensor:
        if self.hparams["lpa_split"] == "frequency":
            return self.class_frequency / self.class_frequency.max().clamp_min(1e-12)
        return self.class_accuracy

    def positive_classes(self) -> torch.Tensor:
        """Boolean ``[C]``: the positive-augmentation set ``P_a`` (paper 3.6)."""
        if self.hparams["lpa_split"] == "all_positive":
            return torch.ones(self.num_classes, dtype=torch.bool,
                              device=self.class_accuracy.device)
        s = self.split_statistic()
        return s <= s.mean()

    def class_bounds(self, depth: int) -> torch.Tensor:
        """``eps_c^(l)`` for every class ``[C]`` (eqs. 14, 15)."""
        h = self.hparams
        eps = torch.full_like(self.class_accuracy, float(h["lpa_eps"]))
        if h["lpa_bound"] == "varied":
            eps = eps + h["lpa_delta_eps"] * (h["lpa_tau"] - self.split_statistic()).abs()
        return h["lpa_beta"] ** depth * eps

    def _radius(self, a, y, classes, groups, depth):
        bound = self.class_bounds(depth)[classes]
        if self.hparams["lpa_radius"] == "absolute":
            return bound
        return bound * pgd.group_mean(flat_norms(a), groups, len(classes))

    # -- the perturbation ----------------------------------------------------------------
    def active_cuts(self, training):
        if self.hparams["lpa_layer_select"] == "adaptive":
            return [self._selected]
        return self.cuts

    def needs_accuracy(self) -> bool:
        """Whether the class accuracy s_c decides anything (the split or eq. 14's bound)."""
        h = self.hparams
        return h["lpa_split"] == "mean_accuracy" or (
            h["lpa_bound"] == "varied" and h["lpa_split"] != "frequency")

    def uses_tail(self, cut):
        # Amortized mode needs the tail only for one no-grad clean evaluation (s_c) at the
        # first cut that fires, and only when the accuracy is used.
        return self.hparams["lpa_mode"] == "exact" or self.needs_accuracy()

    @property
    def search_steps(self) -> int:
        """``T`` (lpa_steps) in exact mode; amortized mode searches no tail (one PGD step
        per update from the training backward's gradient)."""
        return int(self.hparams["lpa_steps"]) if self.hparams["lpa_mode"] == "exact" else 0

    def perturb(self, a, y, ctx):
        classes, groups = torch.unique(y, return_inverse=True)
        radius = self._radius(a, y, classes, groups, ctx.cut.depth)
        sign = torch.where(self.positive_classes()[classes], 1.0, -1.0)
        if self.hparams["lpa_mode"] == "amortized":
            if ctx.training and ctx.clean_logits is None and self.needs_accuracy():
                with torch.no_grad():  # the clean logits for s_c: one tail evaluation
                    ctx.clean_logits = ctx.tail(a.detach()).detach()
            return self._perturb_amortized(a, y, ctx, classes, groups, radius, sign)
        first = ctx.clean_logits is None  # earlier cuts unperturbed: the first tail is clean
        # "clean": PGD's first evaluation (z = a) fixes the BatchNorm statistics, so class c's
        # direction g_c no longer moves with the other classes' perturbations.
        bn_stats = {} if self.hparams["lpa_bn_stats"] == "clean" else None

        def tail(z):
            logits = ctx.tail(z, bn_stats=bn_stats)
            if first and ctx.clean_logits is None:  # PGD's t = 0 evaluates z = a
                ctx.clean_logits = logits.detach()
            return logits

        direction = None
        if self.hparams["lpa_direction"] == "conjecture":  # eqs. 6-7: a cone on each delta_c
            cone = norm_cone(a, groups, sign, radius)
            direction = functools.partial(project_cone, axis=cone[0], k=cone[1])
        delta, clean = pgd.l2_pgd(tail, a, y, groups, radius, sign,
                                  int(self.hparams["lpa_steps"]), self.hparams["lpa_lowrank"],
                                  direction=direction)
        ctx.clean_losses[ctx.cut.name] = clean
        return a + delta[groups].to(a.dtype)

    def _perturb_amortized(self, a, y, ctx, classes, groups, radius, sign):
        stored = self._amortized.get(ctx.cut.name)
        if stored is None or stored.shape[1:] != a.shape[1:]:
            stored = a.new_zeros((self.num_classes, *a.shape[1:]), dtype=torch.float32)
        delta = pgd.project(stored[classes], radius)  # radii move with the activations
        a_tilde = a + delta[groups].to(a.dtype)
        if ctx.training and a_tilde.requires_grad:
            # The class-mean gradient w.r.t. a~ is taken when the training backward reaches
            # a~ (a tensor hook), so neither a~ nor its full gradient outlives that moment.
            grad = {}
            a_tilde.register_hook(functools.partial(_keep_group_mean, grad, groups,
                                                    len(classes)))
            ctx.scratch[ctx.cut.name] = (grad, classes, groups, radius, sign, delta, stored)
        return a_tilde

    # -- state updates (update() only; probe() never gets here) -------------------------
    def after_backward(self, ctx):
        steps = int(self.hparams["lpa_steps"])
        for name, (grad, classes, groups, radius, sign, delta, stored) in ctx.scratch.items():
            if "mean" not in grad:
                continue
            g = grad["mean"]
            if self.hparams["lpa_lowrank"] and g.dim() >= 3:
                g = pgd.low_rank(g, self.hparams["lpa_lowrank"])
            step = (sign * 2.0 * radius / steps).view(-1, *([1] * (g.dim() - 1))) * pgd.unit(g)
            new = delta + step
            if self.hparams["lpa_lowrank"] and new.dim() >= 3:
                new = pgd.low_rank(new, self.hparams["lpa_lowrank"])
            stored = stored.clone()
            stored[classes] = pgd.project(new, radius)
            self._amortized[name] = stored.detach()
        with torch.no_grad():
            m = self.hparams["lpa_stat_momentum"]
            y = ctx.y
            present = torch.bincount(y, minlength=self.num_classes) > 0
            if ctx.clean_logits is not None:  # clean accuracy (exact mode, or when s_c is used)
                correct = (ctx.clean_logits.argmax(1) == y).float()
                acc = pgd.group_mean(correct, y, self.num_classes)
                self.class_accuracy[present] = (m * self.class_accuracy[present]
                                                + (1 - m) * acc[present])
            freq = torch.bincount(y, minlength=self.num_classes).float() / len(y)
            self.class_frequency.mul_(m).add_((1 - m) * freq)

    # -- adaptive layer selection (eq. 13) -------------------------------------------------
    def update(self, minibatches, unlabeled=None):
        h = self.hparams
        if (h["lpa_layer_select"] == "adaptive" and len(self.cuts) > 1
                and self.steps_done % int(h["lpa_select_every"]) == 0):
            x = torch.cat([x for x, _ in minibatches])
            y = torch.cat([y for _, y in minibatches])
            self._selected = self.select_layer(x, y)
        return super().update(minibatches, unlabeled)

    def select_layer(self, x, y):
        """Eq. 13: the candidate layer whose perturbation changes the per-class loss most,
        ``argmax_l sum_c |mean_c l(perturbed) - mean_c l(clean)|`` (state-free)."""
        scores = []
        current = self._selected
        try:
            for cut in self.cuts:
                self._selected = cut
                result = self.probe(x, y)
                scores.append(torch.nansum((result.perturbed_loss - result.clean_loss).abs()))
        finally:
            self._selected = current
        self.layer_scores = {c.name: float(s) for c, s in zip(self.cuts, scores)}
        return self.cuts[int(torch.stack(scores).argmax())]


@ALGORITHMS.register("LPL")
class LPL(LPA):
    """LPA at the logits (paper 3.4.2): the logit perturbation of LPL (Li et al., 2022)."""

    @classmethod
    def hparam_specs(cls, dataset=None):
        return merge_specs(super().hparam_specs(dataset), [
            hp.HParam("perturb_layer", "logits", hp.fixed("logits"), "the logits")])


@ALGORITHMS.register("LPA_LPL")
class LPA_LPL(LPA):
    """LPA at the default layer and at the logits together (paper Figure 3), each layer with
    its own bound ``eps_c^(l)``."""

    @classmethod
    def hparam_specs(cls, dataset=None):
        return merge_specs(super().hparam_specs(dataset), [
            hp.HParam("perturb_layer", "default,logits", hp.fixed("default,logits"),
                      "the default layer and the logits")])


@ALGORITHMS.register("LPA_Amortized")
class LPA_Amortized(LPA):
    """LPA in amortized mode (our extension, see module docs) under its own name, so that
    sweeps and tables can hold it beside exact LPA."""

    @classmethod
    def hparam_specs(cls, dataset=None):
        return merge_specs(super().hparam_specs(dataset), [
            hp.HParam("lpa_mode", "amortized", hp.fixed("amortized"), "amortized")])
