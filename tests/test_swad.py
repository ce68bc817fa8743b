"""SWAD on top of an algorithm: the average is the mean of the iterates in the window, it
survives a checkpoint, and every wrapped name trains through DomainBed's train script."""

from __future__ import annotations

import json

import pytest

from conftest import requires_domainbed, run_python
from test_algorithms import batches, make

pytestmark = requires_domainbed
torch = pytest.importorskip("torch")


class Split(torch.utils.data.Dataset):
    def __init__(self, n=10, seed=0):
        g = torch.Generator().manual_seed(seed)
        self.x, self.y = torch.randn(n, 64, generator=g), torch.arange(n) % 4

    def __len__(self):
        return len(self.y)

    def __getitem__(self, i):
        return self.x[i], self.y[i]


def swad(name="SWAD", every=2, total=12, **hparams):
    alg = make(name, swad_n_converge=2, swad_n_tolerance=3, **hparams)
    alg.validate_with([Split(seed=1), Split(seed=2)], every=every, total_steps=total)
    return alg


def flat(alg):
    return torch.cat([t.flatten() for t in alg._floats(alg.algorithm)])


def test_the_average_is_the_mean_of_the_iterates_in_the_window():
    alg = swad(lr=1e-2)
    iterates, losses = [], []
    for step in range(12):
        out = alg.update(batches(seed=step))
        iterates.append(flat(alg).clone())
        if "swad_val_loss" in out:
            losses.append(out["swad_val_loss"])
    # segments end at steps 0, 2, 4, ..., 10 and at the last step 11
    ends = [0, 2, 4, 6, 8, 10, 11]
    assert len(losses) == len(ends)
    window = alg.window
    assert window.converged  # the hand check below needs a window
    first = 0 if window.start == 0 else ends[window.start - 1] + 1
    expected = torch.stack(iterates[first:ends[window.end] + 1]).mean(0)
    averaged = torch.cat([t.flatten() for t in alg._floats(alg.average)])
    assert torch.allclose(averaged, expected, atol=1e-6)
    assert int(alg.averaged_count) == ends[window.end] + 1 - first
    x, _ = batches(seed=20)[0]
    assert torch.equal(alg.predict(x), alg.average.predict(x))


@pytest.mark.skipif(not torch.cuda.is_available(),
                    reason="no CUDA device: where the average lives needs one (make gpu-check)")
def test_on_a_gpu_the_average_stays_on_the_cpu_and_predict_uses_it():
    """Training holds one extra copy of the weights on the device (the segment sum)."""
    alg = swad(lr=1e-2).to("cuda")
    assert all(t.is_cuda for t in alg.segment)
    for step in range(12):
        alg.update([(x.cuda(), y.cuda()) for x, y in batches(seed=step)])
        assert not any(t.is_cuda for t in alg._floats(alg.average))
    assert int(alg.averaged_count) > 0
    x, _ = batches(seed=20)[0]
    on_gpu = alg.predict(x.cuda()).cpu()
    assert torch.allclose(on_gpu, alg.average.predict(x), atol=1e-5)
    alg.update([(x.cuda(), y.cuda()) for x, y in batches(seed=21)])
    assert alg._device_average == {}  # dropped for training


def test_before_the_window_opens_predict_is_the_online_model():
    alg = swad()
    alg.update(batches())
    x, _ = batches(seed=3)[0]
    assert int(alg.averaged_count) == 0
    assert torch.equal(alg.predict(x), alg.algorithm.predict(x))


@pytest.mark.parametrize("name", ["SWAD", "LPA_SWAD", "ManifoldMixup_SWAD", "CORAL_SWAD"])
def test_a_reloaded_model_predicts_with_the_same_average_and_continues(name):
    alg = swad(name, total=8)  # the last step settles the window (or takes the last segment)
    for step in range(8):
        alg.update(batches(seed=step))
    state = alg.state_dict()
    again = swad(name, total=8)
    again.load_state_dict(state)
    x, _ = batches(seed=30)[0]
    alg.eval(), again.eval()
    assert int(again.averaged_count) == int(alg.averaged_count) > 0
    assert torch.equal(alg.predict(x), again.predict(x))
    assert vars(again.window) == vars(alg.window)
    alg.train(), again.train()
    torch.manual_seed(0)
    assert again.steps_done == alg.steps_done == 8
    assert [t.shape for t in again.segment] == [t.shape for t in alg.segment]


def test_names_that_cannot_be_wrapped_say_why():
    from domainbed import algorithms

    with pytest.raises(NotImplementedError, match="SWAD on top of 'NoSuchAlg'"):
        algorithms.get_algorithm_class("NoSuchAlg_SWAD")
    with pytest.raises(ValueError, match="wrap an algorithm once"):
        algorithms.get_algorithm_class("LPA_SWAD_SWAD")


def test_outside_the_train_script_the_missing_splits_are_named():
    from lpa_domainbed.algorithms.swad_source import TrainScriptChanged

    alg = make("SWAD")
    with pytest.raises(TrainScriptChanged, match=r"validate_with\(\.\.\.\)"):
        alg.update(batches())


PLUGIN = """
from lpa_domainbed.algorithms import ALGORITHMS
from lpa_domainbed.algorithms.dropout import Dropout

@ALGORITHMS.register("MyDropout")
class MyDropout(Dropout):
    HPARAM_DEFAULTS = {"dropout_p": 0.2}
"""


@pytest.mark.slow
def test_every_wrapped_name_trains_through_domainbeds_train_script(tmp_path):
    (tmp_path / "my_plugin.py").write_text(PLUGIN)
    for name in ["SWAD", "LPA_SWAD", "CORAL_SWAD", "ManifoldMixup_SWAD", "MyDropout_SWAD"]:
        out = tmp_path / name
        done = run_python(
            ["-m", "domainbed.scripts.train", "--dataset", "RotatedDigits", "--algorithm",
             name, "--steps", "9", "--checkpoint_freq", "2", "--data_dir", str(tmp_path),
             "--output_dir", str(out), "--test_envs", "0",
             "--hparams", json.dumps({"swad_n_converge": 2, "swad_n_tolerance": 2})],
            cwd=tmp_path, env={"LPA_DOMAINBED_PLUGINS": str(tmp_path / "my_plugin.py")})
        assert done.returncode == 0, (name, done.stderr[-2000:])
        records = [json.loads(r) for r in (out / "results.jsonl").read_text().splitlines()]
        assert (out / "done").exists() and len(records) == 5, name  # steps 0, 2, 4, 6, 8
        assert all("swad_val_loss" in r for r in records), name
        assert records[-1]["hparams"]["swad_n_converge"] == 2
