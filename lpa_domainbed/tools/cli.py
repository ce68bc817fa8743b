"""Command line: lpa-domainbed {demo,sweep,weights,evaluate,tables} ... (= python -m
lpa_domainbed.tools.cli, behind make demo / make sweep / make tables). Outputs default to the
current directory."""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

from lpa_domainbed.tools import evaluate, preflight, runinfo, sweeps, weights_check
from lpa_domainbed.tools.live_jobs import JobsStillRunning, refuse_live_jobs
from lpa_domainbed.tools.child_process import INTERRUPTED, run_forwarding_signals
from lpa_domainbed.tools.safe_output import atomic_write_text
from lpa_domainbed.tools.sweep_lock import SweepLocked, sweep_lock
from lpa_domainbed.tools.sweep_paths import check_directory

__all__ = ["main", "build_parser", "run_forwarding_signals", "resume_command"]

def _shown(path) -> str:
    """A path as the user would type it here (relative to the current directory when inside)."""
    path = Path(path).resolve()
    return os.path.relpath(path) if path.is_relative_to(Path.cwd()) else str(path)


def resume_command(args) -> str:
    """The one command that deletes the sweep's incomplete jobs and relaunches them: the make
    form when run by make (make exports MAKELEVEL), else the lpa-domainbed form."""
    q = shlex.quote
    if os.environ.get("MAKELEVEL"):
        line = (f"make sweep NAME={q(args.name)} DATA_DIR={q(_shown(args.data_dir))} "
                f"OUTPUT_DIR={q(_shown(args.output_dir))}")
        return line + (f" LAUNCHER={q(args.launcher)}" if args.launcher else "") + \
            " RESTART_INCOMPLETE=1"
    line = (f"lpa-domainbed sweep {q(args.name)} --data_dir {q(_shown(args.data_dir))} "
            f"--output_dir {q(_shown(args.output_dir))}")
    return line + (f" --launcher {q(args.launcher)}" if args.launcher else "") + \
        " --restart_incomplete"


def print_jobs(spec, data_dir, output_dir, quiet=False) -> list:
    jobs = sweeps.list_jobs(spec, data_dir, output_dir)
    states = {}
    for job in jobs:
        states[job.state] = states.get(job.state, 0) + 1
    if not quiet:
        for job in jobs:
            print(f"  {sweeps.describe_job(job)}")
    summary = ", ".join(f"{n} {s.lower()}" for s, n in sorted(states.items()))
    print(f"sweep {spec.name!r}: {len(jobs)} jobs ({summary})", flush=True)
    return jobs


def _check_launcher(spec, launcher):
    if launcher is not None and launcher != spec.command_launcher:
        sweeps.check_names(sweeps.SweepSpec(**{**spec.__dict__, "command_launcher": launcher}))


def _require_domainbed() -> None:
    try:
        import domainbed  # noqa: F401
    except ModuleNotFoundError as error:
        if error.name != "domainbed":
            raise
        from lpa_domainbed.registration import domainbed_advice

        raise ModuleNotFoundError(domainbed_advice()) from None


def cmd_sweep(args) -> int:
    from lpa_domainbed.tools.launchers.settings import validate_settings

    check_directory("--data_dir", args.data_dir)
    check_directory("--output_dir", args.output_dir)
    _require_domainbed()
    spec = sweeps.load_sweep(args.name)
    _check_launcher(spec, args.launcher)
    validate_settings(args.launcher or spec.command_launcher)  # before anything is launched
    sweeps.check_hparams(spec)
    jobs = print_jobs(spec, args.data_dir, args.output_dir)
    preflight.check_sweep(spec, args.data_dir, args.dry_run)  # data and weights
    if args.dry_run:
        print("dry run: nothing launched. The command would be:")
        print("  " + sweeps.format_command(sweeps.sweep_command(
            spec, "launch", args.data_dir, args.output_dir, args.launcher, python="python")))
        return 0
    with sweep_lock(args.output_dir):
        return _launch(spec, jobs, args)


def _launch(spec, jobs, args) -> int:
    # DomainBed never relaunches a job whose directory exists without 'done'. Such a job may
    # have died, or may still be running on a cluster: delete and relaunch only when asked.
    incomplete = [j for j in jobs if j.state == "Incomplete"]
    if incomplete and args.restart_incomplete:
        refuse_live_jobs([j.output_dir for j in incomplete], "--restart_incomplete")
        run_forwarding_signals(sweeps.sweep_command(spec, "delete_incomplete", args.data_dir,
                                                    args.output_dir, args.launcher))
    elif incomplete:
        print(f"note: {len(incomplete)} incomplete jobs are left alone (they may still be "
              f"running). When none is running, resume them with:\n  {resume_command(args)}")
    try:  # a launch that fails (its one-line message above) is resumed like failed jobs
        run_forwarding_signals(sweeps.sweep_command(spec, "launch", args.data_dir,
                                                    args.output_dir, args.launcher))
    except subprocess.CalledProcessError:
        pass
    # DomainBed's sweep exits 0 even when jobs failed: count what is not done now.
    after = print_jobs(spec, args.data_dir, args.output_dir, quiet=True)
    not_done = [j for j in after if j.state != "Done"]
    if not_done:
        print(f"error: {len(not_done)} of {len(after)} jobs did not finish (see each job's "
              f"err.txt under {_shown(args.output_dir)}). Resume them with:\n"
              f"  {resume_command(args)}", file=sys.stderr)
        return 1
    return 0


def _write_run_record(spec, data_dir, output_dir, results_dir, jobs, todo, sweep_s, total_s):
    """RUN.md for people, timing.json for the benchmark."""
    import domainbed

    machine = runinfo.describe_machine()
    timing = {"sweep_wall_time_s": round(sweep_s, 1), "total_wall_time_s": round(total_s, 1),
              "jobs": len(jobs), "jobs_run": todo,
              "commit": runinfo.git_commit(Path(__file__).parent),
              "domainbed_commit": runinfo.git_commit(Path(domainbed.__file__).parents[1]),
              "machine": machine}
    atomic_write_text(results_dir / "timing.json",
                      json.dumps(timing, indent=2, default=runinfo.json_default) + "\n")
    launch = sweeps.format_command(sweeps.sweep_command(
        spec, "launch", _shown(data_dir), _shown(output_dir), python="python"))
    atomic_write_text(
        results_dir / "RUN.md",
        "# How these demo tables were made\n\n"
        f"- Command: `make demo` (= `lpa-domainbed demo`), which ran\n"
        f"  `{launch}`\n  and then `python -m lpa_domainbed.tools.tables --input_dir "
        f"{_shown(output_dir)} --name demo` (paths relative to the directory it ran in).\n"
        f"- lpa_domainbed commit: {timing['commit']}\n"
        f"- DomainBed commit: {timing['domainbed_commit']}\n"
        f"- Machine: {runinfo.machine_line(machine)}\n"
        f"- Jobs: {len(jobs)} ({todo} run in this invocation); sweep wall time "
        f"{sweep_s:.0f} s, sweep + tables {total_s:.0f} s (also in timing.json).\n")


def cmd_demo(args) -> int:
    from lpa_domainbed.tools import tables

    check_directory("--output_dir", args.output_dir)
    spec = sweeps.load_sweep("demo")
    output_dir = Path(args.output_dir)
    data_dir = output_dir.parent / "data"  # RotatedDigits is embedded: nothing is read here
    data_dir.mkdir(parents=True, exist_ok=True)
    start = time.time()
    jobs = print_jobs(spec, data_dir, output_dir)
    todo = sum(j.state != "Done" for j in jobs)
    print(f"==> {todo} of {len(jobs)} jobs to run; "
          f"{'resuming: finished jobs are kept' if todo < len(jobs) else 'fresh sweep'}")
    with sweep_lock(output_dir):
        refuse_live_jobs([j.output_dir for j in jobs if j.state == "Incomplete"],
                         "the demo's restart of incomplete jobs")
        run_forwarding_signals(sweeps.sweep_command(spec, "delete_incomplete", data_dir,
                                                    output_dir))
        run_forwarding_signals(sweeps.sweep_command(spec, "launch", data_dir, output_dir))
    sweep_seconds = time.time() - start
    not_done = [j for j in sweeps.list_jobs(spec, data_dir, output_dir) if j.state != "Done"]
    result = tables.make_tables([str(output_dir)], name="demo", out_root=args.out_root)
    total = time.time() - start
    _write_run_record(spec, data_dir, output_dir, result.out_dir, jobs, todo, sweep_seconds,
                      total)
    print(f"==> demo finished in {total:.0f} s (sweep {sweep_seconds:.0f} s); tables in "
          f"{_shown(result.out_dir)}")
    if not_done:
        print(f"error: {len(not_done)} of {len(jobs)} demo jobs did not finish (see err.txt "
              f"under {_shown(output_dir)}); rerun the same command to retry them.",
              file=sys.stderr)
        return 1
    return 0


def _launcher_help() -> str:
    from lpa_domainbed.tools.launchers import LAUNCHERS

    defaults = ", ".join(f"{name}: {sweeps.load_sweep(name, check_registry=False).command_launcher}"
                         for name in sweeps.known_sweeps())
    return (f"DomainBed command launcher: local, dummy, multi_gpu (DomainBed's), "
            f"{', '.join(LAUNCHERS)} (this package's) or a plugin's; default: the sweep "
            f"file's command_launcher ({defaults})")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lpa-domainbed", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("demo", help="leave-one-domain-out sweep on RotatedDigits, then tables",
                       description="The demo sweep (sweeps/demo.toml) on the embedded "
                                   "RotatedDigits through DomainBed's sweep script, then its "
                                   "tables and RUN.md; rerun to resume (finished jobs are kept).")
    p.add_argument("--output_dir", default=os.path.join("sweeps_output", "demo"),
                   help="the sweep's job directories (default: %(default)s)")
    p.add_argument("--out_root", default="results",
                   help="the tables go to OUT_ROOT/demo/ (default: %(default)s)")
    p.set_defaults(func=cmd_demo)
    sweep_help = f"a sweep file's name ({', '.join(sweeps.known_sweeps())}) or a path to a .toml"
    p = sub.add_parser("sweep", help="launch a sweep file with DomainBed's sweep script",
                       description="Check a sweep file, its data and its pretrained weights, "
                                   "then launch it with DomainBed's sweep script (jobs already "
                                   "done are kept).")
    p.add_argument("name", help=sweep_help)
    p.add_argument("--data_dir", required=True,
                   help="DomainBed's --data_dir: the datasets' files (e.g. DATA_DIR/PACS)")
    p.add_argument("--output_dir", required=True,
                   help="DomainBed's --output_dir: one directory per job")
    p.add_argument("--launcher", default=None, help=_launcher_help())
    p.add_argument("--dry_run", action="store_true",
                   help="list the jobs and check data and weights; launch nothing")
    p.add_argument("--restart_incomplete", action="store_true",
                   help="delete and relaunch jobs that started but have no 'done' file")
    p.set_defaults(func=cmd_sweep)
    weights_check.add_parser(sub, sweep_help)
    evaluate.add_parser(sub)
    sub.add_parser("tables", add_help=False,
                   help="tables and paired comparisons from sweep outputs "
                        "(lpa-domainbed tables --help)")
    return parser


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["tables"]:  # its own parser, shared with python -m lpa_domainbed.tools.tables
        from lpa_domainbed.tools import tables

        return tables.main(argv[1:])
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except KeyboardInterrupt:
        again = resume_command(args) if args.command == "sweep" else "the same command"
        print(f"interrupted: {args.command} stopped; to resume, run {again}", file=sys.stderr)
        return INTERRUPTED
    except (FileNotFoundError, ValueError, ModuleNotFoundError, SweepLocked,
            JobsStillRunning) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except subprocess.CalledProcessError as e:
        print(f"error: command failed with exit code {e.returncode}", file=sys.stderr)
        return e.returncode or 1


if __name__ == "__main__":
    sys.exit(main())
