"""Command line: ``python -m lpa_domainbed.cli {demo,sweep} ...`` (behind ``make demo/sweep``)."""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

from lpa_domainbed import sweeps

__all__ = ["main"]

REPO = Path(__file__).resolve().parents[1]


def _env_with_this_python() -> dict:
    """DomainBed's sweep starts jobs as ``python -m ...``: make that this interpreter's."""
    env = dict(os.environ)
    env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + env.get("PATH", "")
    return env


def _run(cmd: list[str]) -> None:
    print(f"==> {sweeps.format_command(cmd)}", flush=True)
    subprocess.run(cmd, check=True, env=_env_with_this_python())


def _git_commit(path) -> str:
    try:
        out = subprocess.run(["git", "-C", str(path), "rev-parse", "--short", "HEAD"],
                             capture_output=True, text=True, check=True)
        dirty = subprocess.run(["git", "-C", str(path), "status", "--porcelain",
                                "--untracked-files=no"], capture_output=True, text=True)
        return out.stdout.strip() + ("+uncommitted changes" if dirty.stdout.strip() else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def _shown(path) -> str:
    """A path as the user would type it in the repository (relative when inside it)."""
    path = Path(path).resolve()
    return os.path.relpath(path, REPO) if path.is_relative_to(REPO) else str(path)


def describe_machine() -> str:
    import torch

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return (f"{platform.platform()}, {os.cpu_count()} CPU cores, {gpu}; Python "
            f"{platform.python_version()}, torch {torch.__version__}")


def print_jobs(spec, data_dir, output_dir) -> list:
    jobs = sweeps.list_jobs(spec, data_dir, output_dir)
    states = {}
    for job in jobs:
        states[job.state] = states.get(job.state, 0) + 1
    for job in jobs:
        print(f"  {job}")
    summary = ", ".join(f"{n} {s.lower()}" for s, n in sorted(states.items()))
    print(f"sweep {spec.name!r}: {len(jobs)} jobs ({summary})", flush=True)
    return jobs


def cmd_sweep(args) -> int:
    spec = sweeps.load_sweep(args.name)
    import domainbed  # noqa: F401  (a clear error early if DomainBed is missing)

    jobs = print_jobs(spec, args.data_dir, args.output_dir)
    missing = sweeps.missing_data(spec, args.data_dir)
    if missing:
        message = ("data not found:\n  " + "\n  ".join(missing) + "\nDownload it with "
                   f"'python -m domainbed.scripts.download --data_dir {args.data_dir}' "
                   "(see docs/launchers.md) or pass the right DATA_DIR.")
        if not args.dry_run:
            raise FileNotFoundError(message)
        print("warning: " + message)
    if args.dry_run:
        print("dry run: nothing launched. The command would be:")
        print("  " + sweeps.format_command(sweeps.sweep_command(
            spec, "launch", args.data_dir, args.output_dir, args.launcher, python="python")))
        return 0
    # DomainBed never relaunches a job whose directory exists without 'done'. Such a job may
    # have died, or may still be running on a cluster: delete and relaunch only when asked.
    incomplete = [j for j in jobs if j.state == "Incomplete"]
    if incomplete and args.restart_incomplete:
        _run(sweeps.sweep_command(spec, "delete_incomplete", args.data_dir, args.output_dir,
                                  args.launcher))
    elif incomplete:
        print(f"note: {len(incomplete)} incomplete jobs are left alone (they may still be "
              f"running). When none is (e.g. 'squeue -n lpa_domainbed' is empty), rerun with "
              f"RESTART_INCOMPLETE=1 (--restart_incomplete) to delete and relaunch them.")
    _run(sweeps.sweep_command(spec, "launch", args.data_dir, args.output_dir, args.launcher))
    return 0


def cmd_demo(args) -> int:
    from lpa_domainbed import tables

    spec = sweeps.load_sweep("demo")
    output_dir = Path(args.output_dir)
    data_dir = output_dir.parent / "data"  # RotatedDigits is embedded: nothing is read here
    data_dir.mkdir(parents=True, exist_ok=True)
    start = time.time()
    jobs = print_jobs(spec, data_dir, output_dir)
    todo = sum(j.state != "Done" for j in jobs)
    print(f"==> {todo} of {len(jobs)} jobs to run; "
          f"{'resuming: finished jobs are kept' if todo < len(jobs) else 'fresh sweep'}")
    _run(sweeps.sweep_command(spec, "delete_incomplete", data_dir, output_dir))
    _run(sweeps.sweep_command(spec, "launch", data_dir, output_dir))
    sweep_seconds = time.time() - start
    result = tables.make_tables([str(output_dir)], name="demo", out_root=args.out_root)
    total = time.time() - start
    launch = sweeps.format_command(sweeps.sweep_command(
        spec, "launch", _shown(data_dir), _shown(output_dir), python="python"))
    run_md = Path(args.out_root) / "demo" / "RUN.md"
    run_md.write_text(
        "# How these demo tables were made\n\n"
        f"- Command: `make demo` (= `python -m lpa_domainbed.cli demo`), which ran\n"
        f"  `{launch}`\n  and then `python -m lpa_domainbed.tables --input_dir {_shown(output_dir)} "
        f"--name demo` (paths relative to the repository).\n"
        f"- lpa_domainbed commit: {_git_commit(REPO)}\n"
        f"- DomainBed commit: {_git_commit(Path(__import__('domainbed').__file__).parents[1])}\n"
        f"- Machine: {describe_machine()}\n"
        f"- Jobs: {len(jobs)} ({todo} run in this invocation); sweep wall time "
        f"{sweep_seconds:.0f} s, sweep + tables {total:.0f} s.\n")
    print(f"==> demo finished in {total:.0f} s (sweep {sweep_seconds:.0f} s); tables in "
          f"{Path(args.out_root) / 'demo'}")
    return 0 if result is not None else 1


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="lpa-domainbed", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("demo", help="leave-one-domain-out sweep on RotatedDigits, then tables")
    p.add_argument("--output_dir", default=str(REPO / "sweeps_output" / "demo"))
    p.add_argument("--out_root", default=str(REPO / "results"))
    p.set_defaults(func=cmd_demo)
    p = sub.add_parser("sweep", help="launch sweeps/<name>.toml with DomainBed's sweep script")
    p.add_argument("name")
    p.add_argument("--data_dir", required=True)
    p.add_argument("--output_dir", required=True)
    p.add_argument("--launcher", default=None, help="DomainBed command launcher")
    p.add_argument("--dry_run", action="store_true", help="list the jobs, launch nothing")
    p.add_argument("--restart_incomplete", action="store_true",
                   help="delete and relaunch jobs that started but have no 'done' file")
    p.set_defaults(func=cmd_sweep)
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except (FileNotFoundError, ValueError, ModuleNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except subprocess.CalledProcessError as e:
        print(f"error: command failed with exit code {e.returncode}", file=sys.stderr)
        return e.returncode or 1


if __name__ == "__main__":
    sys.exit(main())
