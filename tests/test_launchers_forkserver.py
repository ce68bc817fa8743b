"""``local_forkserver`` behaves as ``local_parallel`` towards its user: the shared behaviour of
test_launchers.py, for both launchers (commands that are not train commands take
``local_forkserver``'s subprocess path here; test_launchers_forkserver_train.py forks real
training jobs), and which commands it forks.
"""

from __future__ import annotations

import json
import os
import shlex
import signal
import sys
import time

import pytest

from conftest import requires_domainbed
from launcher_helpers import (BARE_PATH, _real_sleep, assert_all_gone, interrupt_once_pids_exist,
                              python_and_env_probe, recorded_pids, sleeper_command,
                              wait_for_pids, writer_command)
from lpa_domainbed.tools.launchers import (LAUNCHERS, forkserver, local_parallel,
                                           validate_settings)
from lpa_domainbed.tools.launchers.forkserver import local_forkserver_launcher, train_arguments
from lpa_domainbed.tools.launchers.local_parallel import local_parallel_launcher

LAUNCHER_FUNCTIONS = {"local_parallel": local_parallel_launcher,
                      "local_forkserver": local_forkserver_launcher}
both_launchers = pytest.mark.parametrize("name", list(LAUNCHER_FUNCTIONS))


def test_local_forkserver_is_registered():
    assert LAUNCHERS["local_forkserver"] is local_forkserver_launcher


@both_launchers
def test_every_job_runs_and_the_failed_one_is_reported(name, tmp_path, capsys):
    outputs = [tmp_path / f"out{i}.txt" for i in range(3)]
    job_dirs = [tmp_path / f"job{i}" for i in range(4)]
    failing = f'{sys.executable} -c "import sys; sys.exit(3)" --output_dir {job_dirs[3]}'
    commands = [writer_command(out, job_dir) for out, job_dir in zip(outputs, job_dirs)]
    commands.insert(1, failing)

    failed = LAUNCHER_FUNCTIONS[name](commands, max_jobs=2)

    assert failed == [failing]
    assert all(out.read_text() == "ok" for out in outputs)
    assert all((job_dir / "launcher.log").is_file() for job_dir in job_dirs)
    captured = capsys.readouterr()
    assert f"[{name}] 4/4 finished (1 failed), 0 running, 0 waiting" in captured.out
    assert f"[{name}] job 1 failed (exit 3); log: {job_dirs[3] / 'launcher.log'}" in captured.err
    assert "1 of 4 jobs failed" in captured.err
    assert f"exit 3: log {job_dirs[3] / 'launcher.log'}" in captured.err
    said_once = captured.err.count("they run as subprocesses")
    assert said_once == (name == "local_forkserver")


@both_launchers
def test_ctrl_c_prints_one_line_and_leaves_no_orphan(name, tmp_path, monkeypatch, capsys):
    found: list[int] = []
    monkeypatch.setattr(time, "sleep", interrupt_once_pids_exist(tmp_path, 4, found))
    commands = [sleeper_command(tmp_path, i) for i in range(2)]

    with pytest.raises(SystemExit) as stop:
        LAUNCHER_FUNCTIONS[name](commands, max_jobs=2)

    monkeypatch.undo()
    assert stop.value.code == 130
    assert len(found) == 4
    assert_all_gone(found)
    err = [line for line in capsys.readouterr().err.splitlines() if "subprocesses" not in line]
    assert err == [f"[{name}] interrupted: stopped 2 unfinished jobs, 0 finished jobs are "
                   "kept; the stopped ones are incomplete (see 'Resume' in docs/launchers.md)"]


@both_launchers
def test_jobs_get_the_sweeps_environment_and_interpreter(name, tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", BARE_PATH)  # the sweep's environment is not activated
    monkeypatch.setenv("LPA_DOMAINBED_PLUGINS", str(tmp_path / "my_plugins.py"))
    out = tmp_path / "probe.txt"

    assert LAUNCHER_FUNCTIONS[name]([python_and_env_probe(out)], max_jobs=1) == []

    assert out.read_text().splitlines() == [sys.executable, str(tmp_path / "my_plugins.py")]


@both_launchers
@pytest.mark.parametrize("value", ["0", "-2", "many"])
def test_a_bad_job_count_is_refused_before_any_job(name, monkeypatch, value, tmp_path):
    monkeypatch.setenv("LPA_DOMAINBED_JOBS", value)
    job_dir = tmp_path / "job"
    job_dir.mkdir()  # made by DomainBed's Job.launch before the launcher runs
    with pytest.raises(ValueError, match="LPA_DOMAINBED_JOBS=.*set it to a positive integer"):
        LAUNCHER_FUNCTIONS[name]([f"true --output_dir {job_dir}"])
    assert not job_dir.exists()


@requires_domainbed
def test_domainbeds_train_commands_are_forked_and_others_are_not(tmp_path, monkeypatch):
    from domainbed.scripts.sweep import Job

    monkeypatch.setenv("PATH", BARE_PATH)  # bare ``python`` means the sweep's interpreter
    train_args = {"dataset": "RotatedDigits", "algorithm": "LPA", "test_envs": [0, 1],
                  "hparams": json.dumps({"lpa_eps": 0.5, "note": "a b;c $x"}),
                  "data_dir": str(tmp_path / "my data"), "seed": 3, "steps": 5}
    command = Job(train_args, str(tmp_path / "sweep")).command_str
    env = forkserver._child_env()

    argv = train_arguments(command, env)

    assert argv == shlex.split(command)[3:]
    assert argv[argv.index("--hparams") + 1] == train_args["hparams"]
    assert train_arguments(command.replace("python", sys.executable, 1), env) == argv
    tail = command.split(" ", 1)[1]
    for other in ["/usr/bin/python3 " + tail, "python -m domainbed.scripts.sweep launch",
                  command + "; touch x", command + " > log", command + " $HOME",
                  command + ' "--x"', "echo " + tail, "python -c 1"]:
        assert train_arguments(other, env) is None, other


@both_launchers
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP], ids=["SIGTERM", "SIGHUP"])
def test_sigterm_and_sighup_stop_the_jobs_as_ctrl_c(name, tmp_path, monkeypatch, capsys, signum):
    found: list[int] = []
    monkeypatch.setattr(time, "sleep", interrupt_once_pids_exist(tmp_path, 4, found, signum))
    before = signal.getsignal(signum)
    with pytest.raises(SystemExit) as stop:
        LAUNCHER_FUNCTIONS[name]([sleeper_command(tmp_path, i) for i in range(2)], max_jobs=2)

    monkeypatch.undo()
    assert stop.value.code == 130
    assert_all_gone(found)
    assert f"[{name}] interrupted: stopped 2 unfinished jobs" in capsys.readouterr().err
    assert signal.getsignal(signum) == before  # the launcher's handler is gone again


@both_launchers
def test_a_rerun_job_moves_its_earlier_attempt_aside_first(name, tmp_path):
    job_dir = tmp_path / "job"
    job_dir.mkdir()
    (job_dir / "results.jsonl").write_text('{"step": 0}\n')  # an earlier attempt's files
    (job_dir / "launcher.log").write_text("attempt 1\n")

    assert LAUNCHER_FUNCTIONS[name]([writer_command(job_dir / "out.txt", job_dir)]) == []

    assert sorted(p.name for p in job_dir.iterdir()) == ["attempt-1", "launcher.log", "out.txt"]
    assert (job_dir / "attempt-1" / "results.jsonl").read_text() == '{"step": 0}\n'
    assert (job_dir / "attempt-1" / "launcher.log").read_text() == "attempt 1\n"


def test_local_forkserver_settings_are_validated():
    with pytest.raises(ValueError, match="LPA_DOMAINBED_JOBS='x' is invalid"):
        validate_settings("local_forkserver", environ={"LPA_DOMAINBED_JOBS": "x"})


@both_launchers
def test_a_job_that_cannot_start_stops_the_others_and_leaves_the_rest_unlaunched(
        name, tmp_path, monkeypatch):
    job_dirs = [tmp_path / f"job{i}" for i in range(3)]
    for job_dir in job_dirs:
        job_dir.mkdir()  # made by DomainBed's Job.launch before the launcher runs
    commands = [f": --output_dir {job_dirs[0]} ; {sleeper_command(tmp_path, 0)}",
                *(writer_command(d / "out.txt", d) for d in job_dirs[1:])]
    real_start_job = local_parallel.start_job

    def start_job(command, **popen_kwargs):
        if command == commands[1]:
            wait_for_pids(tmp_path, 2)
            raise BlockingIOError("fork: Resource temporarily unavailable")
        return real_start_job(command, **popen_kwargs)

    monkeypatch.setattr(local_parallel, "start_job", start_job)
    with pytest.raises(BlockingIOError, match="Resource temporarily unavailable"):
        LAUNCHER_FUNCTIONS[name](commands, max_jobs=2)

    assert_all_gone(recorded_pids(tmp_path, 2))
    assert (job_dirs[0] / "launcher.log").is_file()  # started: incomplete, kept
    assert not job_dirs[1].exists() and not job_dirs[2].exists()  # a rerun launches them


@both_launchers
def test_a_job_whose_shell_is_killed_fails_and_leaves_no_process(name, tmp_path, monkeypatch,
                                                                 capsys):
    """``kill -9`` of a job's ``/bin/sh`` alone: the job fails and what its shell started (its
    python) is stopped with it, so it cannot finish unwatched and pass for done."""
    found: list[int] = []

    def kill_the_shell_once_started(seconds):
        if not found:
            found.extend(wait_for_pids(tmp_path, 2))
            os.kill(int((tmp_path / "shell0.pid").read_text()), signal.SIGKILL)
        _real_sleep(seconds)

    monkeypatch.setattr(time, "sleep", kill_the_shell_once_started)
    command = sleeper_command(tmp_path, 0)
    failed = LAUNCHER_FUNCTIONS[name]([command], max_jobs=1)
    monkeypatch.undo()

    assert failed == [command]
    assert_all_gone(found)
    child = int((tmp_path / "child0.pid").read_text())
    err = capsys.readouterr().err
    assert (f"[{name}] job 0 ended (exit {-signal.SIGKILL}) while processes of it still ran "
            f"(pids {child}): stopped them") in err
    assert f"[{name}] 1 of 1 jobs failed" in err
