"""What a perturbation knows about its pass (:class:`Step`), and what ``probe()`` reports.

Shapes: ``B`` is the training batch (all training domains concatenated), ``C`` the number of
classes; ``{layer: ...}`` dicts are keyed by the cut's canonical name, in the order the cuts
fire in the forward pass.
"""

from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F

from lpa_domainbed.perturb.pgd import flat_norms, group_counts, group_mean

__all__ = ["PassRecord", "ProbeResult", "Step", "flat_norms"]

@dataclasses.dataclass(frozen=True)
class Step:
    """An immutable record of one pass, computed once: what :meth:`perturb`, :meth:`loss` and
    :meth:`end` know besides the activation.

    Attributes:
        y: labels ``[B]``.
        domains: training-domain index of each sample ``[B]``.
        number: updates done before this one.
        training: True inside ``update()``; False inside ``probe()``, where an algorithm must
            not change its own state (running statistics, stored perturbations).
        counts: samples per class ``[C]`` (float32, on ``y``'s device); ``present`` is
            ``counts > 0``. Computed once per pass, without a host-device sync.
    """

    y: torch.Tensor
    domains: torch.Tensor
    number: int
    training: bool
    counts: torch.Tensor

    @property
    def present(self) -> torch.Tensor:
        return self.counts > 0


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
        clean_logits, logits: ``[B, C]`` the network's output without and with the
            perturbation (detached).
    """

    layers: list[str]
    clean: dict[str, torch.Tensor]
    perturbed: dict[str, torch.Tensor]
    rel_perturbation: dict[str, torch.Tensor]
    clean_loss: torch.Tensor
    perturbed_loss: torch.Tensor
    counts: torch.Tensor
    clean_logits: torch.Tensor
    logits: torch.Tensor

    @classmethod
    def of(cls, record: "PassRecord", clean_logits: torch.Tensor, logits: torch.Tensor,
           y: torch.Tensor, num_classes: int) -> "ProbeResult":
        """The result of a probe's pass: its ``record`` (kept activations), the logits without
        and with the perturbation ``[B, C]``, the labels ``[B]``."""
        counts = group_counts(y, num_classes)  # once for every per-class mean below

        def per_class(values):  # NaN where the class is absent, not group_mean's zero
            mean = group_mean(values.detach(), y, num_classes, counts)
            return torch.where(counts > 0, mean, torch.nan)

        rel = {name: per_class(flat_norms(record.perturbed[name] - clean))
                     / per_class(flat_norms(clean)).clamp_min(1e-12)
               for name, clean in record.clean.items()}
        return cls(
            layers=list(record.clean), clean=dict(record.clean),
            perturbed=dict(record.perturbed), rel_perturbation=rel,
            clean_loss=per_class(F.cross_entropy(clean_logits.float(), y, reduction="none")),
            perturbed_loss=per_class(F.cross_entropy(logits.detach().float(), y,
                                                     reduction="none")),
            counts=torch.bincount(y, minlength=num_classes),
            clean_logits=clean_logits.detach(), logits=logits.detach())


@dataclasses.dataclass
class PassRecord:
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
