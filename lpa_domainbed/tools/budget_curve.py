"""Training curves that set a dataset's step budget: accuracy against steps, per algorithm.

    python -m lpa_domainbed.tools.budget_curve run --output_dir DIR [--dataset StyleDigits]
        [--algorithms ERM LPA] [--test_envs 0 1 2 3] [--trials 3] [--steps 1500] [--jobs N]
    python -m lpa_domainbed.tools.budget_curve plot --input_dir DIR --out results/style_curve

``run`` launches DomainBed's own sweep jobs (``domainbed.scripts.sweep``'s argument list and
``Job``: the same seeds and output directories as ``sweep launch --steps N``, hparams seed 0 =
the defaults) for the chosen held-out domains only, through the ``local_parallel`` launcher;
a job with a ``done`` file is kept, so a rerun resumes. DomainBed's train script evaluates
every ``CHECKPOINT_FREQ`` steps, which gives the curve its points.

``plot`` reads the jobs' ``results.jsonl`` and writes ``curve.csv`` (one row per algorithm,
held-out domain, trial and checkpoint), ``curve_mean.csv`` (mean and standard error over the
runs at each step) and ``curve.png`` (in-domain validation accuracy, the training domains'
``out`` splits, and the held-out domain's accuracy, its ``in`` split as DomainBed's tables
report it). It prints, per algorithm, the first checkpoint from which the in-domain validation
accuracy rises by less than ``--plateau`` points over the rest of the run.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys

__all__ = ["collect", "jobs", "main", "mean_curve", "plateau_step"]


def jobs(dataset: str, algorithms: list[str], test_envs: list[int], trials: int, steps: int,
         data_dir: str, output_dir: str) -> list:
    """DomainBed sweep ``Job`` objects, one per (trial, algorithm, held-out domain)."""
    import lpa_domainbed

    lpa_domainbed.register()
    from domainbed import datasets
    from domainbed.scripts import sweep

    n_envs = datasets.num_environments(dataset)
    bad = [e for e in test_envs if not 0 <= e < n_envs]
    if bad:
        raise SystemExit(f"error: --test_envs {bad}: {dataset} has domains 0..{n_envs - 1}")
    args_list = sweep.make_args_list(trials, [dataset], algorithms, 0, 1, steps, data_dir,
                                     "domain_generalization", 0.2, True, None)
    return [sweep.Job(args, output_dir) for args in args_list
            if args["test_envs"][0] in test_envs]


def run(args) -> None:
    from domainbed.scripts import sweep

    from lpa_domainbed.tools.launchers.local_parallel import local_parallel_launcher

    os.makedirs(args.output_dir, exist_ok=True)
    todo = jobs(args.dataset, args.algorithms, args.test_envs, args.trials, args.steps,
                args.data_dir, args.output_dir)
    waiting = [job for job in todo if job.state != sweep.Job.DONE]
    print(f"budget curve: {len(todo)} jobs, {len(todo) - len(waiting)} done, "
          f"{len(waiting)} to run", flush=True)
    failed = local_parallel_launcher([job.command_str for job in waiting], args.jobs)
    if failed:
        raise SystemExit(f"error: {len(failed)} jobs failed (their launcher.log says why); "
                         f"rerun the same command to run them again")


def collect(input_dir: str) -> list[dict]:
    """One row per checkpoint of every finished job under ``input_dir``."""
    rows = []
    for name in sorted(os.listdir(input_dir)):
        job = os.path.join(input_dir, name)
        if not os.path.exists(os.path.join(job, "done")):
            continue
        with open(os.path.join(job, "results.jsonl")) as handle:
            records = [json.loads(line) for line in handle if line.strip()]
        for record in records:
            args = record["args"]
            test = args["test_envs"][0]
            n_envs = sum(1 for k in record if k.endswith("_out_acc"))
            train = [e for e in range(n_envs) if e != test]
            rows.append({
                "algorithm": args["algorithm"], "test_env": test,
                "trial": args["trial_seed"], "step": record["step"],
                "in_domain": 100 * sum(record[f"env{e}_out_acc"] for e in train) / len(train),
                "in_split": 100 * sum(record[f"env{e}_in_acc"] for e in train) / len(train),
                "held_out": 100 * record[f"env{test}_in_acc"]})
    if not rows:
        raise SystemExit(f"error: no finished job under {input_dir}: run "
                         f"'python -m lpa_domainbed.tools.budget_curve run' first")
    return rows


def mean_curve(rows: list[dict]) -> list[dict]:
    """Mean and standard error (population std / sqrt(n), as DomainBed's tables) over the
    runs of each (algorithm, step)."""
    groups: dict = {}
    for row in rows:
        groups.setdefault((row["algorithm"], row["step"]), []).append(row)
    out = []
    for (algorithm, step), group in sorted(groups.items()):
        entry = {"algorithm": algorithm, "step": step, "runs": len(group)}
        for key in ("in_domain", "in_split", "held_out"):
            values = [r[key] for r in group]
            mean = sum(values) / len(values)
            std = math.sqrt(sum((v - mean) ** 2 for v in values) / len(values))
            entry[key], entry[f"{key}_se"] = mean, std / math.sqrt(len(values))
        out.append(entry)
    return out


def plateau_step(curve: list[dict], algorithm: str, points: float) -> int | None:
    """The first step from which ``algorithm``'s mean in-domain validation accuracy never
    rises more than ``points`` above its value there (None: still rising at the end)."""
    mine = [c for c in curve if c["algorithm"] == algorithm]
    for i, c in enumerate(mine):
        if all(later["in_domain"] - c["in_domain"] < points for later in mine[i + 1:]):
            return c["step"] if i < len(mine) - 1 else None
    return None


def _write_csv(path: str, rows: list[dict]) -> None:
    import csv

    with open(path + ".tmp", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows({k: round(v, 4) if isinstance(v, float) else v for k, v in r.items()}
                         for r in rows)
    os.replace(path + ".tmp", path)


def plot(args) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = collect(args.input_dir)
    curve = mean_curve(rows)
    os.makedirs(args.out, exist_ok=True)
    _write_csv(os.path.join(args.out, "curve.csv"), rows)
    _write_csv(os.path.join(args.out, "curve_mean.csv"), curve)
    fig, axes = plt.subplots(1, 2, figsize=(10, 4), sharex=True)
    panels = (("in_domain", "in-domain validation (training domains' out splits)"),
              ("held_out", "held-out domain"))
    for ax, (key, title) in zip(axes, panels):
        for algorithm in sorted({c["algorithm"] for c in curve}):
            mine = [c for c in curve if c["algorithm"] == algorithm]
            steps = [c["step"] for c in mine]
            mean = [c[key] for c in mine]
            se = [c[f"{key}_se"] for c in mine]
            ax.plot(steps, mean, marker="o", markersize=3, label=algorithm)
            ax.fill_between(steps, [m - s for m, s in zip(mean, se)],
                            [m + s for m, s in zip(mean, se)], alpha=0.2)
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("step")
        ax.set_ylabel("accuracy (%)")
        ax.grid(alpha=0.3)
    axes[0].legend()
    runs = {c["algorithm"]: c["runs"] for c in curve}
    fig.suptitle(f"{args.title} (mean ± SE over {', '.join(f'{a}: {n}' for a, n in runs.items())}"
                 " runs)", fontsize=10)
    fig.tight_layout()
    fig.savefig(os.path.join(args.out, "curve.png.tmp"), dpi=120, format="png")
    os.replace(os.path.join(args.out, "curve.png.tmp"), os.path.join(args.out, "curve.png"))
    for algorithm in sorted(runs):
        step = plateau_step(curve, algorithm, args.plateau)
        where = f"from step {step}" if step is not None else "still rising at the last step"
        print(f"{algorithm}: in-domain validation accuracy rises < {args.plateau} points "
              f"{where}")
    print(f"wrote {args.out}/curve.csv, curve_mean.csv, curve.png")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    r = sub.add_parser("run", help="launch the jobs (resumes: finished jobs are kept)")
    r.add_argument("--output_dir", required=True)
    r.add_argument("--data_dir", default=os.path.join(".", "data"),
                   help="unused by the embedded datasets")
    r.add_argument("--dataset", default="StyleDigits")
    r.add_argument("--algorithms", nargs="+", default=["ERM", "LPA"])
    r.add_argument("--test_envs", nargs="+", type=int, default=[0, 1, 2, 3])
    r.add_argument("--trials", type=int, default=3)
    r.add_argument("--steps", type=int, default=1500)
    r.add_argument("--jobs", type=int, default=None,
                   help="jobs at once (default: LPA_DOMAINBED_JOBS, else the CPU cores)")
    p = sub.add_parser("plot", help="CSV and figure from finished jobs")
    p.add_argument("--input_dir", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--title", default="StyleDigits (MNIST_CNN)")
    p.add_argument("--plateau", type=float, default=0.5,
                   help="points of in-domain accuracy below which a rise counts as converged")
    args = parser.parse_args(argv)
    if args.command == "run" and (args.trials < 1 or args.steps < 1):
        parser.error("--trials and --steps must be positive")
    (run if args.command == "run" else plot)(args)


if __name__ == "__main__":
    main(sys.argv[1:])
