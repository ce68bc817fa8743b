"""``run`` (benchmark networks, evaluate the targets, write ``latest.json`` / ``latest.md``)
and the command line ``python -m lpa_domainbed.tools.bench`` (``make bench``)."""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
from pathlib import Path
from typing import Callable

import torch

from lpa_domainbed.tools.bench.config import EXPLICIT_VARIANTS, NETWORKS, RESNET50, NetworkSpec, \
    Settings, Variant, available, variants
from lpa_domainbed.tools.bench.demo import demo_record
from lpa_domainbed.tools.bench.measure import benchmark_network
from lpa_domainbed.tools.bench.report import _fmt, markdown
from lpa_domainbed.tools.bench.targets import evaluate_targets
from lpa_domainbed.tools.bench.weights import offline_weights
from lpa_domainbed.tools.runinfo import describe_machine, json_default, machine_line

__all__ = ["DEMO_TIMING", "run", "main"]

#: written by ``make demo``: its sweep's wall time, jobs, commits and machine.
# Relative to the current directory, like every output of the tooling (make runs in the repo).
DEMO_TIMING = Path("results") / "demo" / "timing.json"


def run(nets: list[NetworkSpec], settings: Settings, device: str = "cpu",
        out: Path | None = None, log: Callable[[str], None] | None = print,
        variant_list: list[Variant] | None = None, demo_timing: Path | None = None,
        instrument: Callable[[str, object], None] | None = None) -> list[dict]:
    """Benchmark ``nets``; write ``latest.json`` / ``latest.md`` under ``out`` (if given).
    ``instrument``: see :func:`~lpa_domainbed.tools.bench.measure.benchmark_network`."""
    def say(msg):
        if log is not None:
            log(msg)

    saved_threads = torch.get_num_threads()
    if settings.threads:
        torch.set_num_threads(settings.threads)
    try:
        machine = describe_machine(device)
        say(f"==> machine: {machine_line(machine)}; clock: {settings.clock}")
        variant_list = variant_list or variants()
        left_out = [v.key for v in EXPLICIT_VARIANTS if not available(v)]
        if left_out:
            say(f"==> left out (an hparam this code does not have): {', '.join(left_out)}")
        records = []
        needs_resnet = any(n.input_shape[1:] == (224, 224) for n in nets)
        with offline_weights() if needs_resnet else contextlib.nullcontext():
            for net in nets:
                records += benchmark_network(net, variant_list, settings, device, log,
                                             instrument)
    finally:
        torch.set_num_threads(saved_threads)
    for rec in records:
        rec["machine"] = machine
    targets = evaluate_targets(records)
    records += targets
    records.append(demo_record(DEMO_TIMING if demo_timing is None else demo_timing, Path.cwd()))
    say("==> targets")
    for t in targets:
        say(f"    [{'MET' if t['met'] else 'MISSED':>6}] {t['network']}: {t['target']} = "
            f"{_fmt(t['value'])} (limit {t['limit']:.2f})")
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        (out / "latest.json").write_text(json.dumps(records, indent=1, default=json_default)
                                         + "\n")
        (out / "latest.md").write_text(markdown(records, machine, nets, settings))
        say(f"==> wrote {out / 'latest.json'} and {out / 'latest.md'}")
    return records


def main(argv=None) -> int:
    """The command line; returns the exit status."""
    from lpa_domainbed.tools import bench

    parser = argparse.ArgumentParser(prog="python -m lpa_domainbed.tools.bench",
                                     description=bench.__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="fewer repetitions and a smaller batch and ResNet input "
                             "(64 px; a smoke run)")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--out", default=str(Path("results") / "benchmarks"))
    parser.add_argument("--networks", default="resnet50,mnist_cnn",
                        help=f"comma-separated, from {', '.join(NETWORKS)}")
    parser.add_argument("--rounds", type=int, default=None, help="override the rounds")
    parser.add_argument("--variants", default=None,
                        help="comma-separated variant keys to run (ERM, the reference, is "
                             "always first), e.g. 'LPA[exact],LPA[exact_bf16]'; default: all")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads (default: 1 on CPU, so that the CPU clock is exact "
                             "and other processes disturb little; torch's default on CUDA)")
    parser.add_argument("--clock", choices=("cpu", "wall"), default=None,
                        help="default: cpu on CPU with one thread, wall otherwise")
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: CUDA is not available; use --device cpu")
    names = [n.strip() for n in args.networks.split(",") if n.strip()]
    unknown = [n for n in names if n not in NETWORKS]
    if unknown or not names:
        parser.error(f"--networks: unknown {unknown or 'empty'}; choose from "
                     f"{', '.join(NETWORKS)}")
    nets = [NETWORKS[n] for n in names]
    threads = args.threads if args.threads is not None else (1 if args.device == "cpu" else None)
    clock = args.clock or ("cpu" if args.device == "cpu" and threads == 1 else "wall")
    if clock == "cpu" and args.device == "cuda":
        parser.error("--clock cpu does not see GPU work: use --clock wall on CUDA")
    settings = (Settings.quick if args.quick else Settings)(clock=clock, threads=threads)
    if args.quick:
        nets = [dataclasses.replace(n, feed_shape=(3, 64, 64), per_domain=2)
                if n is RESNET50 else dataclasses.replace(n, per_domain=8) for n in nets]
    if args.rounds:
        settings = dataclasses.replace(settings, rounds=args.rounds)
    chosen = None
    if args.variants:
        every = {v.key: v for v in variants()}
        keys = [k.strip() for k in args.variants.split(",") if k.strip()]
        unknown = [k for k in keys if k not in every]
        if unknown:
            parser.error(f"--variants: unknown {unknown}; choose from {', '.join(every)}")
        chosen = [every["ERM"]] + [every[k] for k in keys if k != "ERM"]
    run(nets, settings, args.device, Path(args.out), log=lambda m: print(m, flush=True),
        variant_list=chosen)
    return 0
