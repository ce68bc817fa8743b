"""Bad inputs to the tools (tables, sweep files, the sweep command): each row is an input,
the expected exit status and a fragment of the message, plus what must (not) be on disk. The
sweep command after launching: test_sweep_command.py."""

import json
import subprocess

import pytest

from conftest import HAVE_DOMAINBED, NO_DOMAINBED, REPO

torch = [pytest.mark.torch, pytest.mark.skipif(not HAVE_DOMAINBED, reason=NO_DOMAINBED)]


def job(root, name, records=2, done=True, tail=""):
    """A DomainBed job directory with ``records`` valid lines (ColoredMNIST, ERM, env 0)."""
    from test_tables import write_job

    d = write_job(root, name, "ColoredMNIST", "ERM", 0, int(name[-1]), 0.6, 0.65, done=done)
    if tail is not None:
        (d / "results.jsonl").write_text((d / "results.jsonl").read_text() + tail)
    return d


def sweep_with(tmp_path, make_bad):
    """Two complete trials of env 1 and 2 plus env 0 trial 0, and a bad trial-1 job of env 0."""
    from test_tables import write_job

    root = tmp_path / "sweep"
    for env in (1, 2):
        for trial in (0, 1):
            write_job(root, f"ok_{env}_{trial}", "ColoredMNIST", "ERM", env, trial, 0.6, 0.65)
    write_job(root, "ok_0_0", "ColoredMNIST", "ERM", 0, 0, 0.6, 0.65)
    make_bad(root)
    return root


def killed(root):  # no 'done': stopped at step 0 of 100
    from test_tables import write_job

    d = write_job(root, "bad_0_1", "ColoredMNIST", "ERM", 0, 1, 0.1, 0.1, done=False)
    lines = (d / "results.jsonl").read_text().splitlines()
    (d / "results.jsonl").write_text(lines[0] + "\n")


def truncated(root):
    from test_tables import write_job

    d = write_job(root, "bad_0_1", "ColoredMNIST", "ERM", 0, 1, 0.6, 0.65)
    (d / "results.jsonl").write_text((d / "results.jsonl").read_text()[:-40])


def empty_results(root):
    from test_tables import write_job

    d = write_job(root, "bad_0_1", "ColoredMNIST", "ERM", 0, 1, 0.6, 0.65)
    (d / "results.jsonl").write_text("")


def not_run(root):
    (root / "bad_empty").mkdir()
    (root / "bad_log_only").mkdir()
    (root / "bad_log_only" / "launcher.log").write_text("starting\n")


def fieldless(root):
    from test_tables import write_job

    d = write_job(root, "bad_0_1", "ColoredMNIST", "ERM", 0, 1, 0.6, 0.65)
    (d / "results.jsonl").write_text((d / "results.jsonl").read_text()
                                     + json.dumps({"args": {"foo": 1}}) + "\n")


# (id, make the bad job, extra argv, exit status, fragment of the Markdown or stderr)
TABLE_ROWS = [
    ("killed job", killed, [], 0, "bad_0_1: no 'done' file"),
    ("truncated last line", truncated, [], 0, "bad_0_1: results.jsonl ends in a truncated"),
    ("empty results", empty_results, [], 0, "bad_0_1: results.jsonl holds no records"),
    ("killed job, complete_only", killed, ["--complete_only"], 0, "left out (--complete_only)"),
    ("not run", not_run, [], 0, "## Not run"),
    ("record without fields", fieldless, [], 0, "skipped 1 corrupt lines"),
]


@pytest.mark.parametrize("make_bad, argv, status, fragment",
                         [pytest.param(*row[1:], id=row[0], marks=torch) for row in TABLE_ROWS])
def test_tables_never_lie_by_omission(tmp_path, make_bad, argv, status, fragment, capsys):
    from lpa_domainbed.tools import tables

    root = sweep_with(tmp_path, make_bad)
    with pytest.warns(UserWarning):
        code = tables.main(["--input_dir", str(root), "--name", "t", "--out_root",
                            str(tmp_path / "results"), "--no-plots", *argv])
    assert code == status, capsys.readouterr().err
    markdown = (tmp_path / "results" / "t" / "training_domain_validation.md").read_text()
    assert fragment in markdown
    cells = (tmp_path / "results" / "t" / "training_domain_validation.csv").read_text()
    import pandas as pd

    csv = pd.read_csv(tmp_path / "results" / "t" / "training_domain_validation.csv")
    env0 = csv[(csv.test_env == "+90%") & (csv.algorithm == "ERM")].iloc[0]
    marked = make_bad in (killed, truncated) and not argv
    assert (env0.incomplete_jobs > 0) == marked, cells
    assert ("†" in markdown.split("## Dataset")[1].split("## Incomplete")[0]) == marked
    if marked:
        assert "† uses results of an incomplete job" in markdown
        assert r"$^\dagger$" in (tmp_path / "results" / "t"
                                 / "training_domain_validation.tex").read_text()
    if make_bad is killed and argv:  # complete_only: the killed trial is not in the numbers
        assert env0.n_trials == 1


# ----------------------------------------------------------------------------- output safety
def good_sweep(tmp_path):
    from test_tables import write_algorithm

    write_algorithm(tmp_path / "sweep", "ColoredMNIST", "ERM", 0.60, 0.02)
    return tmp_path / "sweep"


def blocked(tmp_path, target_is_file=False):
    """An output that cannot be made (a file where a directory must go; chmod does not stop
    root); an earlier run's file lies next to it and must survive."""
    (tmp_path / "results").mkdir()
    (tmp_path / "results" / "oracle.md").write_text("earlier run\n")
    (tmp_path / "results" / "t").write_text("a file, not a directory\n")
    return ["--out_dir", str(tmp_path / "results" / "t" / ("" if target_is_file else "sub"))]


OUTPUT_ROWS = [  # (id, argv after --input_dir, exit status, stderr fragment)
    ("name escapes", lambda p: ["--name", "../../escape"], 2, "is not a plain name"),
    ("absolute name", lambda p: ["--name", str(p / "abs")], 2, "pass --out_dir DIR"),
    ("parent is a file", lambda p: ["--name", "t", *blocked(p)], 2, "cannot write"),
    ("target is a file", lambda p: ["--name", "t", *blocked(p, True)], 2, "not a directory"),
    ("job dir as input", lambda p: ["--name", "t", "--input_dir",
                                    str(p / "sweep" / "ColoredMNIST_ERM_0_0")], 2,
     "is one job's directory; pass the sweep's output directory"),
    ("results.jsonl as input", lambda p: [
        "--name", "t", "--input_dir", str(p / "sweep" / "ColoredMNIST_ERM_0_0" /
                                          "results.jsonl")], 2, "is a file; pass the sweep's"),
]


@pytest.mark.parametrize("argv, status, fragment",
                         [pytest.param(*row[1:], id=row[0], marks=torch) for row in OUTPUT_ROWS])
def test_tables_output_errors(tmp_path, argv, status, fragment, capsys):
    from lpa_domainbed.tools import tables

    sweep = good_sweep(tmp_path)
    argv = argv(tmp_path)
    before = sorted(p for p in tmp_path.rglob("*"))
    code = tables.main(["--input_dir", str(sweep), "--out_root", str(tmp_path / "results"),
                        "--no-plots", *argv])
    assert code == status and fragment in capsys.readouterr().err
    assert sorted(p for p in tmp_path.rglob("*")) == before  # nothing written, nothing lost


@pytest.mark.torch
@pytest.mark.skipif(not HAVE_DOMAINBED, reason=NO_DOMAINBED)
def test_rerun_replaces_own_files_keeps_foreign_ones_and_out_dir(tmp_path):
    from lpa_domainbed.tools import tables

    sweep = good_sweep(tmp_path)
    out = tmp_path / "elsewhere" / "tables"
    tables.make_tables([sweep], "t", out_dir=out, plots=True)
    assert (out / "ColoredMNIST_training_domain_validation.png").is_file()
    (out / "RUN.md").write_text("kept\n")  # another tool's file
    (out / "oracle.md").write_text("stale\n")
    tables.make_tables([sweep], "t", out_dir=out, plots=False)
    assert not (out / "ColoredMNIST_training_domain_validation.png").exists()  # not made now
    assert (out / "RUN.md").read_text() == "kept\n"
    assert "stale" not in (out / "oracle.md").read_text()
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".")]  # no temp dirs left
    assert not (tmp_path / "results").exists()


# ----------------------------------------------------------------------------- sweep files
SWEEP_ROWS = [  # (id, TOML body, fragment), each a clear error naming the file; no torch
    ("algorithms a string", 'algorithms = "LPA"', "'algorithms' must be a non-empty list"),
    ("n_trials quoted", 'n_trials = "3"', "'n_trials' must be an integer >= 1 (no quotes)"),
    ("datasets empty", "datasets = []", "'datasets' must be a non-empty list"),
    ("bool as int", "n_hparams = true", "'n_hparams' must be an integer"),
    ("holdout out of range", "holdout_fraction = 1.5", "'holdout_fraction' must be a number"),
    ("unknown key", "n_trails = 3", "unknown keys ['n_trails']"),
    ("not TOML", "algorithms = [", "not valid TOML"),
]
BASE = {"name": '"x"', "datasets": '["RotatedDigits"]', "algorithms": '["ERM"]'}


def sweep_file(tmp_path, line):
    key = line.split("=")[0].strip()
    body = "\n".join(f"{k} = {v}" for k, v in BASE.items() if k != key) + "\n" + line + "\n"
    path = tmp_path / "bad_sweep.toml"
    path.write_text(body)
    return path


@pytest.mark.parametrize("line, fragment", [pytest.param(*r[1:], id=r[0]) for r in SWEEP_ROWS])
def test_sweep_file_schema(tmp_path, line, fragment):
    from lpa_domainbed.tools import sweeps

    path = sweep_file(tmp_path, line)
    with pytest.raises(sweeps.SweepFileError) as error:
        sweeps.load_sweep(str(path), check_registry=False)
    assert fragment in str(error.value) and str(path) in str(error.value)


NAME_ROWS = [  # (id, TOML line, argv after the file, exit status, stderr fragment)
    ("misspelled algorithm", 'algorithms = ["ERM", "LPAA"]', [], 2, "unknown algorithms ['LPAA']"),
    ("unknown dataset", 'datasets = ["PACSS"]', [], 2, "unknown datasets ['PACSS']"),
    ("unknown launcher", 'command_launcher = "slurmm"', [], 2, "unknown command_launcher"),
    ("unknown --launcher", 'n_trials = 1', ["--launcher", "nope"], 2,
     "unknown command_launcher ['nope']"),
    ("algorithms a string", 'algorithms = "LPA"', [], 2, "must be a non-empty list"),
    ("absurd job count", "n_trials = 100000000", [], 2, "the sweep would make 8,000,000,000 "
     "jobs (n_trials 100000000 x 20 hparams draws x 1 algorithms x 4 choices of test "
     "environments over its datasets); at most 100,000 are supported"),
]


@pytest.mark.parametrize("line, argv, status, fragment",
                         [pytest.param(*r[1:], id=r[0], marks=torch) for r in NAME_ROWS])
def test_sweep_command_rejects_bad_files(tmp_path, line, argv, status, fragment, capsys):
    from lpa_domainbed.tools import cli

    path = sweep_file(tmp_path, line)
    code = cli.main(["sweep", str(path), "--data_dir", str(tmp_path / "d"), "--output_dir",
                     str(tmp_path / "o"), "--dry_run", *argv])
    err = capsys.readouterr().err
    assert code == status and fragment in err and str(path) in err
    assert not (tmp_path / "o").exists()


# ----------------------------------------------------------------------------- tools/device.sh
DEVICE_ROWS = [  # (id, arguments, exit status, stderr fragment); nothing may be installed
    ("unknown mode", ["run", "gpu-chek"], 1, "unknown mode 'gpu-chek': gpu-check, study or cmd"),
    ("unknown mode after a good one", ["run", "gpu-check", "studdy"], 1, "unknown mode 'studdy'"),
    ("no mode", ["run"], 1, "run needs a MODE"),
]


@pytest.mark.parametrize("args, status, fragment",
                         [pytest.param(*r[1:], id=r[0]) for r in DEVICE_ROWS])
def test_device_script_checks_its_modes_before_installing(tmp_path, args, status, fragment):
    fake_python = tmp_path / "python3"  # records any use: installing starts with it
    fake_python.write_text(f"#!/bin/sh\ntouch {tmp_path / 'used'}\n")
    fake_python.chmod(0o755)
    run = subprocess.run(["bash", str(REPO / "tools" / "device.sh"), *args], capture_output=True,
                         text=True, timeout=60,
                         env={"PATH": "/usr/bin:/bin", "PY": str(fake_python),
                              "OUT": str(tmp_path / "out"), "HOME": str(tmp_path)})
    assert run.returncode == status and fragment in run.stderr, run.stdout + run.stderr
    assert not (tmp_path / "used").exists()  # nothing was installed
    assert not (tmp_path / "out").exists()
