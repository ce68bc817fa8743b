"""make gpu-check without a GPU, and its synchronization counter (the GPU runs themselves need
a CUDA machine: ``make gpu-check`` there)."""

from __future__ import annotations

import json
import traceback
import warnings

import pytest

from conftest import REPO, requires_domainbed, run_python

torch = pytest.importorskip("torch")


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_without_cuda_it_says_so_and_does_nothing(tmp_path, capsys):
    from lpa_domainbed.tools.gpu_check.cli import main

    assert main(["--out", str(tmp_path / "out")]) == 0
    assert "CUDA is not available" in capsys.readouterr().out
    assert not (tmp_path / "out").exists()


def test_syncs_count_per_wrapped_call_and_nested_calls_count_in_the_outer_one():
    from lpa_domainbed.tools.gpu_check.syncs import SYNC_MESSAGE, SyncCounter

    def syncs(n):
        for _ in range(n):
            warnings.warn(SYNC_MESSAGE)

    counter = SyncCounter(set_mode=False)
    with counter:
        inner = counter.wrap("inner", syncs)
        outer = counter.wrap("outer", lambda: (syncs(1), inner(2)))
        update = counter.wrap("update", syncs)
        for n in (5, 1, 2, 1):
            update(n)
        outer()
        syncs(1)  # outside every wrapped call
        with pytest.warns(UserWarning, match="another warning"):
            warnings.warn("another warning")  # passes through
    assert counter.calls == {"update": [5, 1, 2, 1], "inner": [2], "outer": [3]}
    assert counter.outside == 1
    summary = counter.summary("update")
    assert (summary["calls"], summary["median"], summary["max"]) == (4, 1, 2)
    assert sum(summary["sites"].values()) == 9


def test_the_site_is_the_innermost_frame_of_the_package_or_domainbed():
    from lpa_domainbed.tools.gpu_check.syncs import site_of

    def frame(path, line, code):
        return traceback.FrameSummary(path, line, "f", line=code)

    stack = [frame("/any/where/domainbed/scripts/train.py", 215, "algorithm.update(m)"),
             frame("/repo/lpa_domainbed/perturb/pgd.py", 33, "torch.bincount(groups)"),
             frame("/repo/lpa_domainbed/tools/gpu_check/syncs.py", 90, "return fn()"),
             frame("/venv/site-packages/torch/functional.py", 10, "return _VF.x()")]
    assert site_of(stack) == "lpa_domainbed/perturb/pgd.py:33 (torch.bincount(groups))"
    assert site_of(stack[:1]) == "domainbed/scripts/train.py:215 (algorithm.update(m))"
    assert site_of(stack[3:]) == "<elsewhere>"


def test_the_report_shows_each_algorithms_syncs_and_failures(tmp_path):
    from lpa_domainbed.tools.gpu_check.report import write_report
    from lpa_domainbed.tools.runinfo import describe_machine

    sites = {"lpa_domainbed/perturb/pgd.py:33 (torch.bincount(groups))": 8,
             "domainbed/algorithms.py:99 (loss.item())": 5}
    result = {"machine": describe_machine("cpu"), "wall_s": 100.0,
              "tests": {"command": "python -m pytest tests/test_algorithms.py", "returncode": 0,
                        "summary": "69 passed in 30.0s", "wall_s": 31.0},
              "train": [{"algorithm": "LPA", "returncode": 0, "done": True, "wall_s": 12.0,
                         "calls": 5, "per_call": [4, 2, 2, 3, 2], "median": 2, "max": 3,
                         "sites": sites},
                        {"algorithm": "ADA", "returncode": 1, "done": False, "wall_s": 3.0,
                         "error": "Traceback ..."}]}
    json_path, md_path = write_report(result, None, tmp_path)
    assert json.loads(json_path.read_text())["train"][0]["sites"] == sites
    md = md_path.read_text()
    assert "69 passed in 30.0s" in md
    assert "| LPA | ok | 12 | 5 | 2 | 3 | `lpa_domainbed/perturb/pgd.py:33 " in md
    assert "| ADA | FAILED (1) |" in md


@requires_domainbed
@pytest.mark.slow
def test_the_train_wrapper_runs_domainbeds_script_and_counts_every_update(tmp_path):
    syncs = tmp_path / "syncs.json"
    proc = run_python(["-m", "lpa_domainbed.tools.gpu_check.train", str(syncs),
                       "--dataset", "Debug28", "--algorithm", "LPA", "--test_envs", "0",
                       "--data_dir", str(tmp_path), "--output_dir", str(tmp_path / "run"),
                       "--steps", "3", "--checkpoint_freq", "3",
                       "--hparams", json.dumps({"batch_size": 4})], cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (tmp_path / "run" / "done").exists()
    result = json.loads(syncs.read_text())
    assert result["algorithm"] == "LPA" and result["calls"] == 3
    if not torch.cuda.is_available():  # on a CPU nothing synchronizes with a GPU
        assert result["per_call"] == [0, 0, 0]
