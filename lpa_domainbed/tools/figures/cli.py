"""The paper's analysis figures (1, 3a, 4a, 7) on a small DomainBed protocol.

    python -m lpa_domainbed.tools.figures [--dataset RotatedDigits] [--data_dir DIR]
        [--out results/figures] [--steps N] [--trials K] [--test_env E ...]
        [--only fig1,fig4a,fig7,fig3a] [--threads T]

The command line of :mod:`lpa_domainbed.tools.figures` (``make figures``); see the package docs and
``docs/figures.md``.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from lpa_domainbed.tools.figures.data import default_test_envs
from lpa_domainbed.tools.figures.pipeline import make_figures
from lpa_domainbed.tools.figures.plans import DEFAULT_STEPS, DEFAULT_TRIALS, FIGURES, Settings
from lpa_domainbed.tools.figures.training import format_seconds

__all__ = ["DEFAULT_OUT", "main"]

DEFAULT_OUT = "results/figures"


def _parse_figures(text: str) -> list[str]:
    """``--only fig1,fig7`` -> ``["fig1", "fig7"]``; unknown names are an argparse error."""
    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in FIGURES]
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown figure(s) {unknown}; choose from {FIGURES}")
    return names


def main(argv: list[str] | None = None) -> int:
    """The command line (see the module docs); returns the exit status."""
    parser = argparse.ArgumentParser(prog="python -m lpa_domainbed.tools.figures",
                                     description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", default="RotatedDigits")
    parser.add_argument("--data_dir", default="sweeps_output/data",
                        help="DomainBed's data directory (RotatedDigits needs none)")
    parser.add_argument("--out", default=DEFAULT_OUT)
    parser.add_argument("--steps", type=int, default=DEFAULT_STEPS)
    parser.add_argument("--trials", type=int, default=DEFAULT_TRIALS)
    parser.add_argument("--test_env", type=int, nargs="+", default=None,
                        help="held-out domains (default: the first and the last)")
    parser.add_argument("--only", type=_parse_figures, default=list(FIGURES),
                        help=f"comma-separated subset of {','.join(FIGURES)}")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch CPU threads (default 1; see the module docs)")
    args = parser.parse_args(argv)
    import torch

    import lpa_domainbed

    lpa_domainbed.register()  # also when the autoload is off (LPA_DOMAINBED_AUTOLOAD=0)
    # The networks here are tiny: on a shared CPU, several intra-op threads spin against the
    # other jobs and made a run 20x slower in our measurements; one thread is fastest.
    torch.set_num_threads(args.threads)
    test_envs = tuple(args.test_env) if args.test_env else default_test_envs(args.dataset)
    settings = Settings(dataset=args.dataset, data_dir=args.data_dir, steps=args.steps,
                        trials=args.trials, test_envs=test_envs)
    started = time.time()
    make_figures(settings, Path(args.out), args.only)
    print(f"done in {format_seconds(time.time() - started)}", flush=True)
    return 0
