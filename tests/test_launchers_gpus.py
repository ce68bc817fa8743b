"""Every GPU of a node: ``local_parallel`` and ``local_forkserver`` give each job one GPU
(``CUDA_VISIBLE_DEVICES``), the least busy, ties round-robin, at most
``LPA_DOMAINBED_JOBS_PER_GPU`` per GPU, and the job's log names it. No GPU is needed: the
device list is faked (``CUDA_VISIBLE_DEVICES``, or the count torch would give)."""

from __future__ import annotations

import pytest

from lpa_domainbed.tools.launchers import gpus
from lpa_domainbed.tools.launchers.forkserver import local_forkserver_launcher
from lpa_domainbed.tools.launchers.gpus import GpuPool, visible_gpus
from lpa_domainbed.tools.launchers.local_parallel import local_parallel_launcher

LAUNCHERS = {"local_parallel": local_parallel_launcher,
             "local_forkserver": local_forkserver_launcher}
both_launchers = pytest.mark.parametrize("name", list(LAUNCHERS))


@pytest.mark.parametrize("devices, per_gpu, steps, expected", [
    # steps: "+" starts a job (its GPU is recorded), "-<i>" ends the i-th started job
    (1, None, "+ + +", [0, 0, 0]),
    (2, None, "+ + + +", [0, 1, 0, 1]),
    (8, None, "+ " * 9, [0, 1, 2, 3, 4, 5, 6, 7, 0]),
    (3, None, "+ + + + -2 +", [0, 1, 2, 0, 2]),  # the least busy GPU, not the next in turn
    (3, None, "+ + + -0 -1 -2 + +", [0, 1, 2, 0, 1]),  # idle GPUs in turn
    (2, 1, "+ + + -1 +", [0, 1, None, 1]),  # at the cap: the job waits (None)
    (8, 2, "+ " * 17, [*range(8), *range(8), None]),
])
def test_jobs_go_to_the_least_busy_gpu_in_turn_within_the_cap(devices, per_gpu, steps,
                                                               expected):
    pool = GpuPool([str(i) for i in range(devices)], per_gpu)
    given: list = []
    for step in steps.split():
        if step == "+":
            given.append(pool.acquire())
        else:
            pool.release(given[int(step[1:])])
    assert given == expected


@pytest.mark.parametrize("environ, count, expected", [
    ({"CUDA_VISIBLE_DEVICES": "3,5"}, 8, ["3", "5"]),
    ({"CUDA_VISIBLE_DEVICES": " GPU-8a1f, MIG-2b7c "}, 8, ["GPU-8a1f", "MIG-2b7c"]),
    ({"CUDA_VISIBLE_DEVICES": "0,-1,2"}, 8, ["0"]),  # CUDA stops at the first invalid entry
    ({"CUDA_VISIBLE_DEVICES": ""}, 8, []),  # every GPU hidden
    ({"CUDA_VISIBLE_DEVICES": "-1"}, 8, []),
    ({}, 0, []),
    ({}, 1, ["0"]),
    ({}, 2, ["0", "1"]),
    ({}, 8, [str(i) for i in range(8)]),
])
def test_the_gpus_come_from_cuda_visible_devices_else_from_every_device(monkeypatch, environ,
                                                                        count, expected):
    monkeypatch.setattr(gpus, "_device_count", lambda: count)
    assert visible_gpus(environ)[0] == expected


def _probe(tmp_path, index: int, hold: bool = False) -> str:
    """A job that records the GPU it was given; ``hold``: it also holds ``busy<gpu>`` for a
    moment and records a clash when another job holds it (two jobs on one GPU at once)."""
    record = f'echo "$CUDA_VISIBLE_DEVICES" > {tmp_path}/gpu{index}'
    if hold:
        busy = f"{tmp_path}/busy$CUDA_VISIBLE_DEVICES"
        record += (f"; if mkdir {busy}; then sleep 0.5; rmdir {busy}; "
                   f"else touch {tmp_path}/clash; fi")
    return f"{record} # --output_dir {tmp_path / f'job{index}'}"  # the log's directory


def _given(tmp_path, n: int) -> list[str]:
    return [(tmp_path / f"gpu{i}").read_text().strip() for i in range(n)]


@both_launchers
@pytest.mark.parametrize("environ, count, n_jobs, expected", [
    ({}, 1, 3, ["0", "0", "0"]),
    ({}, 2, 4, ["0", "1", "0", "1"]),
    ({}, 8, 8, [str(i) for i in range(8)]),
    ({"CUDA_VISIBLE_DEVICES": "3,5"}, 8, 3, ["3", "5", "3"]),
])
def test_each_job_gets_one_gpu_and_its_log_names_it(name, tmp_path, monkeypatch, capsys,
                                                    environ, count, n_jobs, expected):
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    for key, value in environ.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setattr(gpus, "_device_count", lambda: count)
    commands = [_probe(tmp_path, i) for i in range(n_jobs)]

    assert LAUNCHERS[name](commands, max_jobs=n_jobs) == []

    assert _given(tmp_path, n_jobs) == expected
    for i, gpu in enumerate(expected):
        first = (tmp_path / f"job{i}" / "launcher.log").read_text().splitlines()[0]
        assert first == f"[{name}] job {i} runs on GPU {gpu} (CUDA_VISIBLE_DEVICES={gpu})"
    assert f"[{name}] {len(set(expected))} GPUs (" in capsys.readouterr().out


@both_launchers
def test_without_gpus_the_jobs_environment_is_left_as_it_is(name, tmp_path, monkeypatch,
                                                           capsys):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")  # the user hid every GPU
    assert LAUNCHERS[name]([_probe(tmp_path, 0)]) == []
    assert _given(tmp_path, 1) == [""]
    assert "runs on GPU" not in (tmp_path / "job0" / "launcher.log").read_text()
    assert "GPUs (" not in capsys.readouterr().out


@both_launchers
def test_the_per_gpu_cap_holds_jobs_back(name, tmp_path, monkeypatch):
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    monkeypatch.setattr(gpus, "_device_count", lambda: 2)
    monkeypatch.setenv("LPA_DOMAINBED_JOBS_PER_GPU", "1")
    commands = [_probe(tmp_path, i, hold=True) for i in range(4)]

    assert LAUNCHERS[name](commands, max_jobs=4) == []

    assert not (tmp_path / "clash").exists()  # never two jobs on one GPU at once
    assert sorted(_given(tmp_path, 4)) == ["0", "0", "1", "1"]


@both_launchers
@pytest.mark.parametrize("value", ["0", "-1", "two"])
def test_a_bad_per_gpu_cap_is_refused_before_any_job(name, tmp_path, monkeypatch, value):
    monkeypatch.setenv("LPA_DOMAINBED_JOBS_PER_GPU", value)
    job_dir = tmp_path / "job"
    job_dir.mkdir()  # made by DomainBed's Job.launch before the launcher runs
    with pytest.raises(ValueError, match=f"LPA_DOMAINBED_JOBS_PER_GPU='{value}' is invalid.*"
                                         f"set it to a positive integer"):
        LAUNCHERS[name]([f"true --output_dir {job_dir}"])
    assert not job_dir.exists()
