"""Where SWAD's validation data comes from: the splits DomainBed's train script holds out of
the training domains, read from that script's own state.

DomainBed's ``train.py`` runs as ``__main__`` and keeps everything at module level:
``out_splits`` (``misc.split_dataset`` of each domain with ``--holdout_fraction`` and
``misc.seed_hash(trial_seed, env)``, the splits its training-domain model selection uses),
``args.test_envs``, ``checkpoint_freq`` and ``n_steps``. Reading them is the one way for an
algorithm to see the validation splits without editing DomainBed; this is the only place that
does it, and it fails with a message naming what is missing when the script changes.
"""

from __future__ import annotations

import dataclasses
import sys

__all__ = ["ValidationSource", "TrainScriptChanged", "from_train_script"]

NEEDED = ("args", "out_splits", "checkpoint_freq", "n_steps", "dataset")


class TrainScriptChanged(RuntimeError):
    """The running train script does not hold what SWAD reads."""


@dataclasses.dataclass
class ValidationSource:
    """The training domains' validation splits (datasets), how often to evaluate, how long
    training runs, and the data loader's worker count."""

    splits: list
    every: int
    total_steps: int
    num_workers: int = 0


def from_train_script(main=None) -> ValidationSource:
    """The validation source of the DomainBed train script running as ``__main__``."""
    main = sys.modules.get("__main__") if main is None else main
    missing = [name for name in NEEDED if not hasattr(main, name)]
    if missing:
        where = getattr(main, "__file__", None) or getattr(main, "__name__", "?")
        raise TrainScriptChanged(
            f"SWAD reads the training domains' validation splits from DomainBed's train "
            f"script, but the running program ({where}) has no {missing}: run SWAD through "
            f"'python -m domainbed.scripts.train' (the DomainBed commit this package is tested "
            f"with), or give the splits yourself with algorithm.validate_with(...)")
    test_envs = set(main.args.test_envs)
    splits = [split for i, (split, _) in enumerate(main.out_splits) if i not in test_envs]
    return ValidationSource(splits, int(main.checkpoint_freq), int(main.n_steps),
                            int(getattr(main.dataset, "N_WORKERS", 0)))
