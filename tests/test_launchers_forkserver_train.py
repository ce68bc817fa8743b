"""``local_forkserver`` with real training jobs forked from its server: the records equal those
of the same commands run as ``python -m domainbed.scripts.train`` processes (by
``local_parallel``), failures end as in a fresh interpreter, and Ctrl-C, SIGTERM or a killed
launcher leave no process behind.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import requires_domainbed
from launcher_helpers import BARE_PATH, assert_all_gone
from lpa_domainbed.tools.launchers.forkserver import local_forkserver_launcher
from lpa_domainbed.tools.launchers.local_parallel import local_parallel_launcher

pytestmark = requires_domainbed
_real_sleep = time.sleep
TIMING = ("step_time", "mem_gb")


def train_command(out: Path, algorithm: str, steps: int, **extra) -> str:
    hparams = json.dumps({"batch_size": 16, **extra.pop("hparams", {})})
    args = " ".join(f"--{key} {value}" for key, value in extra.items())
    return (f"python -m domainbed.scripts.train --dataset RotatedDigits --algorithm {algorithm} "
            f"--test_envs 0 --data_dir {out.parent} --output_dir {out} --steps {steps} "
            f"--checkpoint_freq 2 --seed 1 --hparams '{hparams}' {args}").strip()


def records(job_dir: Path) -> list[dict]:
    lines = (job_dir / "results.jsonl").read_text().splitlines()
    return [{k: v for k, v in json.loads(line).items() if k not in TIMING} for line in lines]


def writers_of(logs: list[Path]) -> list[int]:
    """Live processes whose stdout is one of ``logs`` (forked jobs, their own children)."""
    wanted, pids = {str(log) for log in logs}, []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and os.readlink(entry / "fd" / "1") in wanted:
                pids.append(int(entry.name))
        except OSError:
            pass
    return pids


def parent_of(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])


def wait_for_training(logs: list[Path], timeout: float = 240) -> list[int]:
    """The pids of the jobs writing ``logs`` and of their server, once every job trains."""
    deadline = time.monotonic() + timeout
    while not all(log.is_file() and "HParams" in log.read_text() for log in logs):
        assert time.monotonic() < deadline, "the jobs did not start training"
        _real_sleep(0.2)
    jobs = writers_of(logs)
    assert len(jobs) == len(logs)
    return jobs + sorted({parent_of(pid) for pid in jobs})


def test_records_equal_plain_train_processes_and_failures_end_as_in_python(tmp_path, capsys):
    good = [train_command(tmp_path / name, name, 5, hparams=hp)
            for name, hp in (("ERM", {}), ("LPA", {"lpa_steps": 2}))]
    raising = train_command(tmp_path / "raising", "NoSuchAlgorithm", 5)
    bad_args = train_command(tmp_path / "bad_args", "ERM", "five")
    assert local_parallel_launcher(good, max_jobs=2) == []
    for name in ("ERM", "LPA"):
        shutil.move(tmp_path / name, tmp_path / f"{name}_plain")

    failed = local_forkserver_launcher([*good, raising, bad_args], max_jobs=2)

    assert sorted(failed) == sorted([raising, bad_args])
    for name in ("ERM", "LPA"):
        assert (tmp_path / name / "done").is_file()
        forked, plain = records(tmp_path / name), records(tmp_path / f"{name}_plain")
        assert [r["step"] for r in forked] == [0, 2, 4]
        assert forked == plain
        assert "HParams:" in (tmp_path / name / "launcher.log").read_text()
    err = capsys.readouterr().err
    assert "subprocesses" not in err  # every command was forked
    assert "exit 1: log" in err and "exit 2: log" in err
    raised = (tmp_path / "raising" / "launcher.log").read_text()
    assert "Traceback (most recent call last)" in raised and "NoSuchAlgorithm" in raised
    assert "invalid int value: 'five'" in (tmp_path / "bad_args" / "launcher.log").read_text()


def test_ctrl_c_stops_forked_jobs_and_the_server(tmp_path, monkeypatch, capsys):
    commands = [train_command(tmp_path / f"job{i}", "ERM", 100000) for i in range(2)]
    logs = [tmp_path / f"job{i}" / "launcher.log" for i in range(2)]
    found: list[int] = []

    def ctrl_c_once_training(seconds):
        if found:
            return _real_sleep(seconds)
        found.extend(wait_for_training(logs))
        raise KeyboardInterrupt

    monkeypatch.setattr(time, "sleep", ctrl_c_once_training)
    with pytest.raises(SystemExit) as stop:
        local_forkserver_launcher(commands, max_jobs=2)
    monkeypatch.undo()

    assert stop.value.code == 130
    assert len(found) == 3  # two jobs, one server
    assert_all_gone(found)
    assert capsys.readouterr().err.splitlines() == [
        "[local_forkserver] interrupted: stopped 2 unfinished jobs, 0 finished jobs are kept; "
        "the stopped ones are incomplete (see 'Resume' in docs/launchers.md)"]


def test_a_killed_server_fails_its_jobs_and_leaves_none_running(tmp_path, monkeypatch, capsys):
    commands = [train_command(tmp_path / f"job{i}", "ERM", 100000) for i in range(2)]
    logs = [tmp_path / f"job{i}" / "launcher.log" for i in range(2)]
    found: list[int] = []

    def kill_server_once_training(seconds):
        if not found:
            found.extend(wait_for_training(logs))
            os.kill(found[-1], signal.SIGKILL)  # the server (the OOM killer, a stray kill)
        return _real_sleep(seconds)

    monkeypatch.setattr(time, "sleep", kill_server_once_training)
    failed = local_forkserver_launcher(commands, max_jobs=2)
    monkeypatch.undo()

    assert failed == commands
    assert len(found) == 3
    assert_all_gone(found)
    assert f"exit {-signal.SIGKILL}: log {logs[0]}" in capsys.readouterr().err


def _launch(tmp_path: Path, steps: int) -> subprocess.Popen:
    """DomainBed's sweep with local_forkserver, started as a user starts it."""
    sweep = [sys.executable, "-m", "domainbed.scripts.sweep", "launch", "--datasets",
             "RotatedDigits", "--algorithms", "ERM", "--data_dir", str(tmp_path),
             "--output_dir", str(tmp_path / "sweep"), "--command_launcher", "local_forkserver",
             "--n_trials", "1", "--n_hparams", "1", "--steps", str(steps),
             "--single_test_envs", "--skip_confirmation"]
    with open(tmp_path / "stdout.txt", "w") as out, open(tmp_path / "stderr.txt", "w") as err:
        return subprocess.Popen(sweep, stdout=out, stderr=err, start_new_session=True,
                                env=dict(os.environ, PATH=BARE_PATH, LPA_DOMAINBED_JOBS="4"))


@pytest.mark.parametrize("how", ["SIGTERM", "SIGKILL"])
def test_a_stopped_or_killed_sweep_leaves_no_process_behind(tmp_path, how):
    sweep = _launch(tmp_path, 100000)
    try:
        deadline = time.monotonic() + 240
        while len(logs := list(tmp_path.glob("sweep/*/launcher.log"))) < 4:
            assert sweep.poll() is None and time.monotonic() < deadline, \
                (tmp_path / "stderr.txt").read_text()
            _real_sleep(0.2)
        pids = wait_for_training(logs)
        sweep.send_signal(getattr(signal, how))  # `kill PID`; SIGKILL: the launcher dies
        returncode = sweep.wait(timeout=60)
        assert_all_gone(pids)
    finally:
        if sweep.poll() is None:
            os.killpg(sweep.pid, signal.SIGKILL)
    err = (tmp_path / "stderr.txt").read_text()
    if how == "SIGTERM":
        assert returncode == 130 and "Traceback" not in err
        assert [line for line in err.splitlines() if "interrupted" in line] == [
            "[local_forkserver] interrupted: stopped 4 unfinished jobs, 0 finished jobs are "
            "kept; the stopped ones are incomplete (see 'Resume' in docs/launchers.md)"]
    else:
        assert returncode == -signal.SIGKILL



def test_a_server_that_touched_cuda_refuses_and_leaves_the_jobs_unlaunched(tmp_path,
                                                                          monkeypatch, capfd):
    plugin = tmp_path / "cuda_at_import.py"  # as if a plugin had called torch.cuda at import
    plugin.write_text("import torch\ntorch.cuda.is_initialized = lambda: True\n")
    monkeypatch.setenv("LPA_DOMAINBED_PLUGINS", str(plugin))
    job_dirs = [tmp_path / f"job{i}" for i in range(2)]
    for job_dir in job_dirs:
        job_dir.mkdir()  # made by DomainBed's Job.launch before the launcher runs

    with pytest.raises(RuntimeError, match=r"server that forks the jobs ended \(exit 3\) .* "
                                           "local_parallel runs without the server"):
        local_forkserver_launcher([train_command(d, "ERM", 3) for d in job_dirs], max_jobs=2)

    assert "cannot fork training jobs: torch.cuda is initialized" in capfd.readouterr().err
    assert not any(job_dir.exists() for job_dir in job_dirs)


def test_a_server_killed_before_its_jobs_start_ends_the_launch_in_one_line(tmp_path,
                                                                          monkeypatch):
    plugin = tmp_path / "kill_the_server.py"  # SIGKILL, as the OOM killer sends it
    plugin.write_text("import os, signal, sys\nif '_lpa_forkserver' in sys.modules:\n"
                      "    os.kill(os.getpid(), signal.SIGKILL)\n")
    monkeypatch.setenv("LPA_DOMAINBED_PLUGINS", str(plugin))
    job_dirs = [tmp_path / f"job{i}" for i in range(2)]
    for job_dir in job_dirs:
        job_dir.mkdir()  # made by DomainBed's Job.launch before the launcher runs

    with pytest.raises(SystemExit) as failure:  # DomainBed's sweep prints it, no traceback
        local_forkserver_launcher([train_command(d, "ERM", 3) for d in job_dirs], max_jobs=2)

    message = str(failure.value.code)
    assert len(message.splitlines()) == 1
    assert message.startswith("error: [local_forkserver] the server that forks the jobs ended "
                              f"(killed by signal {int(signal.SIGKILL)}) before job 0 started")
    assert "lpa-domainbed sweep ... --restart_incomplete" in message
    assert not any(job_dir.exists() for job_dir in job_dirs)  # a rerun launches them


def test_lpa_domainbed_sweep_runs_local_forkserver_and_forked_jobs_load_no_tooling(tmp_path):
    """``lpa-domainbed sweep --launcher local_forkserver``: every job forked and done, the lock
    released; a forked job, like a plain train process, has no ``lpa_domainbed.tools`` module
    (a plugin's atexit handler, inherited through the fork, writes what each job loaded), and
    runs on its GPU (two faked ones, given in turn)."""
    plugin = tmp_path / "report_modules.py"
    plugin.write_text(
        "import atexit, os, sys\n"
        "def _report():\n"
        "    if '--test_envs' not in sys.argv:  # not a train job\n"
        "        return\n"
        "    tools = sorted(m for m in sys.modules if m.startswith('lpa_domainbed.tools'))\n"
        f"    with open(os.path.join({str(tmp_path)!r}, f'modules-{{os.getpid()}}.txt'),"
        " 'w') as out:\n"
        "        out.write(repr((tools, os.environ.get('CUDA_VISIBLE_DEVICES'))))\n"
        "atexit.register(_report)\n")
    sweep_file = tmp_path / "s.toml"
    sweep_file.write_text('name = "s"\ndatasets = ["Debug28"]\nalgorithms = ["ERM"]\n'
                          "n_trials = 1\nn_hparams = 1\nsteps = 1\n"
                          'command_launcher = "local"\nhparams = {batch_size = 4}\n')
    out = tmp_path / "my sweep"
    run = subprocess.run(
        [sys.executable, "-m", "lpa_domainbed.tools.cli", "sweep", str(sweep_file),
         "--data_dir", str(tmp_path), "--output_dir", str(out), "--launcher",
         "local_forkserver"], capture_output=True, text=True, timeout=600,
        env=dict(os.environ, PATH=BARE_PATH, LPA_DOMAINBED_JOBS="3",
                 LPA_DOMAINBED_PLUGINS=str(plugin), CUDA_VISIBLE_DEVICES="3,5"))

    assert run.returncode == 0, run.stderr[-3000:]
    assert "[local_forkserver] 3/3 finished (0 failed)" in run.stdout
    assert "subprocesses" not in run.stderr  # every job was forked
    job_dirs = [path for path in out.iterdir() if path.is_dir()]
    assert len(job_dirs) == 3
    assert all((d / "done").is_file() and (d / "launcher.log").is_file() for d in job_dirs)
    assert not list(out.glob(".lpa-domainbed-sweep.lock"))
    reports = sorted(path.read_text() for path in tmp_path.glob("modules-*.txt"))
    assert reports == [repr(([], "3"))] * 2 + [repr(([], "5"))], reports
    firsts = sorted((d / "launcher.log").read_text().splitlines()[0].split(" job ")[1][2:]
                    for d in job_dirs)
    assert firsts == ["runs on GPU 3 (CUDA_VISIBLE_DEVICES=3)"] * 2 + [
        "runs on GPU 5 (CUDA_VISIBLE_DEVICES=5)"]
