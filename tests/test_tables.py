"""Tests for lpa_domainbed.tools.tables (result tables of DomainBed sweeps)."""

import json
import math
import os
import re
import shutil
import subprocess
import sys

import pytest

pytest.importorskip("domainbed", reason="DomainBed checkout not importable; run make setup")

import domainbed  # noqa: E402

from lpa_domainbed.tools import tables  # noqa: E402

CMNIST_ENVS = ["+90%", "+80%", "-90%"]  # ColoredMNIST.ENVIRONMENTS


# ----------------------------------------------------------------------------- fabricated sweeps
def write_job(root, job, dataset, algorithm, test_env, trial, iid_acc, oracle_acc, n_envs=3,
              done=True):
    """One DomainBed job (hparams seeds 0 and 1, steps 0 and 100) with a known answer.

    Training-domain validation picks hparams 1 at step 100 (highest train-env out acc) whose
    test-env in acc is ``iid_acc``; the oracle picks hparams 0 (highest test-env out acc at
    the last step) whose test-env in acc is ``oracle_acc``. Every other test acc is 0.2.
    """
    job_dir = root / job
    job_dir.mkdir(parents=True)
    lines = []
    for hparams_seed in (0, 1):
        for step_index, step in enumerate((0, 100)):
            record = {"args": {"dataset": dataset, "algorithm": algorithm,
                               "test_envs": [test_env], "trial_seed": trial,
                               "hparams_seed": hparams_seed, "holdout_fraction": 0.2,
                               "task": "domain_generalization"},
                      "step": step, "epoch": step / 10, "loss": 0.5}
            for env in range(n_envs):
                record[f"env{env}_in_acc"] = 0.7
                record[f"env{env}_out_acc"] = 0.5 + 0.1 * hparams_seed + 0.01 * step_index
            test_in = 0.2
            if step_index == 1:
                test_in = iid_acc if hparams_seed == 1 else oracle_acc
            record[f"env{test_env}_in_acc"] = test_in
            record[f"env{test_env}_out_acc"] = 0.9 - 0.1 * hparams_seed
            lines.append(json.dumps(record))
    (job_dir / "results.jsonl").write_text("\n".join(lines) + "\n")
    (job_dir / "out.txt").write_text("training\n")
    if done:
        (job_dir / "done").write_text("done")
    return job_dir


def write_algorithm(root, dataset, algorithm, base, trial_slope, envs=(0, 1, 2),
                    trials=(0, 1), n_envs=3):
    """Selected accuracy = base + 0.1 * env + trial_slope * trial (oracle: +0.05)."""
    for env in envs:
        for trial in trials:
            acc = base + 0.1 * env + trial_slope * trial
            write_job(root, f"{dataset}_{algorithm}_{env}_{trial}", dataset, algorithm, env,
                      trial, acc, acc + 0.05, n_envs=n_envs)


@pytest.fixture
def sweeps(tmp_path):
    """Two sweep dirs: ColoredMNIST (ERM, Mixup, MyAlg partly) and Debug28 (ERM only)."""
    first, second = tmp_path / "sweep_a", tmp_path / "sweep_b"
    write_algorithm(first, "ColoredMNIST", "ERM", 0.60, 0.02)
    write_algorithm(first, "ColoredMNIST", "Mixup", 0.50, 0.04)
    write_algorithm(first, "ColoredMNIST", "MyAlg", 0.40, 0.02, envs=(0,))
    write_algorithm(first, "ColoredMNIST", "MyAlg", 0.40, 0.02, envs=(1,), trials=(0,))
    write_algorithm(second, "Debug28", "ERM", 0.30, 0.02)
    return [first, second]


def cell(result, selection, dataset, algorithm, test_env):
    rows = result.cells
    match = rows[(rows.selection == selection) & (rows.dataset == dataset)
                 & (rows.algorithm == algorithm) & (rows.test_env == test_env)]
    assert len(match) == 1
    return match.iloc[0]


def overview_cell(result, selection, dataset, algorithm):
    rows = result.overview
    match = rows[(rows.selection == selection) & (rows.dataset == dataset)
                 & (rows.algorithm == algorithm)]
    assert len(match) == 1
    return match.iloc[0]


def test_fabricated_sweep_known_answers(sweeps, tmp_path, capsys):
    result = tables.make_tables(sweeps, "fab", out_root=tmp_path / "results")
    tdv = "training_domain_validation"
    for env, name in enumerate(CMNIST_ENVS):
        erm = cell(result, tdv, "ColoredMNIST", "ERM", name)
        assert erm["mean"] == pytest.approx(61 + 10 * env)
        assert erm["se"] == pytest.approx(100 * 0.01 / math.sqrt(2))
        assert erm["n_trials"] == 2 and erm["note"] == ""
        mixup = cell(result, tdv, "ColoredMNIST", "Mixup", name)
        assert mixup["mean"] == pytest.approx(52 + 10 * env)
        assert mixup["se"] == pytest.approx(100 * 0.02 / math.sqrt(2))
        oracle = cell(result, "oracle", "ColoredMNIST", "ERM", name)
        assert oracle["mean"] == pytest.approx(66 + 10 * env)
    erm_avg = cell(result, tdv, "ColoredMNIST", "ERM", "Avg")
    assert erm_avg["mean"] == pytest.approx(71)
    assert erm_avg["se"] == pytest.approx(100 * 0.01 / math.sqrt(2))  # trial averages .70, .72
    assert erm_avg["text"] == "71.0 ± 0.7"
    # overview: datasets x algorithms + Avg over datasets
    assert overview_cell(result, tdv, "ColoredMNIST", "ERM")["mean"] == pytest.approx(71)
    assert overview_cell(result, tdv, "Debug28", "ERM")["mean"] == pytest.approx(41)
    assert overview_cell(result, tdv, "Avg", "ERM")["mean"] == pytest.approx(56)
    assert overview_cell(result, tdv, "Debug28", "Mixup")["note"] == "no runs"
    assert overview_cell(result, tdv, "Avg", "Mixup")["note"] == "incomplete (1/2 datasets)"
    overview = result.table(tdv)
    assert list(overview.columns) == ["Debug28", "ColoredMNIST", "Avg"]  # DATASETS order
    assert list(overview.index) == ["ERM", "Mixup", "MyAlg"]  # ALGORITHMS order, then others
    table = result.table(tdv, "ColoredMNIST")
    assert list(table.columns) == [*CMNIST_ENVS, "Avg"]
    assert table.loc["Mixup", "Avg"] == "62.0 ± 1.4"
    # leave-one-out needs runs with two test envs; with none at all, it is skipped
    assert (result.cells.selection != "leave_one_out").all()
    assert not (tmp_path / "results" / "fab" / "leave_one_out.md").exists()
    cells, _ = tables.compute_tables(tables.load_records(sweeps)[0], ("leave_one_out",))
    assert (cells[cells.algorithm == "ERM"].note == "needs 2-env runs").all()
    # files
    out_dir = tmp_path / "results" / "fab"
    for selection in ("training_domain_validation", "oracle"):
        for suffix in (".md", ".tex", ".csv"):
            assert (out_dir / f"{selection}{suffix}").is_file()
    for dataset in ("ColoredMNIST", "Debug28"):
        png = out_dir / f"{dataset}_training_domain_validation.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    markdown = (out_dir / "training_domain_validation.md").read_text()
    assert "| ERM " in markdown and "71.0 ± 0.7" in markdown
    latex = (out_dir / "training_domain_validation.tex").read_text()
    assert r"\toprule" in latex and r"71.0 $\pm$ 0.7" in latex and r"+90\%" in latex
    import pandas as pd

    tidy = pd.read_csv(out_dir / "oracle.csv")
    assert list(tidy.columns) == tables.CSV_COLUMNS
    assert set(tidy.selection) == {"oracle"}
    assert "71.0 ± 0.7" in capsys.readouterr().out  # Markdown printed to the terminal


def test_cells_without_runs_say_why(sweeps, tmp_path):
    result = tables.make_tables(sweeps, "fab", out_root=tmp_path / "results", plots=False)
    tdv = "training_domain_validation"
    partial = cell(result, tdv, "ColoredMNIST", "MyAlg", "+80%")
    assert partial["mean"] == pytest.approx(50) and partial["note"] == "incomplete (1/2 trials)"
    empty = cell(result, tdv, "ColoredMNIST", "MyAlg", "-90%")
    assert math.isnan(empty["mean"]) and empty["note"] == "no runs"
    assert cell(result, tdv, "ColoredMNIST", "MyAlg", "Avg")["note"] == (
        "incomplete (2/3 domains)")
    assert cell(result, tdv, "Debug28", "Mixup", "Avg")["note"] == "no runs"
    table = result.table(tdv, "ColoredMNIST")
    assert table.loc["MyAlg", "-90%"] == "no runs"
    assert table.loc["MyAlg", "+80%"] == "50.0, incomplete (1/2 trials)"  # 1 trial: no SE
    assert not list((tmp_path / "results" / "fab").glob("*.png"))


def test_cli_writes_tables(sweeps, tmp_path, capsys):
    out_root = tmp_path / "results"
    argv = ["--input_dir", *map(str, sweeps), "--name", "cli", "--out_root", str(out_root),
            "--no-plots"]
    assert tables.main(argv) == 0
    assert (out_root / "cli" / "training_domain_validation.md").is_file()
    assert not list((out_root / "cli").glob("*.png"))
    assert "wrote 16 files" in capsys.readouterr().err  # per selection: 3 tables, 3 paired, 2 runs


# ----------------------------------------------------------------------------- corrupt input
def test_corrupt_lines_skipped_and_incomplete_jobs_reported(tmp_path):
    sweep = tmp_path / "sweep"
    write_algorithm(sweep, "ColoredMNIST", "ERM", 0.60, 0.02)
    truncated = sweep / "ColoredMNIST_ERM_0_0" / "results.jsonl"
    text = truncated.read_text()
    truncated.write_text(text + text.splitlines()[0][:57])  # killed mid-write
    garbage = sweep / "ColoredMNIST_ERM_1_1" / "results.jsonl"
    garbage.write_text("this is not json\n" + garbage.read_text())
    unfinished = write_job(sweep, "unfinished_job", "ColoredMNIST", "ERM", 2, 2, 0.9, 0.9,
                           done=False)
    crashed = sweep / "crashed_job"
    crashed.mkdir()
    (crashed / "out.txt").write_text("Traceback ...\n")
    with pytest.warns(UserWarning) as caught:
        records, report = tables.load_records(sweep)
    assert len(records) == 7 * 4  # 6 good jobs + the unfinished one, 4 records each
    assert report.skipped_lines == {str(truncated): 1, str(garbage): 1}
    assert report.incomplete_jobs == [str(truncated.parent), str(crashed), str(unfinished)]
    messages = " ".join(str(w.message) for w in caught)
    assert "skipped 2 corrupt line(s) in 2 file(s)" in messages and str(truncated) in messages
    assert "unfinished_job" in messages and "crashed_job" in messages
    assert "incomplete jobs" in report.summary()


# ----------------------------------------------------------------------------- missing input
def test_missing_dir_gives_clear_error(tmp_path, capsys):
    missing = tmp_path / "no_such_sweep"
    with pytest.raises(FileNotFoundError, match="make sweep NAME=... or make demo"):
        tables.make_tables([missing], "x", out_root=tmp_path / "results")
    assert tables.main(["--input_dir", str(missing), "--name", "x",
                        "--out_root", str(tmp_path / "results")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_dir_without_records_exits_2(tmp_path, capsys):
    (tmp_path / "empty_sweep").mkdir()
    assert tables.main(["--input_dir", str(tmp_path / "empty_sweep"), "--name", "x",
                        "--out_root", str(tmp_path / "results")]) == 2
    assert "no results.jsonl records" in capsys.readouterr().err


# ----------------------------------------------------------------------------- reference
def test_copy_reference_and_comparison(sweeps, tmp_path):
    reference = tmp_path / "published.csv"
    reference.write_text(
        "source,model_selection,algorithm,ColoredMNIST,PACS,note\n"
        "paper,unspecified,Mixup,60.0,80.0,claimed\n"
        "bench,training_domain_validation,ERM,70.0,,\n"
        "bench,oracle,ERM,,85.0,\n"
        "bench,oracle,CORAL,50.0,,\n")
    copied = tables.copy_reference(reference, tmp_path / "ref" / "published_results.csv")
    assert copied.read_text() == reference.read_text()
    result = tables.make_tables(sweeps, "fab", out_root=tmp_path / "results",
                                reference_csv=copied, plots=False)
    comparison = result.comparison.set_index(["algorithm", "published selection"])
    assert len(comparison) == 2
    assert comparison.loc[("ERM", "training_domain_validation"), "ours - published"] == (
        pytest.approx(1.0))
    mixup = comparison.loc[("Mixup", "unspecified")]
    assert mixup["our selection"] == "training_domain_validation" and mixup["source"] == "paper"
    assert mixup["ours"] == pytest.approx(62.0)
    text = (tmp_path / "results" / "fab" / "reference_comparison.md").read_text()
    assert "paper" in text and "bench" in text


def test_comparison_skipped_quietly_when_nothing_matches(sweeps, tmp_path):
    reference = tmp_path / "published.csv"
    reference.write_text("source,model_selection,algorithm,PACS,note\nx,oracle,ERM,85.0,\n")
    result = tables.make_tables(sweeps, "fab", out_root=tmp_path / "results",
                                reference_csv=reference, plots=False)
    assert result.comparison is None
    assert not (tmp_path / "results" / "fab" / "reference_comparison.md").exists()


# ----------------------------------------------------------------------------- DomainBed parity
def parse_collect_results(text):
    """{(method name, dataset or 'Averages'): {algorithm: {column: (mean, se or None)}}}."""
    blocks, current, header = {}, None, None
    for line in text.splitlines():
        match = re.match(r"-------- (?:Dataset: (\S+)|(Averages)), model selection method: (.+)$",
                         line)
        if match:
            current = blocks.setdefault((match.group(3), match.group(1) or "Averages"), {})
            header = None
        elif current is not None and line.strip():
            cells = re.split(r"\s{2,}", line.strip())
            if header is None:
                header = cells[1:]
                continue
            values = {}
            for column, value in zip(header, cells[1:]):
                numbers = re.match(r"(-?[\d.]+)(?: \+/- ([\d.]+))?$", value)
                values[column] = (float(numbers.group(1)),
                                  float(numbers.group(2)) if numbers.group(2) else None)
            current[cells[0]] = values
    return blocks


@pytest.mark.integration
@pytest.mark.slow
def test_same_numbers_as_domainbed_collect_results(tmp_path):
    sample = os.path.join(os.path.dirname(domainbed.__file__), "misc", "test_sweep_data")
    copy = tmp_path / "test_sweep_data"  # collect_results writes results.txt into its input
    shutil.copytree(sample, copy)
    completed = subprocess.run(
        [sys.executable, "-m", "domainbed.scripts.collect_results", "--input_dir", str(copy)],
        capture_output=True, text=True, check=True)
    expected = parse_collect_results(completed.stdout)
    result = tables.make_tables([sample], "parity", out_root=tmp_path / "results", plots=False)
    names = {method.name: key for key, method in tables.SELECTION_METHODS.items()}
    assert {name for name, _ in expected} == set(names)
    compared = 0
    for (method_name, block), rows in expected.items():
        selection = names[method_name]
        for algorithm, columns in rows.items():
            for column, (mean, se) in columns.items():
                if block == "Averages":
                    ours = overview_cell(result, selection, column, algorithm)
                else:
                    ours = cell(result, selection, block, algorithm, column)
                assert f"{ours['mean']:.1f}" == f"{mean:.1f}", (method_name, block, column)
                if se is not None:
                    assert f"{ours['se']:.1f}" == f"{se:.1f}", (method_name, block, column)
                compared += 1
    assert compared == 3 * (5 + 2)  # VLCS: 4 domains + Avg; averages: VLCS + Avg
