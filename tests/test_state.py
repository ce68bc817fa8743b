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
    assert "class_deltas.cut0" in alg.state_dict()
    alg.to(torch.float64)
    assert alg.class_deltas.cut0.dtype == torch.float64


def test_lpa_mode_amortized_builds_the_amortized_class():
    from lpa_domainbed.algorithms.lpa_amortized import LPA_Amortized

    assert type(make("LPA", lpa_mode="amortized")) is LPA_Amortized
    lpl = make("LPL", lpa_mode="amortized")
    assert lpl.amortized and lpl.search_steps == 0 and lpl.cuts[0].is_logits
    with pytest.raises(ValueError, match="lpa_mode='exact' is invalid for LPA_Amortized"):
        make("LPA_Amortized", lpa_mode="exact")


def test_the_old_perturb_spelling_is_refused_with_the_new_one():
    from lpa_domainbed.algorithms.base import ActivationPerturbation

    with pytest.raises(TypeError, match=r"perturb\(self, a, y, step, tail\)"):
        class Old(ActivationPerturbation):
            def perturb(self, a, y, ctx):
                return a
    with pytest.raises(TypeError, match="after_optimizer_step"):
        class Renamed(ActivationPerturbation):
            def perturb(self, a, y, step, tail):
                return a

            def after_backward(self, ctx):
                pass


def test_old_context_attributes_name_their_new_place():
    alg = make("Dropout")
    step = alg._step(torch.zeros(3, dtype=torch.long), torch.zeros(3, dtype=torch.long), True)
    with pytest.raises(AttributeError, match=r"tail\(z\)"):
        step.tail
    with pytest.raises(AttributeError, match="own attributes"):
        step.scratch


def test_a_tail_kept_after_its_cut_is_refused():
    from lpa_domainbed.algorithms.dropout import Dropout

    kept = []

    class Keeper(Dropout):
        def uses_tail(self, cut):
            return True

        def perturb(self, a, y, step, tail):
            kept.append(tail)
            return a

    alg = make("Dropout")
    alg.__class__ = Keeper
    alg.update(batches())
    with pytest.raises(RuntimeError, match="only available inside"):
        kept[0](torch.zeros(12, 64))
