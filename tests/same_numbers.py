"""Same numbers before and after a refactoring: DomainBed's train script, per algorithm, run
by the code of the baseline commit and by the working tree, on this machine.

For every registered algorithm (and ERM), ``python -m domainbed.scripts.train --dataset
RotatedDigits --steps 50 --seed 0 --trial_seed 0 --test_envs 0`` and the same on Debug28
(batch size 8: its 16-example domains cannot fill DomainBed's default batch of 64) write their
accuracies and losses. Float32 training numbers depend on the CPU that computes them (its
vector units change the order of sums: a loss differs in the 4th digit between two x86 CPUs,
and an accuracy on a 3-example split by a whole example), so nothing recorded on another
machine is compared: the baseline is the commit named in ``tests/data/same_numbers_base``,
checked out in a temporary git worktree and run here, with the same interpreter. Its numbers
are cached per commit and CPU under ``~/.cache/lpa-domainbed/same-numbers/``.

    python tests/same_numbers.py check             # every algorithm, both datasets
    python tests/same_numbers.py check LPA ADA     # a subset

A refactoring keeps the baseline; a change that means to change numbers moves it to its own
commit (``git rev-parse HEAD > tests/data/same_numbers_base`` after committing). An algorithm
the baseline commit does not have is reported, not compared.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BASE_FILE = REPO / "tests" / "data" / "same_numbers_base"
CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "lpa-domainbed" / "same-numbers"
DATASETS = {"RotatedDigits": None, "Debug28": {"batch_size": 8}}
IGNORED = {"step_time", "mem_gb", "epoch"}  # clock and memory, not numbers of the model
RTOL, ATOL = 1e-4, 1e-6  # one machine: only a changed computation differs beyond this


class BaselineUnavailable(RuntimeError):
    """The baseline commit cannot be checked out here (a shallow clone, no git)."""


def algorithms() -> list[str]:
    from lpa_domainbed.algorithms import load

    return ["ERM", *load()]


def run(algorithm: str, dataset: str, work: Path, code: Path = REPO) -> list[dict]:
    """The numeric fields of every record ``results.jsonl`` gets in one train run of the
    package found in ``code`` (a checkout)."""
    out = work / f"{dataset}_{algorithm}"
    args = [sys.executable, "-m", "domainbed.scripts.train", "--dataset", dataset,
            "--algorithm", algorithm, "--steps", "50", "--seed", "0", "--trial_seed", "0",
            "--test_envs", "0", "--data_dir", str(work), "--output_dir", str(out),
            "--skip_model_save"]
    if DATASETS[dataset]:
        args += ["--hparams", json.dumps(DATASETS[dataset])]
    env = _env_for(code, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    done = subprocess.run(args, cwd=work, env=env, capture_output=True, text=True, timeout=600)
    if done.returncode != 0:
        raise RuntimeError(f"{algorithm} on {dataset} failed:\n{done.stdout[-2000:]}"
                           f"{done.stderr[-3000:]}")
    records = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if isinstance(v, (int, float)) and k not in IGNORED}
            for r in records]


def run_all(names=None, code: Path = REPO) -> dict:
    names = names or algorithms()
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for dataset in DATASETS:
            for name in names:
                results[f"{dataset}/{name}"] = run(name, dataset, Path(tmp), code)
    return results


def _cpu() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform

    return platform.processor() or platform.machine()


def baseline(names) -> dict:
    """The baseline commit's numbers for ``names`` on this machine (cached per commit, CPU
    and interpreter); names the commit does not register are missing from the result."""
    import hashlib

    commit = _git("rev-parse", BASE_FILE.read_text().strip() + "^{commit}")
    key = hashlib.sha256(f"{commit} {_cpu()} {sys.executable}".encode()).hexdigest()[:16]
    cache = CACHE / f"{commit[:12]}-{key}.json"
    known = json.loads(cache.read_text()) if cache.is_file() else {}
    wanted = [n for n in names if not all(f"{d}/{n}" in known for d in DATASETS)]
    if wanted:
        with tempfile.TemporaryDirectory() as tmp:
            tree = Path(tmp) / "baseline"
            _git("worktree", "add", "--detach", "-q", str(tree), commit)
            try:
                registered = _registered(tree)
                for name in wanted:
                    for dataset in DATASETS:
                        if name in registered:
                            known[f"{dataset}/{name}"] = run(name, dataset, Path(tmp), tree)
            finally:
                _git("worktree", "remove", "--force", str(tree))
        cache.parent.mkdir(parents=True, exist_ok=True)
        partial = cache.with_suffix(".tmp")
        partial.write_text(json.dumps(known, indent=1, sort_keys=True) + "\n")
        partial.replace(cache)
    return known


def _env_for(code: Path, **extra) -> dict:
    """This interpreter's environment, with the package imported from ``code`` (a checkout)."""
    from lpa_domainbed.tools.runinfo import env_with_python

    env = env_with_python(sys.executable, {**os.environ, **extra})
    env["PYTHONPATH"] = os.pathsep.join([str(code), *filter(None, [env.get("PYTHONPATH")])])
    return env


def _registered(code: Path) -> set[str]:
    """The algorithm names the package in ``code`` (a checkout) registers, and ERM."""
    env = _env_for(code)
    done = subprocess.run(
        [sys.executable, "-c", "from lpa_domainbed.algorithms import load; print(*load())"],
        cwd=code, env=env, capture_output=True, text=True, timeout=300)
    if done.returncode != 0:
        raise RuntimeError(f"the baseline's algorithms could not be listed:\n{done.stderr[-3000:]}")
    return {"ERM", *done.stdout.split()}


def _git(*args) -> str:
    try:
        done = subprocess.run(["git", "-C", str(REPO), *args], capture_output=True, text=True,
                              timeout=120)
    except (OSError, subprocess.TimeoutExpired) as error:
        raise BaselineUnavailable(f"git {' '.join(args)}: {error}") from None
    if done.returncode != 0:
        raise BaselineUnavailable(f"git {' '.join(args)}: {done.stderr.strip()} (a shallow "
                                  f"clone? 'git fetch --unshallow' brings the baseline commit)")
    return done.stdout.strip()


def differences(baseline: dict, new: dict) -> list[str]:
    """Every field of ``new`` that differs from ``baseline`` beyond the float tolerance (runs
    the baseline does not have are left out: new algorithms)."""
    problems = []
    for key, records in new.items():
        if key not in baseline:  # an algorithm the baseline commit does not have
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
    if not argv or argv[0] != "check":
        print(__doc__)
        return 2
    names = argv[1:] or algorithms()
    old, new = baseline(names), run_all(names)
    problems = differences(old, new)
    new_names = sorted(k for k in new if k not in old)
    if new_names:
        print(f"not in the baseline commit (not compared): {new_names}")
    print("\n".join(problems) or f"same numbers: {len(new) - len(new_names)} runs match the "
                                 f"baseline commit")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
