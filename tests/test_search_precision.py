"""The bfloat16 search (``lpa_search_precision``, ``ada_search_precision``): the tail
evaluations run under autocast, the perturbations it finds are the float32 search's."""

from __future__ import annotations

import contextlib
import functools

import pytest

from conftest import requires_domainbed
from test_algorithms import batches, make

pytestmark = requires_domainbed
torch = pytest.importorskip("torch")
from torch.utils._python_dispatch import TorchDispatchMode  # noqa: E402


def deltas(name, dataset, precision, per_domain=4, **overrides):
    """Per class (LPA) or per sample (ADA), the perturbation the next update would add."""
    key = "ada_search_precision" if name == "ADA" else "lpa_search_precision"
    alg = make(name, dataset, **{key: precision}, **overrides)
    x, y = (torch.cat(t) for t in zip(*batches(dataset, per_domain=per_domain)))
    r = alg.probe(x, y)
    (layer,) = r.layers
    delta = (r.perturbed[layer] - r.clean[layer]).flatten(1)
    if name == "ADA":
        return delta
    return torch.stack([delta[y == c][0] for c in y.unique()])


def assert_same_search(d32, d16):
    cos = torch.nn.functional.cosine_similarity(d32, d16, dim=1)
    assert cos.min() >= 0.99, cos
    # the same norm: the radius, which the float32 activation fixes
    torch.testing.assert_close(d16.norm(dim=1), d32.norm(dim=1), rtol=2e-3, atol=0)


@pytest.mark.parametrize("name", ["LPA", "ADA"])
def test_bfloat16_search_on_mnist_cnn(name):
    assert_same_search(deltas(name, "Debug28", "float32"), deltas(name, "Debug28", "bfloat16"))


def test_bfloat16_search_on_domainbeds_resnet(offline_resnet):
    args = ("LPA", "Debug224")  # ResNet-18 (random weights), cut layer3
    assert_same_search(deltas(*args, "float32", per_domain=2, **offline_resnet),
                       deltas(*args, "bfloat16", per_domain=2, **offline_resnet))


@pytest.mark.slow
def test_bfloat16_search_on_timm_resnet50():
    from lpa_domainbed.tools.bench.weights import offline_weights

    with offline_weights(("resnet50", "resnet50_augmix")):  # DomainBed builds both
        found = [deltas("LPA", "Debug224", p, per_domain=2, resnet50_augmix=True)
                 for p in ("float32", "bfloat16")]
    assert_same_search(*found)


def test_training_pass_stays_float32():
    """Only the search's evaluations are reduced: the logits the loss trains on are float32."""
    alg = make("LPA", "Debug28", lpa_search_precision="bfloat16")
    seen = []
    alg.classifier.register_forward_hook(lambda m, i, out: seen.append(out.dtype))
    alg.update(batches("Debug28"))
    assert seen[-1] == torch.float32 and torch.bfloat16 in seen[:-1]


def test_constant_batchnorm_statistics_under_bfloat16_autocast(offline_resnet):
    """``lpa_bn_stats = clean`` holds float32 statistics; BatchNorm's weight and bias are
    float32, so the statistics must not take the bfloat16 activation's dtype."""
    alg = make("LPA", "Debug224", **offline_resnet)
    x, _ = batches("Debug224", per_domain=2)[0]
    stats, out = {}, []

    def on_cut(cut, a, tail):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out.append(tail(a.detach(), bn_stats=stats))
            out.append(tail(a.detach() + 0.1, bn_stats=stats))
        return None

    alg._cut_forward.run(x, on_cut)
    assert len(out) == 2 and stats and all(torch.isfinite(o.float()).all() for o in out)


def test_bfloat16_update_with_clean_statistics(offline_resnet):
    alg = make("LPA", "Debug224", lpa_bn_stats="clean", lpa_search_precision="bfloat16",
               **offline_resnet)
    out = alg.update(batches("Debug224", per_domain=2))
    assert {"clean_loss", "perturbed_loss"} <= set(out)


def test_unknown_precision_is_refused():
    with pytest.raises(ValueError, match="lpa_search_precision.*float32"):
        make("LPA", lpa_search_precision="float16")


class _CastsToBfloat16(TorchDispatchMode):
    """Counts the bfloat16 copies made of one tensor (autocast's casts reach the dispatcher)."""

    def __init__(self, tensor):
        super().__init__()
        self.shape, self.count = tuple(tensor.shape), 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if (func is torch.ops.aten._to_copy.default and tuple(args[0].shape) == self.shape
                and kwargs.get("dtype") == torch.bfloat16):
            self.count += 1
        return func(*args, **kwargs)


@pytest.mark.parametrize("name", ["LPA", "ADA"])
def test_search_casts_the_weights_once(name):
    """The whole search is one autocast region: the tail's weights are cast to bfloat16 once
    per update, not once per tail evaluation (T of them)."""
    key = "ada_search_precision" if name == "ADA" else "lpa_search_precision"
    alg = make(name, "Debug28", **{key: "bfloat16"})
    assert alg.search_steps >= 2
    casts = _CastsToBfloat16(alg.classifier.weight)
    with casts:
        alg.update(batches("Debug28"))
    assert casts.count == 1


def test_one_region_finds_what_a_region_per_evaluation_finds(monkeypatch):
    """The shared region changes when the casts happen, not their values: the perturbation is
    bit for bit the one found with a fresh autocast region around each evaluation."""
    from lpa_domainbed.perturb import pgd

    one_region = deltas("LPA", "Debug28", "bfloat16")

    @contextlib.contextmanager
    def region_per_evaluation(device, precision):
        yield functools.partial(pgd.search_autocast, device, precision)

    monkeypatch.setattr(pgd, "search_region", region_per_evaluation)
    assert torch.equal(deltas("LPA", "Debug28", "bfloat16"), one_region)
