"""``lpa-domainbed evaluate``: a model.pkl of DomainBed's train script, rebuilt and evaluated,
gives the accuracy of the run's last record, for every algorithm (our buffers restored)."""

from __future__ import annotations

import json
import sys

import pytest

from conftest import HAVE_DOMAINBED, NO_DOMAINBED

pytestmark = [pytest.mark.torch, pytest.mark.slow,
              pytest.mark.skipif(not HAVE_DOMAINBED, reason=NO_DOMAINBED)]

#: not DomainBed's defaults, so that the run's own split settings are the ones used
TRAIN_ARGS = "--test_envs 1 --holdout_fraction 0.3 --trial_seed 2 --steps 3 --checkpoint_freq 3"


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Each algorithm (DomainBed's ERM and all of ours) trained 3 steps on RotatedDigits by
    DomainBed's train script (LPA also with random hparams): {label: (model.pkl, last
    record)}."""
    from lpa_domainbed.algorithms import load
    from lpa_domainbed.tools.launchers.local_parallel import local_parallel_launcher

    root = tmp_path_factory.mktemp("evaluate")
    # label -> (algorithm, extra arguments); a random draw saves numpy scalars in its hparams
    jobs = {name: (name, "") for name in ["ERM", *load()]}
    jobs["LPA hparams_seed 3"] = ("LPA", "--hparams_seed 3")
    failed = local_parallel_launcher(
        [f"{sys.executable} -m domainbed.scripts.train --dataset RotatedDigits --algorithm "
         f"{name} --data_dir {root} --output_dir '{root / label}' {TRAIN_ARGS} {extra}"
         for label, (name, extra) in jobs.items()], max_jobs=2)
    assert failed == []
    return {label: (root / label / "model.pkl",
                    json.loads((root / label / "results.jsonl").read_text().splitlines()[-1]))
            for label in jobs}


def test_every_algorithm_gives_the_accuracy_of_its_last_record(runs):
    from lpa_domainbed.tools.evaluate import evaluate

    for name, (model, last) in runs.items():
        for env, split in ((1, "in"), (1, "out"), (0, "in"), (0, "out")):
            result = evaluate(model, env, split=split, device="cpu")
            assert result["accuracy"] == last[f"env{env}_{split}_acc"], (name, env, split)
        whole = evaluate(model, 1, device="cpu")
        assert whole["n"] == evaluate(model, 1, split="in")["n"] + \
            evaluate(model, 1, split="out")["n"]


def test_our_buffers_are_restored(runs):
    from lpa_domainbed.tools.evaluate import load_model_file, rebuild

    for name in ("LPA", "LPA_Amortized", "ADA"):
        algorithm = rebuild(load_model_file(runs[name][0]))
        assert int(algorithm.update_count) == algorithm.steps_done == 3, name


def test_the_command_line(runs, capsys):
    from lpa_domainbed.tools import cli

    model, last = runs["LPA"]
    assert cli.main(["evaluate", "--model", str(model), "--dataset", "RotatedDigits",
                     "--env", "1", "--split", "in", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["accuracy"] == last["env1_in_acc"] and result["domain"] == "15"
    assert cli.main(["evaluate", "--model", str(model), "--env", "0"]) == 0
    assert capsys.readouterr().out.startswith("LPA on RotatedDigits env 0 (0), all (")


def test_another_split_seed_gives_another_split(runs):
    from lpa_domainbed.datasets.rotated_digits import RotatedDigits
    from lpa_domainbed.tools.evaluate import _split, load_model_file

    run = load_model_file(runs["ERM"][0])["args"]
    domain = RotatedDigits(".", [1], {})[0]
    same = _split(domain, 0, "out", run, None, None)
    other = _split(domain, 0, "out", run, None, 0)
    assert same.keys != other.keys and len(same) == len(other) == int(len(domain) * 0.3)


ERROR_ROWS = [  # (id, argv after --model, fragment)
    ("missing file", None, "no such file"),
    ("wrong env index", ["--env", "7"], "--env 7: RotatedDigits has 4 domains, numbered 0 to 3"),
    ("unknown dataset", ["--env", "0", "--dataset", "PACSS"],
     "--dataset PACSS: no such DomainBed dataset; known:"),
    ("holdout out of range", ["--env", "0", "--split", "in", "--holdout_fraction", "1.5"],
     "--holdout_fraction 1.5"),
]


@pytest.mark.parametrize("argv, fragment", [pytest.param(*r[1:], id=r[0]) for r in ERROR_ROWS])
def test_clear_errors(runs, tmp_path, capsys, argv, fragment):
    from lpa_domainbed.tools import cli

    model = runs["ERM"][0]
    if argv is None:
        model, argv = tmp_path / "run" / "model.pkl", ["--env", "0"]
    assert cli.main(["evaluate", "--model", str(model), *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and fragment in err and len(err.strip().splitlines()) == 1


def test_a_file_that_is_not_a_model(tmp_path, capsys):
    import torch

    from lpa_domainbed.tools import cli

    torch.save({"model_dict": {}}, tmp_path / "model.pkl")
    assert cli.main(["evaluate", "--model", str(tmp_path / "model.pkl"), "--env", "0"]) == 2
    assert "lacks args, model_input_shape" in capsys.readouterr().err
