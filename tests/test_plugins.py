"""User plugins reach DomainBed's unmodified sweep; a broken module costs one warning only.

Every test starts fresh interpreters of this environment (``python`` first on PATH, since
DomainBed's ``local`` launcher runs ``python``) against the real DomainBed.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from conftest import REPO, requires_domainbed, run_python

pytestmark = [requires_domainbed, pytest.mark.slow]

NOISE = textwrap.dedent('''
    import torch
    from lpa_domainbed.algorithms import ALGORITHMS
    from lpa_domainbed.algorithms.base import ActivationPerturbation
    from lpa_domainbed.hparams import HParam, uniform

    @ALGORITHMS.register("{name}")
    class {name}(ActivationPerturbation):
        @classmethod
        def hparam_specs(cls, dataset=None):
            return super().hparam_specs(dataset) + [HParam("{hparam}", 0.1, uniform(0, 1))]

        def perturb(self, a, y, step, tail, state):
            return a + self.hparams["{hparam}"] * a.detach().std() * torch.randn_like(a)
    ''')


def sweep(tmp_path, out_dir, algorithms, launcher, env):
    args = ["-m", "domainbed.scripts.sweep", "launch", "--datasets", "RotatedDigits",
            "--algorithms", *algorithms, "--data_dir", str(tmp_path), "--output_dir",
            str(out_dir), "--command_launcher", launcher, "--n_trials", "1", "--n_hparams", "1",
            "--steps", "5", "--single_test_envs", "--skip_confirmation"]
    return run_python(args, cwd=tmp_path, env=env, timeout=600)


def collect(out_dir, cwd, env):
    out = run_python(["-m", "domainbed.scripts.collect_results", "--input_dir", str(out_dir)],
                     cwd=cwd, env=env)
    assert out.returncode == 0, out.stderr[-2000:]
    return out.stdout


def hparams_of(out_dir: Path, algorithm: str) -> dict:
    for path in out_dir.glob("*/results.jsonl"):
        record = json.loads(path.read_text().splitlines()[-1])
        if record["args"]["algorithm"] == algorithm:
            return record["hparams"]
    raise AssertionError(f"no run of {algorithm} in {out_dir}")


def test_env_var_plugin_is_swept_by_domainbeds_local_launcher(tmp_path):
    (tmp_path / "my_noise.py").write_text(NOISE.format(name="EnvNoise", hparam="env_sigma"))
    env = {"LPA_DOMAINBED_PLUGINS": "my_noise.py"}  # relative: made absolute for the jobs
    out = sweep(tmp_path, tmp_path / "sweep", ["EnvNoise"], "local", env)
    assert out.returncode == 0, out.stderr[-2000:]
    assert len(list((tmp_path / "sweep").glob("*/done"))) == 4, out.stdout[-2000:]
    assert hparams_of(tmp_path / "sweep", "EnvNoise")["env_sigma"] == 0.1
    assert "EnvNoise" in collect(tmp_path / "sweep", tmp_path, env)


def test_entry_point_plugin_of_an_installed_distribution_is_swept(tmp_path):
    project = tmp_path / "project"
    (project / "ep_algs").mkdir(parents=True)
    (project / "ep_algs" / "__init__.py").write_text(
        NOISE.format(name="EntryNoise", hparam="entry_sigma"))
    (project / "pyproject.toml").write_text(textwrap.dedent('''
        [build-system]
        requires = ["setuptools"]
        build-backend = "setuptools.build_meta"

        [project]
        name = "ep-algs"
        version = "0.1"

        [project.entry-points."lpa_domainbed.plugins"]
        ep_algs = "ep_algs"

        [tool.setuptools]
        packages = ["ep_algs"]
        '''))
    target = tmp_path / "site"
    pip = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps",
                          "--no-build-isolation", "--no-index", "--target", str(target),
                          str(project)], capture_output=True, text=True, timeout=300)
    assert pip.returncode == 0, pip.stderr[-2000:]
    env = {"PYTHONPATH": str(target), "LPA_DOMAINBED_PLUGINS": ""}
    out = sweep(tmp_path, tmp_path / "sweep", ["EntryNoise"], "local_parallel", env)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "4/4 finished (0 failed)" in out.stdout
    assert hparams_of(tmp_path / "sweep", "EntryNoise")["entry_sigma"] == 0.1
    assert "EntryNoise" in collect(tmp_path / "sweep", tmp_path, env)


def train(tmp_path, algorithm, env, out="run"):
    return run_python(["-m", "domainbed.scripts.train", "--dataset", "RotatedDigits",
                       "--algorithm", algorithm, "--data_dir", str(tmp_path), "--output_dir",
                       str(tmp_path / out), "--steps", "2", "--checkpoint_freq", "2",
                       "--skip_model_save"], cwd=tmp_path, env=env)


def warnings(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("lpa_domainbed:")]


def test_a_broken_plugin_costs_one_warning_and_is_named_when_asked_for(tmp_path):
    (tmp_path / "broken_algs.py").write_text(
        "from lpa_domainbed.algorithms import ALGORITHMS\n\n"
        "@ALGORITHMS.register(\"BrokenAlg\")\nclass BrokenAlg(:\n    pass\n")
    (tmp_path / "good_algs.py").write_text(NOISE.format(name="GoodNoise", hparam="good_sigma"))
    env = {"LPA_DOMAINBED_PLUGINS": f"{tmp_path / 'broken_algs.py'},good_algs"}
    listed = run_python(["-c", "import domainbed.algorithms as A; print(A.ALGORITHMS)"],
                        cwd=tmp_path, env={**env, "PYTHONPATH": str(tmp_path)})
    assert "'GoodNoise'" in listed.stdout and "'LPA'" in listed.stdout, listed.stderr
    [warning] = warnings(listed.stderr)
    assert "module 'broken_algs'" in warning and "SyntaxError" in warning

    erm = train(tmp_path, "ERM", env)
    assert erm.returncode == 0 and (tmp_path / "run" / "done").exists(), erm.stderr[-2000:]
    [warning] = warnings(erm.stderr)  # python -m puts the cwd first: good_algs imports
    assert "module 'broken_algs'" in warning

    asked = train(tmp_path, "BrokenAlg", env, out="broken")
    assert asked.returncode != 0
    assert re.search(r"Algorithm not found: BrokenAlg\. BrokenAlg comes from module "
                     r"'broken_algs' \(LPA_DOMAINBED_PLUGINS=.*\) failed to import: SyntaxError",
                     asked.stdout + asked.stderr), asked.stderr[-2000:]


def test_a_syntax_error_in_a_package_module_leaves_erm_and_the_others_working(tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(REPO / "lpa_domainbed", copy / "lpa_domainbed",
                    ignore=shutil.ignore_patterns("__pycache__"))
    dsu = copy / "lpa_domainbed" / "algorithms" / "dsu.py"
    dsu.write_text(dsu.read_text() + "\ndef broken(:\n")
    env = {"PYTHONPATH": str(copy)}  # ahead of the installed package
    erm = train(tmp_path, "ERM", env)
    assert erm.returncode == 0 and (tmp_path / "run" / "done").exists(), erm.stderr[-2000:]
    [warning] = warnings(erm.stderr)
    assert "module 'lpa_domainbed.algorithms.dsu' (part of lpa_domainbed)" in warning
    assert "SyntaxError" in warning

    asked = train(tmp_path, "DSU", env, out="dsu")
    assert asked.returncode != 0
    assert ("Algorithm not found: DSU. DSU comes from module 'lpa_domainbed.algorithms.dsu' "
            "(part of lpa_domainbed) failed to import: SyntaxError") in asked.stdout + asked.stderr


def test_the_docs_example_runs_from_my_algs_to_collect_results(tmp_path):
    doc = (REPO / "docs" / "base_class.md").read_text()
    section = doc.split("## Your own algorithms, from a module to a sweep")[1]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    commands = re.search(r"```bash\n(.*?)```", section, re.S).group(1)
    (tmp_path / "my_algs.py").write_text(code)
    tiny = (commands.replace("--n_hparams 5", "--n_hparams 1").replace("--n_trials 3",
                                                                         "--n_trials 1")
            .replace("--skip_confirmation", "--skip_confirmation --steps 3"))
    script = "set -e\n" + tiny
    out = run_python(["-c", "import subprocess, sys; sys.exit(subprocess.call(['bash', '-c', "
                            "sys.argv[1]]))", script], cwd=tmp_path, timeout=900)
    assert out.returncode == 0, out.stderr[-2000:]
    sweep_dir = tmp_path / "sweeps_output" / "mine"
    assert len(list(sweep_dir.glob("*/done"))) == 12, out.stdout[-2000:]
    for name in ("GaussianNoise", "FeatureDropout", "SmallLR_ERM"):
        assert name in out.stdout
    table = (tmp_path / "results" / "mine" / "training_domain_validation.md").read_text()
    for name in ("GaussianNoise", "FeatureDropout", "SmallLR_ERM"):
        assert f"| {name}" in table, table
    assert hparams_of(sweep_dir, "FeatureDropout")["perturb_layer"] == "features"
    assert hparams_of(sweep_dir, "SmallLR_ERM")["lr_scale"] == 0.5
