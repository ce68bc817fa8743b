"""Declarative sweeps and the sweep command line."""

from pathlib import Path

import pytest

from conftest import REPO, requires_domainbed
from lpa_domainbed.tools import sweeps


def test_every_sweep_file_loads_and_names_known_arguments():
    names = sweeps.known_sweeps()
    assert {"demo", "table2", "study"} <= set(names)
    package = Path(sweeps.__file__).parent
    # in a checkout the source files; installed (make test-py310), the packaged copies
    expected = REPO / "sweeps" if package == REPO / "lpa_domainbed" / "tools" else package / "sweep_files"
    assert sweeps.SWEEPS_DIR == expected
    for name in names:
        assert sweeps.load_sweep(name, check_registry=False).name == name
    table2 = sweeps.load_sweep("table2", check_registry=False)
    assert table2.datasets == ["PACS", "VLCS", "OfficeHome", "TerraIncognita"]
    assert table2.n_trials == 3 and table2.single_test_envs
    assert {"ERM", "DANN", "CORAL", "Mixup", "RSC", "LPA", "LPL"} <= set(table2.algorithms)


def test_unknown_sweep_and_unknown_keys_are_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="known sweeps"):
        sweeps.load_sweep("nope")
    bad = tmp_path / "bad.toml"
    bad.write_text('name = "x"\ndatasets = ["PACS"]\nalgorithms = ["ERM"]\nn_trails = 3\n')
    with pytest.raises(ValueError, match="unknown keys \\['n_trails'\\]"):
        sweeps.load_sweep(str(bad), check_registry=False)


def test_the_command_is_domainbeds_sweep_with_the_files_arguments():
    cmd = sweeps.sweep_command(sweeps.load_sweep("table2", check_registry=False), "launch",
                               "D", "O", "local", python="python")
    assert cmd[:4] == ["python", "-m", "domainbed.scripts.sweep", "launch"]
    assert cmd[cmd.index("--n_hparams") + 1] == "20" and "--single_test_envs" in cmd
    assert cmd[cmd.index("--command_launcher") + 1] == "local"


@requires_domainbed
@pytest.mark.torch
def test_every_sweep_file_names_registered_algorithms_datasets_and_launchers():
    import dataclasses

    from lpa_domainbed.algorithms import load

    for name in sweeps.known_sweeps():
        spec = sweeps.load_sweep(name, check_registry=False)
        if "LPA_BF16" not in load():  # registered once LPA has lpa_search_precision
            spec = dataclasses.replace(spec, algorithms=[a for a in spec.algorithms
                                                         if a != "LPA_BF16"])
        sweeps.check_names(spec)  # raises SweepFileError on an unknown name


def test_packaged_reference_is_the_committed_one():
    packaged = REPO / "lpa_domainbed" / "tools" / "data" / "published_results.csv"
    assert packaged.read_bytes() == (REPO / "results" / "reference" /
                                     "published_results.csv").read_bytes()


def test_output_names_must_be_plain():
    from lpa_domainbed.tools.safe_output import OutputError, check_name

    assert check_name("demo") == "demo" and check_name("study_v2.1") == "study_v2.1"
    for bad in ("../../escape", "/abs/path", "a/b", "..", "", ".hidden"):
        with pytest.raises(OutputError, match="--out_dir"):
            check_name(bad)


@requires_domainbed
@pytest.mark.torch
def test_dry_run_lists_jobs_and_missing_data_is_an_error(tmp_path, capsys):
    from lpa_domainbed.tools import cli

    out_dir = tmp_path / "out"
    assert cli.main(["sweep", "table2", "--data_dir", str(tmp_path), "--output_dir",
                     str(out_dir), "--dry_run"]) == 0
    printed = capsys.readouterr().out
    assert "13440 jobs (13440 not launched)" in printed and "PACS: no directory" in printed
    assert not out_dir.exists()  # a dry run creates nothing
    assert cli.main(["sweep", "table2", "--data_dir", str(tmp_path), "--output_dir",
                     str(out_dir)]) == 2
    assert "domainbed.scripts.download" in capsys.readouterr().err


@requires_domainbed
@pytest.mark.torch
def test_package_algorithms_expand_in_registry_order():
    from lpa_domainbed.algorithms import load

    package = [n for n, cls in load().items() if not getattr(cls, "STUDY_VARIANT", False)]
    assert sweeps.load_sweep("demo").expanded_algorithms() == ["ERM", *package]
    assert package[:2] == ["LPA", "LPL"] and "LPA_Conjecture" not in package


@pytest.mark.torch  # the tables read DomainBed's model selection
def test_table2_pins_the_backbone_of_the_published_numbers():
    """torchvision's ImageNet ResNet-50, as behind every source of the reference comparison
    (DomainBed's default would be timm's resnet50.ram_in1k)."""
    import pandas as pd

    from lpa_domainbed.tools.tables_reference import (comparison_markdown,
                                                      compare_with_published)

    table2 = sweeps.load_sweep("table2", check_registry=False)
    assert table2.hparams == {"resnet50_augmix": False} and "resnet18" not in table2.hparams
    assert "torchvision's ResNet-50" in Path(table2.path).read_text()
    reference = pd.read_csv(REPO / "results" / "reference" / "published_results.csv")
    assert reference.backbone.str.contains("ResNet-50 (ImageNet", regex=False).all()
    assert reference.backbone.str.contains("torchvision", regex=False).all()
    ours = pd.DataFrame([{"selection": "training_domain_validation", "dataset": "PACS",
                          "algorithm": "ERM", "mean": 85.0}])
    comparison = compare_with_published(ours, reference)
    assert set(comparison["published backbone"]) == {
        "torchvision ResNet-50 (ImageNet)", "ResNet-50 (ImageNet; DomainBed's torchvision network)"}
    assert "torchvision's ResNet-50 pretrained on ImageNet" in comparison_markdown(comparison)
