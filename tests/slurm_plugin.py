"""A plugin for the Slurm tests (named by ``LPA_DOMAINBED_PLUGINS``): ``SlowERM``, DomainBed's
ERM whose first attempt of a job sleeps after its first step (once its step-0 record is
written), so a test can cancel, requeue or time it out while it runs.

* ``SLOW_ERM_ENVS``: held-out domains whose jobs sleep (comma-separated, e.g. ``1,2``);
* ``SLOW_ERM_SECONDS``: how long (default 600);
* ``SLOW_ERM_MARKS``: a folder; a job writes ``<its job directory's name>`` there when it starts
  sleeping, holding its Slurm job id. A job whose mark exists (a later attempt) does not sleep.
"""

import os
import sys
import time
from pathlib import Path

from domainbed.algorithms import ERM

from lpa_domainbed.algorithms import ALGORITHMS


def _arg(name):
    return sys.argv[sys.argv.index(name) + 1] if name in sys.argv else None


@ALGORITHMS.register("SlowERM")
class SlowERM(ERM):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.steps_done = 0

    def update(self, minibatches, unlabeled=None):
        self.steps_done += 1
        if self.steps_done == 2:
            self._maybe_sleep()
        return super().update(minibatches, unlabeled)

    def _maybe_sleep(self):
        envs = [e for e in os.environ.get("SLOW_ERM_ENVS", "").split(",") if e]
        out_dir, marks = _arg("--output_dir"), os.environ.get("SLOW_ERM_MARKS")
        if _arg("--test_envs") not in envs or not out_dir or not marks:
            return
        mark = Path(marks) / Path(out_dir).name
        if mark.exists():
            return
        job = os.environ.get("SLURM_ARRAY_JOB_ID", "") + "_" + os.environ.get(
            "SLURM_ARRAY_TASK_ID", "")
        mark.write_text(job)
        time.sleep(float(os.environ.get("SLOW_ERM_SECONDS", "600")))
