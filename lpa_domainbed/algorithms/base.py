"""The activation-perturbation base class (paper section 3.2, "a unified view").

Every method here replaces the output ``a`` of a chosen layer ``l`` by ``a~ = a + delta``
(paper eq. 2; H. Li, "Learning to Perturb Hidden Representations for Generalizable
Deep Learning", 2026, the paper in ``../shared/paper``; see ``docs/algorithms.md``) during training updates only; they differ in how they choose ``delta``.
:class:`ActivationPerturbation` is a DomainBed ``ERM`` (same featurizer, classifier, Adam
optimizer and ``predict``) that does the plumbing, so a new algorithm implements one method::

    class Noise(ActivationPerturbation):
        def perturb(self, a, y, ctx):
            return a + 0.1 * a.norm() / a.numel() ** 0.5 * torch.randn_like(a)

Shapes: ``a`` is the layer's output for the whole training batch (all training domains
concatenated), ``[B, ...]``; ``y`` is ``[B]``; ``ctx.domains`` is ``[B]``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from domainbed.algorithms import ERM

from lpa_domainbed import hparams as hp
from lpa_domainbed.hparams_check import validate
from lpa_domainbed.algorithms.context import PerturbContext, ProbeResult
from lpa_domainbed.perturb.layers import Cut, resolve_cuts
from lpa_domainbed.perturb.tail import CutForward

__all__ = ["ActivationPerturbation", "NonFiniteLossError", "PerturbContext", "ProbeResult",
           "flat_norms", "require"]


class NonFiniteLossError(FloatingPointError):
    """The training loss became NaN or infinite: the rest of the run would mean nothing."""


def require(hparams: dict, name: str, ok: bool, expected: str):
    """Raise ``ValueError`` naming the hparam when ``ok`` is false."""
    if not ok:
        raise ValueError(f"hparam {name}={hparams.get(name)!r} is invalid: expected {expected}. "
                         f"Fix it in --hparams or the sweep's hparams.")


def _per_class_mean(values: torch.Tensor, y: torch.Tensor, num_classes: int) -> torch.Tensor:
    values = values.detach().float()
    sums = torch.zeros(num_classes, device=values.device).index_add_(0, y, values)
    counts = torch.bincount(y, minlength=num_classes).float()
    return sums / counts  # NaN where the class is absent: it has no value, not zero


def flat_norms(t: torch.Tensor) -> torch.Tensor:
    """Per-sample l2 norm in float32, ``[B, ...] -> [B]``."""
    return t.detach().float().flatten(1).norm(dim=1)


class ActivationPerturbation(ERM):
    """DomainBed ``ERM`` whose activation at ``perturb_layer`` is perturbed in training.

    Subclasses implement :meth:`perturb`; they may override :meth:`loss` (e.g. mixed labels),
    :meth:`active_cuts` (choose layers per step), :meth:`after_backward` (use the training
    gradients) and :meth:`check_hparams`. ``predict`` and DomainBed's evaluation see clean
    activations: hooks exist only inside ``update()`` and ``probe()``.

    Args (DomainBed's): input_shape, num_classes, num_domains, hparams. Missing hparams of
    this package take their defaults.
    """

    @classmethod
    def hparam_specs(cls, dataset: str | None = None) -> list[hp.HParam]:
        """This algorithm's hyperparameters (DomainBed registry entries)."""
        return [hp.HParam("perturb_layer", "default", type=(str, list),
                          doc="layer l: a module path, 'features', 'logits' or a list of them")]

    def __init__(self, input_shape, num_classes, num_domains, hparams):
        # names, types, values (each HParam's choices/check); missing defaults filled in
        hparams = validate(type(self), hparams)
        super().__init__(input_shape, num_classes, num_domains, hparams)
        self.num_classes = num_classes
        self.num_domains = num_domains
        self.input_shape = tuple(input_shape)
        self.check_hparams()
        self.cuts: list[Cut] = resolve_cuts(self, self.hparams["perturb_layer"])
        self._cut_forward = CutForward(self.network, self.cuts)
        self.steps_done = 0

    # -- what subclasses implement ---------------------------------------------------------
    def perturb(self, a: torch.Tensor, y: torch.Tensor, ctx: PerturbContext) -> torch.Tensor:
        """Return the perturbed activation ``a~ = a + delta`` (paper eq. 2), same shape."""
        raise NotImplementedError

    def check_hparams(self) -> None:
        """Raise ``ValueError`` for an invalid combination of hparams (called at construction;
        each hparam's own type and values are checked by its ``HParam``)."""

    def active_cuts(self, training: bool) -> list[Cut]:
        """The cuts perturbed in this pass (default: all of ``perturb_layer``)."""
        return self.cuts

    def loss(self, logits: torch.Tensor, y: torch.Tensor, ctx: PerturbContext) -> torch.Tensor:
        """The training loss on the perturbed logits (default: cross-entropy)."""
        return F.cross_entropy(logits, y)

    def after_backward(self, ctx: PerturbContext) -> None:
        """Called in ``update()`` after ``loss.backward()`` and the optimizer step."""

    @property
    def search_steps(self) -> int:
        """Tail evaluations per cut that the perturbation search runs in one update (the
        ``T`` of exact PGD, eqs. 9-11); 0 when no search runs. The benchmark's analytic
        floor ``1 + T t_tail / t_step`` reads it, and ``update()`` reports the search's
        ``clean_loss`` / ``perturbed_loss`` only when it is positive."""
        return 0

    def uses_tail(self, cut: Cut) -> bool:
        """Whether :meth:`perturb` may call ``ctx.tail`` at ``cut`` (default False). The
        forward pass keeps the outputs the tail replays only for such layers, so the default
        costs no memory; a method that searches (LPA, ADA) opts in."""
        return False

    # -- the plumbing ----------------------------------------------------------------------
    def _perturbed_pass(self, x, y, domains, training: bool):
        active_cuts = self.active_cuts(training)
        active = {c.name for c in active_cuts}
        ctx = PerturbContext(y=y, domains=domains, step=self.steps_done, training=training,
                             forward=self._cut_forward)

        def on_cut(cut, a, forward):
            if cut.name not in active:
                return None
            ctx.cut = cut
            a_tilde = self.perturb(a, y, ctx)
            if a_tilde.shape != a.shape:
                raise RuntimeError(f"{type(self).__name__}.perturb changed the activation's "
                                   f"shape at {cut.name}: {tuple(a.shape)} -> "
                                   f"{tuple(a_tilde.shape)}")
            with torch.no_grad():
                ctx.rel[cut.name] = (flat_norms(a_tilde - a)
                                     / flat_norms(a).clamp_min(1e-12))
            if not training:  # copies: an in-place op after the cut (ReLU) would change them
                ctx.clean[cut.name] = a.detach().clone()
                ctx.perturbed[cut.name] = a_tilde.detach().clone()
            ctx.cut = None
            return a_tilde

        tail_cuts = [c.name for c in active_cuts if self.uses_tail(c)]
        logits = self._cut_forward.run(x, on_cut, tail_cuts=tail_cuts)
        return logits, ctx

    def _rel_perturbation(self, ctx) -> torch.Tensor:
        """Per-sample ``|a~ - a| / |a|`` averaged over the perturbed layers, ``[B]``."""
        rel = list(ctx.rel.values())
        if not rel:
            return torch.zeros(len(ctx.y), device=ctx.y.device)
        return torch.stack(rel).mean(0)

    def update(self, minibatches, unlabeled=None):
        x = torch.cat([x for x, _ in minibatches])
        y = torch.cat([y for _, y in minibatches])
        domains = torch.cat([torch.full((len(yi),), i, dtype=torch.long, device=yi.device)
                             for i, (_, yi) in enumerate(minibatches)])
        logits, ctx = self._perturbed_pass(x, y, domains, training=True)
        ctx.logits = logits
        loss = self.loss(logits, y, ctx)
        if not torch.isfinite(loss.detach()):
            raise self._non_finite(loss)
        self.optimizer.zero_grad()
        loss.backward()
        self.optimizer.step()
        self.after_backward(ctx)
        self.steps_done += 1
        out = {"loss": loss.item(), "rel_perturbation": self._rel_perturbation(ctx).mean().item()}
        if self.search_steps > 0:
            out["perturbed_loss"] = F.cross_entropy(logits.detach().float(), y).item()
            if ctx.clean_losses:  # the first search's, in the order the layers fire
                out["clean_loss"] = next(iter(ctx.clean_losses.values())).float().mean().item()
        return out

    def _non_finite(self, loss: torch.Tensor) -> NonFiniteLossError:
        hparams = ", ".join(f"{k}={v!r}" for k, v in sorted(self.hparams.items()))
        return NonFiniteLossError(
            f"{type(self).__name__}: the training loss is {loss.item()} at step "
            f"{self.steps_done}, so the rest of this run would mean nothing; it is stopped. "
            f"Lower the learning rate or the perturbation's size. hparams: {{{hparams}}}")

    def probe(self, x: torch.Tensor, y: torch.Tensor, domains: torch.Tensor | None = None
              ) -> ProbeResult:
        """What the next ``update()`` would do to the activations of ``(x, y)``, state-free.

        Runs in training mode (batch statistics, dropout) but restores the RNG, the train/eval
        mode and leaves parameters, buffers (BatchNorm running stats), ``.grad``, optimizer
        state and the algorithm's own running state untouched.
        """
        if domains is None:
            domains = torch.zeros_like(y)
        was_training = self.training
        devices = [x.device.index or 0] if x.device.type == "cuda" else []
        try:
            self.train()
            with torch.random.fork_rng(devices=devices), self._cut_forward.frozen_statistics():
                logits, ctx = self._perturbed_pass(x, y, domains, training=False)
                with torch.no_grad():
                    clean_logits = self.network(x)
        finally:
            self.train(was_training)
        C = self.num_classes
        rel = {}
        for name in ctx.clean:
            norms = _per_class_mean(flat_norms(ctx.clean[name]), y, C)
            delta = _per_class_mean(flat_norms(ctx.perturbed[name] - ctx.clean[name]), y, C)
            rel[name] = delta / norms.clamp_min(1e-12)
        return ProbeResult(
            layers=list(ctx.clean), clean=dict(ctx.clean), perturbed=dict(ctx.perturbed),
            rel_perturbation=rel,
            clean_loss=_per_class_mean(
                F.cross_entropy(clean_logits.float(), y, reduction="none"), y, C),
            perturbed_loss=_per_class_mean(
                F.cross_entropy(logits.detach().float(), y, reduction="none"), y, C),
            counts=torch.bincount(y, minlength=C))
