"""The conjecture-consistent reading of LPA's search (``lpa_direction = 'conjecture'``).

Conjectures 1-2 (paper eqs. 6-7) say positive classes' perturbations expand the activation
norm, ``|a~_c| > |a_c|``, and negative classes' contract it, ``|a~_c| < |a_c|``. Eqs. 8-11
(a max / min of the loss over the whole l2 ball) hold no radial term, and measured behind an
affine tail the loss-raising direction *contracts* confidently classified samples
(docs/algorithms.md, reading 11). This reading keeps eqs. 8-11's search and adds, after every
PGD step, the Euclidean projection onto a cone ``K_c`` of norm-moving directions, so ``delta_c``
keeps as much of the loss direction as the constraint allows:

    v_c     = mean_{i: y_i = c} a_i / |a_i|          (the gradient of sum_i |a_i + delta| at 0)
    u_c     = s_c v_c / |v_c|                         (s_c = +1 for P_a, -1 for N_a)
    K_c     = { delta : <u_c, delta> >= k_c |delta| } (a circular cone around u_c)
    k_c     = 0                                      (c in P_a: the half-space <v_c, delta> >= 0)
    k_c     = min(1, r_c mean_{i: y_i = c} |a_i|^-1 / (2 |v_c|))   (c in N_a)

Guarantees, for ``|delta| <= r_c`` (the ball of eqs. 8-11, radius ``r_c``):

* c in P_a: the norm is convex with subgradient ``a / |a|``, so
  ``mean_i |a_i + delta| >= mean_i |a_i| + <v_c, delta> >= mean_i |a_i|`` (eq. 6).
* c in N_a: ``|a + delta| <= |a| + <a / |a|, delta> + |delta|^2 / (2 |a|)``, so
  ``mean_i |a_i + delta| <= mean_i |a_i| - k_c |v_c| |delta| + |delta|^2 mean_i |a_i|^-1 / 2
  <= mean_i |a_i|`` (eq. 7), whenever ``k_c < 1`` (with ``k_c = 1`` delta is along ``-v_c``).

Because ``K_c`` is a convex cone with its apex at 0, the projection onto ``K_c`` intersected
with the ball of radius ``r_c`` is the ball's projection after the cone's:
``Proj_{K_c & B}(x) = Proj_B(Proj_{K_c}(x))``. Compose them in that order (the cone's
projection never lengthens a vector, so a delta already in the ball stays in it).
Samples whose activation is exactly zero are left out of ``v_c`` and of the mean of
``|a_i|^-1`` (no direction contracts them).
"""

from __future__ import annotations

import torch

__all__ = ["norm_cone", "project_cone", "DIRECTIONS"]

#: the values of ``lpa_direction``: eqs. 8-11 as written, or constrained by Conjectures 1-2.
DIRECTIONS = ("loss", "conjecture")


def norm_cone(a: torch.Tensor, groups: torch.Tensor, sign: torch.Tensor,
              radius: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The cone ``K_c`` of every group: ``(axis u_c [G, ...] unit, k_c [G])`` (module docs).

    Shapes: ``a [B, ...]`` the clean activation; ``groups [B]`` in ``0..G-1``; ``sign [G]``
    (+1 positive, -1 negative class); ``radius [G]`` the l2 radius ``r_c``. float32 out.
    """
    G = int(sign.numel())
    flat = a.detach().float().flatten(1)
    norms = flat.norm(dim=1)
    nonzero = norms > 0
    inverse = torch.where(nonzero, 1.0 / norms.clamp_min(torch.finfo(norms.dtype).tiny), 0.0)
    counts = flat.new_zeros(G).index_add_(0, groups, nonzero.float()).clamp_min(1)
    v = flat.new_zeros((G, flat.shape[1])).index_add_(0, groups, flat * inverse[:, None])
    v = v / counts[:, None]
    mean_inverse = flat.new_zeros(G).index_add_(0, groups, inverse) / counts
    v_norm = v.norm(dim=1)
    axis = torch.where(v_norm[:, None] > 0, v / v_norm.clamp_min(1e-30)[:, None], 0.0)
    axis = axis * sign.float()[:, None]
    contract = (radius.float() * mean_inverse / (2 * v_norm.clamp_min(1e-30))).clamp(max=1.0)
    k = torch.where(sign > 0, torch.zeros_like(contract), contract)
    return axis.view(G, *a.shape[1:]), k


def project_cone(delta: torch.Tensor, axis: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """Euclidean projection of each ``delta_g`` onto ``{x : <u_g, x> >= k_g |x|}``.

    Shapes: ``delta [G, ...]``, ``axis [G, ...]`` (unit rows, or zero rows: no constraint),
    ``k [G]`` in [0, 1]. With ``t = <u, x>``, ``p = x - t u``, ``s = |p|``, ``sin = sqrt(1 -
    k^2)``: ``x`` itself when ``t >= k |x|``, else ``max(0, k t + sin s) (k u + sin p / s)``
    (the nearest point of the cone's boundary ray in the plane of ``u`` and ``x``; 0 in the
    polar cone). ``k = 0`` is the half-space ``t >= 0``: the component along ``-u`` is removed.
    """
    x = delta.flatten(1)
    u = axis.flatten(1).to(x.dtype)
    k = k.to(x.dtype)
    t = (x * u).sum(1)
    p = x - t[:, None] * u
    s = p.norm(dim=1)
    sin = (1 - k * k).clamp_min(0).sqrt()
    p_unit = torch.where(s[:, None] > 0, p / s.clamp_min(1e-30)[:, None], 0.0)
    boundary = (k * t + sin * s).clamp_min(0)[:, None] * (k[:, None] * u + sin[:, None] * p_unit)
    inside = (t >= k * x.norm(dim=1)) | (u.norm(dim=1) == 0)
    return torch.where(inside[:, None], x, boundary).view_as(delta)

