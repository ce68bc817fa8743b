"""What an activation perturbation sees during a pass, and what ``probe()`` reports.

Shapes: ``B`` is the training batch (all training domains concatenated), ``C`` the number of
classes; ``{layer: ...}`` dicts are keyed by the cut's canonical name, in the order the cuts
fire in the forward pass.
"""

from __future__ import annotations

import dataclasses

import torch

from lpa_domainbed.perturb.layers import Cut
from lpa_domainbed.perturb.tail import CutForward

__all__ = ["PerturbContext", "ProbeResult"]


@dataclasses.dataclass
class PerturbContext:
    """What :meth:`ActivationPerturbation.perturb` knows besides the activation.

    Attributes:
        y: labels ``[B]``.
        domains: training-domain index of each sample ``[B]``.
        step: number of updates done so far.
        training: True inside ``update()``; False inside ``probe()``, where an algorithm must
            not change its own state (running statistics, stored perturbations).
        forward: the :class:`~lpa_domainbed.perturb.tail.CutForward` running this pass;
            :meth:`tail` evaluates the rest of the network through it.
        cut: the layer being perturbed (``name``, ``depth`` = L - l); set only while
            ``perturb`` runs, None otherwise.
        scratch: per-pass storage shared by ``perturb``, ``loss`` and ``after_backward``
            (empty at the start of every pass).
        clean, perturbed: ``{layer: activation}`` before/after perturbation, kept in
            ``probe()`` only (in ``update()`` holding them would keep two activations alive
            through the whole backward pass).
        rel: ``{layer: [B]}`` per-sample ``|a~ - a| / |a|``, computed when the layer fires.
        clean_losses: ``{layer: [B]}`` per-sample clean losses (no graph) at each layer where a
            search evaluated the unperturbed activation (PGD's first step evaluates ``a``);
            ``update()``'s ``clean_loss`` diagnostic is the mean of the first layer's.
        clean_logits: clean logits ``[B, C]`` (no graph) where an algorithm computed them
            (LPA: the first tail evaluation, before any later cut is perturbed).
        logits: the perturbed training logits (set by ``update()`` after the pass).
    """

    y: torch.Tensor
    domains: torch.Tensor
    step: int
    training: bool
    forward: CutForward
    cut: Cut | None = None
    scratch: dict = dataclasses.field(default_factory=dict)
    clean: dict = dataclasses.field(default_factory=dict)
    perturbed: dict = dataclasses.field(default_factory=dict)
    rel: dict = dataclasses.field(default_factory=dict)
    clean_losses: dict = dataclasses.field(default_factory=dict)
    clean_logits: torch.Tensor | None = None
    logits: torch.Tensor | None = None

    def tail(self, z: torch.Tensor, detach_head: bool = True,
             bn_stats: dict | None = None) -> torch.Tensor:
        """Logits ``f_{l+1:L}(z)`` for activation ``z`` at the current cut; see
        :meth:`lpa_domainbed.perturb.tail.CutForward.tail` (``bn_stats`` included).
        State-free, no parameter grads."""
        return self.forward.tail(z, self.cut, detach_head, bn_stats)


@dataclasses.dataclass
class ProbeResult:
    """What one training update would do to a batch, computed without changing any state.

    Attributes:
        layers: the perturbed layers' names, in the order they fire.
        clean, perturbed: ``{layer: activation}`` at each perturbed layer before/after
            perturbation (one entry per name in ``layers``, whatever their number).
        rel_perturbation: ``{layer: [C]}``, per class ``E|a~ - a| / E|a|`` (paper Figure 1);
            NaN for classes absent from the batch.
        clean_loss, perturbed_loss: ``[C]`` per-class mean cross-entropy without and with the
            perturbation.
        counts: ``[C]`` samples per class.
    """

    layers: list[str]
    clean: dict[str, torch.Tensor]
    perturbed: dict[str, torch.Tensor]
    rel_perturbation: dict[str, torch.Tensor]
    clean_loss: torch.Tensor
    perturbed_loss: torch.Tensor
    counts: torch.Tensor
