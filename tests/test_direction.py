"""The conjecture-consistent direction (lpa_domainbed.perturb.direction): the cone, its
projection, and the norm guarantees of Conjectures 1-2 that it exists for."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from lpa_domainbed.perturb.direction import norm_cone, project_cone  # noqa: E402
from lpa_domainbed.perturb.pgd import project  # noqa: E402


def relu_activations(seed=0, per_class=16, shape=(6, 4, 4)):
    """Non-negative activations of two classes ``[2 * per_class, *shape]`` and their groups."""
    g = torch.Generator().manual_seed(seed)
    a = torch.relu(torch.randn(2 * per_class, *shape, generator=g) + 0.3)
    return a, torch.arange(2 * per_class) // per_class


def mean_norm(a):
    return a.flatten(1).norm(dim=1).mean()


def test_the_projection_keeps_members_and_is_the_nearest_point_of_the_cone():
    g = torch.Generator().manual_seed(1)
    u = torch.nn.functional.normalize(torch.randn(64, 10, generator=g), dim=1)
    k = torch.rand(64, generator=g)
    x = torch.randn(64, 10, generator=g)
    y = project_cone(x, u, k)
    # in the cone
    assert ((y * u).sum(1) >= k * y.norm(dim=1) - 1e-5).all()
    # idempotent, and a member stays where it is
    assert torch.allclose(project_cone(y, u, k), y, atol=1e-5)
    # nearest point: no random member of the cone is closer to x
    for _ in range(20):
        z = torch.randn(64, 10, generator=g)
        z = project_cone(z, u, k)  # a member of the cone
        assert ((x - y).norm(dim=1) <= (x - z).norm(dim=1) + 1e-5).all()
    # variational inequality of a projection onto a convex cone: <x - y, y> = 0
    assert torch.allclose(((x - y) * y).sum(1), torch.zeros(64), atol=1e-4)


def test_half_space_removes_only_the_opposing_component_and_zero_axis_is_free():
    u = torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.0, 0.0]])
    x = torch.tensor([[-2.0, 3.0, 4.0], [-2.0, 3.0, 4.0]])
    y = project_cone(x, u, torch.zeros(2))
    assert torch.equal(y[0], torch.tensor([0.0, 3.0, 4.0]))
    assert torch.equal(y[1], x[1])  # no axis (a class of all-zero activations): unchanged
    # in the polar cone: to 0; along the axis with k = 1: kept
    assert torch.equal(project_cone(-u[:1], u[:1], torch.tensor([0.5])), torch.zeros(1, 3))
    assert torch.equal(project_cone(2 * u[:1], u[:1], torch.ones(1)), 2 * u[:1])


def test_the_axis_is_the_norm_gradient_and_k_follows_the_radius():
    a, groups = relu_activations()
    radius = torch.tensor([0.5, 0.5])
    axis, k = norm_cone(a, groups, torch.tensor([1.0, -1.0]), radius)
    assert axis.shape == (2, *a.shape[1:]) and k.shape == (2,)
    # class 0 (positive): along the gradient of sum |a_i + delta| at delta = 0
    z = torch.zeros(1, *a.shape[1:], requires_grad=True)
    (grad,) = torch.autograd.grad(mean_norm(a[groups == 0] + z), z)
    assert torch.allclose(axis[0], grad[0] / grad.norm(), atol=1e-5)
    assert k[0] == 0 and 0 < k[1] < 1
    # class 1 (negative): the opposite direction, a narrower cone for a larger radius
    _, k2 = norm_cone(a, groups, torch.tensor([1.0, -1.0]), 2 * radius)
    assert torch.isclose(k2[1], 2 * k[1]) or k2[1] == 1


@pytest.mark.parametrize("seed", range(5))
def test_positive_classes_expand_and_negative_classes_contract_for_any_direction(seed):
    """The guarantees of the module docs: any delta, projected on the cone and then the
    ball, grows the positive class's mean norm and shrinks the negative class's."""
    a, groups = relu_activations(seed)
    sign = torch.tensor([1.0, -1.0])
    radius = 0.3 * torch.stack([mean_norm(a[groups == c]) for c in range(2)])
    axis, k = norm_cone(a, groups, sign, radius)
    g = torch.Generator().manual_seed(100 + seed)
    for _ in range(50):
        raw = torch.randn(2, *a.shape[1:], generator=g) * radius.max()
        delta = project(project_cone(raw, axis, k), radius)
        after = [mean_norm(a[groups == c] + delta[c]) for c in range(2)]
        before = [mean_norm(a[groups == c]) for c in range(2)]
        assert after[0] >= before[0] - 1e-5 and after[1] <= before[1] + 1e-5
    # without the cone, random directions break the conjecture for some draw
    raw = torch.randn(200, *a.shape[1:], generator=g)
    plain = project(raw, radius[1].expand(200))
    assert (torch.stack([mean_norm(a[groups == 1] + d) for d in plain])
            > mean_norm(a[groups == 1])).any()


def test_zero_activations_are_left_out_and_nothing_is_nan():
    a, groups = relu_activations()
    a[0] = 0  # a dead sample of class 0
    a[groups == 1] = 0  # a class whose activations are all zero
    axis, k = norm_cone(a, groups, torch.tensor([-1.0, -1.0]), torch.tensor([0.1, 0.1]))
    assert torch.isfinite(axis).all() and torch.isfinite(k).all()
    assert axis[1].abs().sum() == 0  # no direction: the projection leaves delta alone
    rest = a[1:16]
    expected, _ = norm_cone(rest, torch.zeros(15, dtype=torch.long), torch.tensor([-1.0]),
                            torch.tensor([0.1]))
    assert torch.allclose(axis[0], expected[0], atol=1e-6)
