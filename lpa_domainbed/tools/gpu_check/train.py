"""DomainBed's own train script with every ``update`` call's synchronizations counted.

    python -m lpa_domainbed.tools.gpu_check.train SYNCS_JSON [domainbed.scripts.train args]

Runs ``domainbed.scripts.train`` in this process (as ``python -m`` would) with random ImageNet
weights written offline (:func:`~lpa_domainbed.tools.bench.weights.offline_weights`: nothing is
downloaded), sync debug mode "warn" on, and the algorithm class's ``update`` counted by
:class:`~lpa_domainbed.tools.gpu_check.syncs.SyncCounter`; then writes the algorithm's
syncs per update (:meth:`SyncCounter.summary`) to ``SYNCS_JSON``.
"""

from __future__ import annotations

import json
import runpy
import sys
from pathlib import Path

from lpa_domainbed.tools.gpu_check.syncs import SyncCounter

__all__ = ["main"]


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv:
        print(__doc__.strip().splitlines()[2].strip(), file=sys.stderr)
        return 2
    out, train_args = Path(argv[0]), argv[1:]
    import torch
    from domainbed import algorithms

    from lpa_domainbed.tools.bench.weights import offline_weights

    counter = SyncCounter(set_mode=torch.cuda.is_available())
    original = algorithms.get_algorithm_class
    counted = []

    def get_algorithm_class(name):  # the train script asks for its class once
        cls = original(name)
        cls.update = counter.wrap(name, cls.update)  # this process only
        counted.append(name)
        return cls

    algorithms.get_algorithm_class = get_algorithm_class
    saved_argv = sys.argv
    sys.argv = ["domainbed.scripts.train", *train_args]
    try:
        with offline_weights(("resnet18",)), counter:
            runpy.run_module("domainbed.scripts.train", run_name="__main__", alter_sys=True)
    finally:
        sys.argv = saved_argv
        algorithms.get_algorithm_class = original
    result = {"algorithm": counted[0] if counted else None, "outside_updates": counter.outside,
              **(counter.summary(counted[0]) if counted else {})}
    out.write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
