"""ADA: adversarial feature perturbation at a hidden layer (paper eq. 5).

Per sample, ``delta_i = argmax_{|delta| <= r_i} l(f_{l+1:L}(a_i + delta), y_i)`` by ``T``-step
normalized l2 PGD (step ``2 r_i / T``), with ``r_i = ada_eps * |a_i|`` (relative to the
sample's activation norm, so one value serves every layer). This is the paper's eq. 5, a
feature-space l2 ball; it is *not* Volpi et al.'s (2018) procedure (input-space gradient
ascent with a feature-distance penalty and rounds of appended augmented samples). Like them,
the model trains on both: ``loss = w * l(clean) + (1 - w) * l(perturbed)`` with
``w = ada_clean_weight``. The clean term reuses the PGD search's first evaluation, so it adds
only its backward.
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

    @classmethod
    def hparam_specs(cls, dataset=None):
        return super().hparam_specs(dataset) + [
            hp.HParam("ada_eps", 0.1, hp.uniform(0.05, 0.3), "ball radius relative to |a_i|",
                      check=hp.at_least(0)),
            hp.HParam("ada_steps", 3, doc="T, PGD steps", check=hp.at_least(1)),
            hp.HParam("ada_clean_weight", 0.5, hp.choice([0.0, 0.5]), "weight of clean loss",
                      check=hp.within(0, 1)),
            hp.HParam("ada_search_precision", "float32", doc="the search's tail evaluations "
                      "(autocast)", choices=pgd.PRECISIONS),
        ]

    def uses_tail(self, cut):
        return True  # the PGD search evaluates the tail at every cut

    @property
    def search_steps(self) -> int:
        """``T`` (ada_steps): the PGD search evaluates the tail T times per update."""
        return int(self.hparams["ada_steps"])

    def before_pass(self, step):
        self._pass = ADAPass()

    def perturb(self, a, y, step, tail):
        radius = self.hparams["ada_eps"] * flat_norms(a)
        keep_clean = self.hparams["ada_clean_weight"] > 0 and step.training
        delta, clean = pgd.l2_pgd(
            lambda z: tail(z, detach_head=not keep_clean) if z is a else tail(z),
            a, y, None, radius, torch.ones_like(radius), self.search_steps,
            clean_graph=keep_clean, precision=self.hparams["ada_search_precision"])
        if keep_clean:
            self._pass.trained_clean_losses.append(clean)
        if self._pass.first_clean_loss is None:
            self._pass.first_clean_loss = clean.detach().float().mean()
        return a + delta.to(a.dtype)

    def diagnostics(self):
        if self._pass.first_clean_loss is None:
            return {}
        return {"clean_loss": self._pass.first_clean_loss}

    def loss(self, logits, y, step):
        perturbed = F.cross_entropy(logits, y)
        clean = self._pass.trained_clean_losses
        if not clean:
            return perturbed
        w = self.hparams["ada_clean_weight"]
        return w * torch.stack([c.mean() for c in clean]).mean() + (1 - w) * perturbed
