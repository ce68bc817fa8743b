"""Which GPU each job of ``local_parallel`` and ``local_forkserver`` runs on.

The GPUs are the entries of ``CUDA_VISIBLE_DEVICES`` in the sweep's environment (indices,
UUIDs or MIG ids, in order; empty or ``-1``: none), else every device torch counts
(``torch.cuda.device_count()``, which asks NVML and so does not initialise CUDA in the
launcher). Each job gets ``CUDA_VISIBLE_DEVICES`` set to one of them: the GPU with the fewest
running jobs, ties broken round-robin (the one after the GPU given last), so jobs are spread
evenly and each job sees its GPU as ``cuda:0``. ``LPA_DOMAINBED_JOBS_PER_GPU`` caps the jobs
running on one GPU (default: no cap); a job waits while every GPU is at the cap. Without GPUs
nothing changes: the jobs get the sweep's environment as it is.
"""

from __future__ import annotations

import os
from typing import Mapping

__all__ = ["GpuPool", "gpu_pool", "visible_gpus"]

VARIABLE = "CUDA_VISIBLE_DEVICES"


def _device_count() -> int:
    """Devices torch sees here (0 without torch or a CUDA build); tests replace it."""
    try:
        import torch
    except ImportError:
        return 0
    try:
        return torch.cuda.device_count()
    except RuntimeError:  # a broken driver: the jobs will say so themselves
        return 0


def visible_gpus(environ: Mapping[str, str] | None = None) -> tuple[list[str], str]:
    """The GPUs jobs may use (values for their ``CUDA_VISIBLE_DEVICES``) and where the list
    came from, for the launcher's message."""
    environ = os.environ if environ is None else environ
    if VARIABLE in environ:
        raw = environ[VARIABLE]
        entries = []
        for entry in (part.strip() for part in raw.split(",")):
            if not entry or entry.startswith("-"):  # CUDA ignores everything from there on
                break
            entries.append(entry)
        return entries, f"{VARIABLE}={raw}"
    count = _device_count()
    return [str(i) for i in range(count)], f"{VARIABLE} unset: the {count} devices torch sees"


class GpuPool:
    """Running jobs per GPU; :meth:`acquire` gives the next job's GPU (None without GPUs)."""

    def __init__(self, devices: list[str], per_gpu: int | None = None, source: str = ""):
        self.devices, self.per_gpu, self.source = list(devices), per_gpu, source
        self.running = [0] * len(self.devices)
        self._next = 0

    def full(self) -> bool:
        """Every GPU runs ``per_gpu`` jobs: the next job must wait."""
        return bool(self.devices) and self.per_gpu is not None and \
            min(self.running) >= self.per_gpu

    def acquire(self) -> int | None:
        """The least busy GPU (ties: round-robin), counted as running one more job."""
        if not self.devices or self.full():
            return None
        n = len(self.devices)
        best = min(((self._next + k) % n for k in range(n)), key=lambda i: self.running[i])
        self.running[best] += 1
        self._next = (best + 1) % n
        return best

    def release(self, gpu: int | None) -> None:
        if gpu is not None:
            self.running[gpu] -= 1

    def env(self, gpu: int | None) -> dict[str, str]:
        return {} if gpu is None else {VARIABLE: self.devices[gpu]}

    def describe(self) -> str | None:
        """One line for the launcher's output, None without GPUs."""
        if not self.devices:
            return None
        cap = f"at most {self.per_gpu} per GPU" if self.per_gpu else \
            "no cap per GPU (LPA_DOMAINBED_JOBS_PER_GPU)"
        return (f"{len(self.devices)} GPUs ({self.source}): each job gets one, the least busy, "
                f"{cap}")


def gpu_pool(environ: Mapping[str, str] | None = None) -> GpuPool:
    """The pool of this environment's GPUs with its ``LPA_DOMAINBED_JOBS_PER_GPU`` cap."""
    from lpa_domainbed.tools.launchers.settings import jobs_per_gpu

    devices, source = visible_gpus(environ)
    return GpuPool(devices, jobs_per_gpu(environ), source)
