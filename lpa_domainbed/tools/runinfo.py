"""Provenance and process helpers shared by the tooling (CLI, launchers, benchmark, figures).

One place for what every run record needs: the machine, the commit, JSON for numpy and
non-finite numbers, and the environment in which DomainBed's bare ``python -m ...`` job
commands start this interpreter.
"""

from __future__ import annotations

import math
import os
import platform
import subprocess
import sys
from pathlib import Path

__all__ = ["describe_machine", "machine_line", "git_commit", "json_default",
           "env_with_python"]


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def describe_machine(device: str = "cpu") -> dict:
    """CPU, cores, torch threads and versions, and the GPU when ``device`` is ``cuda``."""
    import torch

    info = {
        "cpu": _cpu_model(),
        "cpu_cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "device": device,
    }
    if device == "cuda" or (device == "auto" and torch.cuda.is_available()):
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def machine_line(m: dict) -> str:
    """One line for a RUN.md or a report from :func:`describe_machine`'s dict."""
    dev = f"GPU {m['gpu']}" if m.get("gpu") else "no GPU"
    return (f"{m['cpu']}, {m['cpu_cores']} CPU cores ({m['torch_threads']} torch threads), "
            f"{dev}; torch {m['torch']}, Python {m['python']}, {m['platform']}")


def git_commit(path) -> str:
    """Short commit of the repository holding ``path``, ``+uncommitted changes`` when a tracked
    file outside ``results/`` differs (a run's own outputs there do not count), ``unknown``
    outside a git checkout (an installed wheel)."""
    try:
        out = subprocess.run(["git", "-C", str(path), "rev-parse", "--short", "HEAD"],
                             capture_output=True, text=True, check=True)
        top = subprocess.run(["git", "-C", str(path), "rev-parse", "--show-toplevel"],
                             capture_output=True, text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", top, "status", "--porcelain",
                                "--untracked-files=no", "--", ".", ":(exclude)results"],
                               capture_output=True, text=True)
        return out.stdout.strip() + ("+uncommitted changes" if dirty.stdout.strip() else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def json_default(value):
    """``json.dumps(default=...)``: numpy scalars as Python numbers, NaN/inf as null."""
    item = getattr(value, "item", None)
    if callable(item) and getattr(value, "ndim", 1) == 0:
        value = item()
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, (int, str, bool)) or value is None:
        return value
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serializable: {value!r}")


def env_with_python(executable: str = sys.executable, env: dict | None = None) -> dict:
    """A copy of ``env`` (default: this process's) with ``executable``'s directory first on
    PATH. DomainBed's job commands start with a bare ``python``: this makes it the interpreter
    that launched the sweep, even when its virtual environment was not activated."""
    env = dict(os.environ if env is None else env)
    env["PATH"] = os.pathsep.join(filter(None, [os.path.dirname(executable),
                                                env.get("PATH", "")]))
    return env
