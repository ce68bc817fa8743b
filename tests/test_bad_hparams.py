"""Bad train-script input fails at construction with a message that says what to fix.

Every row runs DomainBed's real train script. To stay fast on two cores, the rows share one
fresh interpreter (the script is run with ``runpy`` as ``python -m`` does; an uncaught
exception is exit status 1); one row also runs as its own ``python -m`` process.
"""

from __future__ import annotations

import json

import pytest

from conftest import requires_domainbed, run_python

pytestmark = [requires_domainbed, pytest.mark.slow]

# (algorithm, --hparams, extra args, expected exit status, expected message fragment)
ROWS = [
    ("LPA", {"lpa_epss": 0.25}, [], 1, "unknown hparam 'lpa_epss' for LPA. Did you mean 'lpa_eps'"),
    ("LPA", {"lpa_eps": "abc"}, [], 1, "hparam lpa_eps='abc' has type str; expected float"),
    ("LPA", {"lpa_eps": "0.2"}, [], 1, "hparam lpa_eps='0.2' has type str; expected float"),
    ("LPA", {"lpa_eps": None}, [], 1, "hparam lpa_eps=None has type NoneType; expected float"),
    ("LPA", {"perturb_layer": 5}, [], 1, "hparam perturb_layer=5 has type int; expected list or str"),
    ("LPA", {"lpa_steps": True}, [], 1, "hparam lpa_steps=True has type bool; expected int"),
    ("LPA", {"lpa_eps": float("inf")}, [], 1, "hparam lpa_eps=inf is not a finite number"),
    ("ADA", {"ada_eps": float("inf")}, [], 1, "hparam ada_eps=inf is not a finite number"),
    ("ERM", None, ["--test_envs", "7"], 1,
     "--test_envs 7: RotatedDigits has no such domain; valid indices are 0, 1, 2, 3"),
    ("ERM", None, ["--test_envs", "-1"], 1, "--test_envs -1: RotatedDigits has no such domain"),
    ("ERM", None, ["--test_envs", "0", "1", "2", "3"], 1,
     "--test_envs 0 1 2 3 holds out every domain of RotatedDigits"),
    ("ERM", None, ["--holdout_fraction", "1.0"], 1, "--holdout_fraction 1.0: the fraction of "
     "each domain held out for validation must be in [0, 1)"),
    ("ERM", None, ["--holdout_fraction", "-0.1"], 1, "--holdout_fraction -0.1: the fraction"),
    ("ERM", None, ["--holdout_fraction", "nan"], 1, "--holdout_fraction nan: the fraction"),
    # the same refusals on the style-shift dataset (the later --dataset wins)
    ("ERM", None, ["--dataset", "StyleDigits", "--test_envs", "0", "1", "2", "3"], 1,
     "--test_envs 0 1 2 3 holds out every domain of StyleDigits (plain, colour, sketch, texture)"),
    ("ERM", None, ["--dataset", "StyleDigits", "--test_envs", "4"], 1,
     "--test_envs 4: StyleDigits has no such domain"),
    ("ERM", None, ["--dataset", "StyleDigits", "--holdout_fraction", "-0.1"], 1,
     "--holdout_fraction -0.1: the fraction"),
    ("LPA_Conjecture", {"lpa_mode": "amortized"}, [], 1,
     "hparam lpa_direction='conjecture' is invalid"),
    # a run whose training loss overflows stops instead of finishing a meaningless run
    ("LPA", {"lr": 1e30}, ["--steps", "3"], 1, "LPA: the training loss is nan at step 1"),
    # values an HParam refuses (its choices, its check): one message naming what is allowed
    ("LPA", {"lpa_mode": "amortised"}, [], 1,
     "hparam lpa_mode='amortised' is invalid: expected one of ('exact', 'amortized')"),
    ("LPA_Amortized", {"lpa_eps": -0.1}, [], 1,
     "hparam lpa_eps=-0.1 is invalid: expected a value >= 0"),
    ("Dropout", {"dropout_p": 1.0}, [], 1,
     "hparam dropout_p=1.0 is invalid: expected a value in [0, 1)"),
    # --hparams that is not one JSON object: one line, the text, what to write instead
    ("LPA", "{lpa_eps: 0.2}", [], 1, "train: --hparams '{lpa_eps: 0.2}' is not valid JSON"),
    ("LPA", "{'lpa_eps': 0.2}", [], 1,
     """write one JSON object of names and values, e.g. --hparams '{"lpa_eps": 0.2}'"""),
    ("LPA", '[["lpa_eps", 0.2]]', [], 1, "is a JSON list, not an object; write one JSON object"),
    ("ERM", "[1, 2]", [], 1, "train: --hparams '[1, 2]' is a JSON list, not an object"),
    ("LPA", "0.2", [], 1, "train: --hparams '0.2' is a JSON number, not an object"),
    # a name of the user's own, and an int where a float is expected, train normally
    ("LPA", {"user_note": "mine", "lpa_eps": 1}, [], 0, "user_note: mine"),
    # a huge radius perturbs as asked (the l2 norm no longer overflows to a zero perturbation)
    ("LPA", {"lpa_eps": 1e25}, [], 0, "e+24"),
    ("ADA", {"ada_eps": 3e24}, [], 0, "e+24"),
    # ... and says that its numbers will mean little (a radius relative to |a| above 1)
    ("LPA", {"lpa_eps": 1e20}, [], 0, "LPA: lpa_eps=1e+20 is accepted, but outside [0, 1]"),
    ("LPA", {"lpa_eps": 1e30}, [], 0, "Set lpa_eps inside that range (its default is 0.1)"),
    ("ADA", {"ada_eps": 5.0}, [], 0, "ADA: ada_eps=5.0 is accepted, but outside [0, 1]"),
    # a plugin's perturb that returns the wrong thing (PLUGIN below)
    ("ReturnsNone", None, [], 1, "ReturnsNone.perturb returned 'NoneType' at"),
    ("ReturnsFloat", None, [], 1, "ReturnsFloat.perturb returned 'float' at"),
    ("ReturnsDouble", None, [], 1, "ReturnsDouble.perturb returned a torch.float64 tensor"),
    ("ReturnsDetached", None, [], 0,
     "ReturnsDetached.perturb returned an activation without graph"),
    # a plugin's loss that is not one scalar: the error names the plugin and its file
    ("LossPerSample", None, [], 1, "LossPerSample.loss (defined in "),
    ("LossPerSample", None, [], 1,
     "bad_plugins.py) returned a tensor of shape ("),
    ("LossFloat", None, [], 1,
     "bad_plugins.py) returned 'float': it must return the training loss"),
]

PLUGIN = """
from lpa_domainbed.algorithms import ALGORITHMS
from lpa_domainbed.algorithms.base import ActivationPerturbation

RESULTS = {"ReturnsNone": lambda a: None, "ReturnsFloat": lambda a: 1.0,
           "ReturnsDouble": lambda a: a.double(), "ReturnsDetached": lambda a: a.detach()}
for name, result in RESULTS.items():
    ALGORITHMS.add(name, type(name, (ActivationPerturbation,), {
        "perturb": lambda self, a, y, step, tail, state, result=result: result(a)}))

import torch.nn.functional as F
LOSSES = {"LossPerSample": lambda logits, y: F.cross_entropy(logits, y, reduction="none"),
          "LossFloat": lambda logits, y: float(F.cross_entropy(logits, y))}
for name, loss in LOSSES.items():
    ALGORITHMS.add(name, type(name, (ActivationPerturbation,), {
        "perturb": lambda self, a, y, step, tail, state: a,
        "loss": lambda self, logits, y, step, state, loss=loss: loss(logits, y)}))
"""

DRIVER = """
import json, os, runpy, sys, traceback
results = []
for argv, out_dir in json.loads(sys.argv[1]):
    saved = sys.stdout, sys.stderr
    sys.argv = ["train"] + argv
    try:
        runpy.run_module("domainbed.scripts.train", run_name="__main__", alter_sys=True)
        rc, message = 0, "".join(open(os.path.join(out_dir, name)).read()
                                 for name in ("out.txt", "err.txt", "results.jsonl"))
    except SystemExit as e:  # a str code: Python prints it and exits with status 1
        rc, message = (1, e.code) if isinstance(e.code, str) else (e.code, "")
    except Exception:
        rc, message = 1, traceback.format_exc()
    sys.stdout, sys.stderr = saved
    results.append({"rc": rc, "message": message,
                    "done": os.path.exists(os.path.join(out_dir, "done"))})
print("RESULTS" + json.dumps(results))
"""


def train_args(tmp_path, i, algorithm, hparams, extra):
    args = ["--dataset", "RotatedDigits", "--algorithm", algorithm, "--data_dir", str(tmp_path),
            "--output_dir", str(tmp_path / f"run{i}"), "--steps", "1", "--checkpoint_freq", "1",
            "--skip_model_save", *extra]
    if isinstance(hparams, str):  # the text as the user typed it
        args += ["--hparams", hparams]
    elif hparams is not None:
        args += ["--hparams", json.dumps(hparams)]  # json writes inf as Infinity, like a user
    return args


def test_every_row_exits_as_expected_naming_the_problem(tmp_path):
    jobs = [(train_args(tmp_path, i, *row[:3]), str(tmp_path / f"run{i}"))
            for i, row in enumerate(ROWS)]
    (tmp_path / "bad_plugins.py").write_text(PLUGIN)
    out = run_python(["-c", DRIVER, json.dumps(jobs)], cwd=tmp_path,
                     env={"LPA_DOMAINBED_PLUGINS": str(tmp_path / "bad_plugins.py")})
    assert out.returncode == 0 and "RESULTS" in out.stdout, out.stderr[-3000:]
    results = json.loads(out.stdout.split("RESULTS")[-1])
    for row, result in zip(ROWS, results):
        status, message = row[3], row[4]
        assert result["rc"] == status, (row, result["message"][-2000:])
        assert message in result["message"], (row, result["message"][-2000:])
        assert "a training split has" not in result["message"]  # not the batch-size advice
        assert result["done"] == (status == 0), row


def test_the_train_script_process_exits_non_zero_and_writes_no_done(tmp_path):
    out = run_python(["-m", "domainbed.scripts.train",
                      *train_args(tmp_path, 0, "LPA", {"lpa_epss": 0.25}, [])], cwd=tmp_path)
    assert out.returncode != 0
    assert "Did you mean 'lpa_eps'" in out.stdout + out.stderr  # train.py tees stderr to stdout
    assert not (tmp_path / "run0" / "done").exists()


def test_a_malformed_hparams_argument_is_one_line_from_the_train_script_process(tmp_path):
    out = run_python(["-m", "domainbed.scripts.train",
                      *train_args(tmp_path, 0, "LPA", "{lpa_eps: 0.2}", [])], cwd=tmp_path)
    assert out.returncode == 1
    text = out.stdout + out.stderr  # train.py tees stderr to stdout, after its own printout
    assert "Traceback" not in text and "JSONDecodeError" not in text, text[-3000:]
    assert text.strip().splitlines()[-1:] == [
        """train: --hparams '{lpa_eps: 0.2}' is not valid JSON (Expecting property name enclosed """
        """in double quotes: line 1 column 2 (char 1)); write one JSON object of names and """
        """values, e.g. --hparams '{"lpa_eps": 0.2}'"""], text[-3000:]
    assert not (tmp_path / "run0" / "done").exists()


def test_a_non_finite_loss_ends_the_train_script_non_zero_without_done(tmp_path):
    out = run_python(["-m", "domainbed.scripts.train",
                      *train_args(tmp_path, 0, "LPA", {"lr": 1e30}, ["--steps", "3"])],
                     cwd=tmp_path)
    assert out.returncode != 0
    text = out.stdout + out.stderr
    assert "NonFiniteLossError" in text and "the training loss is nan at step 1" in text, text[-3000:]
    assert "lr=1e+30" in text
    assert not (tmp_path / "run0" / "done").exists()
