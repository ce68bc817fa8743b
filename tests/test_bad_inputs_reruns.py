"""A sweep killed outright (``kill -9`` of ``lpa-domainbed sweep`` or ``make demo``) and its
rerun, table-driven: each row leaves a live process of the killed sweep (its DomainBed sweep's
process group, recorded in the lock, or a job that still uses its directory) and reruns the
command; the rerun must refuse, naming the processes and how to stop them, and delete nothing.
The last test kills a real sweep and checks that its jobs stop with it.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import HAVE_DOMAINBED, NO_DOMAINBED
from launcher_helpers import BARE_PATH, is_alive
from test_bad_inputs_sweeps import _sweep_file

torch = [pytest.mark.torch, pytest.mark.skipif(not HAVE_DOMAINBED, reason=NO_DOMAINBED)]


def _first_job_dir(tmp_path: Path, command: str) -> Path:
    from lpa_domainbed.tools import sweeps

    if command == "demo":
        jobs = sweeps.list_jobs(sweeps.load_sweep("demo"), tmp_path / "data", tmp_path / "o")
    else:
        jobs = sweeps.list_jobs(sweeps.load_sweep(str(_sweep_file(tmp_path))), tmp_path / "d",
                                tmp_path / "o")
    job_dir = Path(jobs[0].output_dir)
    job_dir.mkdir(parents=True)
    (job_dir / "out.txt").write_text("step 12 of the killed sweep\n")  # incomplete: no 'done'
    return job_dir


def _orphan(tmp_path: Path, command: str, uses: str) -> subprocess.Popen:
    """A process the killed sweep left running: its DomainBed sweep ("group", recorded in a lock
    whose owner is dead) or a job writing to, or running in, an incomplete job's directory."""
    from lpa_domainbed.tools.sweep_lock import LOCK_NAME

    job_dir = _first_job_dir(tmp_path, command)
    if uses == "open file":
        with open(job_dir / "out.txt", "a") as out:
            return subprocess.Popen(["sleep", "120"], stdout=out)
    if uses == "cwd":
        return subprocess.Popen(["sleep", "120"], cwd=job_dir)
    group = subprocess.Popen(["sleep", "120"], start_new_session=True)
    dead = subprocess.Popen([sys.executable, "-c", ""])
    dead.wait()
    (tmp_path / "o" / LOCK_NAME).write_text(f"{dead.pid}\n{os.uname().nodename}\nkilled sweep\n"
                                            f"groups: {group.pid}\n")
    return group


GROUP_LEFT = ("the DomainBed sweep it started still runs into {out} (process group {pid}: pids "
              "{pid}). Stop it with 'kill -INT -- -{pid}'")
JOB_LEFT = ("1 incomplete job is still in use by running processes ({job}: pid {pid}); "
            "{action} would delete their directories")
# (id, command, argv extra, what the orphan uses, fragment)
ROWS = [
    ("sweep, its DomainBed sweep runs on", "sweep", [], "group", GROUP_LEFT),
    ("sweep --restart_incomplete, its DomainBed sweep runs on", "sweep",
     ["--restart_incomplete"], "group", GROUP_LEFT),
    ("sweep --restart_incomplete, a job writes on", "sweep", ["--restart_incomplete"],
     "open file", JOB_LEFT + ". They may be jobs of an earlier sweep that was killed: wait until "
                             "they end, or stop them (kill {pid}), then rerun."),
    ("sweep --restart_incomplete, a job runs in its directory", "sweep",
     ["--restart_incomplete"], "cwd", JOB_LEFT),
    ("demo, a job writes on", "demo", [], "open file", JOB_LEFT),
    ("demo, its DomainBed sweep runs on", "demo", [], "group", GROUP_LEFT),
]


def _rerun(cli, tmp_path: Path, command: str, argv: list[str]) -> int:
    if command == "demo":
        return cli.main(["demo", "--output_dir", str(tmp_path / "o"), "--out_root",
                         str(tmp_path / "results")])
    return cli.main(["sweep", str(_sweep_file(tmp_path)), "--data_dir", str(tmp_path / "d"),
                     "--output_dir", str(tmp_path / "o"), *argv])


@pytest.mark.parametrize("command, argv, uses, fragment",
                         [pytest.param(*r[1:], id=r[0], marks=torch) for r in ROWS])
@pytest.mark.parametrize("alive", [True, False], ids=["orphan alive", "orphan gone"])
def test_a_rerun_never_deletes_what_a_killed_sweep_left_running(
        tmp_path, monkeypatch, capsys, command, argv, uses, fragment, alive):
    from lpa_domainbed.tools import cli

    launched = []
    monkeypatch.setattr(cli, "run_forwarding_signals", launched.append)
    monkeypatch.setattr(cli, "_write_run_record", lambda *args: None)
    monkeypatch.delenv("MAKELEVEL", raising=False)
    orphan = _orphan(tmp_path, command, uses)
    try:
        if not alive:
            orphan.kill()
            orphan.wait()
        before = sorted(p for p in (tmp_path / "o").rglob("*"))
        code = _rerun(cli, tmp_path, command, argv)
    finally:
        orphan.kill()
        orphan.wait()

    err = capsys.readouterr().err
    if not alive:  # nothing left running: the rerun goes ahead (its stand-in launch runs no job)
        assert launched and "still" not in err
        return
    job = next(p for p in (tmp_path / "o").iterdir() if p.is_dir())
    expected = fragment.format(pid=orphan.pid, out=tmp_path / "o", job=job,
                               action="--restart_incomplete" if command == "sweep"
                               else "the demo's restart of incomplete jobs")
    assert code == 2 and expected in err, err
    assert launched == []
    assert sorted(p for p in (tmp_path / "o").rglob("*")) == before  # nothing deleted


def _processes_mentioning(text: str) -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and text in (entry / "cmdline").read_text() \
                    and is_alive(int(entry.name)):
                pids.append(int(entry.name))
        except OSError:
            pass
    return pids


@pytest.mark.parametrize("launcher", [pytest.param("local_parallel", marks=torch)])
def test_kill_9_of_the_sweep_command_stops_its_sweep_and_jobs(tmp_path, launcher):
    """``kill -9`` of ``lpa-domainbed sweep``: DomainBed's sweep, in a group of its own that the
    lock records, gets a Ctrl-C and its launcher stops every job; a rerun then finds nothing
    running (the lock's group is empty) and takes the lock over."""
    from lpa_domainbed.tools.sweep_lock import LOCK_NAME, _owner

    sweep_file = tmp_path / "s.toml"
    sweep_file.write_text('name = "s"\ndatasets = ["Debug28"]\nalgorithms = ["ERM"]\n'
                          "n_trials = 1\nn_hparams = 1\nsteps = 100000\n"
                          'command_launcher = "local"\nhparams = {batch_size = 4}\n')
    out = tmp_path / "sweep"
    cli = subprocess.Popen(
        [sys.executable, "-m", "lpa_domainbed.tools.cli", "sweep", str(sweep_file), "--data_dir",
         str(tmp_path), "--output_dir", str(out), "--launcher", launcher],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        env=dict(os.environ, PATH=BARE_PATH, LPA_DOMAINBED_JOBS="3"))
    try:
        deadline = time.monotonic() + 120
        while len(list(out.glob("*/launcher.log"))) < 3:
            assert cli.poll() is None and time.monotonic() < deadline
            time.sleep(0.2)
        groups = _owner(out / LOCK_NAME)[3]
        cli.kill()  # SIGKILL: no handler of the command runs
        cli.wait()
        deadline = time.monotonic() + 60
        while _processes_mentioning(str(out)) and time.monotonic() < deadline:
            time.sleep(0.2)
        left = _processes_mentioning(str(out))
    finally:
        for pid in _processes_mentioning(str(out)):  # the old code left them all running
            os.kill(pid, signal.SIGKILL)
    assert len(groups) == 1, "the lock does not record the DomainBed sweep's group"
    assert left == [], "the sweep or its jobs outlived the killed command"
    from lpa_domainbed.tools.live_jobs import group_members

    assert group_members(groups[0]) == []
