"""The launchers' shared behaviour and ``local_parallel``: every job runs, failures are returned
and reported with their log, Ctrl-C ends with one line and leaves no process behind, jobs see
the sweep's environment and interpreter, and settings are checked before any job directory
is left behind.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from launcher_helpers import (BARE_PATH, assert_all_gone, interrupt_once_pids_exist,
                              python_and_env_probe, recorded_pids, sleeper_command,
                              wait_for_pids, writer_command)
from lpa_domainbed.tools.launchers import LAUNCHERS, local_parallel, validate_settings
from lpa_domainbed.tools.launchers import settings as settings_module
from lpa_domainbed.tools.launchers import submitit_launcher as submitit_module
from lpa_domainbed.tools.launchers.local_parallel import local_parallel_launcher
from lpa_domainbed.tools.launchers.settings import settings_or_cleanup, slurm_settings


def test_both_launchers_are_registered_and_the_package_does_not_import_submitit():
    assert LAUNCHERS["local_parallel"] is local_parallel_launcher
    assert LAUNCHERS["submitit"] is submitit_module.submitit_launcher
    check = "import sys, lpa_domainbed.tools.launchers; assert 'submitit' not in sys.modules"
    subprocess.run([sys.executable, "-c", check], check=True)


def test_local_parallel_runs_every_job_and_reports_the_failed_one(tmp_path, capsys):
    outputs = [tmp_path / f"out{i}.txt" for i in range(3)]
    job_dirs = [tmp_path / f"job{i}" for i in range(4)]
    failing = f'{sys.executable} -c "import sys; sys.exit(3)" --output_dir {job_dirs[3]}'
    commands = [writer_command(out, job_dir) for out, job_dir in zip(outputs, job_dirs)]
    commands.insert(1, failing)

    failed = local_parallel_launcher(commands, max_jobs=2)

    assert failed == [failing]
    assert all(out.read_text() == "ok" for out in outputs)
    assert all((job_dir / "launcher.log").is_file() for job_dir in job_dirs)
    err = capsys.readouterr().err
    assert "1 of 4 jobs failed" in err
    assert f"exit 3: log {job_dirs[3] / 'launcher.log'}" in err


def test_local_parallel_ctrl_c_prints_one_line_and_leaves_no_orphan(tmp_path, monkeypatch,
                                                                    capsys):
    found: list[int] = []
    monkeypatch.setattr(local_parallel.time, "sleep",
                        interrupt_once_pids_exist(tmp_path, 4, found))
    commands = [sleeper_command(tmp_path, i) for i in range(2)]

    with pytest.raises(SystemExit) as stop:
        local_parallel_launcher(commands, max_jobs=2)

    monkeypatch.undo()
    assert stop.value.code == 130
    assert len(found) == 4
    assert_all_gone(found)
    err = capsys.readouterr().err.splitlines()
    assert err == ["[local_parallel] interrupted: stopped 2 unfinished jobs, 0 finished jobs are "
                   "kept; the stopped ones are incomplete (see 'Resume' in docs/launchers.md)"]


def test_a_ctrl_c_while_a_job_starts_stops_that_job_too(tmp_path, capsys):
    """SIGINT that lands between a job's fork and its record (a loaded machine widens that
    moment): the job is still stopped, not left running in its own session."""
    import signal

    class InterruptedWhileStarting(local_parallel.Starter):
        def start(self, index, command, log, extra_env):
            started = super().start(index, command, log, extra_env)
            wait_for_pids(tmp_path, 2)
            os.kill(os.getpid(), signal.SIGINT)  # the job runs; the launcher has not recorded it
            return started

    with pytest.raises(SystemExit) as stop:
        local_parallel.run_locally([sleeper_command(tmp_path, 0)], 1,
                                   InterruptedWhileStarting(dict(os.environ)))
    assert stop.value.code == 130
    assert_all_gone(recorded_pids(tmp_path, 2))
    assert "interrupted: stopped 1 unfinished jobs" in capsys.readouterr().err


def test_local_parallel_jobs_get_the_sweeps_environment_and_interpreter(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", BARE_PATH)  # the sweep's environment is not activated
    monkeypatch.setenv("LPA_DOMAINBED_PLUGINS", str(tmp_path / "my_plugins.py"))
    out = tmp_path / "probe.txt"

    assert local_parallel_launcher([python_and_env_probe(out)], max_jobs=1) == []

    assert out.read_text().splitlines() == [sys.executable, str(tmp_path / "my_plugins.py")]


@pytest.mark.parametrize("value", ["0", "-2", "many"])
def test_local_parallel_rejects_a_bad_job_count(monkeypatch, value):
    monkeypatch.setenv("LPA_DOMAINBED_JOBS", value)
    with pytest.raises(ValueError, match="LPA_DOMAINBED_JOBS=.*set it to a positive integer"):
        local_parallel_launcher(["true"])
    with pytest.raises(ValueError, match="LPA_DOMAINBED_JOBS="):
        validate_settings()


def test_an_invalid_setting_removes_the_still_empty_job_directories(tmp_path, monkeypatch):
    # DomainBed's Job.launch made these before calling the launcher; the second has output.
    empty, used = tmp_path / "job_a", tmp_path / "job_b"
    empty.mkdir()
    used.mkdir()
    (used / "out.txt").write_text("a previous run")
    commands = [f"python -m domainbed.scripts.train --output_dir {d} --seed 0"
                for d in (empty, used)]
    monkeypatch.setenv("LPA_SLURM_GPUS", "two")

    with pytest.raises(ValueError, match="LPA_SLURM_GPUS='two' is invalid"):
        settings_or_cleanup(commands, "submitit", slurm_settings)

    assert not empty.exists() and (used / "out.txt").is_file()


def test_settings_come_from_the_environment():
    environ = {"LPA_SLURM_PARTITION": "long", "LPA_SLURM_GPUS": "4", "LPA_SLURM_CPUS": " ",
               "LPA_SLURM_EXTRA": '{"constraint": "a100"}', "LPA_SLURM_MEM_GB": "7.5"}

    settings = slurm_settings(environ)

    assert (settings.partition, settings.gpus, settings.cpus) == ("long", 4, 8)
    assert settings.mem_gb == 7.5 and settings.time_min == 1440 and settings.cluster is None
    assert settings.extra == {"constraint": "a100"} and settings.array_parallelism is None
    validate_settings("local", environ={"LPA_DOMAINBED_JOBS": "x"})  # DomainBed's: no settings


@pytest.mark.parametrize("variable, value, advice", [
    ("LPA_SLURM_GPUS", "-1", "non-negative integer"),
    ("LPA_SLURM_CPUS", "eight", "positive integer"),
    ("LPA_SLURM_MEM_GB", "0", "positive number"),
    ("LPA_SLURM_TIME_MIN", "1.5", "positive integer"),
    ("LPA_SLURM_ARRAY_PARALLELISM", "0", "positive integer"),
    ("LPA_SLURM_MAX_ARRAY_SIZE", "-5", "positive integer"),
    ("LPA_SLURM_EXTRA", "qos=high", "JSON object"),
    ("LPA_SLURM_EXTRA", '["qos"]', "JSON object"),
    ("LPA_SUBMITIT_CLUSTER", "pbs", "'slurm' or 'local'"),
])
def test_an_invalid_setting_names_the_variable_and_what_to_set(variable, value, advice):
    with pytest.raises(ValueError, match=f"{variable}=.*set it to .*{advice}"):
        validate_settings("submitit", environ={variable: value})


@pytest.mark.parametrize("variable", [row[1] for row in settings_module._SLURM_VARIABLES])
@pytest.mark.parametrize("char", ["\n", "\r", "\t", "\x00"], ids=["LF", "CR", "TAB", "NUL"])
def test_a_control_character_in_any_slurm_setting_is_refused(variable, char):
    value = f"gpu{char}#SBATCH --time=99999"  # would be an sbatch line of its own
    with pytest.raises(ValueError, match=f"^{variable}=.* is invalid: it holds the control "
                                         f"character .*set it to .*, on one line$"):
        validate_settings("submitit", environ={variable: value})


@pytest.mark.parametrize("extra", ['{"qos": "high\\n#SBATCH --time=99999"}',
                                   '{"qos\\n#SBATCH --time=99999": "high"}'])
def test_a_control_character_inside_an_sbatch_option_is_refused(extra):
    with pytest.raises(ValueError, match="LPA_SLURM_EXTRA=.*holds the control character "
                                         r"\\n, which would end its line"):
        validate_settings("submitit", environ={"LPA_SLURM_EXTRA": extra})


@pytest.mark.parametrize("where, reason", [("file/logs", "file is not a directory"),
                                           ("file", "file is not a directory")])
def test_an_unusable_submitit_log_dir_is_refused_before_anything_is_made(tmp_path, where,
                                                                         reason):
    (tmp_path / "file").write_text("a file where the folder must go\n")
    before = sorted(tmp_path.rglob("*"))
    with pytest.raises(ValueError, match=f"LPA_SUBMITIT_LOG_DIR=.* is invalid \\(.*{reason}\\)"):
        validate_settings("submitit", environ={"LPA_SUBMITIT_LOG_DIR": str(tmp_path / where)})
    assert sorted(tmp_path.rglob("*")) == before


def test_slurm_forced_without_srun_says_what_to_do():
    environ = {"LPA_SUBMITIT_CLUSTER": "slurm", "PATH": os.devnull}
    with pytest.raises(ValueError, match="'srun' is not on PATH.*LPA_SUBMITIT_CLUSTER=local"):
        slurm_settings(environ)


# SIGTERM and SIGHUP: test_launchers_forkserver.py, for local_parallel and local_forkserver.
