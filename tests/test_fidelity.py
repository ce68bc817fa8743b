"""Fidelity to the paper's definitions: where the activation is cut, which accuracy the
class-adaptive split reads, Manifold Mixup's layer set, DropBlock's blocks, L - l, layer names,
in-place operations after a cut."""

from __future__ import annotations

import pytest

from conftest import requires_domainbed
from test_algorithms import batches, make, one

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

    def on_cut(cut, act, tail):
        seen["a"] = act.detach().clone()
        seen["tail"] = tail(act.detach() + delta).detach()
        return act + delta

    logits = alg._cut_forward.run(x, on_cut)
    expected = mlp_rest(alg, a + delta, index)
    assert (seen["a"] >= 0).all() and torch.allclose(seen["a"], a, atol=1e-6)
    assert torch.allclose(logits, expected, atol=1e-5)
    assert torch.allclose(seen["tail"], expected, atol=1e-5)
    r = alg.probe(x, y)
    assert (one(r.clean) >= 0).all() and torch.allclose(one(r.clean), a, atol=1e-6)


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
    assert not make("LPA", lpa_mode="amortized").uses_tail
    assert make("LPA", lpa_mode="amortized", lpa_split="mean_accuracy").uses_tail


# -- Manifold Mixup: the raw input is a layer, one list selects per step ------------------
@pytest.mark.parametrize("dataset", ["RotatedDigits", "Debug28"])
def test_manifold_mixup_can_mix_the_raw_input(dataset):
    alg = make("ManifoldMixup", dataset, perturb_layer="network_input")
    x, y = batches(dataset, per_domain=6)[0]
    with torch.no_grad():
        step = alg._step(y, torch.zeros_like(y), training=False)
        mix = alg.begin(x, step)
        logits, record = alg._perturbed_pass(x, step, mix, alg.active_cuts(False))
        lam, perm = mix.lam, mix.partners
        mixed = (1 - lam) * x + lam * x[perm]
        assert torch.equal(record.clean["network_input"], x)
        assert torch.allclose(record.perturbed["network_input"], mixed, atol=1e-6)
        assert torch.allclose(logits, alg.network(mixed), atol=1e-5)
    alg.train()
    alg.update(batches(dataset))


def test_manifold_mixup_draws_from_the_original_layer_set_with_the_input():
    alg = make("ManifoldMixup", perturb_layer="network_input,stage1,stage2")
    torch.manual_seed(0)
    seen = {alg.active_cuts(True)[0].name for _ in range(60)}
    assert seen == {"network_input", "featurizer.input", "featurizer.hiddens.0"}


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


# -- every documented layer name resolves on every DomainBed featurizer ----------------------
def build(featurizer, monkeypatch, request):
    """An LPA on one DomainBed featurizer, offline with random weights."""
    from domainbed import algorithms, hparams_registry, networks

    shape = {"MLP": (64,), "MNIST_CNN": (3, 28, 28), "Wide_ResNet": (3, 32, 32)}.get(
        featurizer, (3, 224, 224))
    hparams = hparams_registry.default_hparams("LPA", "RotatedDigits")
    if featurizer in ("ResNet", "timm_ResNet"):
        hparams.update(request.getfixturevalue("offline_resnet"))
    if featurizer == "timm_ResNet":
        create = networks.timm.create_model
        monkeypatch.setattr(networks.timm, "create_model",
                            lambda name, pretrained=False, **kw: create(name, pretrained=False, **kw))
        hparams["resnet50_augmix"] = True
    torch.manual_seed(0)
    return algorithms.get_algorithm_class("LPA")(shape, 4, 2, hparams)


NAMES = {
    "MLP": ["featurizer.hiddens.0", "hiddens.0", "input", "featurizer.input", "output",
            "featurizer.output"],
    "MNIST_CNN": ["bn2", "featurizer.bn2", "conv3", "featurizer.conv1", "bn0"],
    "Wide_ResNet": ["layer3", "featurizer.layer3", "layer2.0.conv1", "featurizer.conv1"],
    "ResNet": ["layer3", "network.layer3", "featurizer.network.layer3", "layer3.0.bn1",
               "network.conv1"],
    "timm_ResNet": ["layer3", "network.layer3", "featurizer.network.layer3", "layer3.0.bn1",
                    "network.conv1"],
}
COMMON = ["features", "logits", "default", "stage1", "stage2", "all_stages", "early_stages",
          "network_input", "features,logits"]


@pytest.mark.parametrize("featurizer", list(NAMES))
def test_every_documented_layer_name_resolves(featurizer, monkeypatch, request):
    from lpa_domainbed.perturb.layers import resolve_cuts, valid_layer_names

    alg = build(featurizer, monkeypatch, request)
    for name in NAMES[featurizer] + COMMON + [["default", "logits"]]:
        cuts = resolve_cuts(alg, name)
        assert cuts and all(c.depth >= 0 for c in cuts), name
    valid = valid_layer_names(alg)
    assert len(valid) == len(set(valid))
    with pytest.raises(ValueError) as info:
        resolve_cuts(alg, "no_such_layer")
    listed = str(info.value).split("Valid names: ")[1].split(". They are")[0].split(", ")
    assert len(listed) == len(set(listed))


# -- L - l of a layer outside the declared stages follows execution order -------------------
@pytest.mark.parametrize("name,depth", [("conv1", 4), ("conv2", 3), ("conv3", 2), ("conv4", 1),
                                        ("bn2", 2)])
def test_depth_of_mnist_cnn_convolutions_is_their_blocks(name, depth):
    alg = make("LPA", "Debug28", perturb_layer=name)
    assert alg.cuts[0].depth == depth


# -- an in-place operation after the cut --------------------------------------------------
def test_cut_followed_by_an_inplace_relu(offline_resnet):
    alg = make("LPA", "Debug224", perturb_layer="featurizer.network.layer3.0.bn1",
               **offline_resnet)
    x, y = batches("Debug224", per_domain=3)[0]
    seen = {}
    handle = alg.featurizer.network.layer3[0].bn1.register_forward_hook(
        lambda m, i, out: seen.__setitem__("bn1", out.detach().clone()))
    r = alg.probe(x, y)
    handle.remove()
    assert torch.allclose(one(r.clean), seen["bn1"], atol=1e-5)  # not overwritten by ReLU_
    assert (one(r.clean) < 0).any() and (one(r.perturbed) < 0).any()
    assert (one(r.perturbed) - one(r.clean)).abs().max() > 0
    out = alg.update(batches("Debug224", per_domain=3))
    assert out["perturbed_loss"] == out["perturbed_loss"]


def test_tail_writing_into_a_replayed_output_is_refused(offline_resnet):
    # torchvision's BasicBlock: bn2 runs before downsample, then 'out += identity' writes
    # into bn2's (replayed) output.
    alg = make("LPA", "Debug224", perturb_layer="featurizer.network.layer3.0.downsample.0",
               **offline_resnet)
    with pytest.raises(RuntimeError, match="in place.*layer3.0.bn2"):
        alg.update(batches("Debug224", per_domain=3))
