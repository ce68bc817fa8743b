"""Amortized LPA (this project's extension of paper eqs. 8-11): ``delta_c`` is kept across
updates, and each update takes one normalized PGD step on it from the class-mean gradient with
respect to ``a~`` that the training backward computes anyway (no tail evaluations; one no-grad
clean evaluation per update only when ``s_c`` is the class accuracy).

:class:`Amortized` overrides what differs from exact :class:`~lpa_domainbed.algorithms.lpa.LPA`:
the perturbation, the tail's use, and a step of ``delta_c`` after the optimizer step. The kept
``delta_c`` is a buffer per cut (:class:`~lpa_domainbed.algorithms.lpa_parts.ClassDeltas`), so
``state_dict()`` saves it and ``.to(device)`` moves it.
"""

from __future__ import annotations

import dataclasses
import functools

import torch

from lpa_domainbed import hparams as hp
from lpa_domainbed.algorithms import ALGORITHMS
from lpa_domainbed.algorithms.lpa import LPA
from lpa_domainbed.algorithms.lpa_parts import ClassDeltas
from lpa_domainbed.perturb import pgd

__all__ = ["Amortized", "LPA_Amortized", "amortized_variant"]


@dataclasses.dataclass
class PendingStep:
    """One cut's amortized step, waiting for the training backward's class-mean gradient."""

    index: int  # the cut's position in self.cuts (its ClassDeltas buffer)
    radius: torch.Tensor  # [C]
    sign: torch.Tensor  # [C]
    delta: torch.Tensor  # [C, ...] the (projected) delta this update used
    stored: torch.Tensor  # [C, ...] the kept delta before this update
    grad_mean: torch.Tensor | None = None  # [C, ...], set by the tensor hook


def _keep_class_mean(pending: PendingStep, y, counts, grad: torch.Tensor) -> None:
    """Tensor hook on a~: the class mean of the gradient (eq. 10's g_c), taken when the
    training backward reaches a~, so neither a~ nor its full gradient outlives that moment."""
    pending.grad_mean = pgd.group_mean(grad, y, len(counts), counts)


class Amortized(LPA):
    """What amortized LPA changes in :class:`~lpa_domainbed.algorithms.lpa.LPA`."""

    amortized = True

    def __init__(self, input_shape, num_classes, num_domains, hparams):
        super().__init__(input_shape, num_classes, num_domains, hparams)
        self.class_deltas = ClassDeltas(num_classes)

    def uses_tail(self, cut):
        # Only for one no-grad clean evaluation (s_c) at the first cut that fires.
        return self.statistics.needs_accuracy

    @property
    def search_steps(self) -> int:
        return 0  # one PGD step per update from the training backward's gradient

    def perturb(self, a, y, step, tail):
        if step.training and self._pass.clean_logits is None and self.statistics.needs_accuracy:
            with torch.no_grad():  # the clean logits for s_c: one tail evaluation
                self._pass.clean_logits = tail(a.detach()).detach()
        radius = self.radius(a, step, tail.cut.depth)
        index = self.cuts.index(tail.cut)
        stored = self.class_deltas.get(index, a)
        delta = pgd.project(stored, radius)  # radii move with the activations
        a_tilde = a + delta[y].to(a.dtype)
        if step.training and a_tilde.requires_grad:
            pending = PendingStep(index, radius, self.statistics.signs(), delta, stored)
            a_tilde.register_hook(functools.partial(_keep_class_mean, pending, y, step.counts))
            self._pass.amortized.append(pending)
        return a_tilde

    def after_optimizer_step(self, step):
        """One normalized PGD step on each cut's ``delta_c`` (classes in the batch only), then
        the EMA of ``s_c``."""
        ratio, steps = self.hparams["lpa_lowrank"], int(self.hparams["lpa_steps"])
        for p in self._pass.amortized:
            if p.grad_mean is None:
                continue
            g = p.grad_mean
            if ratio and g.dim() >= 3:
                g = pgd.low_rank(g, ratio)
            size = (p.sign * 2.0 * p.radius / steps).view(-1, *([1] * (g.dim() - 1)))
            new = p.delta + size * pgd.unit(g)
            if ratio and new.dim() >= 3:
                new = pgd.low_rank(new, ratio)
            present = step.present.view(-1, *([1] * (g.dim() - 1)))
            self.class_deltas.set(p.index, torch.where(present, pgd.project(new, p.radius),
                                                       p.stored))
        super().after_optimizer_step(step)


@functools.cache
def amortized_variant(cls: type) -> type:
    """``cls`` (an exact LPA class) in amortized mode: what ``lpa_mode = "amortized"`` builds."""
    if cls is LPA:
        return LPA_Amortized
    return type(f"{cls.__name__}_Amortized", (Amortized, cls), {"__module__": __name__})


@ALGORITHMS.register("LPA_Amortized")
class LPA_Amortized(Amortized):
    """Amortized LPA under its own name, so that sweeps and tables hold it beside exact LPA."""

    HPARAM_DEFAULTS = {"lpa_mode": "amortized"}
