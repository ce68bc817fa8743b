"""The run cache: every finished run as one JSON file, keyed by everything that determines
its result."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from lpa_domainbed.tools.figures.plans import RunSpec, Settings
from lpa_domainbed.tools.runinfo import json_default

__all__ = ["CACHE_VERSION", "cache_key", "RunCache"]

#: bump when the trainer's output changes, so that old cache entries are not reused.
CACHE_VERSION = 2  # 2: the MLP cut moved after the ReLU; class accuracy from clean logits


def cache_key(spec: RunSpec, settings: Settings, hparams: dict) -> dict:
    """Everything that determines a run's result (data_dir does not: it only locates data)."""
    return {"version": CACHE_VERSION, "dataset": settings.dataset,
            "algorithm": spec.algorithm, "hparams": hparams, "test_env": spec.test_env,
            "trial": spec.trial, "steps": settings.steps,
            "holdout_fraction": settings.holdout_fraction,
            "checkpoint_freq": settings.checkpoint_freq}


class RunCache:
    """Finished runs as ``<dir>/<algorithm>_env<E>_trial<K>_<steps>steps_<hash>.json``."""

    def __init__(self, directory: Path):
        self.directory = Path(directory)

    def path(self, key: dict) -> Path:
        """The file of ``key``: readable names, and a hash of the whole key."""
        text = json.dumps(key, sort_keys=True, default=json_default)
        digest = hashlib.sha1(text.encode()).hexdigest()[:12]
        return self.directory / (f"{key['algorithm']}_env{key['test_env']}_trial{key['trial']}"
                                 f"_{key['steps']}steps_{digest}.json")

    def get(self, key: dict) -> dict | None:
        """The cached record of ``key``, or None (also for an unreadable or foreign file)."""
        path = self.path(key)
        if not path.exists():
            return None
        try:
            record = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            return None  # a half-written file from an interrupted run: train again
        same = json.dumps(record.get("key"), sort_keys=True, default=json_default) == \
            json.dumps(key, sort_keys=True, default=json_default)
        return record if same else None

    def put(self, key: dict, record: dict) -> Path:
        """Write atomically (temporary file, then rename), so a crash never leaves half a file."""
        path = self.path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps({**record, "key": key}, sort_keys=True, indent=1,
                                  default=json_default))
        os.replace(tmp, path)
        return path
