"""ADA: adversarial feature perturbation at a hidden layer (paper eq. 5).

Per sample, ``delta_i = argmax_{|delta| <= r_i} l(f_{l+1:L}(a_i + delta), y_i)`` by ``T``-step
normalized l2 PGD (step ``2 r_i / T``), with ``r_i = ada_eps * |a_i|`` (relative to the
sample's activation norm, so one value serves every layer). This is the paper's eq. 5, a
feature-space l2 ball; it is *not* Volpi et al.'s (2018) procedure (input-space gradient
ascent with a feature-distance penalty and rounds of appended augmented samples). Like them,
the model trains on both: ``loss = w * l(clean) + (1 - w) * l(perturbed)`` with
``w = ada_clean_weight``. The clean term's evaluation (with graph, float32) also gives the
search's first gradient, so it costs only its backward.
"""

from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F

from lpa_domainbed import hparams as hp
from lpa_domainbed.algorithms import ALGORITHMS
from lpa_domainbed.algorithms.base import ActivationPerturbation, flat_norms
from lpa_domainbed.perturb import pgd

__all__ = ["ADA"]


@dataclasses.dataclass
class ADAPass:
    """One pass of ADA: per searched layer, the clean per-sample losses *with* graph that the
    loss trains on (``ada_clean_weight > 0``), and the first layer's mean clean loss without
    graph that ``update()`` reports."""

    trained_clean_losses: list = dataclasses.field(default_factory=list)
    first_clean_loss: torch.Tensor | None = None


@ALGORITHMS.register("ADA")
class ADA(ActivationPerturbation):
    """Sample-level, loss-maximizing perturbation (eq. 5)."""

    uses_tail = True  # the PGD search evaluates the tail at every cut

    @classmethod
    def hparam_specs(cls, dataset=None):
        return super().hparam_specs(dataset) + [
            hp.HParam("ada_eps", 0.1, hp.uniform(0.05, 0.3), "ball radius relative to |a_i|",
                      check=hp.at_least(0), sensible=hp.RELATIVE_RADIUS),
            hp.HParam("ada_steps", 3, doc="T, PGD steps", check=hp.at_least(1)),
            hp.HParam("ada_clean_weight", 0.5, hp.choice([0.0, 0.5]), "weight of clean loss",
                      check=hp.within(0, 1)),
            hp.HParam("ada_search_precision", "float32", doc="the search's tail evaluations "
                      "(autocast)", choices=pgd.PRECISIONS),
        ]

    @property
    def search_steps(self) -> int:
        """``T`` (ada_steps): the PGD search evaluates the tail T times per update."""
        return int(self.hparams["ada_steps"])

    def begin(self, x, step):
        return ADAPass()

    def perturb(self, a, y, step, tail, state):
        radius = self.hparams["ada_eps"] * flat_norms(a)
        ball = pgd.Ball(radius, torch.ones_like(radius), self.search_steps,
                        precision=self.hparams["ada_search_precision"])
        if self.hparams["ada_clean_weight"] > 0 and step.training:
            # The trained clean loss carries the graph into the layers before the cut; its
            # gradient at a is the search's first step (eq. 5 from delta = 0).
            clean = F.cross_entropy(tail(a, detach_head=False).float(), y, reduction="none")
            (g,) = torch.autograd.grad(clean.sum(), a, retain_graph=True)
            start = pgd.pgd_step(torch.zeros_like(g, dtype=torch.float32), g, ball.sign,
                                 ball.step_size, ball.project)
            ball = dataclasses.replace(ball, steps=ball.steps - 1, size=ball.step_size)
            delta = pgd.l2_pgd(tail, a, y, None, ball, delta=start).delta
            state.trained_clean_losses.append(clean)
        else:
            found = pgd.l2_pgd(tail, a, y, None, ball)
            delta, clean = found.delta, found.first_losses
        if state.first_clean_loss is None:
            state.first_clean_loss = clean.detach().float().mean()
        return a + delta.to(a.dtype)

    def report(self, logits, y, step, state):
        if state.first_clean_loss is None:
            return {}
        return {"perturbed_loss": F.cross_entropy(logits.detach().float(), y),
                "clean_loss": state.first_clean_loss}

    def loss(self, logits, y, step, state):
        perturbed = F.cross_entropy(logits, y)
        clean = state.trained_clean_losses
        if not clean:
            return perturbed
        w = self.hparams["ada_clean_weight"]
        return w * torch.stack([c.mean() for c in clean]).mean() + (1 - w) * perturbed
