"""Every registered algorithm on DomainBed's networks, and the perturbation base's contract."""

from __future__ import annotations

import copy

import pytest

from conftest import TEST_DEVICE, requires_domainbed

pytestmark = requires_domainbed
torch = pytest.importorskip("torch")

INPUT_SHAPES = {"Debug28": (3, 28, 28), "Debug224": (3, 224, 224), "RotatedDigits": (64,)}


def algorithm_names():
    from conftest import HAVE_DOMAINBED

    if not HAVE_DOMAINBED:
        return []
    from lpa_domainbed.algorithms import load
    from lpa_domainbed.algorithms.base import ActivationPerturbation

    # SWAD and its variants wrap an algorithm; tests/test_swad.py covers them
    return [name for name, cls in load().items() if issubclass(cls, ActivationPerturbation)]


def make(name, dataset="RotatedDigits", num_classes=4, num_domains=2, **overrides):
    from domainbed import algorithms, hparams_registry

    hparams = hparams_registry.default_hparams(name, dataset)
    hparams.update(overrides)
    torch.manual_seed(0)
    return algorithms.get_algorithm_class(name)(INPUT_SHAPES[dataset], num_classes,
                                                num_domains, hparams).to(TEST_DEVICE)


def batches(dataset="RotatedDigits", per_domain=6, num_domains=2, num_classes=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    shape = INPUT_SHAPES[dataset]
    return [(torch.randn(per_domain, *shape, generator=g).to(TEST_DEVICE),
             (torch.arange(per_domain) % num_classes).to(TEST_DEVICE))
            for _ in range(num_domains)]


def one(activations: dict):
    """The activation of a probe that perturbs a single layer."""
    (a,) = activations.values()
    return a


def snapshot(alg):
    return {
        "params": {k: v.detach().clone() for k, v in alg.named_parameters()},
        "buffers": {k: v.clone() for k, v in alg.named_buffers()},
        "grads": {k: None if v.grad is None else v.grad.clone()
                  for k, v in alg.named_parameters()},
        "optimizer": copy.deepcopy(alg.optimizer.state_dict()),
        "steps": alg.steps_done,
    }


def assert_same(a, b):
    assert a.keys() == b.keys()
    for key in a:
        if isinstance(a[key], dict):
            assert a[key].keys() == b[key].keys(), key
            for name in a[key]:
                x, y = a[key][name], b[key][name]
                if isinstance(x, torch.Tensor):
                    assert torch.equal(x, y), f"{key}.{name} changed"
                elif key == "optimizer":
                    assert repr(x) == repr(y), f"optimizer {name} changed"
                else:
                    assert x is None and y is None, f"{key}.{name} changed"
        else:
            assert a[key] == b[key], key


@pytest.fixture(params=["Debug28", "Debug224", "RotatedDigits"])
def dataset(request):
    if request.param == "Debug224":
        request.getfixturevalue("offline_resnet")
    return request.param


def hparams_for(dataset):
    return {"resnet18": True, "resnet50_augmix": False} if dataset == "Debug224" else {}


@pytest.mark.parametrize("name", algorithm_names())
def test_one_update_changes_parameters_and_reports_finite_diagnostics(name, dataset):
    alg = make(name, dataset, **hparams_for(dataset))
    before = snapshot(alg)["params"]
    per_domain = 3 if dataset == "Debug224" else 6
    out = alg.update(batches(dataset, per_domain=per_domain))
    if out["rel_perturbation"] == 0 and alg.hparams.get("lpa_mode") == "amortized":
        out = alg.update(batches(dataset, per_domain=per_domain, seed=1))  # delta starts at 0
    searched = {"clean_loss", "perturbed_loss"}
    expected = {"loss", "rel_perturbation"} | (searched if alg.search_steps > 0 else set())
    assert expected <= set(out)
    if alg.hparams.get("lpa_mode") == "amortized":  # no search: nothing to report from one
        assert not searched & set(out), out
    assert all(torch.isfinite(torch.tensor(v)) for v in out.values()), out
    assert out["rel_perturbation"] > 0
    changed = [k for k, v in alg.named_parameters() if not torch.equal(v, before[k])]
    assert changed, "update() did not change any parameter"
    assert not any(m._forward_hooks for m in alg.modules()), "hooks left behind"


@pytest.mark.parametrize("name", algorithm_names())
def test_predict_and_evaluation_see_clean_activations(name):
    alg = make(name)
    alg.update(batches())
    x = batches(seed=1)[0][0]
    alg.eval()
    with torch.no_grad():
        clean = alg.classifier(alg.featurizer(x))
        assert torch.equal(alg.predict(x), clean)


@pytest.mark.parametrize("name", algorithm_names())
def test_probe_leaves_every_piece_of_state_unchanged(name, offline_resnet):
    alg = make(name, "Debug224", **offline_resnet)
    alg.update(batches("Debug224", per_domain=3))  # populate grads, optimizer and own state
    alg.update(batches("Debug224", per_domain=3, seed=2))
    before = snapshot(alg)
    rng = torch.get_rng_state()
    x, y = batches("Debug224", per_domain=4, seed=3)[0]
    result = alg.probe(x, y)
    assert_same(before, snapshot(alg))
    assert torch.equal(rng, torch.get_rng_state())
    perturbed = list(result.perturbed.values())
    clean = list(result.clean.values())
    assert len(perturbed) == len(result.layers) == len(clean)
    assert all(p.shape == c.shape for p, c in zip(perturbed, clean))
    for rel in result.rel_perturbation.values():
        present = result.counts > 0
        assert torch.isfinite(rel[present]).all() and torch.isnan(rel[~present]).all()


def test_pgd_tail_does_not_touch_batchnorm_statistics(offline_resnet):
    """BatchNorm after the cut (layer4) counts one batch per update, not 1 + T."""
    alg = make("LPA", "Debug224", **offline_resnet)
    bn = alg.featurizer.network.layer4[0].bn1
    alg.update(batches("Debug224", per_domain=3))
    assert int(bn.num_batches_tracked) == 1


def test_pgd_does_not_recompute_layers_before_the_cut(offline_resnet):
    alg = make("LPA", "Debug224", **offline_resnet)
    calls = {"layer2": 0, "layer4": 0}
    net = alg.featurizer.network
    for name in calls:  # a replayed module's own __call__ runs, its convolutions do not
        getattr(net, name)[0].conv1.register_forward_pre_hook(
            lambda m, a, name=name: calls.__setitem__(name, calls[name] + 1))
    for seed in (0, 1):
        calls.update(layer2=0, layer4=0)
        alg.update(batches("Debug224", per_domain=3, seed=seed))
        assert calls == {"layer2": 1, "layer4": 1 + alg.hparams["lpa_steps"]}


def test_unknown_layer_lists_valid_names_and_the_closest_match():
    with pytest.raises(ValueError) as info:
        make("LPA", perturb_layer="featurizer.hiddenz.0")
    message = str(info.value)
    assert "Did you mean 'featurizer.hiddens.0'" in message
    assert "features" in message and "logits" in message and "featurizer.input" in message


@pytest.mark.parametrize("dataset,expected,depth", [
    ("Debug28", "featurizer.bn2", 2), ("Debug224", "featurizer.network.layer3", 2),
    ("RotatedDigits", "featurizer.hiddens.0", 2)])
def test_default_layers_and_depths(dataset, expected, depth, request):
    if dataset == "Debug224":
        request.getfixturevalue("offline_resnet")
    alg = make("LPA", dataset, **hparams_for(dataset))
    assert [(c.name, c.depth) for c in alg.cuts] == [(expected, depth)]
    assert [(c.name, c.depth) for c in make("LPL", dataset, **hparams_for(dataset)).cuts] == \
        [("logits", 0)]


@pytest.mark.parametrize("name,hparam,value", [
    ("LPA", "lpa_eps", -0.1), ("LPA", "lpa_steps", 0), ("LPA", "lpa_beta", 0.0),
    ("LPA", "lpa_beta", 1.5), ("LPA", "lpa_mode", "fast"), ("LPA", "lpa_split", "x"),
    ("LPA", "lpa_lowrank", 2.0), ("Dropout", "dropout_p", 1.0), ("Dropout", "dropout_p", -0.1),
    ("Dropout", "dropout_kind", "pixel"), ("ManifoldMixup", "mmix_alpha", 0.0),
    ("ADA", "ada_eps", -1.0), ("ADA", "ada_steps", 0), ("LPA", "lpa_bn_stats", "running")])
def test_invalid_hparams_raise_naming_the_hparam(name, hparam, value):
    with pytest.raises(ValueError, match=hparam):
        make(name, **{hparam: value})


def test_only_searching_methods_keep_records_for_the_tail():
    searching = {"LPA", "LPL", "LPA_LPL", "ADA", "LPA_Conjecture", "LPA_BF16"}  # exact PGD searches
    for name in algorithm_names():
        alg = make(name)
        assert alg.uses_tail == (name in searching), name
        assert (alg.search_steps > 0) == (name in searching), name


@pytest.mark.parametrize("name,hparams", [("LPA", {"lr": 1e30}), ("Dropout", {"lr": 1e30})])
def test_a_non_finite_training_loss_stops_the_run_naming_step_and_hparams(name, hparams):
    from lpa_domainbed.algorithms.base import NonFiniteLossError

    alg = make(name, **hparams)
    with pytest.raises(NonFiniteLossError) as error:
        for seed in range(5):  # the first update is finite; the huge step then overflows
            alg.update(batches(seed=seed))
    message = str(error.value)
    assert f"at step {alg.steps_done}" in message and "lr=1e+30" in message, message
    assert isinstance(error.value, FloatingPointError)


def test_a_perturbation_that_returns_inf_stops_the_first_update():
    from lpa_domainbed.algorithms.base import ActivationPerturbation, NonFiniteLossError
    from domainbed.hparams_registry import default_hparams

    class Infinite(ActivationPerturbation):
        def perturb(self, a, y, step, tail, state):
            return a + float("inf")

    alg = Infinite((64,), 4, 2, default_hparams("ERM", "RotatedDigits")).to(TEST_DEVICE)
    before = snapshot(alg)["params"]
    with pytest.raises(NonFiniteLossError, match="Infinite: the training loss is nan at step 0"):
        alg.update(batches())
    assert all(torch.equal(v, before[k]) for k, v in alg.named_parameters())  # no step taken
    assert alg.steps_done == 0
