"""The algorithms' own state survives a checkpoint (DomainBed saves ``state_dict()``), and the
author-facing API refuses the spelling of earlier versions with the new one."""

from __future__ import annotations

import pytest

from conftest import requires_domainbed
from test_algorithms import batches, make

pytestmark = requires_domainbed
torch = pytest.importorskip("torch")

RESUMED = [
    ("LPA_Amortized", {"lpa_eps": 0.3}),  # the kept per-class delta
    ("LPA", {"lpa_mode": "amortized", "perturb_layer": "featurizer.input,features"}),
    ("LPA", {"lpa_split": "mean_accuracy"}),  # the running class accuracy s_c
    # the adaptively selected layer and the update count that schedules re-selection
    ("LPA", {"perturb_layer": "featurizer.input,features", "lpa_layer_select": "adaptive",
             "lpa_select_every": 3, "lpa_eps": 0.3}),
]


@pytest.mark.parametrize("name,hparams", RESUMED)
def test_save_load_and_next_update_equal_an_uninterrupted_run(name, hparams):
    running = make(name, **hparams)
    for seed in range(2):
        running.update(batches(seed=seed))
    saved = {k: v.clone() for k, v in running.state_dict().items()}
    resumed = make(name, **hparams)
    resumed.load_state_dict(saved)
    assert resumed.steps_done == running.steps_done == 2
    outs = []
    for alg in (running, resumed):  # the next update's numbers come from its forward pass
        torch.manual_seed(7)  # (DomainBed saves no optimizer state: later ones differ)
        outs.append(alg.update(batches(seed=5)))
    assert outs[0] == outs[1]


def test_amortized_delta_is_a_buffer_that_follows_the_model():
    alg = make("LPA_Amortized")
    alg.update(batches())
    assert "search.deltas.cut0" in alg.state_dict()
    alg.to(torch.float64)
    assert alg.search.deltas.cut0.dtype == torch.float64


def test_lpa_mode_chooses_the_search_lpa_composes_not_a_class():
    from lpa_domainbed.algorithms.lpa import LPA, LPA_Amortized, LPL
    from lpa_domainbed.algorithms.lpa_search import AmortizedSearch, ExactSearch

    assert type(make("LPA", lpa_mode="amortized")) is LPA
    assert isinstance(make("LPA_Amortized").search, AmortizedSearch)
    assert isinstance(make("LPA_Amortized", lpa_mode="exact").search, ExactSearch)
    assert type(make("LPA_Amortized")) is LPA_Amortized
    lpl = make("LPL", lpa_mode="amortized")
    assert type(lpl) is LPL and isinstance(lpl.search, AmortizedSearch)
    assert lpl.search_steps == 0 and lpl.cuts[0].is_logits


def test_a_tail_kept_after_its_cut_is_refused():
    from lpa_domainbed.algorithms.dropout import Dropout

    kept = []

    class Keeper(Dropout):
        uses_tail = True

        def perturb(self, a, y, step, tail, state):
            kept.append(tail)
            return a

    alg = make("Dropout")
    alg.__class__ = Keeper
    alg.update(batches())
    with pytest.raises(RuntimeError, match="only available inside"):
        kept[0](torch.zeros(12, 64))
