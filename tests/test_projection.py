"""The search's projections: overflow-safe l2 balls, and composing a projection after them."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")


@pytest.mark.parametrize("radius", [1.0, 1e20, 1e25, 1e30])
def test_projection_keeps_a_huge_radius_instead_of_zeroing(radius):
    from lpa_domainbed.perturb.pgd import project, unit

    g = torch.randn(3, 64)
    delta = 2.0 * radius * unit(g)  # twice outside the ball; its squares overflow float32
    projected = project(delta, torch.full((3,), radius))
    norms = projected.double().norm(dim=1)
    torch.testing.assert_close(norms, torch.full((3,), radius, dtype=torch.float64), rtol=1e-5,
                               atol=0)
    cos = torch.nn.functional.cosine_similarity(projected.double(), g.double(), dim=1)
    assert (cos > 0.9999).all()


def test_row_norms_are_the_plain_norm_where_it_does_not_overflow():
    from lpa_domainbed.perturb.pgd import row_norms

    t = torch.randn(5, 3, 4, 4)
    assert torch.equal(row_norms(t), t.flatten(1).norm(dim=1))


def test_compose_applies_the_projections_in_order():
    from lpa_domainbed.perturb.pgd import compose, l2_ball

    radius = torch.tensor([1.0, 2.0])
    first_coordinate = lambda d: d * torch.tensor([1.0, 0.0, 0.0])  # noqa: E731 (a direction)
    delta = torch.tensor([[3.0, 4.0, 0.0], [0.0, 0.0, 1.0]])
    out = compose(l2_ball(radius), first_coordinate)(delta)
    assert torch.allclose(out, torch.tensor([[0.6, 0.0, 0.0], [0.0, 0.0, 0.0]]))


def test_the_search_applies_its_projection_after_every_step():
    from lpa_domainbed.perturb.pgd import Ball, compose, l2_ball, l2_pgd

    torch.manual_seed(0)
    w = torch.randn(6, 3)
    a, y = torch.randn(4, 6), torch.tensor([0, 1, 2, 0])
    radius = torch.ones(3)
    mask = torch.tensor([1.0, 1, 0, 0, 0, 0])
    seen = []

    def keep_two(d):
        seen.append(d)
        return d * mask

    ball = Ball(radius, torch.ones(3), 3, projection=compose(l2_ball(radius), keep_two))
    delta = l2_pgd(lambda z: z @ w, a, y, y, ball).delta
    assert len(seen) == 3 and (delta[:, 2:] == 0).all() and (delta.norm(dim=1) <= 1 + 1e-6).all()
