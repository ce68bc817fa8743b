"""What ``lpa-domainbed sweep`` checks before it launches anything, besides the sweep file
itself: the datasets' files and the pretrained weights its jobs load. A real launch refuses
when either is missing, with what to do; a dry run prints the same as warnings."""

from __future__ import annotations

import os

from lpa_domainbed.tools import sweeps, weights_check

__all__ = ["check_sweep"]


def check_sweep(spec, data_dir, dry_run: bool) -> None:
    """Print the warnings (``resnet18`` overridden, and with ``dry_run`` what is missing and
    the weights report); raise ``FileNotFoundError`` naming what is missing otherwise."""
    problems = []
    missing = sweeps.missing_data(spec, data_dir)
    if missing:
        flag = "DATA_DIR" if os.environ.get("MAKELEVEL") else "--data_dir"
        problems.append("data not found:\n  " + "\n  ".join(missing) + "\nDownload it with "
                        f"'python -m domainbed.scripts.download --data_dir {data_dir}' "
                        f"(see docs/launchers.md) or pass the right {flag}.")
    warnings, report, weights_missing = weights_check.preflight(spec)
    for warning in warnings:
        print(f"warning: {warning}")
    if weights_missing:
        problems.append(report)
    elif report and dry_run:
        print(report)
    if problems and not dry_run:
        raise FileNotFoundError("\n".join(problems))
    for problem in problems:
        print("warning: " + problem)
