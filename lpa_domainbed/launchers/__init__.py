"""Command launchers this package adds to ``domainbed.command_launchers.REGISTRY``.

A DomainBed launcher is a function ``launcher(commands: list[str]) -> None``.
"""

from lpa_domainbed.launchers.local_parallel import local_parallel_launcher
from lpa_domainbed.registry import Registry

__all__ = ["LAUNCHERS", "local_parallel_launcher"]

LAUNCHERS: Registry = Registry("command launcher")
LAUNCHERS.add("local_parallel", local_parallel_launcher)
