"""The real DomainBed scripts, in fresh interpreters started outside the repository."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest

from conftest import requires_domainbed, run_python

pytestmark = [requires_domainbed, pytest.mark.slow]


def read_results(out_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (out_dir / "results.jsonl").read_text().splitlines()]


def train(cwd, out_dir, algorithm="LPA", dataset="RotatedDigits", steps=3, env=None, hparams=None,
          extra=()):
    args = ["-m", "domainbed.scripts.train", "--dataset", dataset, "--algorithm", algorithm,
            "--data_dir", str(cwd), "--output_dir", str(out_dir), "--steps", str(steps),
            "--checkpoint_freq", str(steps), "--test_envs", "0", "--skip_model_save", *extra]
    if hparams:
        args += ["--hparams", json.dumps(hparams)]
    return run_python(args, cwd=cwd, env=env)


def test_train_script_sees_our_algorithm_and_dataset_through_autoload(tmp_path):
    out = train(tmp_path, tmp_path / "run")
    assert out.returncode == 0, out.stderr[-2000:]
    assert (tmp_path / "run" / "done").exists()
    last = read_results(tmp_path / "run")[-1]
    assert {"rel_perturbation", "clean_loss", "perturbed_loss", "env0_in_acc"} <= set(last)
    assert last["hparams"]["perturb_layer"] == "default" and last["hparams"]["lr"] == 1e-3


def test_without_autoload_domainbed_does_not_know_our_names(tmp_path):
    off = {"LPA_DOMAINBED_AUTOLOAD": "0"}
    out = train(tmp_path, tmp_path / "a", env=off)  # our dataset: train.py's bare error
    assert out.returncode != 0 and "raise NotImplementedError" in out.stdout + out.stderr
    out = train(tmp_path, tmp_path / "b", dataset="Debug28", env=off, hparams={"batch_size": 4})
    assert out.returncode != 0 and "Algorithm not found: LPA" in out.stderr + out.stdout


@pytest.mark.parametrize("dataset", ["Debug28", "Debug224"])
def test_every_algorithm_trains_through_the_train_script(dataset, tmp_path, torch_home,
                                                          monkeypatch):
    import sys

    from lpa_domainbed.algorithms import load
    from lpa_domainbed.tools.launchers.local_parallel import local_parallel_launcher

    # Debug224 builds DomainBed's ResNet: ResNet-18 with the random weights of torch_home
    monkeypatch.setenv("TORCH_HOME", str(torch_home))
    hparams = json.dumps({"batch_size": 4, "resnet18": True, "resnet50_augmix": False})
    commands = [
        f"{sys.executable} -m domainbed.scripts.train --dataset {dataset} --algorithm {name} "
        f"--data_dir {tmp_path} --output_dir {tmp_path / name} --steps 2 --checkpoint_freq 2 "
        f"--skip_model_save --hparams '{hparams}'"
        for name in load()]
    failed = local_parallel_launcher(commands, max_jobs=2)
    assert failed == []
    for name, cls in load().items():
        assert (tmp_path / name / "done").exists(), name
        reported = "swad_val_loss" if getattr(cls, "WRAPPED", None) else "rel_perturbation"
        assert reported in read_results(tmp_path / name)[-1], name


def test_a_new_algorithm_in_a_few_lines_trains_through_the_train_script(tmp_path):
    # The worked example of docs/base_class.md, registered in a file of the user's own.
    (tmp_path / "my_noise.py").write_text(textwrap.dedent('''
        import torch
        from lpa_domainbed.algorithms.base import ActivationPerturbation
        from lpa_domainbed.hparams import HParam, log_uniform

        class GaussianNoise(ActivationPerturbation):
            """a~ = a + sigma |a| / sqrt(d) n,  n ~ N(0, I): random, sample-level."""
            @classmethod
            def hparam_specs(cls, dataset=None):
                return super().hparam_specs(dataset) + [HParam("noise_sigma", 0.1, log_uniform(-2, 0))]

            def perturb(self, a, y, step, tail, state):
                scale = a.flatten(1).norm(dim=1) / a[0].numel() ** 0.5
                return a + self.hparams["noise_sigma"] * scale.view(-1, *[1] * (a.dim() - 1)) * torch.randn_like(a)
        '''))
    body = (tmp_path / "my_noise.py").read_text().strip().splitlines()
    assert len(body) <= 15
    (tmp_path / "run_noise.py").write_text(textwrap.dedent('''
        import runpy, sys
        from my_noise import GaussianNoise
        from lpa_domainbed.algorithms import ALGORITHMS
        ALGORITHMS.add("GaussianNoise", GaussianNoise)
        import lpa_domainbed; lpa_domainbed.register()
        sys.argv = ["train"] + sys.argv[1:]
        runpy.run_module("domainbed.scripts.train", run_name="__main__")
        '''))
    out = run_python(["run_noise.py", "--dataset", "RotatedDigits", "--algorithm",
                      "GaussianNoise", "--data_dir", ".", "--output_dir", "run", "--steps", "3",
                      "--checkpoint_freq", "3", "--skip_model_save"], cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-2000:]
    last = read_results(tmp_path / "run")[-1]
    assert last["hparams"]["noise_sigma"] == 0.1 and last["rel_perturbation"] > 0


def test_builtin_erm_is_untouched_hparams_and_a_seeded_run(tmp_path):
    code = ("import json; from domainbed import hparams_registry as h; print(json.dumps("
            "[h.default_hparams('ERM', d) for d in ('RotatedMNIST', 'PACS', 'Debug28')] + "
            "[h.random_hparams('ERM', d, s) for d in ('RotatedMNIST', 'PACS') for s in (1, 7)]"
            ", default=float))")
    on = run_python(["-c", code], cwd=tmp_path)
    off = run_python(["-c", code], cwd=tmp_path, env={"LPA_DOMAINBED_AUTOLOAD": "0"})
    assert on.returncode == off.returncode == 0
    assert json.loads(on.stdout) == json.loads(off.stdout)

    runs = {}
    for label, env in (("on", {}), ("off", {"LPA_DOMAINBED_AUTOLOAD": "0"})):
        out = train(tmp_path, tmp_path / label, algorithm="ERM", dataset="Debug28", steps=3,
                    env=env, hparams={"batch_size": 4}, extra=["--seed", "3"])
        assert out.returncode == 0, out.stderr[-2000:]
        runs[label] = [{k: v for k, v in r.items() if k not in ("step_time", "args")}
                       for r in read_results(tmp_path / label)]
    assert runs["on"] == runs["off"]


def test_tiny_sweep_through_domainbeds_sweep_script_then_collect_results(tmp_path):
    out_dir = tmp_path / "sweep"
    args = ["-m", "domainbed.scripts.sweep", "launch", "--datasets", "RotatedDigits",
            "--algorithms", "ERM", "LPA", "--data_dir", str(tmp_path), "--output_dir",
            str(out_dir), "--command_launcher", "local_parallel", "--n_trials", "1",
            "--n_hparams", "1", "--steps", "5", "--single_test_envs", "--skip_confirmation"]
    out = run_python(args, cwd=tmp_path, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "8/8 finished (0 failed)" in out.stdout
    assert len(list(out_dir.glob("*/done"))) == 8
    again = run_python(args, cwd=tmp_path)  # resumes: nothing left to launch
    assert "About to launch 0 jobs." in again.stdout
    collect = run_python(["-m", "domainbed.scripts.collect_results", "--input_dir",
                          str(out_dir)], cwd=tmp_path)
    assert collect.returncode == 0, collect.stderr[-2000:]
    assert "Dataset: RotatedDigits" in collect.stdout
    assert "LPA" in collect.stdout and "ERM" in collect.stdout

    from lpa_domainbed.tools import tables

    result = tables.make_tables([str(out_dir)], "tiny", out_root=tmp_path / "results")
    cells = result.cells[result.cells.selection == "training_domain_validation"]
    assert set(cells.algorithm) == {"ERM", "LPA"}
    assert cells["mean"].between(0, 100).all() and (cells.n_trials == 1).all()
    assert (tmp_path / "results" / "tiny" / "RotatedDigits_training_domain_validation.png").is_file()
