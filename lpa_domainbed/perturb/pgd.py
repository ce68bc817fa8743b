"""l2 projected gradient ascent/descent on activation perturbations (paper eqs. 5, 8-12).

One routine serves per-sample perturbations (ADA, eq. 5) and class-level ones (LPA, eqs.
8-11): ``groups`` maps each sample to the perturbation it shares. Steps are normalized:
``delta_g <- Proj_{r_g}(delta_g + sign_g * kappa_g * g_g / |g_g|)`` with ``kappa_g = 2 r_g / T``
(paper 4.1), ``g_g`` the group's mean activation gradient (eq. 10/11) and ``Proj`` the
projection onto the l2 ball of radius ``r_g``. Reading of eq. 10: the paper writes the step as
``alpha`` times the raw mean gradient; we normalize it (standard l2 PGD), so that ``kappa`` is a
length and ``T = 1`` gives exactly ``delta_g = sign_g * r_g * g_g / |g_g|``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
from typing import Callable

import torch
import torch.nn.functional as F

__all__ = ["PRECISIONS", "Ball", "SearchResult", "compose", "flat_norms", "group_counts",
           "group_mean", "l2_ball", "l2_pgd", "low_rank", "pgd_step", "project", "row_norms",
           "search_autocast", "search_region", "unit"]

#: The search's precisions (``lpa_search_precision``, ``ada_search_precision``).
PRECISIONS = ("float32", "bfloat16")


def search_autocast(device: torch.device, precision: str):
    """The context of a search's tail evaluations: ``torch.autocast`` in bfloat16 on CPU and
    CUDA for ``precision = "bfloat16"``, nothing for ``"float32"`` (or another device type).
    Only the tail's forward (and so its backward) runs in reduced precision: delta, the
    projections and the radii stay float32, and the training pass is not inside it."""
    if not _reduced(device, precision):
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16)


def _reduced(device: torch.device, precision: str) -> bool:
    if precision not in PRECISIONS:
        raise ValueError(f"search precision {precision!r}: expected one of {PRECISIONS}")
    return precision != "float32" and device.type in ("cpu", "cuda")


@contextlib.contextmanager
def search_region(device: torch.device, precision: str):
    """The whole search, around its ``T`` tail evaluations: yields the context of one
    evaluation (:func:`search_autocast`).

    In reduced precision the region is an autocast that is switched off, and each evaluation
    switches it on. Autocast keeps its bfloat16 copies of the weights until the outermost
    autocast region exits, so the tail's weights are cast once per search instead of once per
    evaluation (on ResNet-50's layer4, 15M weights: 11 ms of a 175 ms evaluation on one CPU
    thread). The values are the same as with a region per evaluation; between evaluations
    (group means, projections, low-rank SVDs) autocast is off and everything is float32.
    """
    evaluation = functools.partial(search_autocast, device, precision)
    with (torch.autocast(device.type, enabled=False) if _reduced(device, precision)
          else contextlib.nullcontext()):
        yield evaluation


def _bshape(v: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return v.view(-1, *([1] * (like.dim() - 1)))


def group_counts(groups: torch.Tensor, num_groups: int) -> torch.Tensor:
    """Samples per group ``[G]`` (float32), without ``bincount``'s host-device sync."""
    ones = torch.ones(groups.shape, device=groups.device)
    return torch.zeros(num_groups, device=groups.device).index_add_(0, groups, ones)


def group_mean(values: torch.Tensor, groups: torch.Tensor, num_groups: int,
               counts: torch.Tensor | None = None) -> torch.Tensor:
    """Mean of ``values [B, ...]`` over samples of each group ``-> [G, ...]`` (float32); 0 for
    an empty group. ``counts``: :func:`group_counts`, when the caller has them already."""
    values = values.float()
    sums = values.new_zeros((num_groups, *values.shape[1:])).index_add_(0, groups, values)
    if counts is None:
        counts = group_counts(groups, num_groups)
    return sums / _bshape(counts.clamp_min(1).to(values), sums)


def row_norms(t: torch.Tensor) -> torch.Tensor:
    """l2 norm of each row ``[G, ...] -> [G]`` that does not overflow: where the plain norm's
    squares overflow (entries above ~1e19 in float32), the row is scaled by its largest entry
    first. Elsewhere it is the plain norm, bit for bit."""
    flat = t.flatten(1)
    norms = flat.norm(dim=1)
    peak = flat.abs().amax(dim=1).clamp_min(torch.finfo(flat.dtype).tiny)
    scaled = (flat / peak[:, None]).norm(dim=1) * peak
    return torch.where(torch.isfinite(norms), norms, scaled)


def flat_norms(t: torch.Tensor) -> torch.Tensor:
    """Per-sample l2 norm in float32 without graph, ``[B, ...] -> [B]`` (overflow-safe)."""
    return row_norms(t.detach().float())


def unit(g: torch.Tensor) -> torch.Tensor:
    """Each row divided by its l2 norm; an all-zero row stays zero (no NaN)."""
    norms = row_norms(g)
    scale = torch.where(norms > 0, 1.0 / norms.clamp_min(torch.finfo(norms.dtype).tiny), 0.0)
    return g * _bshape(scale, g)


def project(delta: torch.Tensor, radius: torch.Tensor) -> torch.Tensor:
    """Project each row onto the l2 ball of its radius (radius 0 gives 0)."""
    scale = torch.clamp(radius / row_norms(delta).clamp_min(1e-12), max=1.0)
    return delta * _bshape(scale, delta)


Projection = Callable[[torch.Tensor], torch.Tensor]


def l2_ball(radius: torch.Tensor) -> Projection:
    """The projection onto the l2 balls of ``radius [G]`` (eq. 9's ``Proj``), as a function of
    ``delta [G, ...]``."""
    return functools.partial(project, radius=radius)


def compose(*projections: Projection) -> Projection:
    """``compose(p, q)(delta) = q(p(delta))``: the search's projections applied in order."""
    def apply(delta: torch.Tensor) -> torch.Tensor:
        for projection in projections:
            delta = projection(delta)
        return delta

    return apply


def low_rank(delta: torch.Tensor, ratio: float, basis: torch.Tensor | None = None) -> torch.Tensor:
    """Low-rank reading of paper eq. 12 (its SVD of a single vector is degenerate).

    * Spatial activations ``[G, C, H, W]``: each ``delta_g`` is read as a ``C x (H W)``
      matrix (channels x positions) and truncated to its top-``k`` singular components,
      ``k = max(1, round(ratio * min(C, H W)))``: ``sum_j sigma_j u_j v_j^T``.
    * Flat activations ``[G, d]``: ``basis`` ``[G, k, d]`` holds, per group, the top-``k``
      right singular vectors of the group's per-sample gradient matrix (eq. 12's ``v_j``);
      ``delta_g`` is projected onto their span.
    """
    if delta.dim() >= 3:
        G, C = delta.shape[:2]
        m = delta.reshape(G, C, -1).float()
        k = max(1, round(ratio * min(m.shape[1], m.shape[2])))
        if k >= min(m.shape[1], m.shape[2]):
            return delta
        u, s, vh = torch.linalg.svd(m, full_matrices=False)
        m = (u[:, :, :k] * s[:, None, :k]) @ vh[:, :k, :]
        return m.reshape(delta.shape).to(delta.dtype)
    if basis is None:
        return delta
    coeff = torch.einsum("gkd,gd->gk", basis, delta.float())
    return torch.einsum("gkd,gk->gd", basis, coeff).to(delta.dtype)


def flat_basis(per_sample_grads: torch.Tensor, groups: torch.Tensor, num_groups: int,
               ratio: float) -> torch.Tensor:
    """Per group, the top-``k`` right singular vectors of its samples' gradients ``[G, k, d]``
    (zero rows pad groups with fewer samples than ``k``)."""
    g = per_sample_grads.float().flatten(1)
    d = g.shape[1]
    if groups is None:
        groups = torch.arange(len(g), device=g.device)
    counts = torch.bincount(groups, minlength=num_groups)
    k = max(1, round(ratio * min(int(counts.max()), d)))
    basis = g.new_zeros((num_groups, k, d))
    for i in range(num_groups):
        rows = g[groups == i]
        if len(rows) == 0:
            continue
        _, s, vh = torch.linalg.svd(rows, full_matrices=False)
        keep = min(k, int((s > s.max() * 1e-6).sum()) if s.numel() else 0)
        basis[i, :keep] = vh[:keep]
    return basis


@dataclasses.dataclass(frozen=True)
class Ball:
    """What a search needs besides the network: per group ``g``, the ball radius ``r_g``
    ``[G]``, the direction ``sign_g`` ``[G]`` (+1 maximize the loss, -1 minimize it), the
    number of steps ``T``, the step size (default ``kappa_g = 2 r_g / T``, paper 4.1; a
    search continued by :func:`l2_pgd` keeps the full search's), the projection after each
    step (default: the l2 ball of ``radius``), the low-rank ratio ``k / d`` of eq. 12 (0:
    full rank), and the precision of the tail evaluations."""

    radius: torch.Tensor
    sign: torch.Tensor
    steps: int
    projection: Projection | None = None
    lowrank: float = 0.0
    precision: str = "float32"
    size: torch.Tensor | None = None

    @property
    def step_size(self) -> torch.Tensor:
        return 2.0 * self.radius.float() / self.steps if self.size is None else self.size

    def project(self, delta: torch.Tensor) -> torch.Tensor:
        return (self.projection or l2_ball(self.radius.float()))(delta)


def pgd_step(delta: torch.Tensor, grad: torch.Tensor, sign: torch.Tensor, size: torch.Tensor,
             projection: Projection, lowrank: float = 0.0,
             basis: torch.Tensor | None = None) -> torch.Tensor:
    """The one PGD step rule (eqs. 9-11): ``Proj(delta + sign * size * g / |g|)``, every
    group at once, float32.

    Shapes: ``delta`` and ``grad`` (the group's mean activation gradient) ``[G, ...]``,
    ``sign`` and ``size`` ``[G]``. With ``lowrank`` (eq. 12) the gradient and the moved
    delta are truncated by :func:`low_rank` (``basis``: its flat-activation span) before the
    projection."""
    grad = grad.float()
    if lowrank:
        grad = low_rank(grad, lowrank, basis)
    delta = delta + _bshape(sign.float() * size, delta) * unit(grad)
    if lowrank:
        delta = low_rank(delta, lowrank, basis)
    return projection(delta)


@dataclasses.dataclass
class SearchResult:
    """What :func:`l2_pgd` found: ``delta [G, ...]`` (float32), and of its first evaluation
    (``z = a + delta`` as given, so the clean activation when the search starts at 0) the
    per-sample losses ``[B]`` and the logits, both without graph."""

    delta: torch.Tensor
    first_losses: torch.Tensor | None
    first_logits: torch.Tensor | None


def l2_pgd(tail, a: torch.Tensor, y: torch.Tensor, groups: torch.Tensor | None, ball: Ball,
           delta: torch.Tensor | None = None, counts: torch.Tensor | None = None) -> SearchResult:
    """Normalized l2 PGD on a perturbation shared within each group: ``ball.steps`` steps of
    :func:`pgd_step`, each from one evaluation of ``tail`` at ``a + delta``.

    Args:
        tail: ``z -> logits`` (``f_{l+1:L}``), called once per step under
            :func:`search_region` (``ball.precision``).
        a: clean activation ``[B, ...]`` (the search never differentiates through it).
        y: labels ``[B]``.
        groups: group index of each sample ``[B]``, values in ``0..G-1``; None: one group per
            sample (ADA), which needs no group mean and no gather.
        ball: radius, sign, steps, projection, low rank and precision (:class:`Ball`).
        delta: the start ``[G, ...]`` (default 0); a caller that took the first step itself
            passes its delta and a ``ball`` with the steps left and the full search's
            ``size``.
        counts: :func:`group_counts` of ``groups``, when the caller has them.
    """
    G = int(ball.radius.numel())
    size, sign = ball.step_size, ball.sign.float()
    if delta is None:
        delta = a.new_zeros((G, *a.shape[1:]), dtype=torch.float32)
    if groups is not None and counts is None:
        counts = group_counts(groups, G)
    first_losses = first_logits = basis = None
    with search_region(a.device, ball.precision) as evaluation:
        for _ in range(ball.steps):
            shared = delta if groups is None else delta[groups]
            z = (a.detach() + shared.to(a.dtype)).requires_grad_(True)
            with evaluation():
                logits = tail(z)
            losses = F.cross_entropy(logits.float(), y, reduction="none")
            (g,) = torch.autograd.grad(losses.sum(), z)
            if first_losses is None:
                first_losses, first_logits = losses.detach(), logits.detach()
                if ball.lowrank and a.dim() == 2:
                    basis = flat_basis(g, groups, G, ball.lowrank)
            g_mean = g if groups is None else group_mean(g, groups, G, counts)
            delta = pgd_step(delta, g_mean, sign, size, ball.project, ball.lowrank, basis)
    return SearchResult(delta, first_losses, first_logits)
