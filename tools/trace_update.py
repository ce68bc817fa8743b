"""The route of one training update through the package's files.

    python tools/trace_update.py [ALGORITHM] [--hparams JSON]

Builds ``ALGORITHM`` (default ``LPA``) on DomainBed's MNIST_CNN (Debug28's input shape, 3
classes, 2 training domains of 8 images), runs one warm-up update, then traces the next one
with ``sys.setprofile``: every Python frame of ``lpa_domainbed`` that is entered or resumed is
an event, frames of other packages (torch, DomainBed) are skipped; the tail's replay
(``perturb/tail.py`` with ``perturb/replay.py``, one mechanism called back by torch for every
module of every tail evaluation) counts as one file, ``tail.py``. It prints the files in the
order the update visits them, the number of file switches (consecutive events in different
files), the switches between each pair of files, and the deepest nesting of package frames.
Needs DomainBed importable.
"""

from __future__ import annotations

import argparse
import collections
import json
import sys
from pathlib import Path

import torch

import lpa_domainbed

PACKAGE = Path(lpa_domainbed.__file__).resolve().parent


#: files counted as one: the tail's replay machinery
ONE_FILE = {"lpa_domainbed/perturb/replay.py": "lpa_domainbed/perturb/tail.py"}


def _package_file(frame) -> str | None:
    path = Path(frame.f_code.co_filename)
    try:
        name = str(Path(PACKAGE.name) / path.resolve().relative_to(PACKAGE))
    except ValueError:
        return None
    return ONE_FILE.get(name, name)


def trace(call):
    """``(events, max_depth)`` of ``call()``: the package files in the order their frames run."""
    events, depth, deepest = [], [0], [0]

    def profile(frame, event, arg):
        if event not in ("call", "return"):
            return
        name = _package_file(frame)
        if name is None:
            return
        if event == "call":
            depth[0] += 1
            deepest[0] = max(deepest[0], depth[0])
            events.append(name)
        else:
            depth[0] -= 1
            caller = frame.f_back
            while caller is not None and _package_file(caller) is None:
                caller = caller.f_back
            if caller is not None:
                events.append(_package_file(caller))

    sys.setprofile(profile)
    try:
        call()
    finally:
        sys.setprofile(None)
    return events, deepest[0]


def route(events: list[str]) -> list[str]:
    """The events with repeats of the same file collapsed: the route through the files."""
    return [f for i, f in enumerate(events) if i == 0 or f != events[i - 1]]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("algorithm", nargs="?", default="LPA")
    parser.add_argument("--hparams", default="{}", help="JSON object merged into the defaults")
    args = parser.parse_args(argv)
    lpa_domainbed.register()
    from domainbed import algorithms, hparams_registry

    hparams = hparams_registry.default_hparams(args.algorithm, "Debug28")
    hparams.update(json.loads(args.hparams))
    torch.manual_seed(0)
    alg = algorithms.get_algorithm_class(args.algorithm)((3, 28, 28), 3, 2, hparams)
    g = torch.Generator().manual_seed(0)
    batch = [(torch.randn(8, 3, 28, 28, generator=g), torch.arange(8) % 3) for _ in range(2)]
    alg.update(batch)  # warm-up: lazy initialisation is not part of the route
    events, deepest = trace(lambda: alg.update(batch))
    steps = route(events)
    pairs = collections.Counter(tuple(sorted(p)) for p in zip(steps, steps[1:]))
    print(f"{args.algorithm}: one update, {len(steps) - 1} file switches, "
          f"{len(set(steps))} files, package call depth {deepest}")
    print("route: " + " -> ".join(Path(s).name for s in steps))
    for (a, b), n in pairs.most_common():
        print(f"  {n:3d}  {Path(a).name} <-> {Path(b).name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
