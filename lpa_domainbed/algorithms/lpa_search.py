"""LPA's two searches for ``delta_c`` (paper eqs. 8-11), the strategy objects LPA composes
(``lpa_mode``): each holds its own settings and, where it has one, its kept state as buffers,
and receives the pass's state (:class:`LPAPass`) as an argument.

* :class:`ExactSearch` (``exact``, the paper's Algorithm 1): every update, ``T``-step l2 PGD
  from ``delta_c = 0`` with ``T`` tail evaluations of the layers after the cut.
* :class:`AmortizedSearch` (``amortized``, this project's extension): ``delta_c`` is kept
  across updates, and each update takes one PGD step on it from the class-mean gradient with
  respect to ``a~`` that the training backward computes anyway (no tail evaluation; one no-grad
  clean evaluation per update only when ``s_c`` is the class accuracy).

Both step with :func:`~lpa_domainbed.perturb.pgd.pgd_step`, the one PGD step rule.
"""

from __future__ import annotations

import dataclasses
import functools

import torch
import torch.nn as nn

from lpa_domainbed.algorithms.lpa_parts import ClassDeltas
from lpa_domainbed.perturb import pgd
from lpa_domainbed.perturb.direction import norm_cone, project_cone

__all__ = ["AmortizedSearch", "ExactSearch", "LPAPass", "SEARCHES"]


@dataclasses.dataclass
class LPAPass:
    """One pass of LPA, from ``begin`` to ``end``: the clean logits of the first cut (for
    ``s_c``; computed before any later cut is perturbed), the first searched layer's
    per-sample clean losses (``update()``'s ``clean_loss``), and the amortized steps waiting
    for the training backward's gradient."""

    clean_logits: torch.Tensor | None = None
    clean_losses: torch.Tensor | None = None
    pending: list = dataclasses.field(default_factory=list)


class ExactSearch(nn.Module):
    """T-step l2 PGD on ``delta_c`` every update (eqs. 9-11; Algorithm 1).

    Args: the LPA hparams (``lpa_steps``, ``lpa_lowrank``, ``lpa_search_precision``,
    ``lpa_bn_stats``, ``lpa_direction``); the number of classes, the cut names and whether
    ``s_c`` needs the accuracy are unused (nothing is kept; the search's first evaluation is
    the clean one)."""

    uses_tail = True

    def __init__(self, hparams: dict, num_classes: int, cut_names: list[str],
                 needs_accuracy: bool):
        super().__init__()
        self.steps = int(hparams["lpa_steps"])
        self.lowrank = float(hparams["lpa_lowrank"])
        self.precision = hparams["lpa_search_precision"]
        # "clean": PGD's first evaluation (z = a) fixes the BatchNorm statistics, so class c's
        # direction g_c no longer moves with the other classes' perturbations.
        self.clean_bn_stats = hparams["lpa_bn_stats"] == "clean"
        self.conjecture = hparams["lpa_direction"] == "conjecture"

    @property
    def search_steps(self) -> int:
        """Tail evaluations per cut and update: ``T``."""
        return self.steps

    def perturb(self, a, y, step, tail, state: LPAPass, radius, signs) -> torch.Tensor:
        """``a + delta_{y_i}``: the search from 0 at this cut (``radius``, ``signs`` ``[C]``)."""
        projection = pgd.l2_ball(radius)
        if self.conjecture:  # eqs. 6-7: a cone on each delta_c, then the ball
            axis, k = norm_cone(a, y, signs, radius)
            projection = pgd.compose(functools.partial(project_cone, axis=axis, k=k), projection)
        ball = pgd.Ball(radius, signs, self.steps, projection, self.lowrank, self.precision)
        evaluate = functools.partial(tail, bn_stats={} if self.clean_bn_stats else None)
        found = pgd.l2_pgd(evaluate, a, y, y, ball, counts=step.counts)
        if state.clean_logits is None:  # the first cut: its first evaluation is clean
            state.clean_logits = found.first_logits
        if state.clean_losses is None:
            state.clean_losses = found.first_losses
        return a + found.delta[y].to(a.dtype)

    def end(self, step, state: LPAPass) -> None:
        """Nothing is kept between updates."""


@dataclasses.dataclass
class PendingStep:
    """One cut's amortized step, waiting for the training backward's class-mean gradient."""

    index: int  # the cut's ClassDeltas buffer
    radius: torch.Tensor  # [C]
    sign: torch.Tensor  # [C]
    delta: torch.Tensor  # [C, ...] the (projected) delta this update used
    stored: torch.Tensor  # [C, ...] the kept delta before this update
    grad_mean: torch.Tensor | None = None  # [C, ...], set by the tensor hook


def _keep_class_mean(pending: PendingStep, y, counts, grad: torch.Tensor) -> None:
    """Tensor hook on a~: the class mean of the gradient (eq. 10's g_c), taken when the
    training backward reaches a~, so neither a~ nor its full gradient outlives that moment."""
    pending.grad_mean = pgd.group_mean(grad, y, len(counts), counts)


class AmortizedSearch(nn.Module):
    """One PGD step per update on a kept ``delta_c`` (buffers per cut, in ``state_dict()``).

    Args: the LPA hparams (``lpa_steps`` for the step ``2 r_c / T``, ``lpa_lowrank``), the
    number of classes, the cut names (one kept delta each), and whether ``s_c`` needs the
    clean accuracy (then one no-grad tail evaluation per update)."""

    def __init__(self, hparams: dict, num_classes: int, cut_names: list[str],
                 needs_accuracy: bool):
        super().__init__()
        self.steps = int(hparams["lpa_steps"])
        self.lowrank = float(hparams["lpa_lowrank"])
        self.uses_tail = needs_accuracy  # only for the clean evaluation of s_c
        self.index = {name: i for i, name in enumerate(cut_names)}
        self.deltas = ClassDeltas(num_classes)

    search_steps = 0  # no tail evaluation searches

    def perturb(self, a, y, step, tail, state: LPAPass, radius, signs) -> torch.Tensor:
        """``a + Proj(delta_c)[y_i]`` with the kept delta; in training, a hook on ``a~``
        keeps the class-mean gradient for :meth:`end`."""
        if self.lowrank and a.dim() < 3:
            raise ValueError(f"lpa_lowrank={self.lowrank} with lpa_mode='amortized' needs a "
                             f"spatial [B, C, H, W] activation; {tail.cut.name} gives "
                             f"{tuple(a.shape)}. Use lpa_mode='exact' (eq. 12's basis from "
                             f"per-sample gradients) or lpa_lowrank=0.")
        if step.training and state.clean_logits is None and self.uses_tail:
            with torch.no_grad():  # the clean logits for s_c: one tail evaluation
                state.clean_logits = tail(a.detach()).detach()
        index = self.index[tail.cut.name]
        stored = self.deltas.get(index, a)
        delta = pgd.project(stored, radius)  # radii move with the activations
        a_tilde = a + delta[y].to(a.dtype)
        if step.training and a_tilde.requires_grad:
            pending = PendingStep(index, radius, signs, delta, stored)
            a_tilde.register_hook(functools.partial(_keep_class_mean, pending, y, step.counts))
            state.pending.append(pending)
        return a_tilde

    def end(self, step, state: LPAPass) -> None:
        """One normalized PGD step (:func:`~lpa_domainbed.perturb.pgd.pgd_step`) on each cut's
        ``delta_c``, for the classes in the batch only."""
        for p in state.pending:
            if p.grad_mean is None:
                continue
            new = pgd.pgd_step(p.delta, p.grad_mean, p.sign, 2.0 * p.radius / self.steps,
                               pgd.l2_ball(p.radius), self.lowrank)
            present = step.present.view(-1, *([1] * (new.dim() - 1)))
            self.deltas.set(p.index, torch.where(present, new, p.stored))


#: ``lpa_mode`` -> the search LPA composes.
SEARCHES = {"exact": ExactSearch, "amortized": AmortizedSearch}
