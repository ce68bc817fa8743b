"""Same numbers before and after a refactoring: DomainBed's train script, per algorithm.

For every registered algorithm (and ERM), ``python -m domainbed.scripts.train --dataset
RotatedDigits --steps 50 --seed 0 --trial_seed 0 --test_envs 0`` and the same on Debug28
(batch size 8: its 16-example domains cannot fill DomainBed's default batch of 64) write their
accuracies and losses; this module records them (``record``) and compares a new run with the
recorded ones to float tolerance (``check``):

    python tests/same_numbers.py check             # every algorithm, both datasets
    python tests/same_numbers.py check LPA ADA     # a subset
    python tests/same_numbers.py record            # rewrite the baseline (only on purpose)
    python tests/same_numbers.py record NAME ...   # add or replace these algorithms' entries

``tests/test_same_numbers.py`` runs a subset by default and everything with
``LPA_SAME_NUMBERS=all``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

BASELINE = Path(__file__).resolve().parent / "data" / "same_numbers.json"
DATASETS = {"RotatedDigits": None, "Debug28": {"batch_size": 8}}
IGNORED = {"step_time", "mem_gb", "epoch"}  # clock and memory, not numbers of the model
RTOL, ATOL = 1e-4, 1e-6


def algorithms() -> list[str]:
    from lpa_domainbed.algorithms import load

    return ["ERM", *load()]


def run(algorithm: str, dataset: str, work: Path) -> list[dict]:
    """The numeric fields of every record ``results.jsonl`` gets in one train run."""
    from lpa_domainbed.tools.runinfo import env_with_python

    out = work / f"{dataset}_{algorithm}"
    args = [sys.executable, "-m", "domainbed.scripts.train", "--dataset", dataset,
            "--algorithm", algorithm, "--steps", "50", "--seed", "0", "--trial_seed", "0",
            "--test_envs", "0", "--data_dir", str(work), "--output_dir", str(out),
            "--skip_model_save"]
    if DATASETS[dataset]:
        args += ["--hparams", json.dumps(DATASETS[dataset])]
    env = env_with_python(sys.executable, {**os.environ, "OMP_NUM_THREADS": "1",
                                           "MKL_NUM_THREADS": "1"})
    done = subprocess.run(args, cwd=work, env=env, capture_output=True, text=True, timeout=600)
    if done.returncode != 0:
        raise RuntimeError(f"{algorithm} on {dataset} failed:\n{done.stderr[-3000:]}")
    records = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if isinstance(v, (int, float)) and k not in IGNORED}
            for r in records]


def run_all(names=None) -> dict:
    names = names or algorithms()
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for dataset in DATASETS:
            for name in names:
                results[f"{dataset}/{name}"] = run(name, dataset, Path(tmp))
    return results


def differences(baseline: dict, new: dict) -> list[str]:
    """Every field of ``new`` that differs from ``baseline`` beyond the float tolerance."""
    problems = []
    for key, records in new.items():
        if key not in baseline:
            problems.append(f"{key}: no baseline")
            continue
        old = baseline[key]
        if len(old) != len(records):
            problems.append(f"{key}: {len(records)} records, baseline {len(old)}")
        for i, (a, b) in enumerate(zip(old, records)):
            for field in sorted(set(a) | set(b)):
                x, y = a.get(field), b.get(field)
                if x is None or y is None or abs(x - y) > ATOL + RTOL * abs(x):
                    problems.append(f"{key} record {i} {field}: baseline {x}, now {y}")
    return problems


def main(argv: list[str]) -> int:
    if not argv or argv[0] not in ("record", "check"):
        print(__doc__)
        return 2
    results = run_all(argv[1:] or None)
    if argv[0] == "record":
        if argv[1:]:  # named algorithms: the others keep their recorded numbers
            results = {**json.loads(BASELINE.read_text()), **results}
        BASELINE.parent.mkdir(exist_ok=True)
        BASELINE.write_text(json.dumps(results, indent=1, sort_keys=True) + "\n")
        print(f"recorded {len(results)} runs in {BASELINE}")
        return 0
    problems = differences(json.loads(BASELINE.read_text()), results)
    print("\n".join(problems) or f"same numbers: {len(results)} runs match the baseline")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
