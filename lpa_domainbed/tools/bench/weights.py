"""Randomly initialized ImageNet-network weights where the pretrained loaders look for them,
so that DomainBed's ResNets build offline (DomainBed always asks for pretrained weights; timing,
memory and the tests need the architecture only). The one offline-weights helper of the
project: the benchmark uses :func:`offline_weights`, the tests :func:`write_random_weights`
(their train-script subprocesses get ``TORCH_HOME``; they build torchvision ResNets only)."""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path

__all__ = ["ARCHITECTURES", "TIMM_DEFAULT", "write_random_weights", "offline_weights"]

#: the timm model DomainBed builds with ``resnet50_augmix=True``.
TIMM_DEFAULT = "resnet50.ram_in1k"
#: DomainBed's choices: ``resnet18``, ``resnet50`` (torchvision) and ``resnet50_augmix``
#: (timm ``resnet50.ram_in1k``, DomainBed's default; built after a torchvision ResNet-50).
ARCHITECTURES = ("resnet18", "resnet50", "resnet50_augmix")


def _weights(arch: str):
    """(file name the loader looks for, a randomly initialized model of that architecture)."""
    import torchvision

    if arch == "resnet18":
        return os.path.basename(torchvision.models.ResNet18_Weights.IMAGENET1K_V1.url), \
            torchvision.models.resnet18()
    if arch == "resnet50":
        return os.path.basename(torchvision.models.ResNet50_Weights.IMAGENET1K_V1.url), \
            torchvision.models.resnet50()
    if arch == "resnet50_augmix":
        import timm
        from timm.models import get_pretrained_cfg

        url = get_pretrained_cfg(TIMM_DEFAULT).url
        return os.path.basename(url), timm.create_model("resnet50", pretrained=False)
    raise ValueError(f"unknown architecture {arch!r}; choose from {ARCHITECTURES}")


def write_random_weights(home: Path, archs=ARCHITECTURES) -> Path:
    """Write random weights (seed 0; the global RNG is restored) of ``archs`` under
    ``<home>/hub/checkpoints``, torch.hub's cache of ``TORCH_HOME=home``; returns ``home``."""
    import torch

    checkpoints = Path(home) / "hub" / "checkpoints"
    checkpoints.mkdir(parents=True, exist_ok=True)
    state = torch.random.get_rng_state()
    try:
        for arch in archs:
            torch.manual_seed(0)  # before the model is built: its initialization is the draw
            name, model = _weights(arch)
            torch.save(model.state_dict(), checkpoints / name)
    finally:
        torch.random.set_rng_state(state)
    return Path(home)


@contextlib.contextmanager
def _timm_reads(path: Path):
    """timm's pretrained config of :data:`TIMM_DEFAULT` points at ``path`` (a ``file`` comes
    before its url and the Hugging Face hub). timm's own cache fallback cannot serve random
    weights: it checks the file's hash against the name."""
    import dataclasses

    from timm.models import _registry

    cfgs = _registry._model_pretrained_cfgs
    saved = cfgs[TIMM_DEFAULT]
    cfgs[TIMM_DEFAULT] = dataclasses.replace(saved, file=str(path))
    try:
        yield
    finally:
        cfgs[TIMM_DEFAULT] = saved


@contextlib.contextmanager
def offline_weights(archs=ARCHITECTURES):
    """In this process: a temporary ``TORCH_HOME`` with :func:`write_random_weights`, read by
    torchvision and (for ``resnet50_augmix``) by timm. Restores both on exit."""
    saved = os.environ.get("TORCH_HOME")
    with tempfile.TemporaryDirectory(prefix="lpa_torch_home_") as home, \
            contextlib.ExitStack() as stack:
        write_random_weights(Path(home), archs)
        os.environ["TORCH_HOME"] = home
        if "resnet50_augmix" in archs:
            name, _ = _weights("resnet50_augmix")
            stack.enter_context(_timm_reads(Path(home) / "hub" / "checkpoints" / name))
        try:
            yield Path(home)
        finally:
            if saved is None:
                os.environ.pop("TORCH_HOME", None)
            else:
                os.environ["TORCH_HOME"] = saved
