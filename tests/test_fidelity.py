"""Fidelity to the paper's definitions: where the activation is cut, which accuracy the
class-adaptive split reads, Manifold Mixup's layer set, DropBlock's blocks, L - l, layer names,
in-place operations after a cut."""

from __future__ import annotations

import pytest

from conftest import requires_domainbed
from test_algorithms import batches, make

pytestmark = requires_domainbed
torch = pytest.importorskip("torch")
F = torch.nn.functional


# -- the MLP's a^(l) is after the nonlinearity (eq. 1) --------------------------------------
def mlp_stack(alg, x, upto):
    """relu(Linear(...)) of the MLP's layers up to ``upto`` (0: input, 1: hiddens.0, ...)."""
    f = alg.featurizer
    layers = [f.input, *f.hiddens]
    h = x
    for layer in layers[:upto + 1]:
        h = F.relu(layer(h))
    return h


def mlp_rest(alg, a, after):
    f = alg.featurizer
    layers = [f.input, *f.hiddens]
    h = a
    for layer in layers[after + 1:]:
        h = F.relu(layer(h))
    return alg.classifier(f.output(h))


@pytest.mark.parametrize("name,index", [
    ("featurizer.hiddens.0", 1), ("hiddens.0", 1), ("input", 0), ("featurizer.input", 0),
    ("default", 1)])
def test_mlp_layers_are_cut_after_the_relu(name, index):
    alg = make("LPA", perturb_layer=name, lpa_eps=0.3)
    x, y = batches(per_domain=8)[0]
    a = mlp_stack(alg, x, index).detach()
    delta = torch.randn_like(a)
    seen = {}

    def on_cut(cut, act, fw):
        seen["a"] = act.detach().clone()
        seen["tail"] = fw.tail(act.detach() + delta, cut).detach()
        return act + delta

    logits = alg._cut_forward.run(x, on_cut)
    expected = mlp_rest(alg, a + delta, index)
    assert (seen["a"] >= 0).all() and torch.allclose(seen["a"], a, atol=1e-6)
    assert torch.allclose(logits, expected, atol=1e-5)
    assert torch.allclose(seen["tail"], expected, atol=1e-5)
    r = alg.probe(x, y)
    assert (r.clean >= 0).all() and torch.allclose(r.clean, a, atol=1e-6)


# -- the split statistic s_c is the CLEAN accuracy -------------------------------------------
@pytest.mark.parametrize("mode", ["exact", "amortized"])
@pytest.mark.parametrize("setting", [{"lpa_split": "mean_accuracy"},
                                     {"lpa_bound": "varied"}])
def test_class_accuracy_is_measured_on_clean_logits(mode, setting):
    alg = make("LPA", lpa_mode=mode, lpa_eps=3.0, lpa_beta=1.0, lpa_stat_momentum=0.0,
               **setting)
    data = batches(per_domain=16)
    x = torch.cat([xi for xi, _ in data])
    y = torch.cat([yi for _, yi in data])
    for _ in range(3):  # amortized mode starts from delta = 0: let it grow first
        with torch.no_grad():
            clean = (alg.network(x).argmax(1) == y).float()
        alg.update(data)
    expected = torch.stack([clean[y == c].mean() for c in range(4)])
    assert torch.allclose(alg.class_accuracy, expected)


def test_amortized_lpa_without_accuracy_keeps_no_records():
    alg = make("LPA", lpa_mode="amortized")
    assert not any(alg.uses_tail(c) for c in alg.cuts)
    assert make("LPA", lpa_mode="amortized", lpa_split="mean_accuracy").uses_tail(alg.cuts[0])


# -- Manifold Mixup: the raw input is a layer, one list selects per step ------------------
@pytest.mark.parametrize("dataset", ["RotatedDigits", "Debug28"])
def test_manifold_mixup_can_mix_the_raw_input(dataset):
    alg = make("ManifoldMixup", dataset, perturb_layer="network_input")
    x, y = batches(dataset, per_domain=6)[0]
    with torch.no_grad():
        logits, ctx = alg._perturbed_pass(x, y, torch.zeros_like(y), training=False)
        lam, perm = ctx.scratch["mixup"]
        mixed = (1 - lam) * x + lam * x[perm]
        assert torch.equal(ctx.clean["network_input"], x)
        assert torch.allclose(ctx.perturbed["network_input"], mixed, atol=1e-6)
        assert torch.allclose(logits, alg.network(mixed), atol=1e-5)
    alg.train()
    alg.update(batches(dataset))


def test_manifold_mixup_draws_from_the_original_layer_set_with_the_input():
    alg = make("ManifoldMixup", perturb_layer="network_input,stage1,stage2")
    torch.manual_seed(0)
    seen = {alg.active_cuts(True)[0].name for _ in range(60)}
    assert seen == {"network_input", "featurizer.input", "featurizer.hiddens.0"}


def test_mmix_layers_is_gone_with_a_clear_error():
    with pytest.raises(ValueError, match="perturb_layer"):
        make("ManifoldMixup", mmix_layers="featurizer.input,features")
    from lpa_domainbed.algorithms.manifold_mixup import ManifoldMixup

    assert "mmix_layers" not in {s.name for s in ManifoldMixup.hparam_specs()}


# -- DropBlock drops full s x s blocks, anywhere ---------------------------------------------
def _union_of_full_blocks(dropped: torch.Tensor, s: int) -> bool:
    """Whether every dropped cell lies in an s x s window that is dropped entirely."""
    full = 1 - F.max_pool2d(1 - dropped[None, None], s, stride=1)[0, 0]
    covered = F.max_pool2d(F.pad(full[None, None], (s - 1,) * 4), s, stride=1)[0, 0]
    return bool(((dropped == 1) <= (covered == 1)).all())


@pytest.mark.parametrize("s", [2, 3, 4])
def test_dropblock_drops_only_full_blocks_and_can_drop_every_cell(s):
    from lpa_domainbed.algorithms.dropout import dropout_mask

    torch.manual_seed(0)
    a = torch.ones(64, 2, 8, 8)
    ever = torch.zeros(8, 8, dtype=torch.bool)
    for _ in range(5):
        mask = dropout_mask(a, 0.2, "block", s)
        dropped = (mask == 0).float()
        ever |= dropped.flatten(0, 1).bool().any(0)
        for d in dropped.flatten(0, 1):
            assert _union_of_full_blocks(d, s)
    assert ever.all(), ever
