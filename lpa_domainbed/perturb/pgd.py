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

import torch
import torch.nn.functional as F

__all__ = ["group_mean", "unit", "project", "low_rank", "l2_pgd"]


def _bshape(v: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return v.view(-1, *([1] * (like.dim() - 1)))


def group_mean(values: torch.Tensor, groups: torch.Tensor, num_groups: int) -> torch.Tensor:
    """Mean of ``values [B, ...]`` over samples of each group ``-> [G, ...]`` (float32)."""
    values = values.float()
    sums = values.new_zeros((num_groups, *values.shape[1:])).index_add_(0, groups, values)
    counts = torch.bincount(groups, minlength=num_groups).clamp_min(1).to(values)
    return sums / _bshape(counts, sums)


def unit(g: torch.Tensor) -> torch.Tensor:
    """Each row divided by its l2 norm; an all-zero row stays zero (no NaN)."""
    norms = g.flatten(1).norm(dim=1)
    scale = torch.where(norms > 0, 1.0 / norms.clamp_min(torch.finfo(norms.dtype).tiny), 0.0)
    return g * _bshape(scale, g)


def project(delta: torch.Tensor, radius: torch.Tensor) -> torch.Tensor:
    """Project each row onto the l2 ball of its radius (radius 0 gives 0)."""
    norms = delta.flatten(1).norm(dim=1)
    scale = torch.clamp(radius / norms.clamp_min(1e-12), max=1.0)
    return delta * _bshape(scale, delta)


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


def l2_pgd(tail, a: torch.Tensor, y: torch.Tensor, groups: torch.Tensor, radius: torch.Tensor,
           sign: torch.Tensor, steps: int, lowrank: float = 0.0, clean_graph: bool = False,
           direction=None):
    """``T = steps`` normalized l2 PGD steps on a perturbation shared within each group.

    Args:
        tail: ``z -> logits`` (``f_{l+1:L}``); called ``steps`` times.
        a: clean activation ``[B, ...]``.
        y: labels ``[B]``.
        groups: group index of each sample ``[B]``, values in ``0..G-1``.
        radius: ball radius per group ``[G]``; sign: +1 (maximize loss) or -1 (minimize) ``[G]``.
        lowrank: ``k / d`` ratio of :func:`low_rank` (0: full rank).
        clean_graph: if True, ``tail`` is first called on ``a`` itself with the graph kept, and
            the clean per-sample losses returned carry it (ADA trains on them too).
        direction: ``delta [G, ...] -> delta``, a projection applied before the ball's after
            every step (``lpa_direction = 'conjecture'``: :mod:`lpa_domainbed.perturb.direction`).

    Returns:
        ``(delta [G, ...] float32, clean per-sample losses [B])``.
    """
    G = int(radius.numel())
    radius, sign = radius.float(), sign.float()
    kappa = 2.0 * radius / steps
    delta = a.new_zeros((G, *a.shape[1:]), dtype=torch.float32)
    a0 = a if clean_graph else a.detach()
    clean, basis = None, None
    # One group per sample (ADA): the group mean is the gradient itself and delta needs no
    # gather; skipping both saves two copies of the activation per step (same values).
    per_sample = G == groups.numel() and torch.equal(
        groups, torch.arange(G, device=groups.device, dtype=groups.dtype))
    for t in range(steps):
        if t == 0:
            z = a0 if clean_graph else a0.requires_grad_(True)
        else:
            z = (a.detach() + (delta if per_sample else delta[groups]).to(a.dtype)
                 ).requires_grad_(True)
        losses = F.cross_entropy(tail(z).float(), y, reduction="none")
        (g,) = torch.autograd.grad(losses.sum(), z, retain_graph=clean_graph and t == 0)
        if t == 0:
            clean = losses if clean_graph else losses.detach()
            if lowrank and a.dim() == 2:
                basis = flat_basis(g, groups, G, lowrank)
        g_mean = g.float() if per_sample else group_mean(g, groups, G)
        if lowrank:
            g_mean = low_rank(g_mean, lowrank, basis)
        delta = delta + _bshape(sign * kappa, delta) * unit(g_mean)
        if lowrank:
            delta = low_rank(delta, lowrank, basis)
        if direction is not None:
            delta = direction(delta)
        delta = project(delta, radius)
    return delta, clean
