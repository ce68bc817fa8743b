"""Command launchers this package adds to ``domainbed.command_launchers.REGISTRY``.

A DomainBed launcher is a function ``launcher(commands: list[str]) -> None``; ours return
the list of commands that failed.

* ``local_parallel``: N commands at a time on this machine (:mod:`.local_parallel`);
* ``local_forkserver``: the same, training jobs forked from one server that imported torch
  and DomainBed once (:mod:`.forkserver`);
* ``submitit``: Slurm job arrays through submitit, or submitit's local executor where there is
  no Slurm (:func:`.submitit_launcher.submitit_launcher`; submitit is imported only when it
  runs). The function is not re-exported here: its name is also its module's name.

All read their settings from environment variables; :func:`validate_settings` checks them
(a command line tool calls it before starting DomainBed's sweep).
"""

import sys

from lpa_domainbed.registration import LAUNCHERS, on_module_loaded
from lpa_domainbed.tools.launchers import submitit_launcher as _submitit_module
from lpa_domainbed.tools.launchers.forkserver import local_forkserver_launcher
from lpa_domainbed.tools.launchers.local_parallel import local_parallel_launcher
from lpa_domainbed.tools.launchers.settings import validate_settings

__all__ = ["LAUNCHERS", "local_parallel_launcher", "validate_settings"]

# Imported through the entry point ``launchers`` of the group ``lpa_domainbed.launchers`` when
# ``domainbed.command_launchers`` is imported (where a sweep runs), never in a train process.
for _name, _launcher in (("local_parallel", local_parallel_launcher),
                         ("local_forkserver", local_forkserver_launcher),
                         ("submitit", _submitit_module.submitit_launcher)):
    if LAUNCHERS.get(_name) is not _launcher:
        LAUNCHERS.add(_name, _launcher)
if "domainbed.command_launchers" in sys.modules:  # imported directly, after DomainBed's
    on_module_loaded("domainbed.command_launchers", sys.modules["domainbed.command_launchers"])
