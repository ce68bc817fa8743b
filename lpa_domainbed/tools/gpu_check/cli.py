"""``python -m lpa_domainbed.tools.gpu_check`` (``make gpu-check``): the package on a CUDA GPU.

1. every algorithm's tests (``tests/test_algorithms.py``) with the model and batch on the GPU,
   and the sync check of every update (``tests/test_cuda_sync.py``)
   (``LPA_DOMAINBED_TEST_DEVICE=cuda``), sync debug mode on; meanwhile
2. a few steps of ``python -m domainbed.scripts.train`` per algorithm on DomainBed's Debug224
   (its ResNet-18 with random weights written offline), each ``update``'s synchronizations
   counted (:mod:`~lpa_domainbed.tools.gpu_check.train`);
3. the benchmark on ResNet-50 at 224 px with DomainBed's PACS batch (32 per domain, 3
   training domains), sync debug mode on, each variant's syncs per update counted;

then writes ``results/benchmarks/cuda.json`` and ``cuda.md``. Without CUDA it says so and
exits 0, doing nothing. The exit status is 1 when a test or a train run failed.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

__all__ = ["main", "run_tests", "run_train", "run_bench", "TRAIN_HPARAMS"]

#: Debug224 builds DomainBed's ResNet; ResNet-18 (random weights) keeps the runs short, and a
#: batch of 4 per domain fits Debug224's 16 images per domain.
TRAIN_HPARAMS = {"batch_size": 4, "resnet18": True, "resnet50_augmix": False}
TEST_FILES = ["tests/test_algorithms.py", "tests/test_cuda_sync.py"]
#: benchmark rounds on the GPU (``--rounds`` overrides)
GPU_ROUNDS = 21


def _env(**extra) -> dict:
    from lpa_domainbed.tools.runinfo import env_with_python

    return env_with_python(sys.executable, {**os.environ, **extra})


def run_tests(log, files=TEST_FILES) -> dict:
    """pytest on ``files`` with the algorithms and batches on CUDA (conftest reads
    ``LPA_DOMAINBED_TEST_DEVICE``; it also turns sync debug mode on: the tests' own assertions
    synchronize, so their syncs are not counted, only kept out of the log)."""
    repo = Path(__file__).resolve().parents[3]  # the checkout (tests do not ship in a wheel)
    if not all((repo / f).is_file() for f in files):
        log(f"==> tests: {', '.join(files)} not found beside the package (an installed wheel?): "
            "run gpu-check from a checkout")
        return {"command": None, "returncode": 1, "summary": "tests not found", "wall_s": 0.0}
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
           "-W", "ignore:called a synchronizing CUDA operation", *files]
    log(f"==> tests on the GPU: {' '.join(cmd[1:])}")
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, env=_env(LPA_DOMAINBED_TEST_DEVICE="cuda"), capture_output=True,
                          text=True, cwd=repo)
    lines = [ln for ln in proc.stdout.splitlines() if ln.strip()]
    summary = lines[-1] if lines else proc.stderr.strip()[-300:]
    log(f"    {summary}")
    if proc.returncode:
        log(proc.stdout[-6000:] + proc.stderr[-2000:])
    return {"command": " ".join(["python", *cmd[1:]]), "returncode": proc.returncode,
            "summary": summary, "wall_s": round(time.perf_counter() - t0, 1)}


def _train_one(algorithm: str, work: Path, steps: int) -> dict:
    out, syncs = work / algorithm, work / f"{algorithm}.syncs.json"
    cmd = [sys.executable, "-m", "lpa_domainbed.tools.gpu_check.train", str(syncs),
           "--dataset", "Debug224", "--algorithm", algorithm, "--test_envs", "0",
           "--data_dir", str(work), "--output_dir", str(out), "--steps", str(steps),
           "--checkpoint_freq", str(steps), "--hparams", json.dumps(TRAIN_HPARAMS)]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, env=_env(), capture_output=True, text=True)
    row = {"algorithm": algorithm, "returncode": proc.returncode,
           "done": (out / "done").exists(), "wall_s": round(time.perf_counter() - t0, 1)}
    if syncs.exists():
        row.update(json.loads(syncs.read_text()))
    if proc.returncode:
        row["error"] = proc.stderr.strip()[-1500:]
    return row


def run_train(log, steps: int = 5, jobs: int = 6) -> list[dict]:
    """Every registered algorithm and ERM through DomainBed's train script on Debug224."""
    from lpa_domainbed.algorithms import load

    names = ["ERM", *load()]
    log(f"==> DomainBed's train script, {steps} steps on Debug224 per algorithm "
        f"({len(names)}; {jobs} at a time), syncs per update counted")
    with tempfile.TemporaryDirectory(prefix="lpa_gpu_check_") as tmp:
        with ThreadPoolExecutor(jobs) as pool:
            rows = list(pool.map(lambda n: _train_one(n, Path(tmp), steps), names))
    for r in rows:
        status = "ok" if r["returncode"] == 0 and r["done"] else f"FAILED ({r['returncode']})"
        log(f"    {r['algorithm']:>16}: {status}, {r['wall_s']:.0f} s, syncs per update "
            f"{r.get('median')} (max {r.get('max')})" + (f"\n{r['error']}" if "error" in r
                                                           else ""))
    return rows


def run_bench(log, rounds: int | None = None) -> tuple[list[dict], dict, object]:
    """The benchmark on the GPU (ResNet-50, 224 px, PACS batch), syncs per update counted."""
    from lpa_domainbed.tools import bench
    from lpa_domainbed.tools.gpu_check.syncs import SyncCounter

    net = dataclasses.replace(bench.RESNET50, per_domain=32)
    # 21 rounds, not the CPU's 7: a GPU update is short (about 60 ms), and with 7 rounds one
    # H100 run gave the same configuration (LPA_BF16, LPA[exact_bf16]) 1.31x and 1.38x ERM.
    settings = bench.Settings(clock="wall", threads=None, rounds=GPU_ROUNDS)
    if rounds:
        settings = dataclasses.replace(settings, rounds=rounds)
    counter = SyncCounter()

    def instrument(key, alg):
        alg.update = counter.wrap(key, alg.update)

    with counter:
        records = bench.run([net], settings, "cuda", out=None, log=log, instrument=instrument)
    syncs = {key: counter.summary(key, skip_first=settings.warmup) for key in counter.calls}
    return records, syncs, (net, settings)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lpa_domainbed.tools.gpu_check",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default=str(Path("results") / "benchmarks"))
    parser.add_argument("--steps", type=int, default=5, help="train-script steps per algorithm")
    parser.add_argument("--rounds", type=int, default=None,
                        help=f"benchmark rounds (default {GPU_ROUNDS})")
    parser.add_argument("--skip", default="", help="comma-separated parts to skip: "
                        "tests, train, bench")
    args = parser.parse_args(argv)
    try:
        import torch
    except ImportError:
        print("gpu-check: torch is not importable here, so there is no CUDA: nothing done.")
        return 0
    if not torch.cuda.is_available():
        print("gpu-check: CUDA is not available on this machine (torch "
              f"{torch.__version__}): nothing done. Run it on a machine with an NVIDIA GPU.")
        return 0
    from lpa_domainbed.tools.gpu_check.report import write_report
    from lpa_domainbed.tools.runinfo import describe_machine

    skip = {s.strip() for s in args.skip.split(",") if s.strip()}
    log = lambda msg: print(msg, flush=True)  # noqa: E731
    t0 = time.perf_counter()
    result = {"machine": describe_machine("cuda"), "torch": torch.__version__}
    log(f"==> gpu-check on {torch.cuda.get_device_name(0)}")
    # The tests and the train runs share the GPU lightly: side by side; the benchmark alone.
    with ThreadPoolExecutor(1) as pool:
        tests = None if "tests" in skip else pool.submit(run_tests, log)
        jobs = max(1, min(8, (os.cpu_count() or 2) // 2))
        result["train"] = [] if "train" in skip else run_train(log, args.steps, jobs)
        result["tests"] = None if tests is None else tests.result()
    bench_part = None if "bench" in skip else run_bench(log, args.rounds)
    result["wall_s"] = round(time.perf_counter() - t0, 1)
    paths = write_report(result, bench_part, Path(args.out))
    log(f"==> wrote {' and '.join(map(str, paths))} ({result['wall_s']:.0f} s)")
    failed = (result["tests"] and result["tests"]["returncode"]) or any(
        r["returncode"] or not r["done"] for r in result["train"])
    return 1 if failed else 0
