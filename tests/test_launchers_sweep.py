"""The launchers under DomainBed's own sweep script, started the way a user starts it:
``<venv>/bin/python -m domainbed.scripts.sweep launch ...`` with the environment not activated
(its ``bin`` not on PATH). Each sweep is three ERM jobs on DomainBed's Debug28 (random data).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from conftest import requires_domainbed
from launcher_helpers import BARE_PATH, is_alive

pytestmark = requires_domainbed


def _sweep(tmp_path: Path, launcher: str, steps: int) -> list[str]:
    return [sys.executable, "-m", "domainbed.scripts.sweep", "launch", "--datasets", "Debug28",
            "--algorithms", "ERM", "--data_dir", str(tmp_path), "--output_dir",
            str(tmp_path / "sweep"), "--command_launcher", launcher, "--n_trials", "1",
            "--n_hparams", "1", "--steps", str(steps), "--hparams",
            json.dumps({"batch_size": 4}), "--single_test_envs", "--skip_confirmation"]


def _env(**variables: str) -> dict:
    return dict(os.environ, PATH=BARE_PATH, **variables)


def _processes_mentioning(text: str) -> list[int]:
    """Live processes whose command line contains ``text``."""
    pids = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and text in (entry / "cmdline").read_text() \
                    and is_alive(int(entry.name)):
                pids.append(int(entry.name))
        except OSError:
            pass
    return pids


def test_a_bad_setting_leaves_no_job_directory_and_the_corrected_rerun_runs_every_job(tmp_path):
    bad = subprocess.run(_sweep(tmp_path, "local_parallel", 1), env=_env(LPA_DOMAINBED_JOBS="0"),
                         capture_output=True, text=True, timeout=300)

    assert bad.returncode != 0
    assert "error: LPA_DOMAINBED_JOBS='0' is invalid" in bad.stderr
    assert "Traceback" not in bad.stderr  # the message alone
    assert not [path for path in (tmp_path / "sweep").iterdir() if path.is_dir()]

    good = subprocess.run(_sweep(tmp_path, "local_parallel", 1), env=_env(LPA_DOMAINBED_JOBS="3"),
                          capture_output=True, text=True, timeout=600)

    assert good.returncode == 0, good.stderr[-2000:]
    assert "3/3 finished (0 failed)" in good.stdout
    assert len(list((tmp_path / "sweep").glob("*/done"))) == 3


def test_ctrl_c_during_a_sweep_prints_one_line_and_stops_every_job(tmp_path):
    out, err = tmp_path / "stdout.txt", tmp_path / "stderr.txt"
    with open(out, "w") as stdout, open(err, "w") as stderr:
        # A shell that starts a command in the background (a CI runner's `cmd &`) makes it
        # ignore SIGINT, and Python keeps an inherited "ignore": give the sweep the default, as
        # a terminal would.
        sweep = subprocess.Popen(_sweep(tmp_path, "local_parallel", 100000),
                                 env=_env(LPA_DOMAINBED_JOBS="3"), stdout=stdout, stderr=stderr,
                                 start_new_session=True,
                                 preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        deadline = time.monotonic() + 120
        while len(list(tmp_path.glob("sweep/*/launcher.log"))) < 3:
            assert sweep.poll() is None and time.monotonic() < deadline, err.read_text()
            time.sleep(0.2)
        time.sleep(1.0)
        os.killpg(sweep.pid, signal.SIGINT)  # what Ctrl-C in its terminal does
        returncode = sweep.wait(timeout=60)
    finally:
        if sweep.poll() is None:
            os.killpg(sweep.pid, signal.SIGKILL)
            for pid in _processes_mentioning(str(tmp_path / "sweep")):  # no orphan hogs the CPU
                os.kill(pid, signal.SIGKILL)

    assert returncode == 130
    assert "Traceback" not in err.read_text()
    lines = [line for line in err.read_text().splitlines() if "interrupted" in line]
    assert lines == ["[local_parallel] interrupted: stopped 3 unfinished jobs, 0 finished jobs "
                     "are kept; the stopped ones are incomplete (see 'Resume' in "
                     "docs/launchers.md)"]
    deadline = time.monotonic() + 10
    while _processes_mentioning(str(tmp_path / "sweep")) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not _processes_mentioning(str(tmp_path / "sweep")), "a job outlived the sweep"
