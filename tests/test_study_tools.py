"""The study's tools: the budget curve (DomainBed's sweep jobs, the plateau rule) and the
perturbation strength on a trained network."""

from __future__ import annotations

import json

import pytest

from conftest import requires_domainbed, run_python
from lpa_domainbed.tools import budget_curve


def _curve(values):
    return [{"algorithm": "ERM", "step": 100 * i, "in_domain": v} for i, v in enumerate(values)]


@pytest.mark.parametrize("values, expected", [
    ([10, 50, 80, 90, 90.2, 90.4, 90.3], 300),  # within 0.5 points of step 300 from there on
    ([10, 50, 80, 90, 91, 92, 93], None),        # still rising at the end
    ([10, 50, 80, 90, 89, 91, 90], 500),         # a dip, then a rise of 1 point: from step 500
])
def test_the_plateau_is_the_first_step_no_later_checkpoint_beats_by_the_margin(values, expected):
    assert budget_curve.plateau_step(_curve(values), "ERM", 0.5) == expected


def test_the_mean_curve_has_domainbeds_standard_error():
    rows = [{"algorithm": "ERM", "step": 0, "in_domain": v, "in_split": v, "held_out": v}
            for v in (1.0, 3.0)]
    (point,) = budget_curve.mean_curve(rows)
    assert point["in_domain"] == 2.0 and point["runs"] == 2
    assert point["in_domain_se"] == pytest.approx(1.0 / 2 ** 0.5)  # population std / sqrt(n)


@requires_domainbed
def test_the_jobs_are_domainbeds_sweep_jobs_for_the_chosen_held_out_domains(tmp_path):
    from domainbed.scripts import sweep

    jobs = budget_curve.jobs("StyleDigits", ["ERM", "LPA"], [1, 3], 2, 900, "d", str(tmp_path))
    assert len(jobs) == 2 * 2 * 2
    assert {tuple(j.train_args["test_envs"]) for j in jobs} == {(1,), (3,)}
    assert all(j.train_args["steps"] == 900 and j.train_args["hparams_seed"] == 0 for j in jobs)
    everything = sweep.make_args_list(2, ["StyleDigits"], ["ERM", "LPA"], 0, 1, 900, "d",
                                      "domain_generalization", 0.2, True, None)
    assert {j.output_dir for j in jobs} <= {sweep.Job(a, str(tmp_path)).output_dir
                                           for a in everything}
    with pytest.raises(SystemExit, match=r"--test_envs \[4\]: StyleDigits has domains 0\.\.3"):
        budget_curve.jobs("StyleDigits", ["ERM"], [4], 1, 10, "d", str(tmp_path))


@requires_domainbed
def test_a_zero_radius_leaves_every_prediction_and_a_real_one_moves_the_activation(tmp_path):
    from lpa_domainbed.tools import perturbation_strength

    out = run_python(["-m", "domainbed.scripts.train", "--dataset", "StyleDigits", "--algorithm",
                      "ERM", "--data_dir", str(tmp_path), "--output_dir", str(tmp_path / "erm"),
                      "--test_envs", "1", "--steps", "2", "--checkpoint_freq", "1"],
                     cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-2000:]
    settings = [("none", "LPA", {"lpa_eps": 0.0, "lpa_delta_eps": 0.0}),
                ("eps 0.3 at bn3", "LPA", {"lpa_eps": 0.3, "perturb_layer": "featurizer.bn3"})]
    zero, real = perturbation_strength.measure(str(tmp_path / "erm" / "model.pkl"), settings,
                                               batches=2)
    assert zero["perturbed_acc"] == zero["clean_acc"] == real["clean_acc"]
    assert zero["samples"] == real["samples"] == 3 * 2 * 32  # 3 domains x 2 batches of 32
    assert zero["rel_perturbation"] == "featurizer.bn2: 0.000"
    assert real["rel_perturbation"].startswith("featurizer.bn3: ")
    assert float(real["rel_perturbation"].split(": ")[1]) > 0
    json.dumps(real)  # a CSV row of plain values
