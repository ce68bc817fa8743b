"""The ``submitit`` launcher against a real Slurm cluster (``make test-slurm``): a throw-away
single-node cluster (:mod:`slurm_cluster`) and DomainBed's own sweep script,
``python -m domainbed.scripts.sweep launch --command_launcher submitit`` with
``LPA_SUBMITIT_CLUSTER=slurm``, directly or under ``lpa-domainbed sweep``. The jobs train on
RotatedDigits for a few steps; ``SlowERM`` (:mod:`slurm_plugin`) holds a job's first attempt
so that it can be cancelled, requeued or timed out while it runs.

Deselected in ``make test`` (marker ``slurm``, and skipped without ``LPA_TEST_SLURM=1``).
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

import slurm_cluster
from conftest import REPO, requires_domainbed
from lpa_domainbed.tools.runinfo import env_with_python

pytestmark = [
    pytest.mark.slurm, requires_domainbed,
    pytest.mark.skipif(os.environ.get("LPA_TEST_SLURM") != "1",
                       reason="real-Slurm tests: run 'make test-slurm'"),
]
CLI = [sys.executable, "-m", "lpa_domainbed.tools.cli"]


@pytest.fixture(scope="session")
def cluster(tmp_path_factory):
    """The cluster's environment; its daemons are stopped by pid at the end, whatever happens."""
    pytest.importorskip("submitit", reason="submitit is not installed: pip install -e '.[test]'")
    root = Path(os.environ.get("LPA_TEST_SLURM_DIR") or tmp_path_factory.mktemp("slurm"))
    try:
        slurm_cluster.install()
        env = slurm_cluster.start(root)
    except slurm_cluster.Unavailable as error:
        if os.environ.get("LPA_TEST_SLURM_REQUIRED") == "1":
            pytest.fail(f"Slurm is required here: {error}")
        pytest.skip(str(error))
    try:
        yield env
    finally:
        assert slurm_cluster.stop(root) == [], "a Slurm daemon outlived the tests"


def _env(cluster, tmp_path: Path, **extra) -> dict:
    env = dict(cluster, LPA_SUBMITIT_CLUSTER="slurm", LPA_SUBMITIT_LOG_DIR=str(tmp_path / "logs"),
               LPA_SLURM_GPUS="0", LPA_SLURM_CPUS="1", LPA_SLURM_ARRAY_PARALLELISM="4",
               OMP_NUM_THREADS="1", LPA_DOMAINBED_PLUGINS=str(REPO / "tests" / "slurm_plugin.py"),
               SLOW_ERM_MARKS=str(tmp_path / "marks"))
    env.update(extra)
    env.pop("MAKELEVEL", None)  # the resume advice in its lpa-domainbed form
    (tmp_path / "marks").mkdir(exist_ok=True)
    return env_with_python(sys.executable, env)


def _domainbed_sweep(tmp_path: Path, algorithms: list[str], steps: int) -> list[str]:
    return [sys.executable, "-m", "domainbed.scripts.sweep", "launch", "--datasets",
            "RotatedDigits", "--algorithms", *algorithms, "--data_dir", str(tmp_path),
            "--output_dir", str(tmp_path / "sweep"), "--command_launcher", "submitit",
            "--n_trials", "1", "--n_hparams", "1", "--steps", str(steps), "--single_test_envs",
            "--skip_confirmation"]


def _sweep_file(tmp_path: Path, hparams: str = "") -> list[str]:
    """``lpa-domainbed sweep`` of SlowERM on every held-out domain of RotatedDigits."""
    path = tmp_path / "slow.toml"
    path.write_text('name = "slow"\ndatasets = ["RotatedDigits"]\nalgorithms = ["SlowERM"]\n'
                    'n_trials = 1\nn_hparams = 1\nsteps = 3\ncommand_launcher = "submitit"\n'
                    + (f"hparams = {hparams}\n" if hparams else ""))
    return [*CLI, "sweep", str(path), "--data_dir", str(tmp_path), "--output_dir",
            str(tmp_path / "sweep")]


def _run(cmd, env, timeout=600) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)


def _resume(run: subprocess.CompletedProcess) -> list[str]:
    """The resume command the sweep printed, as this interpreter runs it."""
    line = run.stderr.split("Resume them with:\n", 1)[1].splitlines()[0].strip()
    words = shlex.split(line)
    assert words[:2] == ["lpa-domainbed", "sweep"] and words[-1] == "--restart_incomplete"
    return [*CLI, *words[1:]]


def _records(job_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (job_dir / "results.jsonl").read_text().splitlines()]


def _job_dirs(tmp_path: Path) -> list[Path]:
    return sorted(p for p in (tmp_path / "sweep").iterdir() if p.is_dir())


def _wait_for_marks(tmp_path: Path, n: int, process: subprocess.Popen) -> list[str]:
    deadline = time.monotonic() + 300
    while len(list((tmp_path / "marks").iterdir())) < n:
        assert process.poll() is None, process.communicate()
        assert time.monotonic() < deadline, "the slow jobs did not start"
        time.sleep(0.5)
    time.sleep(0.5)  # the job id is written
    return [p.read_text() for p in sorted((tmp_path / "marks").iterdir())]


class _SqueueSampler(threading.Thread):
    """``squeue`` every half second while the capped sweep (sbatch comment ``capped``) runs:
    the most of its tasks seen running at once, and one listing with tasks waiting behind the
    array's cap."""

    def __init__(self, env):
        super().__init__(daemon=True)
        self.env, self.stop, self.most_running, self.capped_listing = env, False, 0, ""

    def run(self):
        while not self.stop:
            listing = _run(["squeue", "--array", "--format", "%.16i %.14j %.10T %k"], self.env)
            lines = [line for line in listing.stdout.splitlines() if line.endswith(" capped")]
            running = sum(" RUNNING " in line for line in lines)
            self.most_running = max(self.most_running, running)
            waiting = _run(["squeue", "--format", "%.16i %.14j %.10T %k"], self.env).stdout
            if not self.capped_listing and running and "%2] " in waiting:
                self.capped_listing = waiting
            time.sleep(0.5)


class _Scenario(threading.Thread):
    """A scenario run in the background from the session's start (Slurm's waits, a requeued
    job's two minutes and a time limit, overlap the other tests); ``result()`` joins it."""

    def __init__(self, function, *args):
        super().__init__(daemon=True)
        self.function, self.args, self.value, self.error = function, args, None, None

    def run(self):
        try:
            self.value = self.function(*self.args)
        except BaseException as error:  # re-raised in the test
            self.error = error

    def result(self):
        self.join(timeout=900)
        if self.error is not None:
            raise self.error
        assert not self.is_alive(), "the scenario did not end in 15 minutes"
        return self.value


def _requeue(env, tmp_path):
    """DomainBed's sweep of SlowERM; the env-1 job is requeued while its first attempt runs."""
    sweep = subprocess.Popen(_domainbed_sweep(tmp_path, ["SlowERM"], 3), env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        (job_id,) = _wait_for_marks(tmp_path, 1, sweep)
        subprocess.run(["scontrol", "requeue", job_id], env=env, check=True)
        stdout, stderr = sweep.communicate(timeout=600)  # Slurm starts it again after ~2 min
    finally:
        if sweep.poll() is None:
            sweep.kill()
    return sweep.returncode, stdout, stderr


def _time_limit(env, tmp_path):
    """The env-2 job sleeps past LPA_SLURM_TIME_MIN=2; then the printed resume command (the
    slow step gone, as after raising the limit)."""
    run = _run(_sweep_file(tmp_path), env)
    again = _run(_resume(run), {**env, "SLOW_ERM_ENVS": ""}) if run.returncode == 1 else None
    return run, again


@pytest.fixture(scope="session")
def background(cluster, tmp_path_factory):
    scenarios = {}
    for name, function, extra in (
            ("requeue", _requeue, {"SLOW_ERM_ENVS": "1"}),
            ("time_limit", _time_limit, {"SLOW_ERM_ENVS": "2", "LPA_SLURM_TIME_MIN": "2"})):
        tmp_path = tmp_path_factory.mktemp(name)
        scenarios[name] = (tmp_path, _Scenario(function, _env(cluster, tmp_path, **extra),
                                               tmp_path))
        scenarios[name][1].start()
    return scenarios


@pytest.fixture(scope="module")
def capped_sweep(cluster, background, tmp_path_factory):
    """ERM and LPA, every domain held out (8 jobs), at most 2 at once, on the cluster."""
    tmp_path = tmp_path_factory.mktemp("capped")
    env = _env(cluster, tmp_path, LPA_SLURM_ARRAY_PARALLELISM="2",
               LPA_SLURM_EXTRA='{"comment": "capped"}')
    sampler = _SqueueSampler(env)
    sampler.start()
    try:
        run = _run(_domainbed_sweep(tmp_path, ["ERM", "LPA"], 5), env)
    finally:
        sampler.stop = True
        sampler.join()
    return tmp_path, env, run, sampler


def test_1_a_sweep_runs_as_job_arrays_to_done_and_makes_tables(capped_sweep):
    tmp_path, env, run, _ = capped_sweep
    assert run.returncode == 0, run.stderr[-3000:]
    assert "[submitit] 8 jobs on slurm, at most 2 at once" in run.stdout
    assert "[submitit] submitted 8 jobs as Slurm job" in run.stdout
    assert "8/8 finished (0 failed)" in run.stdout
    assert len(list((tmp_path / "sweep").glob("*/done"))) == 8
    tables = _run([*CLI, "tables", "--input_dir", str(tmp_path / "sweep"), "--name", "slurm",
                   "--out_root", str(tmp_path / "results"), "--no-plots"], env)
    assert tables.returncode == 0, tables.stderr[-2000:]
    markdown = (tmp_path / "results" / "slurm" / "training_domain_validation.md").read_text()
    assert "RotatedDigits" in markdown and "LPA" in markdown and "ERM" in markdown


def test_2_the_array_parallelism_caps_the_running_tasks(capped_sweep):
    _, _, run, sampler = capped_sweep
    assert run.returncode == 0
    assert sampler.most_running == 2, sampler.most_running  # the cap, and reached
    assert "%2]" in sampler.capped_listing  # squeue shows the array's cap on waiting tasks
    print(f"squeue while capped:\n{sampler.capped_listing}")


def test_3_a_failed_job_fails_the_sweep_and_the_resume_command_is_printed(cluster, background,
                                                                          tmp_path):
    env = _env(cluster, tmp_path)
    # valid, but larger than a training split: each job fails when it builds its loader
    run = _run(_sweep_file(tmp_path, hparams="{batch_size = 100000}"), env)

    assert run.returncode == 1, run.stdout[-2000:] + run.stderr[-2000:]
    assert run.stderr.count("failed (exit 1)") == 4  # each job, reported at once
    assert "[submitit] 4 of 4 jobs failed:" in run.stderr
    assert "4 of 4 jobs did not finish" in run.stderr
    resume = _resume(run)
    assert resume[resume.index("--output_dir") + 1] == str(tmp_path / "sweep")


def test_4_scancel_mid_sweep_then_resume_reruns_only_the_unfinished_jobs(cluster, background,
                                                                         tmp_path):
    env = _env(cluster, tmp_path, SLOW_ERM_ENVS="1,2,3")
    sweep = subprocess.Popen(_sweep_file(tmp_path), env=env, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    try:
        job_ids = _wait_for_marks(tmp_path, 3, sweep)
        deadline = time.monotonic() + 300
        while len(list((tmp_path / "sweep").glob("*/done"))) < 1:
            assert time.monotonic() < deadline and sweep.poll() is None
            time.sleep(0.5)
        finished = {p.parent: p.parent.joinpath("results.jsonl").stat().st_mtime_ns
                    for p in (tmp_path / "sweep").glob("*/done")}
        subprocess.run(["scancel", job_ids[0].split("_")[0]], env=env, check=True)
        stdout, stderr = sweep.communicate(timeout=120)
    finally:
        if sweep.poll() is None:
            sweep.kill()
    run = subprocess.CompletedProcess(sweep.args, sweep.returncode, stdout, stderr)
    assert run.returncode == 1, stderr[-2000:]
    assert stderr.count("CANCELLED") >= 3  # killed, or ended without a result
    assert "3 of 4 jobs did not finish" in stderr

    again = _run(_resume(run), env)

    assert again.returncode == 0, again.stderr[-3000:]
    assert "[submitit] 3 jobs on slurm" in again.stdout  # only the unfinished ones
    assert len(list((tmp_path / "sweep").glob("*/done"))) == 4
    for job_dir, mtime in finished.items():  # the finished job was left alone
        assert (job_dir / "results.jsonl").stat().st_mtime_ns == mtime


def test_5_a_requeued_job_restarts_clean_in_the_same_directory(background):
    tmp_path, scenario = background["requeue"]
    returncode, stdout, stderr = scenario.result()
    assert returncode == 0, stderr[-3000:]
    assert "4/4 finished (0 failed)" in stdout, stdout[-2000:] + stderr[-2000:]
    assert "was requeued by Slurm" in stdout
    (mark,) = (tmp_path / "marks").iterdir()
    job_dir = tmp_path / "sweep" / mark.name
    assert (job_dir / "done").exists()
    assert [r["step"] for r in _records(job_dir)] == [0, 2]  # one attempt, from step 0
    earlier = job_dir / "attempt-1"
    assert [r["step"] for r in _records(earlier)] == [0]  # the first attempt's record, kept
    assert (earlier / "out.txt").is_file() and not (earlier / "done").exists()


def test_6_a_job_past_its_time_limit_is_incomplete_and_the_resume_finishes_it(background):
    tmp_path, scenario = background["time_limit"]
    run, again = scenario.result()
    assert run.returncode == 1, run.stdout[-2000:] + run.stderr[-2000:]
    assert "stopped by Slurm: timed-out" in run.stderr, run.stderr[-2000:]
    assert "1 of 4 jobs did not finish" in run.stderr
    assert again.returncode == 0, again.stderr[-3000:]
    assert "[submitit] 1 jobs on slurm" in again.stdout
    assert len(list((tmp_path / "sweep").glob("*/done"))) == 4
