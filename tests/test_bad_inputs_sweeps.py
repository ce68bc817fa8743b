"""Bad inputs and faults of sweeps and launchers, table-driven: each row is an input, the exit
status, a fragment of the message, and what must still be on disk afterwards.

* ``SWEEP_ROWS``: DomainBed's own sweep script with our launchers (three ERM jobs on Debug28,
  one step each): job directories come from DomainBed's ``Job`` objects, never from a regex over
  the command, so a path with a space works and an hparams text cannot redirect anything.
* ``CLI_ROWS``: ``lpa-domainbed sweep`` refusing before anything is launched (settings,
  hparams, DomainBed missing, another live sweep in the same output directory).
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import HAVE_DOMAINBED, NO_DOMAINBED
from launcher_helpers import BARE_PATH

torch = [pytest.mark.torch, pytest.mark.skipif(not HAVE_DOMAINBED, reason=NO_DOMAINBED)]


# ------------------------------------------------------------------ DomainBed's sweep script
def _domainbed_sweep(out: Path, launcher: str, hparams: dict) -> list[str]:
    return [sys.executable, "-m", "domainbed.scripts.sweep", "launch", "--datasets", "Debug28",
            "--algorithms", "ERM", "--data_dir", str(out.parent), "--output_dir", str(out),
            "--command_launcher", launcher, "--n_trials", "1", "--n_hparams", "1", "--steps", "1",
            "--hparams", json.dumps(hparams), "--single_test_envs", "--skip_confirmation"]


def _bystander(tmp_path: Path) -> Path:
    """A directory outside the sweep, with a file that must survive untouched."""
    other = tmp_path / "other"
    other.mkdir()
    (other / "launcher.log").write_text("precious\n")
    return other


# (id, output dir name, launcher, environment, hparams text holding --output_dir, status, fragment)
SWEEP_ROWS = [
    ("output_dir with a space, local_parallel", "my sweep", "local_parallel", {}, False, 0,
     "3/3 finished (0 failed)"),
    ("output_dir with a space, submitit", "my sweep", "submitit",
     {"LPA_SUBMITIT_CLUSTER": "local"}, False, 0, "3/3 finished (0 failed)"),
    ("hparams text names --output_dir", "sweep", "local_parallel", {}, True, 0,
     "3/3 finished (0 failed)"),
    ("bad setting and hparams text names --output_dir", "sweep", "local_parallel",
     {"LPA_DOMAINBED_JOBS": "abc"}, True, 1, "error: LPA_DOMAINBED_JOBS='abc' is invalid"),
    ("output_dir with a space, hparams text names --output_dir, local_forkserver", "my sweep",
     "local_forkserver", {}, True, 0, "[local_forkserver] 3/3 finished (0 failed)"),
    ("bad setting, local_forkserver", "sweep", "local_forkserver", {"LPA_DOMAINBED_JOBS": "0"},
     True, 1, "error: LPA_DOMAINBED_JOBS='0' is invalid"),
]


@pytest.mark.parametrize("name, launcher, env, redirect, status, fragment",
                         [pytest.param(*r[1:], id=r[0], marks=torch) for r in SWEEP_ROWS])
def test_job_directories_come_from_domainbeds_jobs(tmp_path, name, launcher, env, redirect,
                                                   status, fragment):
    pytest.importorskip("submitit") if launcher == "submitit" else None
    other = _bystander(tmp_path)
    empty = tmp_path / "empty"
    empty.mkdir()  # an unrelated empty directory: a clean-up must not take it
    hparams = {"batch_size": 4}
    if redirect:  # the trailing space ends the value for a regex `--output_dir\s+(\S+)`
        hparams["note"] = f"--output_dir {empty} --output_dir {other} "
    out = tmp_path / name
    run = subprocess.run(_domainbed_sweep(out, launcher, hparams), capture_output=True,
                         text=True, timeout=600,
                         env={**os.environ, "PATH": BARE_PATH, "LPA_DOMAINBED_JOBS": "3",
                              "LPA_SUBMITIT_LOG_DIR": str(tmp_path / "logs"), **env})
    assert run.returncode == status, run.stderr[-3000:]
    assert fragment in run.stdout + run.stderr
    assert "Traceback" not in run.stderr
    assert (other / "launcher.log").read_text() == "precious\n"
    assert empty.is_dir() and list(empty.iterdir()) == []
    job_dirs = [p for p in out.iterdir() if p.is_dir()]
    if status == 0:
        assert len(job_dirs) == 3 and all((d / "done").exists() for d in job_dirs)
        if launcher in ("local_parallel", "local_forkserver"):
            assert all((d / "launcher.log").is_file() for d in job_dirs)
    else:
        assert job_dirs == []  # nothing half-made: the corrected command launches every job


# ------------------------------------------------------------------ lpa-domainbed sweep
def _sweep_file(tmp_path: Path, extra: str = "") -> Path:
    path = tmp_path / "s.toml"
    path.write_text('name = "s"\ndatasets = ["RotatedDigits"]\nalgorithms = ["ERM", "LPA"]\n'
                    'n_trials = 1\nn_hparams = 1\nsteps = 1\ncommand_launcher = "local_parallel"\n'
                    + extra)
    return path


def _live_lock(tmp_path: Path) -> str:
    from lpa_domainbed.tools.sweep_lock import LOCK_NAME

    (tmp_path / "o").mkdir()
    (tmp_path / "o" / LOCK_NAME).write_text(f"{os.getppid()}\n{os.uname().nodename}\nthe other\n")
    return str(os.getppid())


def _dead_lock(tmp_path: Path) -> None:
    from lpa_domainbed.tools.sweep_lock import LOCK_NAME

    dead = subprocess.Popen([sys.executable, "-c", ""])
    dead.wait()
    (tmp_path / "o").mkdir()
    (tmp_path / "o" / LOCK_NAME).write_text(f"{dead.pid}\n{os.uname().nodename}\ngone\n")


def _no_domainbed(monkeypatch, installed: bool):
    from lpa_domainbed import registration

    monkeypatch.setitem(sys.modules, "domainbed", None)  # import domainbed -> ModuleNotFoundError
    if installed:
        monkeypatch.setattr(registration, "_CHECKOUT", "/nonexistent")


def _log_dir_is_a_file(tmp_path: Path, monkeypatch) -> None:
    (tmp_path / "file").write_text("a file where submitit's folder must go\n")
    monkeypatch.setenv("LPA_SUBMITIT_LOG_DIR", str(tmp_path / "file" / "logs"))


# (id, TOML extra, argv extra, environment, setup(tmp_path, monkeypatch), status, fragment,
#  fragment that must be absent)
CLI_ROWS = [
    ("misspelt hparam", "hparams = {lpa_epss = 1.0}\n", ["--dry_run"], {}, None, 2,
     "LPA: unknown hparam 'lpa_epss' for LPA. Did you mean 'lpa_eps'", None),
    ("hparam value outside its choices", 'hparams = {lpa_mode = "bogus"}\n', ["--dry_run"], {},
     None, 2, "LPA: hparam lpa_mode='bogus' is invalid: expected one of", None),
    ("hparam of the wrong type", 'hparams = {lpa_eps = "big"}\n', [], {}, None, 2,
     "hparam lpa_eps='big' has type str", None),
    ("LPA_DOMAINBED_JOBS=abc", "", [], {"LPA_DOMAINBED_JOBS": "abc"}, None, 2,
     "error: LPA_DOMAINBED_JOBS='abc' is invalid", "Traceback"),
    ("LPA_DOMAINBED_JOBS=0, local_forkserver", "", ["--launcher", "local_forkserver"],
     {"LPA_DOMAINBED_JOBS": "0"}, None, 2, "error: LPA_DOMAINBED_JOBS='0' is invalid",
     "Traceback"),
    ("bad Slurm setting", "", ["--launcher", "submitit"], {"LPA_SLURM_TIME_MIN": "1h"}, None,
     2, "LPA_SLURM_TIME_MIN='1h' is invalid", "Traceback"),
    ("newline in LPA_SLURM_PARTITION", "", ["--launcher", "submitit"],
     {"LPA_SLURM_PARTITION": "gpu\n#SBATCH --time=99999"}, None, 2,
     "LPA_SLURM_PARTITION='gpu\\n#SBATCH --time=99999' is invalid: it holds the control "
     "character \\n", "Traceback"),
    ("newline in LPA_SLURM_EXTRA", "", ["--launcher", "submitit"],
     {"LPA_SLURM_EXTRA": '{"qos": "high\\n#SBATCH --time=99999"}'}, None, 2,
     "LPA_SLURM_EXTRA='{{\"qos\": \"high\\\\n#SBATCH --time=99999\"}}' is invalid (option "
     "'qos' holds the control character \\n", "Traceback"),
    ("unusable LPA_SUBMITIT_LOG_DIR", "", ["--launcher", "submitit"], {}, _log_dir_is_a_file, 2,
     "LPA_SUBMITIT_LOG_DIR='{tmp}/file/logs' is invalid ({tmp}/file is not a directory)",
     "Traceback"),
    ("submitit missing", "", ["--launcher", "submitit"], {},
     lambda p, m: m.setitem(sys.modules, "submitit", None), 2,
     "pip install 'lpa-domainbed[slurm]'", "Traceback"),
    ("DomainBed missing, checkout", "", [], {}, lambda p, m: _no_domainbed(m, False), 2,
     "Run 'make setup'", None),
    ("DomainBed missing, installed", "", [], {}, lambda p, m: _no_domainbed(m, True), 2,
     "_lpa_domainbed_domainbed.pth", "make"),
    ("output dir starting with '-'", "", ["--output_dir=-o"], {},
     lambda p, m: m.chdir(p), 2, "--output_dir '-o' starts with '-', which DomainBed's scripts "
                                 "would take for an option: pass it as ./-o", "Traceback"),
    ("data dir starting with '-'", "", ["--data_dir=-d"], {}, lambda p, m: m.chdir(p), 2,
     "--data_dir '-d' starts with '-'", "Traceback"),
    ("a name too long for the file system", "", ["--output_dir", "{tmp}/" + "x" * 300], {},
     None, 2, "--output_dir: the name xxxxxxxxxxxxxxxxxxxxxxxx... has 300 bytes, more than the "
              "file system allows (255): choose a shorter name", "Traceback"),
    ("a path too long for the file system", "", ["--output_dir", "{tmp}" + "/x" * 2100], {},
     None, 2, "with a job's directory and files below it a path would pass the file system's "
              "limit of 4096 bytes: choose a shorter path", "Traceback"),
    ("another sweep runs into the output dir", "", [], {}, lambda p, m: _live_lock(p), 2,
     "another sweep (pid {pid}: the other) is running into", None),
]


@pytest.mark.parametrize("extra, argv, env, setup, status, fragment, absent",
                         [pytest.param(*r[1:], id=r[0], marks=torch) for r in CLI_ROWS])
def test_sweep_refuses_before_launching(tmp_path, monkeypatch, capsys, extra, argv, env, setup,
                                        status, fragment, absent):
    from lpa_domainbed.tools import cli

    launched = []
    monkeypatch.setattr(cli, "run_forwarding_signals", launched.append)
    monkeypatch.delenv("MAKELEVEL", raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    pid = setup(tmp_path, monkeypatch) if setup else None
    sweep_file = _sweep_file(tmp_path, extra)
    before = sorted(tmp_path.rglob("*"))

    code = cli.main(["sweep", str(sweep_file), "--data_dir", str(tmp_path / "d"),
                     "--output_dir", str(tmp_path / "o"),
                     *(arg.format(tmp=tmp_path) for arg in argv)])

    err = capsys.readouterr().err
    assert code == status and fragment.format(pid=pid, tmp=tmp_path) in err, err
    assert absent is None or absent not in err
    assert launched == []
    assert sorted(tmp_path.rglob("*")) == before  # nothing made, the other's lock kept


@pytest.mark.parametrize("stale", [pytest.param(True, id="stale lock taken over", marks=torch)])
def test_a_stale_lock_is_taken_over_and_released(tmp_path, monkeypatch, capsys, stale):
    from lpa_domainbed.tools import cli
    from lpa_domainbed.tools.sweep_lock import LOCK_NAME

    _dead_lock(tmp_path)
    held = []
    monkeypatch.setattr(cli, "run_forwarding_signals",
                        lambda cmd: held.append((tmp_path / "o" / LOCK_NAME).read_text()))
    monkeypatch.delenv("MAKELEVEL", raising=False)

    code = cli.main(["sweep", str(_sweep_file(tmp_path)), "--data_dir", str(tmp_path / "d"),
                     "--output_dir", str(tmp_path / "o")])

    assert code == 1  # the stand-in launch ran no job
    assert held and all(text.startswith(f"{os.getpid()}\n") for text in held)
    assert not (tmp_path / "o" / LOCK_NAME).exists()  # released at the end
    assert "--output_dir" in capsys.readouterr().err  # the resume advice


@pytest.mark.parametrize("makelevel, expected", [
    pytest.param(None, "--data_dir 'my data' --output_dir 'my out'", id="cli form", marks=torch),
    pytest.param("1", "DATA_DIR='my data' OUTPUT_DIR='my out'", id="make form", marks=torch),
])
def test_the_resume_command_quotes_paths(tmp_path, monkeypatch, capsys, makelevel, expected):
    from lpa_domainbed.tools import cli

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(cli, "run_forwarding_signals", lambda cmd: None)  # no job runs
    if makelevel:
        monkeypatch.setenv("MAKELEVEL", makelevel)
    else:
        monkeypatch.delenv("MAKELEVEL", raising=False)

    code = cli.main(["sweep", str(_sweep_file(tmp_path)), "--data_dir", "my data",
                     "--output_dir", "my out"])

    line = capsys.readouterr().err.split("Resume them with:\n", 1)[1].splitlines()[0]
    assert code == 1 and expected in line
    words = shlex.split(line)  # what a shell passes on
    assert ("OUTPUT_DIR=my out" in words if makelevel
            else words[words.index("--output_dir") + 1] == "my out")
