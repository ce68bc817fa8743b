"""The activation-perturbation base class (paper section 3.2, "a unified view").

Every method here replaces the output ``a`` of a chosen layer ``l`` by ``a~ = a + delta``
(paper eq. 2; see ``docs/algorithms.md``) during training updates only; they differ in how
they choose ``delta``. :class:`ActivationPerturbation` is a DomainBed ``ERM`` (same featurizer,
classifier, Adam optimizer and ``predict``) that does the plumbing, so a new algorithm
implements one method::

    class Noise(ActivationPerturbation):
        def perturb(self, a, y, step, tail):
            return a + 0.1 * a.norm() / a.numel() ** 0.5 * torch.randn_like(a)

Shapes: ``a`` is the layer's output for the whole training batch (all training domains
concatenated), ``[B, ...]``; ``y`` is ``[B]``; ``step.domains`` is ``[B]``.

One update, top to bottom (:meth:`ActivationPerturbation.update`): the forward pass runs with
a hook at each active cut (:class:`~lpa_domainbed.perturb.tail.CutForward`); the hook calls
``perturb(a, y, step, tail)`` and the rest of the network sees its result; then ``loss``, the
backward, the optimizer step and ``after_optimizer_step(step)``.
"""

from __future__ import annotations

import dataclasses
import inspect
import math
import warnings

import torch
import torch.nn.functional as F
from domainbed.algorithms import ERM

from lpa_domainbed import hparams as hp
from lpa_domainbed.algorithms.context import ProbeResult, Step
from lpa_domainbed.hparams_check import validate
from lpa_domainbed.perturb.layers import Cut, resolve_cuts
from lpa_domainbed.perturb.pgd import group_counts, row_norms
from lpa_domainbed.perturb.tail import CutForward, Tail

__all__ = ["ActivationPerturbation", "NonFiniteLossError", "ProbeResult", "Step", "Tail",
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
    return sums / group_counts(y, num_classes)  # NaN where the class is absent, not zero


def flat_norms(t: torch.Tensor) -> torch.Tensor:
    """Per-sample l2 norm in float32, ``[B, ...] -> [B]`` (overflow-safe)."""
    return row_norms(t.detach().float())


@dataclasses.dataclass
class _PassRecord:
    """What the base class keeps of one pass: per layer, each sample's ``|a~ - a| / |a|``,
    and in ``probe()`` copies of ``a`` and ``a~`` (in ``update()`` they would keep two
    activations alive through the backward pass)."""

    keep_activations: bool
    rel: dict = dataclasses.field(default_factory=dict)
    clean: dict = dataclasses.field(default_factory=dict)
    perturbed: dict = dataclasses.field(default_factory=dict)

    def add(self, name: str, a: torch.Tensor, a_tilde: torch.Tensor) -> None:
        with torch.no_grad():
            self.rel[name] = flat_norms(a_tilde - a) / flat_norms(a).clamp_min(1e-12)
        if self.keep_activations:  # copies: an in-place op after the cut would change them
            self.clean[name] = a.detach().clone()
            self.perturbed[name] = a_tilde.detach().clone()

    def mean_rel(self, y: torch.Tensor) -> torch.Tensor:
        """Per-sample ``|a~ - a| / |a|`` averaged over the perturbed layers, ``[B]``."""
        if not self.rel:
            return torch.zeros(len(y), device=y.device)
        return torch.stack(list(self.rel.values())).mean(0)


def _refuse_old_spelling(cls) -> None:
    """The author-facing API of an earlier version, refused with the new spelling."""
    if "perturb" in cls.__dict__:
        params = list(inspect.signature(cls.__dict__["perturb"]).parameters)
        if len(params) == 4:
            raise TypeError(
                f"{cls.__name__}.perturb{tuple(params[1:])}: perturb(a, y, ctx) is the old "
                f"spelling; write perturb(self, a, y, step, tail): step.domains, step.number, "
                f"step.training for ctx.domains/step/training, tail(z) for ctx.tail(z), "
                f"tail.cut for ctx.cut, and per-update state on your algorithm")
    if "after_backward" in cls.__dict__:
        raise TypeError(f"{cls.__name__}.after_backward: it ran after the optimizer step and "
                        f"is now after_optimizer_step(self, step); rename it")


def _check_result(alg, cut: Cut, a: torch.Tensor, a_tilde) -> None:
    """``perturb`` must return a tensor like ``a``; one without graph is warned about once."""
    name = type(alg).__name__
    if not isinstance(a_tilde, torch.Tensor) or a_tilde.dtype != a.dtype:
        got = (f"a {a_tilde.dtype} tensor" if isinstance(a_tilde, torch.Tensor)
               else repr(type(a_tilde).__name__))
        raise TypeError(f"{name}.perturb returned {got} at {cut.name}: it must return the "
                        f"perturbed activation a + delta, a {a.dtype} tensor shaped like a "
                        f"{tuple(a.shape)}")
    if a_tilde.shape != a.shape:
        raise RuntimeError(f"{name}.perturb changed the activation's shape at {cut.name}: "
                           f"{tuple(a.shape)} -> {tuple(a_tilde.shape)}")
    if a.requires_grad and not a_tilde.requires_grad and torch.is_grad_enabled() \
            and not getattr(alg, "_warned_no_graph", False):
        alg._warned_no_graph = True
        warnings.warn(f"{name}.perturb returned an activation without graph at {cut.name} "
                      f"(e.g. a.detach()): the layers before it get no gradient and only the "
                      f"rest of the network trains; keep the graph (return a + delta)",
                      RuntimeWarning, stacklevel=4)


class ActivationPerturbation(ERM):
    """DomainBed ``ERM`` whose activation at ``perturb_layer`` is perturbed in training.

    Subclasses implement :meth:`perturb`; they may override :meth:`loss` (e.g. mixed labels),
    :meth:`active_cuts` (choose layers per step), :meth:`after_optimizer_step` (use the
    training gradients), :meth:`diagnostics` and :meth:`check_hparams`. ``predict`` and
    DomainBed's evaluation see clean activations: hooks exist only inside ``update()`` and
    ``probe()``. State that must survive a checkpoint is a buffer (``state_dict()``).

    Args (DomainBed's): input_shape, num_classes, num_domains, hparams. Missing hparams of
    this package take their defaults.
    """

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        _refuse_old_spelling(cls)

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
        # updates done: a buffer (saved with the model), mirrored by an int read without sync
        self.register_buffer("update_count", torch.zeros((), dtype=torch.long))
        self.steps_done = 0
        self.register_load_state_dict_post_hook(lambda module, _: module.after_load())

    # -- what subclasses implement ---------------------------------------------------------
    def perturb(self, a: torch.Tensor, y: torch.Tensor, step: Step, tail: Tail) -> torch.Tensor:
        """Return the perturbed activation ``a~ = a + delta`` (paper eq. 2), same shape and
        dtype. ``tail(z)``: the logits ``f_{l+1:L}(z)`` (needs :meth:`uses_tail`);
        ``tail.cut``: the layer (``name``, ``depth`` = L - l)."""
        raise NotImplementedError

    def check_hparams(self) -> None:
        """Raise ``ValueError`` for an invalid combination of hparams (called at construction;
        each hparam's own type and values are checked by its ``HParam``)."""

    def active_cuts(self, training: bool) -> list[Cut]:
        """The cuts perturbed in this pass (default: all of ``perturb_layer``)."""
        return self.cuts

    def before_pass(self, step: Step) -> None:
        """Called before every pass (``update()`` and ``probe()``): reset per-pass state."""

    def loss(self, logits: torch.Tensor, y: torch.Tensor, step: Step) -> torch.Tensor:
        """The training loss on the perturbed logits (default: cross-entropy)."""
        return F.cross_entropy(logits, y)

    def after_optimizer_step(self, step: Step) -> None:
        """Called in ``update()`` after ``loss.backward()`` and ``optimizer.step()``."""

    def diagnostics(self) -> dict[str, torch.Tensor]:
        """Extra 0-dim values ``update()`` returns for this pass (read with the loss in one
        host transfer), e.g. a search's ``clean_loss``."""
        return {}

    def after_load(self) -> None:
        """Called after ``load_state_dict``: refresh what mirrors a buffer."""
        self.steps_done = int(self.update_count)

    @property
    def search_steps(self) -> int:
        """Tail evaluations per cut that the perturbation search runs in one update (the
        ``T`` of exact PGD, eqs. 9-11); 0 when no search runs. The benchmark's analytic
        floor ``1 + T t_tail / t_step`` reads it, and ``update()`` reports the search's
        ``clean_loss`` / ``perturbed_loss`` only when it is positive."""
        return 0

    def uses_tail(self, cut: Cut) -> bool:
        """Whether :meth:`perturb` may call its ``tail`` at ``cut`` (default False). The
        forward pass keeps the outputs the tail replays only for such layers, so the default
        costs no memory; a method that searches (LPA, ADA) opts in."""
        return False

    # -- one pass, one update --------------------------------------------------------------
    def _step(self, y, domains, training: bool) -> Step:
        return Step(y=y, domains=domains, number=self.steps_done, training=training,
                    counts=group_counts(y, self.num_classes))

    def _perturbed_pass(self, x, step: Step, cuts: list[Cut]):
        active = {c.name for c in cuts}
        record = _PassRecord(keep_activations=not step.training)
        self.before_pass(step)

        def on_cut(cut, a, tail):
            if cut.name not in active:
                return None
            a_tilde = self.perturb(a, step.y, step, tail)
            _check_result(self, cut, a, a_tilde)
            record.add(cut.name, a, a_tilde)
            return a_tilde

        tail_cuts = [c.name for c in cuts if self.uses_tail(c)]
        return self._cut_forward.run(x, on_cut, tail_cuts=tail_cuts), record

    def update(self, minibatches, unlabeled=None):
        x = torch.cat([x for x, _ in minibatches])
        y = torch.cat([y for _, y in minibatches])
        domains = torch.cat([torch.full((len(yi),), i, dtype=torch.long, device=yi.device)
                             for i, (_, yi) in enumerate(minibatches)])
        step = self._step(y, domains, training=True)
        logits, record = self._perturbed_pass(x, step, self.active_cuts(True))
        loss = self.loss(logits, y, step)
        report = {"loss": loss.detach(), "rel_perturbation": record.mean_rel(y).mean()}
        if self.search_steps > 0:
            report["perturbed_loss"] = F.cross_entropy(logits.detach().float(), y)
            report.update(self.diagnostics())
        # One host transfer for every number, as DomainBed's ERM has its loss.item().
        values = dict(zip(report, torch.stack([v.detach().float() for v in report.values()]).tolist()))
        if not math.isfinite(values["loss"]):
            raise self._non_finite(values["loss"])
        self.optimizer.zero_grad()
        loss.backward()
        self.optimizer.step()
        self.after_optimizer_step(step)
        self.steps_done += 1
        self.update_count.fill_(self.steps_done)
        return values

    def _non_finite(self, loss: float) -> NonFiniteLossError:
        hparams = ", ".join(f"{k}={v!r}" for k, v in sorted(self.hparams.items()))
        return NonFiniteLossError(
            f"{type(self).__name__}: the training loss is {loss} at step "
            f"{self.steps_done}, so the rest of this run would mean nothing; it is stopped. "
            f"Lower the learning rate or the perturbation's size. hparams: {{{hparams}}}")

    def probe(self, x: torch.Tensor, y: torch.Tensor, domains: torch.Tensor | None = None,
              cuts: list[Cut] | None = None) -> ProbeResult:
        """What the next ``update()`` would do to the activations of ``(x, y)``, state-free
        (``cuts``: perturb these layers instead of the next update's).

        Runs in training mode (batch statistics, dropout) but restores the RNG and the mode, and
        leaves parameters, buffers, ``.grad``, optimizer state and the algorithm's own state
        untouched."""
        if domains is None:
            domains = torch.zeros_like(y)
        was_training = self.training
        devices = [x.device.index or 0] if x.device.type == "cuda" else []
        try:
            self.train()
            with torch.random.fork_rng(devices=devices), self._cut_forward.frozen_statistics():
                logits, record = self._perturbed_pass(
                    x, self._step(y, domains, training=False),
                    self.active_cuts(False) if cuts is None else cuts)
                with torch.no_grad():
                    clean_logits = self.network(x)
        finally:
            self.train(was_training)
        C = self.num_classes
        rel = {}
        for name in record.clean:
            norms = _per_class_mean(flat_norms(record.clean[name]), y, C)
            delta = _per_class_mean(flat_norms(record.perturbed[name] - record.clean[name]), y, C)
            rel[name] = delta / norms.clamp_min(1e-12)
        return ProbeResult(
            layers=list(record.clean), clean=dict(record.clean),
            perturbed=dict(record.perturbed), rel_perturbation=rel,
            clean_loss=_per_class_mean(
                F.cross_entropy(clean_logits.float(), y, reduction="none"), y, C),
            perturbed_loss=_per_class_mean(
                F.cross_entropy(logits.detach().float(), y, reduction="none"), y, C),
            counts=torch.bincount(y, minlength=C))
