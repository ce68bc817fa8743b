"""Shared fixtures. Tests that need DomainBed skip, with the reason shown, when it is absent."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

from lpa_domainbed.tools.runinfo import env_with_python

REPO = Path(__file__).resolve().parents[1]
HAVE_DOMAINBED = importlib.util.find_spec("domainbed") is not None
NO_DOMAINBED = ("DomainBed is not importable: run 'make setup' (it needs a DomainBed checkout "
                "in $DOMAINBED_DIR, default ~/.cache/lpa-domainbed/DomainBed)")
requires_domainbed = pytest.mark.skipif(not HAVE_DOMAINBED, reason=NO_DOMAINBED)


@pytest.fixture(scope="session")
def torch_home(tmp_path_factory):
    """A TORCH_HOME holding *randomly initialized* ResNet-18 weights where torchvision's
    pretrained loader looks for them, so DomainBed's ResNet builds offline (also in train-script
    subprocesses given ``TORCH_HOME``)."""
    from lpa_domainbed.tools.bench.weights import write_random_weights

    return write_random_weights(tmp_path_factory.mktemp("torch_home"), ("resnet18",))


@pytest.fixture
def offline_resnet(torch_home, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(torch_home))
    return {"resnet18": True, "resnet50_augmix": False}


def run_python(args, cwd, env=None, timeout=300):
    """Run ``python args...`` in a fresh interpreter of this environment."""
    full_env = env_with_python(sys.executable, {**os.environ, **(env or {})})
    return subprocess.run([sys.executable, *args], cwd=cwd, env=full_env, capture_output=True,
                          text=True, timeout=timeout)


#: Where the algorithm tests (tests/test_algorithms.py) put their model and batch.
#: ``LPA_DOMAINBED_TEST_DEVICE=cuda`` (``make gpu-check``) runs them on the GPU, with
#: ``torch.cuda.set_sync_debug_mode("warn")`` on.
TEST_DEVICE = os.environ.get("LPA_DOMAINBED_TEST_DEVICE", "cpu")


@pytest.fixture(scope="session", autouse=True)
def _test_device():
    if TEST_DEVICE == "cpu":
        yield
        return
    import torch

    if TEST_DEVICE == "cuda" and not torch.cuda.is_available():
        pytest.exit("LPA_DOMAINBED_TEST_DEVICE=cuda but CUDA is not available: unset it", 2)
    if TEST_DEVICE != "cuda":
        pytest.exit(f"LPA_DOMAINBED_TEST_DEVICE={TEST_DEVICE!r}: use cpu or cuda", 2)
    torch.cuda.set_sync_debug_mode("warn")
    yield
    torch.cuda.set_sync_debug_mode("default")


RESNET50 = "resnet50-0676ba61.pth"  # torchvision's IMAGENET1K_V1 files (pretrained=True)
RESNET18 = "resnet18-f37072fd.pth"
TIMM = "models--timm--resnet50.ram_in1k"  # the Hugging Face hub's folder of timm's model


@pytest.fixture
def weight_caches(tmp_path, monkeypatch):
    """Empty TORCH_HOME and HF_HOME; ``weight_caches.add(name)`` puts a (fake) file where the
    loaders look: a torchvision checkpoint, or timm's model in the hub layout (refs/main,
    snapshot)."""
    for variable in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "HF_HUB_OFFLINE"):
        monkeypatch.delenv(variable, raising=False)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))

    class Caches:
        torch = tmp_path / "torch" / "hub" / "checkpoints"
        hub = tmp_path / "hf" / "hub"

        def add(self, name, hub_file="model.safetensors"):
            if name == TIMM:
                (self.hub / TIMM / "refs").mkdir(parents=True)
                (self.hub / TIMM / "refs" / "main").write_text("0" * 40)
                (self.hub / TIMM / "snapshots" / ("0" * 40)).mkdir(parents=True)
                (self.hub / TIMM / "snapshots" / ("0" * 40) / hub_file).write_bytes(b"x")
            else:
                self.torch.mkdir(parents=True, exist_ok=True)
                (self.torch / name).write_bytes(b"x")

    return Caches()
