"""No host-device synchronization in an update beyond what DomainBed's ERM has (its
``loss.item()``): on CUDA, every algorithm's update runs under
``torch.cuda.set_sync_debug_mode``, which reports each synchronizing call. Skipped, with the
reason shown, where no CUDA device is present.

Where the syncs were and what replaced them (checked on the CPU by reading the code):
``torch.unique`` of the labels (LPA's classes: all ``C`` classes are groups now, absent ones
get radius 0), ``bincount`` in every group mean (``index_add_`` of ones, counted once per
update in ``Step.counts``), boolean-mask indexing (``torch.where`` on ``Step.present``),
``if not torch.isfinite(loss)`` (read from the one host transfer of the update's report),
``torch.equal`` in the per-sample search (``groups=None``), Beta's argument validation and a
data-dependent ``if`` in MixStyle.
"""

from __future__ import annotations

import warnings

import pytest

from conftest import requires_domainbed
from test_algorithms import algorithm_names, batches, make

torch = pytest.importorskip("torch")
pytestmark = [requires_domainbed, pytest.mark.skipif(
    not torch.cuda.is_available(), reason="no CUDA device: the sync check needs one (run it "
                                          "on a GPU machine)")]


def syncs_in_one_update(name: str, dataset: str, **hparams) -> list[str]:
    alg = make(name, dataset, **hparams).cuda()
    data = [(x.cuda(), y.cuda()) for x, y in batches(dataset)]
    alg.update(data)  # the first update initializes lazily (cuDNN, Adam's state)
    torch.cuda.synchronize()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            alg.update(data)
        finally:
            torch.cuda.set_sync_debug_mode("default")
    return [str(w.message) for w in caught if "synchroniz" in str(w.message)]


@pytest.mark.parametrize("dataset", ["Debug28", "RotatedDigits"])
@pytest.mark.parametrize("name", algorithm_names())
def test_an_update_synchronizes_no_more_than_erm(name, dataset):
    erm = syncs_in_one_update("ERM", dataset)
    mine = syncs_in_one_update(name, dataset)
    assert len(mine) <= max(len(erm), 1), "\n".join(mine)


@pytest.mark.parametrize("hparams", [{"lpa_split": "mean_accuracy", "lpa_bound": "varied"},
                                     {"lpa_search_precision": "bfloat16"},
                                     {"lpa_bn_stats": "clean"}])
def test_lpa_options_synchronize_no_more_than_erm(hparams):
    assert len(syncs_in_one_update("LPA", "Debug28", **hparams)) <= \
        max(len(syncs_in_one_update("ERM", "Debug28")), 1)


def test_sync_debugging_sees_a_synchronizing_call():
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            torch.ones(1, device="cuda").item()
        finally:
            torch.cuda.set_sync_debug_mode("default")
    assert any("synchroniz" in str(w.message) for w in caught)
