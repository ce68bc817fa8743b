"""LPA's parts, each a small module whose state lives in ``state_dict()``:

* :class:`ClassStatistics`: the running per-class statistic ``s_c``, the category split
  into the positive set ``P_a`` (paper 3.6), the bound ``eps_c^(l)`` (eqs. 14, 15) and the
  radius ``r_c`` it gives at a layer;
* :class:`ClassDeltas`: amortized LPA's per-class ``delta_c``, kept across updates;
* :class:`LayerChoice`: the layer adaptive selection (eq. 13) chose.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from lpa_domainbed.perturb import pgd

__all__ = ["ClassDeltas", "ClassStatistics", "LayerChoice"]


class ClassStatistics(nn.Module):
    """``s_c`` as an exponential moving average over updates: training accuracy on the
    *clean* logits (for ``all_positive`` and ``mean_accuracy``; measuring it on the perturbed
    logits would feed the perturbation back into the split), or the relative frequency
    ``count_c / max count`` (``frequency``).

    Args: the LPA hparams ``lpa_split``, ``lpa_bound``, ``lpa_eps``, ``lpa_delta_eps``,
    ``lpa_tau``, ``lpa_beta``, ``lpa_radius``, ``lpa_stat_momentum``.
    """

    def __init__(self, num_classes: int, hparams: dict):
        super().__init__()
        h = hparams
        self.split, self.bound = h["lpa_split"], h["lpa_bound"]
        self.eps, self.delta_eps, self.tau = h["lpa_eps"], h["lpa_delta_eps"], h["lpa_tau"]
        self.beta, self.momentum = h["lpa_beta"], h["lpa_stat_momentum"]
        self.relative = h["lpa_radius"] == "relative"
        self.register_buffer("class_accuracy", torch.full((num_classes,), 1.0 / num_classes))
        self.register_buffer("class_frequency", torch.full((num_classes,), 1.0 / num_classes))

    def extra_repr(self) -> str:
        return (f"split={self.split}, bound={self.bound}, eps={self.eps}, "
                f"beta={self.beta}, momentum={self.momentum}")

    @property
    def needs_accuracy(self) -> bool:
        """Whether the class accuracy decides anything (the split or eq. 14's bound)."""
        return self.split == "mean_accuracy" or (
            self.bound == "varied" and self.split != "frequency")

    def statistic(self) -> torch.Tensor:
        """``s_c`` ``[C]``."""
        if self.split == "frequency":
            return self.class_frequency / self.class_frequency.max().clamp_min(1e-12)
        return self.class_accuracy

    def positive(self) -> torch.Tensor:
        """Boolean ``[C]``: the positive set ``P_a`` (paper 3.6). ``all_positive`` puts every
        class in it; ``mean_accuracy`` and ``frequency`` the classes with ``s_c <= mean(s)``."""
        if self.split == "all_positive":
            return torch.ones_like(self.class_accuracy, dtype=torch.bool)
        s = self.statistic()
        return s <= s.mean()

    def signs(self) -> torch.Tensor:
        """``[C]``: +1 for ``P_a`` (maximize the loss, eq. 6), -1 for ``N_a`` (eq. 7)."""
        return torch.where(self.positive(), 1.0, -1.0)

    def bounds(self, depth: int) -> torch.Tensor:
        """``eps_c^(l) = beta^(L - l) (eps + delta_eps |tau - s_c|)`` ``[C]`` (eqs. 14, 15;
        ``fixed``: without the second term)."""
        eps = torch.full_like(self.class_accuracy, float(self.eps))
        if self.bound == "varied":
            eps = eps + self.delta_eps * (self.tau - self.statistic()).abs()
        return self.beta ** depth * eps

    def radius(self, a: torch.Tensor, step, depth: int) -> torch.Tensor:
        """``r_c`` ``[C]`` at a layer ``depth = L - l`` stages before the logits: ``eps_c^(l)``
        times the class's mean activation norm ``mean_{i: y_i = c} |a_i|`` (``relative``,
        default), or ``eps_c^(l)`` itself (``absolute``); 0 for the classes absent from the
        batch (``step``: the pass's labels and class counts)."""
        bound = self.bounds(depth)
        if not self.relative:
            return bound * step.present
        return bound * pgd.group_mean(pgd.flat_norms(a), step.y, len(step.counts), step.counts)

    @torch.no_grad()
    def update(self, clean_logits: torch.Tensor | None, y: torch.Tensor,
               counts: torch.Tensor) -> None:
        """One EMA step: accuracy of the classes present (when clean logits were computed),
        frequency of every class."""
        m = self.momentum
        if clean_logits is not None:
            correct = (clean_logits.argmax(1) == y).float()
            acc = pgd.group_mean(correct, y, len(counts), counts)
            ema = m * self.class_accuracy + (1 - m) * acc
            self.class_accuracy.copy_(torch.where(counts > 0, ema, self.class_accuracy))
        self.class_frequency.mul_(m).add_((1 - m) * counts / len(y))


class ClassDeltas(nn.Module):
    """Per cut, a ``[C, ...]`` float32 perturbation kept across updates (buffers ``cut<i>``).
    A buffer's shape is the activation's, known at the first update, so buffers are created
    then, or when a saved state is loaded."""

    def __init__(self, num_classes: int):
        super().__init__()
        self.num_classes = num_classes

    def get(self, index: int, a: torch.Tensor) -> torch.Tensor:
        stored = getattr(self, f"cut{index}", None)
        if stored is None or stored.shape[1:] != a.shape[1:]:
            return a.new_zeros((self.num_classes, *a.shape[1:]), dtype=torch.float32)
        return stored

    def set(self, index: int, delta: torch.Tensor) -> None:
        self.register_buffer(f"cut{index}", delta.detach())

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        for key, value in state_dict.items():
            name = key[len(prefix):]
            if key.startswith(prefix) and name.startswith("cut") and "." not in name:
                self.register_buffer(name, torch.empty_like(value))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)


def _mirror_index(module, incompatible_keys) -> None:
    module.current = int(module.index)


class LayerChoice(nn.Module):
    """The index of the cut adaptive selection chose (a buffer, mirrored by an int)."""

    def __init__(self):
        super().__init__()
        self.register_buffer("index", torch.zeros((), dtype=torch.long))
        self.current = 0
        self.register_load_state_dict_post_hook(_mirror_index)  # a function: picklable

    def choose(self, index: int) -> None:
        self.current = index
        self.index.fill_(index)
