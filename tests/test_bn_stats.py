"""``lpa_bn_stats``: with "clean", LPA's class direction ignores the other classes (the
BatchNorm statistics of the clean evaluation are constants); with "batch" it does not."""

from __future__ import annotations

import pytest

from conftest import requires_domainbed
from test_algorithms import batches, make

pytestmark = requires_domainbed
torch = pytest.importorskip("torch")


def cosines(bn_stats, offline_resnet):
    from lpa_domainbed.tools.bn_coupling import own_class_direction, search_directions

    alg = make("LPA", "Debug224", num_classes=3, lpa_steps=1, lpa_bn_stats=bn_stats,
               **offline_resnet)
    x, y = batches("Debug224", per_domain=6, num_domains=1, num_classes=3)[0]
    found, a = search_directions(alg, x, y)
    cut = alg.cuts[0].module  # layer3: BatchNorms of layer4 follow it
    return [float((found[c] * own_class_direction(alg, cut, a, x, y, c, True)).sum())
            for c in range(3)]


def test_clean_statistics_give_the_own_class_direction(offline_resnet):
    assert min(cosines("clean", offline_resnet)) > 0.9999


def test_batch_statistics_couple_the_classes(offline_resnet):
    assert max(cosines("batch", offline_resnet)) < 0.999


def test_an_update_with_clean_statistics_counts_one_batch_and_reports_the_search(offline_resnet):
    alg = make("LPA", "Debug224", lpa_bn_stats="clean", **offline_resnet)
    bn = alg.featurizer.network.layer4[0].bn1
    out = alg.update(batches("Debug224", per_domain=3))
    assert int(bn.num_batches_tracked) == 1  # the tail evaluations counted no batch
    assert {"clean_loss", "perturbed_loss"} <= set(out)
