"""The ``submitit`` launcher through submitit's local executor (``LPA_SUBMITIT_CLUSTER=local``)
and through a fake Slurm (``srun``/``sbatch``/``sacct`` scripts on ``PATH``) that checks the job
arrays' sbatch options. They skip, with the reason shown, when submitit is not installed.
"""

from __future__ import annotations

import os
import signal
import sys

import pytest

from launcher_helpers import (BARE_PATH, assert_all_gone, fake_slurm, interrupt_once_pids_exist,
                              python_and_env_probe, sleeper_command, writer_command)
from lpa_domainbed.tools.launchers import submitit_launcher as submitit_module

NO_SUBMITIT = "submitit is not installed: pip install 'lpa-domainbed[slurm]'"


@pytest.fixture
def submitit_env(tmp_path, monkeypatch):
    """submitit's local executor, fast polling, settings only from this test's environment."""
    pytest.importorskip("submitit", reason=NO_SUBMITIT)
    for name in list(os.environ):
        if name.startswith(("LPA_SLURM_", "LPA_SUBMITIT_")):
            monkeypatch.delenv(name)
    monkeypatch.setenv("LPA_SUBMITIT_CLUSTER", "local")
    monkeypatch.setenv("LPA_SUBMITIT_LOG_DIR", str(tmp_path / "logs"))
    monkeypatch.setenv("LPA_SLURM_ARRAY_PARALLELISM", "4")
    monkeypatch.setattr(submitit_module, "_POLL_SECONDS", 0.2)
    return tmp_path / "logs"


def test_submitit_local_runs_every_job_and_reports_the_failed_one(tmp_path, submitit_env,
                                                                  capsys):
    outputs = [tmp_path / f"out{i}.txt" for i in range(3)]
    failing = "echo about to fail; exit 3"
    commands = [writer_command(out) for out in outputs]
    commands.insert(2, failing)

    failed = submitit_module.submitit_launcher(commands)

    assert failed == [failing]
    assert all(out.read_text() == "ok" for out in outputs)
    captured = capsys.readouterr()
    stdout_logs = sorted(submitit_env.glob("*/*_0_log.out"))
    assert len(stdout_logs) == 4
    failed_log = next(log for log in stdout_logs if "about to fail" in log.read_text())
    assert f"job 2 failed (exit 3); stdout: {failed_log}, stderr: " in captured.err
    assert f"exit 3: stdout: {failed_log}" in captured.err.split("1 of 4 jobs failed:")[1]
    assert failed_log.with_name(failed_log.name.replace(".out", ".err")).is_file()
    progress = [line.rsplit(",", 1)[0] for line in captured.out.splitlines()
                if "finished" in line]
    assert progress[-1] == "[submitit] 4/4 finished (1 failed), 0 running, 0 queued"
    assert all(a != b for a, b in zip(progress, progress[1:])), "a progress line repeated"


def test_submitit_local_ctrl_c_cancels_the_jobs_and_leaves_no_orphan(tmp_path, submitit_env,
                                                                     monkeypatch, capsys):
    pid_dir = tmp_path / "pids"
    pid_dir.mkdir()
    found: list[int] = []
    monkeypatch.setattr(submitit_module, "_sleep", interrupt_once_pids_exist(pid_dir, 4, found))
    commands = [sleeper_command(pid_dir, i) for i in range(2)]

    # The hard case: a sweep started in the background by a shell ignores SIGINT, which its
    # children would inherit, while submitit's local executor cancels jobs with SIGINT.
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        with pytest.raises(SystemExit) as stop:
            submitit_module.submitit_launcher(commands)
    finally:
        signal.signal(signal.SIGINT, previous)

    assert stop.value.code == 130
    assert len(found) == 4
    assert_all_gone(found)
    assert "[submitit] interrupted: stopped 2 unfinished jobs" in capsys.readouterr().err


def test_submitit_with_nothing_to_launch_returns_at_once(submitit_env):
    assert submitit_module.submitit_launcher([]) == []


def test_submitit_on_a_fake_slurm_submits_capped_job_arrays(tmp_path, submitit_env, monkeypatch,
                                                            capsys):
    slurm_dir = tmp_path / "slurm"
    fake_slurm(slurm_dir)
    monkeypatch.setenv("FAKE_SLURM_DIR", str(slurm_dir))
    monkeypatch.setenv("PATH", f"{slurm_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.delenv("LPA_SUBMITIT_CLUSTER")  # submitit finds srun: Slurm
    monkeypatch.setenv("LPA_SLURM_ARRAY_PARALLELISM", "2")
    monkeypatch.setenv("LPA_SLURM_MAX_ARRAY_SIZE", "2")
    monkeypatch.setenv("LPA_SLURM_PARTITION", "gpu")
    monkeypatch.setenv("LPA_SLURM_MEM_GB", "16")
    monkeypatch.setenv("LPA_SLURM_EXTRA", '{"qos": "high"}')
    outputs = [tmp_path / f"out{i}.txt" for i in range(3)]
    commands = [writer_command(out) for out in outputs]
    commands.insert(1, "exit 3")

    failed = submitit_module.submitit_launcher(commands)

    assert failed == ["exit 3"]
    assert all(out.read_text() == "ok" for out in outputs)
    sbatch_files = sorted(slurm_dir.glob("*.sbatch"))
    assert len(sbatch_files) == 2  # 4 commands, 2 per array
    for sbatch in sbatch_files:
        text = sbatch.read_text()
        for option in ["--array=0-1%1", "--partition=gpu", "--qos=high", "--mem=16GB",
                       "--gpus-per-node=1", "--cpus-per-task=8", "--time=1440"]:
            assert f"#SBATCH {option}\n" in text, (option, text)
    err = capsys.readouterr().err
    assert "job 1 failed (exit 3); stdout: " in err and "/1000_1_0_log.out" in err


def test_submitit_commands_sbatch_refuses_are_returned_and_the_rest_run(tmp_path, submitit_env,
                                                                        monkeypatch, capsys):
    slurm_dir = tmp_path / "slurm"
    fake_slurm(slurm_dir)
    monkeypatch.setenv("FAKE_SLURM_DIR", str(slurm_dir))
    monkeypatch.setenv("FAKE_SLURM_ACCEPT", "1")  # the second array hits a job limit
    monkeypatch.setenv("PATH", f"{slurm_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("LPA_SUBMITIT_CLUSTER", "slurm")
    monkeypatch.setenv("LPA_SLURM_MAX_ARRAY_SIZE", "2")
    outputs = [tmp_path / f"out{i}.txt" for i in range(4)]
    job_dirs = [tmp_path / f"job{i}" for i in range(4)]
    for job_dir in job_dirs:
        job_dir.mkdir()  # as DomainBed's Job.launch does before calling the launcher
    commands = [writer_command(out, job_dir) for out, job_dir in zip(outputs, job_dirs)]

    failed = submitit_module.submitit_launcher(commands)

    assert failed == commands[2:]
    assert [out.exists() for out in outputs] == [True, True, False, False]
    assert [job_dir.exists() for job_dir in job_dirs] == [True, True, False, False]
    err = capsys.readouterr().err
    assert "QOSMaxSubmitJobPerUserLimit" in err and "2 commands were not submitted" in err
    assert "relaunch the sweep" in err


def test_submitit_local_jobs_get_the_sweeps_environment_and_interpreter(tmp_path, submitit_env,
                                                                        monkeypatch):
    monkeypatch.setenv("PATH", BARE_PATH)  # the sweep's environment is not activated
    monkeypatch.setenv("LPA_DOMAINBED_PLUGINS", str(tmp_path / "my_plugins.py"))
    out = tmp_path / "probe.txt"

    assert submitit_module.submitit_launcher([python_and_env_probe(out)]) == []

    assert out.read_text().splitlines() == [sys.executable, str(tmp_path / "my_plugins.py")]


def test_an_invalid_setting_stops_submitit_before_any_job(tmp_path, submitit_env, monkeypatch):
    job_dir = tmp_path / "job"
    job_dir.mkdir()  # made by DomainBed's Job.launch
    monkeypatch.setenv("LPA_SLURM_TIME_MIN", "1h")
    with pytest.raises(ValueError, match="LPA_SLURM_TIME_MIN='1h' is invalid.*positive integer"):
        submitit_module.submitit_launcher([writer_command(tmp_path / "out", job_dir)])
    assert not job_dir.exists() and not submitit_env.exists()


def test_a_launch_that_cannot_start_leaves_no_job_directory(tmp_path, submitit_env, monkeypatch):
    job_dirs = [tmp_path / f"job{i}" for i in range(2)]
    for job_dir in job_dirs:
        job_dir.mkdir()  # made by DomainBed's Job.launch

    def no_space(settings):
        raise OSError(28, "No space left on device", str(submitit_env))

    monkeypatch.setattr(submitit_module, "_make_executor", no_space)
    with pytest.raises(RuntimeError, match=r"^error: \[submitit\] cannot start \(OSError: .*No "
                                           r"space left.*directories were removed.*rerun the "
                                           r"same command$") as failure:
        submitit_module.submitit_launcher([writer_command(tmp_path / "out", d) for d in job_dirs])
    assert isinstance(failure.value, SystemExit)  # in DomainBed's sweep: the message alone
    assert not any(job_dir.exists() for job_dir in job_dirs)  # a plain rerun launches them
