"""PGD facts (paper eqs. 8-15), the other perturbations' distributions, robustness."""

from __future__ import annotations

import math

import pytest

from conftest import requires_domainbed
from test_algorithms import batches, make, one

pytestmark = requires_domainbed
torch = pytest.importorskip("torch")
F = torch.nn.functional


def class_mean_gradient(alg, x, y):
    """g_c of eq. 10 at the 'features' cut, computed directly: d CE / d features."""
    feats = alg.featurizer(x).detach().requires_grad_(True)
    losses = F.cross_entropy(alg.classifier(feats), y, reduction="none")
    (g,) = torch.autograd.grad(losses.sum(), feats)
    return feats.detach(), {int(c): g[y == c].mean(0) for c in y.unique()}


def test_one_step_gives_the_normalized_class_gradient_times_the_radius():
    alg = make("LPA", perturb_layer="features", lpa_steps=1, lpa_eps=0.2, lpa_beta=0.5)
    x, y = batches(per_domain=12)[0]
    a, g = class_mean_gradient(alg, x, y)
    result = alg.probe(x, y)
    delta = one(result.perturbed) - one(result.clean)
    assert torch.allclose(one(result.clean), a, atol=1e-6)
    for c, g_c in g.items():
        radius = 0.5 ** 1 * 0.2 * a[y == c].norm(dim=1).mean()  # beta^(L-l) eps mean|a_c|
        expected = radius * g_c / g_c.norm()
        assert torch.allclose(delta[y == c], expected.expand_as(delta[y == c]), atol=1e-5)


def test_every_sample_of_a_class_gets_the_same_delta_within_the_bound():
    alg = make("LPA", "Debug28", lpa_eps=0.3)
    x, y = batches("Debug28", per_domain=8)[0]
    result = alg.probe(x, y)
    delta = (one(result.perturbed) - one(result.clean)).flatten(1)
    norms = one(result.clean).flatten(1).norm(dim=1)
    for c in y.unique():
        rows = delta[y == c]
        assert torch.allclose(rows, rows[0].expand_as(rows), atol=1e-6)
        bound = 0.7 ** alg.cuts[0].depth * 0.3 * norms[y == c].mean()
        assert rows[0].norm() <= bound * (1 + 1e-5)
        assert rows[0].norm() >= bound * 0.99  # T=3 steps of 2r/3 reach the boundary


def test_positive_classes_raise_and_negative_classes_lower_their_loss():
    alg = make("LPA", lpa_split="mean_accuracy", lpa_eps=0.3)
    alg.class_accuracy.copy_(torch.tensor([0.2, 0.9, 0.3, 0.95]))  # 0, 2 below the mean
    assert alg.statistics.positive().tolist() == [True, False, True, False]
    x, y = batches(per_domain=16)[0]
    r = alg.probe(x, y)
    rise = r.perturbed_loss - r.clean_loss
    assert rise[0] > 0 and rise[2] > 0 and rise[1] < 0 and rise[3] < 0


def test_varied_bound_follows_eq14_and_frequency_split_marks_rare_classes():
    alg = make("LPA", lpa_bound="varied", lpa_eps=0.1, lpa_delta_eps=0.2, lpa_tau=0.5,
               lpa_beta=0.5)
    alg.class_accuracy.copy_(torch.tensor([0.0, 0.5, 1.0, 0.25]))
    expected = 0.5 ** 2 * (0.1 + 0.2 * torch.tensor([0.5, 0.0, 0.5, 0.25]))
    assert torch.allclose(alg.statistics.bounds(depth=2), expected)
    rare = make("LPA", lpa_split="frequency")
    rare.class_frequency.copy_(torch.tensor([0.5, 0.3, 0.15, 0.05]))
    assert rare.statistics.positive().tolist() == [False, False, True, True]


def test_running_class_statistics_are_updated_by_update_only():
    alg = make("LPA", lpa_split="mean_accuracy")
    x, y = batches()[0]
    before = alg.class_accuracy.clone()
    alg.probe(x, y)
    assert torch.equal(alg.class_accuracy, before)
    alg.update(batches())
    assert not torch.equal(alg.class_accuracy, before)


def test_absent_classes_single_samples_and_zero_gradients_give_no_nan():
    alg = make("LPA", perturb_layer="features", num_classes=5)
    x = torch.randn(3, 64)
    y = torch.tensor([0, 0, 3])  # classes 1, 2, 4 absent; class 3 has one sample
    r = alg.probe(x, y)
    assert torch.isfinite(one(r.perturbed)).all()
    with torch.no_grad():
        alg.classifier.weight.zero_()  # dl/da = W^T (p - e_y) = 0
    r = alg.probe(x, y)
    assert torch.equal(one(r.perturbed), one(r.clean))
    out = alg.update([(x, y)])
    assert all(math.isfinite(v) for v in out.values())


@pytest.mark.parametrize("name", ["LPA", "ADA", "Dropout", "ManifoldMixup"])
def test_half_precision_activations(name):
    alg = make(name).to(torch.bfloat16)
    x, y = batches()[0]
    r = alg.probe(x.to(torch.bfloat16), y)
    assert one(r.perturbed).dtype == torch.bfloat16 and torch.isfinite(one(r.perturbed).float()).all()


def test_lowrank_spatial_perturbation_has_the_requested_rank():
    alg = make("LPA", "Debug28", lpa_lowrank=0.05)
    x, y = batches("Debug28", per_domain=8)[0]
    r = alg.probe(x, y)
    delta = one(r.perturbed) - one(r.clean)  # [B, 128, 14, 14]
    k = max(1, round(0.05 * min(128, 14 * 14)))
    for c in y.unique():
        m = delta[y == c][0].reshape(128, -1)
        assert torch.linalg.matrix_rank(m, rtol=1e-4) <= k
        assert m.norm() > 0


def test_lowrank_flat_perturbation_lies_in_the_top_singular_subspace():
    from lpa_domainbed.perturb import pgd

    alg = make("LPA", perturb_layer="features", lpa_lowrank=0.5)
    x, y = batches(per_domain=16)[0]
    feats = alg.featurizer(x).detach().requires_grad_(True)
    losses = F.cross_entropy(alg.classifier(feats), y, reduction="none")
    (g,) = torch.autograd.grad(losses.sum(), feats)
    r = alg.probe(x, y)
    delta = one(r.perturbed) - one(r.clean)
    classes, groups = torch.unique(y, return_inverse=True)
    basis = pgd.flat_basis(g, groups, len(classes), 0.5)
    for i, c in enumerate(classes):
        d = delta[y == c][0]
        inside = basis[i].T @ (basis[i] @ d)
        assert torch.allclose(inside, d, atol=1e-5) and d.norm() > 0


def test_amortized_mode_makes_no_extra_tail_evaluations_and_keeps_delta_bounded(monkeypatch):
    from lpa_domainbed.perturb.tail import CutForward

    alg = make("LPA", lpa_mode="amortized", lpa_eps=0.3)
    monkeypatch.setattr(CutForward, "_evaluate", lambda *a, **k: pytest.fail("tail evaluated"))
    for seed in range(3):
        out = alg.update(batches(seed=seed))
    assert alg.cuts[0].name == "featurizer.hiddens.0"
    stored = alg.search.deltas.cut0
    assert stored.abs().sum() > 0 and 0 < out["rel_perturbation"] <= 0.7 ** 2 * 0.3 * 1.5


def test_adaptive_selection_picks_the_layer_with_the_largest_loss_change():
    alg = make("LPA", perturb_layer="featurizer.input,features", lpa_layer_select="adaptive",
               lpa_select_every=1)
    x, y = torch.cat([x for x, _ in batches()]), torch.cat([y for _, y in batches()])
    scores = {name: float(v) for name, v in alg.layer_scores(x, y).items()}
    alg.update(batches())
    assert set(scores) == {"featurizer.input", "features"}
    assert alg.active_cuts(True)[0].name == max(scores, key=scores.get)


def test_multi_layer_perturbs_each_layer_with_its_own_bound():
    alg = make("LPA_LPL", lpa_eps=0.2)
    x, y = batches()[0]
    r = alg.probe(x, y)
    assert r.layers == ["featurizer.hiddens.0", "logits"]
    rel = {name: float(v[~v.isnan()].mean()) for name, v in r.rel_perturbation.items()}
    assert rel["featurizer.hiddens.0"] == pytest.approx(0.7 ** 2 * 0.2, rel=0.05)
    assert rel["logits"] == pytest.approx(0.2, rel=0.05)


@pytest.mark.parametrize("kind", ["element", "channel", "block"])
def test_dropout_keep_rate_and_inverted_scaling(kind):
    from lpa_domainbed.algorithms.dropout import dropout_mask

    torch.manual_seed(0)
    a = torch.ones(64, 32, 14, 14)
    mask = dropout_mask(a, 0.2, kind, block_size=3)
    kept = (mask > 0).float().mean()
    assert kept == pytest.approx(0.8, abs=0.03)
    assert mask.mean() == pytest.approx(1.0, abs=0.03)  # E[a~] = a
    if kind == "channel":
        assert (mask.flatten(2).std(dim=2) == 0).all()


@pytest.mark.parametrize("size,block", [(14, 3), (14, 4), (7, 7), (5, 2)])
def test_dropblock_mask_has_the_activation_shape_and_drops_squares(size, block):
    from lpa_domainbed.algorithms.dropout import dropout_mask

    torch.manual_seed(0)
    a = torch.ones(8, 4, size, size)
    mask = dropout_mask(a, 0.2, "block", block_size=block)
    assert mask.shape == a.shape and (mask == 0).any()
    alg = make("Dropout", "Debug28", dropout_kind="block", dropout_p=0.3)
    assert math.isfinite(alg.update(batches("Debug28"))["loss"])


def test_dropblock_needs_spatial_activations():
    from lpa_domainbed.algorithms.dropout import dropout_mask

    with pytest.raises(ValueError, match="dropout_kind='block' needs"):
        dropout_mask(torch.ones(4, 10), 0.1, "block")


def test_manifold_mixup_lambda_follows_beta_and_mixes_labels():
    import numpy as np

    alg = make("ManifoldMixup", mmix_alpha=0.4)
    x, y = batches()[0]
    np.random.seed(0)
    lams = []
    from lpa_domainbed.algorithms.base import Step

    step = Step(y=y, domains=y, number=0, training=False, counts=torch.ones(4))
    for _ in range(2000):
        a = torch.randn(len(y), 3)
        mix = alg.begin(a, step)
        a_tilde = alg.perturb(a, y, step, None, mix)
        lam, perm = mix.lam, mix.partners
        assert torch.allclose(a_tilde, (1 - lam) * a + lam * a[perm], atol=1e-6)
        lams.append(lam)
    lams = np.array(lams)
    var = 1 / (4 * (2 * 0.4 + 1))  # Beta(a, a): mean 1/2, variance 1 / (4 (2a + 1))
    assert lams.mean() == pytest.approx(0.5, abs=0.02)
    assert lams.var() == pytest.approx(var, rel=0.1)


def test_manifold_mixup_draws_one_layer_per_update_from_its_list():
    alg = make("ManifoldMixup", perturb_layer="featurizer.input,features")
    seen = {tuple(c.name for c in alg.active_cuts(True)) for _ in range(50)}
    assert seen == {("featurizer.input",), ("features",)}


def test_ada_perturbs_each_sample_to_its_own_ball_and_trains_on_both_losses():
    alg = make("ADA", ada_eps=0.2, ada_clean_weight=0.5)
    x, y = batches()[0]
    r = alg.probe(x, y)
    delta = (one(r.perturbed) - one(r.clean)).flatten(1)
    assert torch.allclose(delta.norm(dim=1), 0.2 * one(r.clean).flatten(1).norm(dim=1), rtol=1e-4)
    assert (r.perturbed_loss >= r.clean_loss - 1e-6).all()


def test_the_one_step_rule_moves_by_the_step_size_along_the_gradient_then_projects():
    from lpa_domainbed.perturb import pgd

    delta = torch.zeros(2, 3)
    grad = torch.tensor([[3.0, 4.0, 0.0], [0.0, 0.0, 0.0]])
    moved = pgd.pgd_step(delta, grad, torch.tensor([1.0, -1.0]), torch.tensor([0.5, 0.5]),
                         pgd.l2_ball(torch.tensor([1.0, 1.0])))
    assert torch.allclose(moved[0], torch.tensor([0.3, 0.4, 0.0]))  # 0.5 * g / |g|
    assert torch.equal(moved[1], torch.zeros(3))  # a zero gradient does not move (no NaN)
    far = pgd.pgd_step(delta, grad, torch.tensor([-1.0, 1.0]), torch.tensor([5.0, 0.0]),
                       pgd.l2_ball(torch.tensor([1.0, 1.0])))
    assert torch.allclose(far[0], torch.tensor([-0.6, -0.8, 0.0]))  # descent, back on the ball


def test_a_continued_search_equals_the_whole_search():
    from lpa_domainbed.perturb import pgd

    torch.manual_seed(0)
    w = torch.randn(6, 3)
    a, y = torch.randn(5, 6), torch.tensor([0, 1, 2, 0, 1])
    ball = pgd.Ball(torch.full((3,), 0.5), torch.ones(3), 3)
    whole = pgd.l2_pgd(lambda z: z @ w, a, y, y, ball)
    first = pgd.l2_pgd(lambda z: z @ w, a, y, y, pgd.Ball(ball.radius, ball.sign, 1,
                                                          size=ball.step_size))
    rest = pgd.l2_pgd(lambda z: z @ w, a, y, y, pgd.Ball(ball.radius, ball.sign, 2,
                                                         size=ball.step_size),
                      delta=first.delta)
    assert torch.allclose(whole.delta, rest.delta)
    assert torch.equal(whole.first_losses, first.first_losses)
