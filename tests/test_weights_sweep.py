"""``lpa-domainbed weights`` and the sweep's weights preflight, on fake caches (no network):
a sweep whose weights are missing is refused before anything launches, a dry run reports it."""

from __future__ import annotations

import pytest

from conftest import HAVE_DOMAINBED, NO_DOMAINBED, RESNET50, TIMM

pytestmark = [pytest.mark.torch, pytest.mark.skipif(not HAVE_DOMAINBED, reason=NO_DOMAINBED)]


def _sweep(tmp_path, datasets='["PACS"]', hparams="{resnet50_augmix = false}"):
    path = tmp_path / "one.toml"
    path.write_text(f'name = "one"\ndatasets = {datasets}\nalgorithms = ["ERM", "LPA"]\n'
                    f"n_trials = 1\nn_hparams = 1\nhparams = {hparams}\n")
    return str(path)


def test_weights_lists_table2s_one_file_then_finds_it(weight_caches, capsys):
    from lpa_domainbed.tools import cli

    assert cli.main(["weights", "table2"]) == 1
    out = capsys.readouterr().out
    assert "MISSING  torchvision ResNet-50 (ImageNet) for PACS, VLCS, OfficeHome, " \
           "TerraIncognita" in out and str(weight_caches.torch / RESNET50) in out
    assert f"curl -L -o {RESNET50} https://download.pytorch.org/models/{RESNET50}" in out
    assert f"then copy the file {RESNET50} into {weight_caches.torch}/" in out
    assert "timm" not in out  # table2 pins torchvision's ResNet-50
    weight_caches.add(RESNET50)
    assert cli.main(["weights", "table2"]) == 0
    out = capsys.readouterr().out
    assert "present  torchvision ResNet-50" in out and "every file is present" in out


def test_weights_with_domainbeds_default_backbone_and_small_inputs(weight_caches, tmp_path,
                                                                   capsys):
    from lpa_domainbed.tools import cli

    sweep = _sweep(tmp_path, '["PACS", "RotatedDigits", "StyleDigits", "Debug28"]',
                   "{resnet18 = true}")
    assert cli.main(["weights", sweep]) == 1
    out = capsys.readouterr().out
    assert out.startswith("warning: 'resnet18': true has no effect while 'resnet50_augmix'")
    assert "none needed for RotatedDigits, StyleDigits, Debug28" in out
    assert "MISSING  timm resnet50.ram_in1k" in out and str(weight_caches.hub / TIMM) in out
    assert f"then copy the folder {TIMM} into {weight_caches.hub}/" in out
    assert "2 missing" in out and "HF_HUB_OFFLINE unset" in out


@pytest.fixture
def pacs_tree(tmp_path):
    (tmp_path / "data" / "PACS").mkdir(parents=True)
    return tmp_path / "data"


def test_a_sweep_with_missing_weights_is_refused_before_it_launches(weight_caches, pacs_tree,
                                                                    tmp_path, monkeypatch,
                                                                    capsys):
    from lpa_domainbed.tools import cli

    launched = []
    monkeypatch.setattr(cli, "run_forwarding_signals", launched.append)
    argv = ["sweep", _sweep(tmp_path), "--data_dir", str(pacs_tree), "--output_dir",
            str(tmp_path / "out")]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert "MISSING  torchvision ResNet-50" in err and f"curl -L -o {RESNET50}" in err
    assert launched == [] and not (tmp_path / "out").exists()

    assert cli.main([*argv, "--dry_run"]) == 0  # reported, not refused
    out = capsys.readouterr().out
    assert "warning: pretrained weights of sweep 'one'" in out and "1 missing" in out
    assert launched == []

    weight_caches.add(RESNET50)  # placed as told: the sweep launches
    cli.main(argv)
    assert [cmd[cmd.index("domainbed.scripts.sweep") + 1] for cmd in launched] == ["launch"]


def test_the_dry_run_reports_present_weights_and_no_weights_for_small_inputs(
        weight_caches, pacs_tree, tmp_path, capsys):
    from lpa_domainbed.tools import cli

    weight_caches.add(RESNET50)
    argv = ["sweep", _sweep(tmp_path), "--data_dir", str(pacs_tree), "--output_dir",
            str(tmp_path / "out"), "--dry_run"]
    assert cli.main(argv) == 0
    out = capsys.readouterr().out
    assert "present  torchvision ResNet-50" in out and "warning" not in out
    argv[1] = _sweep(tmp_path, '["RotatedDigits"]', "{resnet18 = true}")
    assert cli.main(argv) == 0
    assert "pretrained weights" not in capsys.readouterr().out  # nothing to load


def test_the_dry_run_lists_each_job_with_its_trial_seed(tmp_path, capsys):
    from lpa_domainbed.tools import cli

    sweep = tmp_path / "trials.toml"
    sweep.write_text('name = "trials"\ndatasets = ["RotatedDigits"]\nalgorithms = ["ERM"]\n'
                     "n_trials = 3\nn_hparams = 1\n")
    assert cli.main(["sweep", str(sweep), "--data_dir", str(tmp_path), "--output_dir",
                     str(tmp_path / "out"), "--dry_run"]) == 0
    lines = [line.strip() for line in capsys.readouterr().out.splitlines()
             if line.startswith("  Not launched: ")]
    assert len(lines) == len(set(lines)) == 12  # 4 held-out domains x 3 trials
    for trial in range(3):
        assert sum(f"hparams_seed 0 trial_seed {trial} ->" in line for line in lines) == 4
    assert "Not launched: RotatedDigits ERM test_envs 2 hparams_seed 0 trial_seed 1 -> " \
        in "\n".join(lines)


PACS_DOMAINS = ("art_painting", "cartoon", "photo", "sketch")
PACS_CLASSES = ("dog", "elephant", "giraffe", "guitar", "horse", "house", "person")


def test_a_three_step_lpa_job_on_a_fake_pacs_tree_trains_once_its_weights_are_placed(
        weight_caches, tmp_path, capsys):
    """Offline, the Table 2 path end to end: the dry run names the missing file and where it
    goes; with a ResNet-50 checkpoint placed there (random weights in torchvision's file name:
    nothing is downloaded), DomainBed's train script runs 3 LPA steps on PACS and writes done."""
    import json

    import numpy as np
    import torch
    import torchvision
    from PIL import Image

    from conftest import run_python
    from lpa_domainbed.tools import cli

    rng = np.random.RandomState(0)
    for domain in PACS_DOMAINS:
        for label in PACS_CLASSES:
            folder = tmp_path / "data" / "PACS" / domain / label
            folder.mkdir(parents=True)
            for i in range(2):
                pixels = rng.randint(0, 256, (32, 32, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(folder / f"{i}.png")
    argv = ["sweep", _sweep(tmp_path), "--data_dir", str(tmp_path / "data"), "--output_dir",
            str(tmp_path / "sweep"), "--dry_run"]
    assert cli.main(argv) == 0
    told = capsys.readouterr().out
    assert "MISSING  torchvision ResNet-50" in told and RESNET50 in told

    where = weight_caches.torch / RESNET50
    assert str(where.parent) in told  # the dry run says where the file goes
    where.parent.mkdir(parents=True, exist_ok=True)
    torch.save(torchvision.models.resnet50().state_dict(), where)
    out_dir = tmp_path / "job"
    hparams = {"resnet50_augmix": False, "batch_size": 2}
    done = run_python(["-m", "domainbed.scripts.train", "--dataset", "PACS", "--algorithm",
                       "LPA", "--data_dir", str(tmp_path / "data"), "--output_dir",
                       str(out_dir), "--test_envs", "0", "--steps", "3", "--checkpoint_freq",
                       "3", "--skip_model_save", "--hparams", json.dumps(hparams)],
                      cwd=tmp_path, env={"TORCH_HOME": str(tmp_path / "torch"),
                                         "HF_HUB_OFFLINE": "1"}, timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert (out_dir / "done").exists()
    last = json.loads((out_dir / "results.jsonl").read_text().splitlines()[-1])
    assert last["step"] == 2 and all(0 <= last[f"env{i}_in_acc"] <= 1 for i in range(4))
