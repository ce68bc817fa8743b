"""What a perturbation knows about its pass (:class:`Step`), and what ``probe()`` reports.

Shapes: ``B`` is the training batch (all training domains concatenated), ``C`` the number of
classes; ``{layer: ...}`` dicts are keyed by the cut's canonical name, in the order the cuts
fire in the forward pass.
"""

from __future__ import annotations

import dataclasses

import torch

__all__ = ["ProbeResult", "Step"]

# What the old context carried, and where it went (named by Step's AttributeError).
_MOVED = {
    "tail": "perturb's fourth argument: tail(z) evaluates the layers after the cut",
    "cut": "tail.cut (perturb's fourth argument)",
    "step": "step.number",
    "scratch": "your algorithm's own attributes (a small dataclass set in perturb)",
    "clean_losses": "your algorithm's own attributes; report them with diagnostics()",
    "clean_logits": "your algorithm's own attributes",
    "forward": "tail (perturb's fourth argument)",
}


@dataclasses.dataclass(frozen=True)
class Step:
    """An immutable record of one pass, computed once: what :meth:`perturb`, :meth:`loss` and
    :meth:`after_optimizer_step` know besides the activation.

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

    def __getattr__(self, name):
        if name in _MOVED:
            raise AttributeError(f"Step has no {name!r} (perturb(a, y, ctx) became "
                                 f"perturb(a, y, step, tail)): use {_MOVED[name]}")
        raise AttributeError(name)


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
