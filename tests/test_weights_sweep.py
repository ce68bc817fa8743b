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
