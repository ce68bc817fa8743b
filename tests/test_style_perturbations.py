"""MixStyle and DSU: channel-statistics perturbations hosted on the same base."""

import pytest

from conftest import requires_domainbed
from test_algorithms import batches, make

pytestmark = requires_domainbed
torch = pytest.importorskip("torch")


def standardized(a, eps=1e-6):
    from lpa_domainbed.perturb.statistics import channel_stats, channel_view

    x = channel_view(a)
    mu, sigma = channel_stats(x, eps)
    return (x - mu) / sigma


@pytest.mark.parametrize("name,p", [("MixStyle", "mixstyle_p"), ("DSU", "dsu_p")])
@pytest.mark.parametrize("dataset", ["Debug28", "RotatedDigits"])
def test_only_channel_statistics_change(name, p, dataset):
    alg = make(name, dataset, **{p: 1.0})
    x, y = batches(dataset, per_domain=8)[0]
    r = alg.probe(x, y)
    for a, a_tilde in zip(r.clean.values(), r.perturbed.values()):
        assert not torch.allclose(a, a_tilde)
        assert torch.allclose(standardized(a), standardized(a_tilde), atol=2e-3)


@pytest.mark.parametrize("name,p", [("MixStyle", "mixstyle_p"), ("DSU", "dsu_p")])
def test_identity_when_probability_is_zero(name, p):
    alg = make(name, "Debug28", **{p: 0.0})
    x, y = batches("Debug28")[0]
    r = alg.probe(x, y)
    for a, a_tilde in zip(r.clean.values(), r.perturbed.values()):
        assert torch.equal(a, a_tilde)


def test_default_layers_are_the_early_stages_for_mixstyle_and_all_stages_for_dsu():
    assert [c.name for c in make("MixStyle", "Debug28").cuts] == \
        ["featurizer.bn0", "featurizer.bn1", "featurizer.bn2"]
    assert [c.name for c in make("DSU", "Debug28").cuts] == \
        ["featurizer.bn0", "featurizer.bn1", "featurizer.bn2", "featurizer.bn3"]


def test_crossdomain_partners_come_from_another_domain():
    from lpa_domainbed.algorithms.mixstyle import cross_domain_partners

    domains = torch.tensor([0, 0, 0, 1, 1, 2])
    for _ in range(20):
        partner = cross_domain_partners(domains)
        assert (domains[partner] != domains).all()
    assert cross_domain_partners(torch.zeros(4, dtype=torch.long)).shape == (4,)


def test_mixstyle_crossdomain_uses_domain_labels_in_update():
    alg = make("MixStyle", "Debug28", mixstyle_p=1.0, mixstyle_mix="crossdomain")
    out = alg.update(batches("Debug28", num_domains=3))
    assert out["rel_perturbation"] > 0
