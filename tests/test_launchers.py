"""The command launchers: every job runs, failures are returned and reported with their log,
Ctrl-C leaves no process behind, settings are validated.

The submitit tests run submitit's local executor (``LPA_SUBMITIT_CLUSTER=local``), plus one
test through a fake Slurm (``srun``/``sbatch``/``sacct`` scripts on ``PATH``) that checks the job
arrays' sbatch options. They skip, with the reason shown, when submitit is not installed.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from lpa_domainbed.launchers import LAUNCHERS
from lpa_domainbed.launchers import local_parallel
from lpa_domainbed.launchers import submitit_launcher as submitit_module
from lpa_domainbed.launchers.local_parallel import local_parallel_launcher

NO_SUBMITIT = "submitit is not installed: pip install 'lpa-domainbed[slurm]'"
_real_sleep = time.sleep


# --------------------------------------------------------------------------- helpers


def _writer_command(path: Path, output_dir: Path | None = None) -> str:
    """A tiny job: a Python process that writes ``path`` (and names a DomainBed-like output dir)."""
    code = f"open({str(path)!r}, 'w').write('ok')"
    command = f'{sys.executable} -c "{code}"'
    return f"{command} --output_dir {output_dir}" if output_dir else command


def _sleeper_command(pid_dir: Path, index: int) -> str:
    """A job that records its shell's pid and a background child's pid, then waits 30 s."""
    return (f"echo $$ > {pid_dir}/shell{index}.pid; sleep 30 & echo $! > {pid_dir}/child{index}.pid;"
            f" wait")


def _recorded_pids(pid_dir: Path, expected: int) -> list[int]:
    pids = []
    for path in sorted(pid_dir.glob("*.pid")):
        text = path.read_text()
        if text.endswith("\n"):
            pids.append(int(text))
    return pids if len(pids) == expected else []


def _wait_for_pids(pid_dir: Path, expected: int, timeout: float = 20.0) -> list[int]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        pids = _recorded_pids(pid_dir, expected)
        if pids:
            return pids
        _real_sleep(0.05)
    raise AssertionError(f"the jobs did not record {expected} pids in {timeout}s")


def _is_alive(pid: int) -> bool:
    """True for a live process; a zombie (dead, not yet reaped by init) counts as gone."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, IndexError):
        return False
    return state != "Z"


def _assert_all_gone(pids: list[int], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while any(_is_alive(pid) for pid in pids) and time.monotonic() < deadline:
        _real_sleep(0.05)
    assert not [pid for pid in pids if _is_alive(pid)], "processes outlived the launcher"


def _interrupt_once_pids_exist(pid_dir: Path, expected: int, found: list[int]):
    """A replacement for the launcher's sleep: Ctrl-C once every job has started, then sleep
    (the clean-up's own waits may sleep too)."""

    def fake_sleep(seconds: float) -> None:
        if found:
            _real_sleep(seconds)
            return
        found.extend(_wait_for_pids(pid_dir, expected))
        raise KeyboardInterrupt

    return fake_sleep


# --------------------------------------------------------------------------- registry


def test_both_launchers_are_registered_and_the_package_does_not_import_submitit():
    assert LAUNCHERS["local_parallel"] is local_parallel_launcher
    assert LAUNCHERS["submitit"] is submitit_module.submitit_launcher
    check = "import sys, lpa_domainbed.launchers; assert 'submitit' not in sys.modules"
    subprocess.run([sys.executable, "-c", check], check=True)


# --------------------------------------------------------------------------- local_parallel


def test_local_parallel_runs_every_job_and_reports_the_failed_one(tmp_path, capsys):
    outputs = [tmp_path / f"out{i}.txt" for i in range(3)]
    job_dirs = [tmp_path / f"job{i}" for i in range(4)]
    failing = f'{sys.executable} -c "import sys; sys.exit(3)" --output_dir {job_dirs[3]}'
    commands = [_writer_command(out, job_dir) for out, job_dir in zip(outputs, job_dirs)]
    commands.insert(1, failing)

    failed = local_parallel_launcher(commands, max_jobs=2)

    assert failed == [failing]
    assert all(out.read_text() == "ok" for out in outputs)
    assert all((job_dir / "launcher.log").is_file() for job_dir in job_dirs)
    err = capsys.readouterr().err
    assert "1 of 4 jobs failed" in err
    assert f"exit 3: log {job_dirs[3] / 'launcher.log'}" in err


def test_local_parallel_ctrl_c_leaves_no_orphan(tmp_path, monkeypatch):
    found: list[int] = []
    monkeypatch.setattr(local_parallel.time, "sleep",
                        _interrupt_once_pids_exist(tmp_path, 4, found))
    commands = [_sleeper_command(tmp_path, i) for i in range(2)]

    with pytest.raises(KeyboardInterrupt):
        local_parallel_launcher(commands, max_jobs=2)

    monkeypatch.undo()
    assert len(found) == 4
    _assert_all_gone(found)


@pytest.mark.parametrize("value", ["0", "-2", "many"])
def test_local_parallel_rejects_a_bad_job_count(monkeypatch, value):
    monkeypatch.setenv("LPA_DOMAINBED_JOBS", value)
    with pytest.raises(ValueError, match="LPA_DOMAINBED_JOBS.*positive integer"):
        local_parallel_launcher(["true"])


# --------------------------------------------------------------------------- submitit


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
    commands = [_writer_command(out) for out in outputs]
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
                                                                     monkeypatch):
    pid_dir = tmp_path / "pids"
    pid_dir.mkdir()
    found: list[int] = []
    monkeypatch.setattr(submitit_module, "_sleep", _interrupt_once_pids_exist(pid_dir, 4, found))
    commands = [_sleeper_command(pid_dir, i) for i in range(2)]

    with pytest.raises(KeyboardInterrupt):
        submitit_module.submitit_launcher(commands)

    assert len(found) == 4
    _assert_all_gone(found)


def test_submitit_with_nothing_to_launch_returns_at_once(submitit_env):
    assert submitit_module.submitit_launcher([]) == []


_FAKE_SBATCH = """\
import os, re, subprocess, sys
script = sys.argv[-1]
text = open(script).read()
counter = os.path.join(os.environ["FAKE_SLURM_DIR"], "next_id")
job_id = int(open(counter).read()) if os.path.exists(counter) else 1000
if (job_id - 1000) // 100 >= int(os.environ.get("FAKE_SLURM_ACCEPT", "1000")):
    sys.exit("sbatch: error: QOSMaxSubmitJobPerUserLimit")
open(counter, "w").write(str(job_id + 100))
kept = os.path.join(os.environ["FAKE_SLURM_DIR"], f"{job_id}.sbatch")  # submitit renames script
os.link(script, kept)
array = re.search(r"#SBATCH --array=(\\d+)-(\\d+)", text)
indices = range(int(array.group(1)), int(array.group(2)) + 1) if array else [None]
for index in indices:
    env = dict(os.environ, SLURM_NTASKS="1", SLURM_JOB_NUM_NODES="1", SLURM_NODEID="0",
               SLURM_PROCID="0", SLURM_LOCALID="0", SLURM_JOB_ID=str(job_id))
    if index is not None:
        env.update(SLURM_ARRAY_JOB_ID=str(job_id), SLURM_ARRAY_TASK_ID=str(index),
                   SLURM_JOB_ID=str(job_id + 1 + index))
    # Start the task only once submitit has written its pickle (after sbatch returns): a
    # real scheduler never starts a job that fast, and a busy machine can take > 60 s.
    folder = os.path.dirname(re.search(r"#SBATCH --output=(\\S+)", text).group(1))
    pickle = os.path.join(folder, f"{job_id}_{index}_submitted.pkl" if index is not None
                          else f"{job_id}_submitted.pkl")
    wait = f"while [ ! -e '{pickle}' ]; do sleep 0.2; done; exec bash '{kept}'"
    subprocess.Popen(["bash", "-c", wait], env=env, start_new_session=True,
                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
print(f"Submitted batch job {job_id}")
"""

_FAKE_SRUN = """\
import os, subprocess, sys
args = sys.argv[1:]
files = {}
while args[0].startswith("--"):
    option = args.pop(0)
    if option in ("--output", "--error"):
        files[option] = args.pop(0)
job = os.environ.get("SLURM_ARRAY_JOB_ID") or os.environ["SLURM_JOB_ID"]
def expand(path):
    return (path.replace("%A", job).replace("%a", os.environ.get("SLURM_ARRAY_TASK_ID", ""))
            .replace("%j", os.environ["SLURM_JOB_ID"]).replace("%t", "0"))
with open(expand(files["--output"]), "a") as out, open(expand(files["--error"]), "a") as err:
    sys.exit(subprocess.call(args, stdout=out, stderr=err))
"""


def _fake_slurm(bin_dir: Path) -> None:
    """``sbatch`` runs every array task at once in the background, ``srun`` runs its command
    with the logs redirected, ``sacct`` knows nothing (submitit then relies on result files)."""
    bin_dir.mkdir()
    scripts = {"sbatch": _FAKE_SBATCH, "srun": _FAKE_SRUN, "sacct": ""}
    for name, body in scripts.items():
        path = bin_dir / name
        path.write_text(f"#!{sys.executable}\n{body}")
        path.chmod(0o755)


def test_submitit_on_a_fake_slurm_submits_capped_job_arrays(tmp_path, submitit_env, monkeypatch,
                                                            capsys):
    slurm_dir = tmp_path / "slurm"
    _fake_slurm(slurm_dir)
    monkeypatch.setenv("FAKE_SLURM_DIR", str(slurm_dir))
    monkeypatch.setenv("PATH", f"{slurm_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.delenv("LPA_SUBMITIT_CLUSTER")  # submitit finds srun: Slurm
    monkeypatch.setenv("LPA_SLURM_ARRAY_PARALLELISM", "2")
    monkeypatch.setenv("LPA_SLURM_MAX_ARRAY_SIZE", "2")
    monkeypatch.setenv("LPA_SLURM_PARTITION", "gpu")
    monkeypatch.setenv("LPA_SLURM_MEM_GB", "16")
    monkeypatch.setenv("LPA_SLURM_EXTRA", '{"qos": "high"}')
    outputs = [tmp_path / f"out{i}.txt" for i in range(3)]
    commands = [_writer_command(out) for out in outputs]
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
    _fake_slurm(slurm_dir)
    monkeypatch.setenv("FAKE_SLURM_DIR", str(slurm_dir))
    monkeypatch.setenv("FAKE_SLURM_ACCEPT", "1")  # the second array hits a job limit
    monkeypatch.setenv("PATH", f"{slurm_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("LPA_SUBMITIT_CLUSTER", "slurm")
    monkeypatch.setenv("LPA_SLURM_MAX_ARRAY_SIZE", "2")
    outputs = [tmp_path / f"out{i}.txt" for i in range(4)]
    commands = [_writer_command(out) for out in outputs]

    failed = submitit_module.submitit_launcher(commands)

    assert failed == commands[2:]
    assert [out.exists() for out in outputs] == [True, True, False, False]
    err = capsys.readouterr().err
    assert "QOSMaxSubmitJobPerUserLimit" in err and "2 commands were not submitted" in err
    assert "delete_incomplete" in err


# --------------------------------------------------------------------------- settings


def test_settings_come_from_the_environment_over_the_config_file(tmp_path):
    config = tmp_path / "submitit.toml"
    config.write_text(textwrap.dedent("""\
        partition = "long"
        gpus = 2
        time_min = 60
        extra = { constraint = "a100" }
        """))
    environ = {"LPA_SUBMITIT_CONFIG": str(config), "LPA_SLURM_GPUS": "4", "LPA_SLURM_CPUS": ""}

    settings = submitit_module.load_settings(environ)

    assert (settings.partition, settings.gpus, settings.time_min) == ("long", 4, 60)
    assert settings.cpus == 8 and settings.mem_gb is None and settings.cluster is None
    assert settings.extra == {"constraint": "a100"}
    assert settings.parallelism("slurm") == 64


@pytest.mark.parametrize("variable, value, advice", [
    ("LPA_SLURM_GPUS", "-1", "non-negative integer"),
    ("LPA_SLURM_CPUS", "eight", "positive integer"),
    ("LPA_SLURM_MEM_GB", "0", "positive number"),
    ("LPA_SLURM_TIME_MIN", "1.5", "positive integer"),
    ("LPA_SLURM_ARRAY_PARALLELISM", "0", "positive integer"),
    ("LPA_SLURM_EXTRA", "qos=high", "JSON object"),
    ("LPA_SLURM_EXTRA", '["qos"]', "JSON object"),
    ("LPA_SUBMITIT_CLUSTER", "pbs", "'slurm' or 'local'"),
])
def test_an_invalid_setting_names_the_variable_and_what_to_set(variable, value, advice):
    with pytest.raises(ValueError, match=f"{variable}=.*set it to .*{advice}"):
        submitit_module.load_settings({variable: value})


def test_a_bad_config_file_is_named(tmp_path):
    config = tmp_path / "submitit.toml"
    config.write_text("gpu = 1\n")
    with pytest.raises(ValueError, match="LPA_SUBMITIT_CONFIG=.*unknown key.*gpu.*gpus"):
        submitit_module.load_settings({"LPA_SUBMITIT_CONFIG": str(config)})
    config.write_text('gpus = "two"\n')
    with pytest.raises(ValueError, match=r"gpus in .*\(LPA_SLURM_GPUS\)='two'"):
        submitit_module.load_settings({"LPA_SUBMITIT_CONFIG": str(config)})
    with pytest.raises(ValueError, match="LPA_SUBMITIT_CONFIG=.*cannot read"):
        submitit_module.load_settings({"LPA_SUBMITIT_CONFIG": str(tmp_path / "missing.toml")})
