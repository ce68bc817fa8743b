"""The activation-perturbation base class (paper section 3.2, "a unified view").

Every method here replaces the output ``a`` of a chosen layer ``l`` by ``a~ = a + delta``
(paper eq. 2; see ``docs/algorithms.md``) during training updates only; they differ in how
they choose ``delta``. :class:`ActivationPerturbation` is a DomainBed ``ERM`` (same featurizer,
classifier, Adam optimizer and ``predict``) that does the plumbing, so a new algorithm
implements one method::

    class Noise(ActivationPerturbation):
        def perturb(self, a, y, step, tail, state):
            return a + 0.1 * a.norm() / a.numel() ** 0.5 * torch.randn_like(a)

Shapes: ``a`` is the layer's output for the whole training batch (all training domains
concatenated), ``[B, ...]``; ``y`` is ``[B]``; ``step.domains`` is ``[B]``.

One update, top to bottom (:meth:`ActivationPerturbation.update`)::

    step  = Step(y, domains, ...)             # what the pass knows, computed once
    state = begin(x, step)                    # this pass's own state (default None)
    logits = forward pass; at each active cut: a~ = perturb(a, y, step, tail, state)
    loss  = loss(logits, y, step, state)
    values = {loss, rel_perturbation, **report(logits, y, step, state)}  # one host transfer
    loss.backward(); optimizer.step()
    end(step, state)                          # e.g. running statistics; update() only

Per-pass state travels as the ``state`` argument, never through ``self``: ``probe()`` runs
``begin`` and the forward pass only, so it leaves the algorithm unchanged.
"""

from __future__ import annotations

import math
import inspect
import warnings

import torch
import torch.nn.functional as F
from domainbed.algorithms import ERM

from lpa_domainbed import hparams as hp
from lpa_domainbed.algorithms import ALGORITHMS
from lpa_domainbed.algorithms.context import PassRecord, ProbeResult, Step, flat_norms
from lpa_domainbed.hparams_check import advice, registry_types, validate
from lpa_domainbed.perturb.layers import Cut, resolve_cuts
from lpa_domainbed.perturb.pgd import group_counts
from lpa_domainbed.perturb.tail import CutForward, Tail
from lpa_domainbed.train_command_line import is_train_script
from lpa_domainbed.weights import explain_weight_errors, resnet18_override_warning

__all__ = ["ActivationPerturbation", "NonFiniteLossError", "ProbeResult", "Step", "Tail",
           "flat_norms", "require"]


class NonFiniteLossError(FloatingPointError):
    """The training loss became NaN or infinite: the rest of the run would mean nothing."""


def require(hparams: dict, name: str, ok: bool, expected: str):
    """Raise ``ValueError`` naming the hparam when ``ok`` is false."""
    if not ok:
        raise ValueError(f"hparam {name}={hparams.get(name)!r} is invalid: expected {expected}. "
                         f"Fix it in --hparams or the sweep's hparams.")


def _check_result(alg, cut: Cut, a: torch.Tensor, a_tilde) -> None:
    """``perturb`` must return a tensor like ``a``; one without graph is warned about (once
    per place, by the warnings module: nothing is stored on the algorithm)."""
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
    if a.requires_grad and not a_tilde.requires_grad and torch.is_grad_enabled():
        warnings.warn(f"{name}.perturb returned an activation without graph at {cut.name} "
                      f"(e.g. a.detach()): the layers before it get no gradient and only the "
                      f"rest of the network trains; keep the graph (return a + delta)",
                      RuntimeWarning, stacklevel=4)


def _defined_in(cls) -> str:
    """Where a class comes from, for an error that must name a plugin: its file, else module."""
    try:
        return inspect.getfile(cls)
    except (TypeError, OSError):
        return cls.__module__


def _check_loss(alg, loss) -> None:
    """``loss`` must return the training objective: one scalar tensor."""
    if isinstance(loss, torch.Tensor) and loss.dim() == 0:
        return
    where = f"{type(alg).__name__}.loss (defined in {_defined_in(type(alg))})"
    if not isinstance(loss, torch.Tensor):
        raise TypeError(f"{where} returned {type(loss).__name__!r}: it must return the training "
                        f"loss, one scalar tensor (e.g. F.cross_entropy(logits, y))")
    raise RuntimeError(f"{where} returned a tensor of shape {tuple(loss.shape)}: it must return "
                       f"one scalar, e.g. the mean of per-sample losses (losses.mean())")


def _after_load(module, incompatible_keys) -> None:
    module.after_load()


class ActivationPerturbation(ERM):
    """DomainBed ``ERM`` whose activation at ``perturb_layer`` is perturbed in training.

    Subclasses implement :meth:`perturb`; they may override the other hooks of one update
    (:meth:`begin`, :meth:`loss`, :meth:`report`, :meth:`end`; see the module docs for where
    each runs), :meth:`active_cuts` (choose layers per update) and :meth:`check_hparams`.
    ``predict`` and DomainBed's evaluation see clean activations: hooks exist only inside
    ``update()`` and ``probe()``. State that must survive a checkpoint is a buffer
    (``state_dict()``); state of one pass is what :meth:`begin` returns.

    Args (DomainBed's): input_shape, num_classes, num_domains, hparams. Missing hparams of
    this package take their defaults.
    """

    #: Whether :meth:`perturb` calls its ``tail``. The forward pass keeps the outputs the tail
    #: replays only when it does, so the default costs no memory; a search (LPA, ADA) sets it.
    uses_tail: bool = False

    #: Tail evaluations per cut that the perturbation search runs in one update (the ``T`` of
    #: exact PGD, eqs. 9-11); 0 when no search runs. A figure for the benchmark's analytic
    #: floor ``1 + T t_tail / t_step``; what ``update()`` reports does not depend on it.
    search_steps: int = 0

    @classmethod
    def hparam_specs(cls, dataset: str | None = None) -> list[hp.HParam]:
        """This algorithm's hyperparameters (DomainBed registry entries)."""
        return [hp.HParam("perturb_layer", "default", type=(str, list),
                          doc="layer l: a module path, 'features', 'logits' or a list of them")]

    def __init__(self, input_shape, num_classes, num_domains, hparams):
        # names, types, values (each HParam's choices/check); missing defaults filled in
        name = self.registered_name()
        specs = hp.specs_of(type(self))
        hparams = validate(name, specs, registry_types(name), hparams)
        for text in advice(specs, hparams):
            warnings.warn(f"{name}: {text}", UserWarning, stacklevel=2)
        override = resnet18_override_warning(hparams, input_shape)
        if override:
            warnings.warn(override, UserWarning, stacklevel=2)
        with explain_weight_errors(input_shape, hparams):  # offline: one line, not a traceback
            super().__init__(input_shape, num_classes, num_domains, hparams)
        self.num_classes = num_classes
        self.num_domains = num_domains
        self.input_shape = tuple(input_shape)
        self.check_hparams()
        self.cuts: list[Cut] = resolve_cuts(self, self.hparams["perturb_layer"])
        if is_train_script():  # once per run, into DomainBed's out.txt
            print(f"{name}: perturb_layer={self.hparams['perturb_layer']!r} perturbs "
                  f"{[c.name for c in self.cuts]}")
        self._cut_forward = CutForward(self.network, self.cuts)
        # updates done: a buffer (saved with the model), mirrored by an int read without sync
        self.register_buffer("update_count", torch.zeros((), dtype=torch.long))
        self.steps_done = 0
        self.register_load_state_dict_post_hook(_after_load)  # a function: picklable

    @classmethod
    def registered_name(cls) -> str:
        """The name DomainBed knows this class by (its class name when unregistered)."""
        return next((name for name, obj in ALGORITHMS.items() if obj is cls), cls.__name__)

    # -- the hooks of one update, in the order they run --------------------------------------
    def begin(self, x: torch.Tensor, step: Step):
        """First, before the forward pass (``update()`` and ``probe()``): return this pass's
        state, handed to every later hook (default ``None``). Must not change ``self``."""
        return None

    def perturb(self, a: torch.Tensor, y: torch.Tensor, step: Step, tail: Tail,
                state) -> torch.Tensor:
        """In the forward pass, at each active cut: return the perturbed activation
        ``a~ = a + delta`` (paper eq. 2), same shape and dtype. ``tail(z)``: the logits
        ``f_{l+1:L}(z)`` (needs :attr:`uses_tail`); ``tail.cut``: the layer (``name``,
        ``depth`` = L - l). Write what later hooks need into ``state``, not into ``self``."""
        raise NotImplementedError

    def loss(self, logits: torch.Tensor, y: torch.Tensor, step: Step, state) -> torch.Tensor:
        """After the forward pass: the training loss on the perturbed logits (default:
        cross-entropy)."""
        return F.cross_entropy(logits, y)

    def report(self, logits: torch.Tensor, y: torch.Tensor, step: Step, state) -> dict:
        """After the loss, before the backward: extra 0-dim values ``update()`` returns (read
        with the loss in one host transfer), e.g. a search's ``clean_loss``."""
        return {}

    def end(self, step: Step, state) -> None:
        """Last, after ``loss.backward()`` and ``optimizer.step()`` (``update()`` only):
        e.g. running statistics, or a step of a kept perturbation."""

    # -- the rest of the contract ------------------------------------------------------------
    def check_hparams(self) -> None:
        """Raise ``ValueError`` for an invalid combination of hparams (called at construction;
        each hparam's own type and values are checked by its ``HParam``)."""

    def active_cuts(self, training: bool) -> list[Cut]:
        """The cuts perturbed in this pass (default: all of ``perturb_layer``)."""
        return self.cuts

    def after_load(self) -> None:
        """Called after ``load_state_dict``: refresh what mirrors a buffer."""
        self.steps_done = int(self.update_count)

    # -- one pass, one update --------------------------------------------------------------
    def _step(self, y, domains, training: bool) -> Step:
        return Step(y=y, domains=domains, number=self.steps_done, training=training,
                    counts=group_counts(y, self.num_classes))

    def _perturbed_pass(self, x, step: Step, state, cuts: list[Cut]):
        active = {c.name for c in cuts}
        record = PassRecord(keep_activations=not step.training)

        def on_cut(cut, a, tail):
            if cut.name not in active:
                return None
            a_tilde = self.perturb(a, step.y, step, tail, state)
            _check_result(self, cut, a, a_tilde)
            record.add(cut.name, a, a_tilde)
            return a_tilde

        tail_cuts = [c.name for c in cuts] if self.uses_tail else []
        return self._cut_forward.run(x, on_cut, tail_cuts=tail_cuts), record

    def update(self, minibatches, unlabeled=None):
        x = torch.cat([x for x, _ in minibatches])
        y = torch.cat([y for _, y in minibatches])
        domains = torch.cat([torch.full((len(yi),), i, dtype=torch.long, device=yi.device)
                             for i, (_, yi) in enumerate(minibatches)])
        step = self._step(y, domains, training=True)
        state = self.begin(x, step)
        logits, record = self._perturbed_pass(x, step, state, self.active_cuts(True))
        loss = self.loss(logits, y, step, state)
        _check_loss(self, loss)
        report = {"loss": loss.detach(), "rel_perturbation": record.mean_rel(y).mean(),
                  **self.report(logits, y, step, state)}
        # One host transfer for every number, as DomainBed's ERM has its loss.item().
        values = dict(zip(report, torch.stack(list(report.values())).detach().float().tolist()))
        if not math.isfinite(values["loss"]):
            raise self._non_finite(values["loss"])
        self.optimizer.zero_grad()
        loss.backward()
        self.optimizer.step()
        self.end(step, state)
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

        Runs ``begin`` and the perturbed forward pass in training mode (batch statistics,
        dropout), never ``end``; restores the RNG and the mode, and leaves parameters, buffers,
        ``.grad``, optimizer state and every attribute of the algorithm untouched."""
        if domains is None:
            domains = torch.zeros_like(y)
        was_training = self.training
        devices = [x.device.index or 0] if x.device.type == "cuda" else []
        try:
            self.train()
            with torch.random.fork_rng(devices=devices), self._cut_forward.frozen_statistics():
                step = self._step(y, domains, training=False)
                logits, record = self._perturbed_pass(
                    x, step, self.begin(x, step),
                    self.active_cuts(False) if cuts is None else cuts)
                with torch.no_grad():
                    clean_logits = self.network(x)
        finally:
            self.train(was_training)
        return ProbeResult.of(record, clean_logits, logits, y, self.num_classes)
