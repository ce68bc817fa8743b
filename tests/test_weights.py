"""Pretrained weights offline: which files DomainBed's networks load, where, present or not
(fake caches, no network), the one line a failed load becomes, and the resnet18 warning."""

from __future__ import annotations

from pathlib import Path
from urllib.error import URLError

import pytest

from conftest import HAVE_DOMAINBED, NO_DOMAINBED, RESNET18, RESNET50, TIMM, run_python

pytestmark = [pytest.mark.torch, pytest.mark.skipif(not HAVE_DOMAINBED, reason=NO_DOMAINBED)]

def _names(files):
    return [(f.variable, f.path.name, f.present) for f in files]


SHAPE_ROWS = [  # (id, input shape, hparams, [(variable, file or folder)])
    ("vectors: MLP", (64,), {}, []),
    ("28x28: MNIST_CNN", (3, 28, 28), {}, []),
    ("32x32: Wide-ResNet", (3, 32, 32), {}, []),
    ("224: DomainBed's default loads both", (3, 224, 224), {},
     [("TORCH_HOME", RESNET50), ("HF_HOME", TIMM)]),
    ("224: torchvision ResNet-50", (3, 224, 224), {"resnet50_augmix": False},
     [("TORCH_HOME", RESNET50)]),
    ("224: ResNet-18", (3, 224, 224), {"resnet18": True, "resnet50_augmix": False},
     [("TORCH_HOME", RESNET18)]),
    ("224: resnet18 overridden", (3, 224, 224), {"resnet18": True},
     [("TORCH_HOME", RESNET18), ("HF_HOME", TIMM)]),
]


@pytest.mark.parametrize("shape, hparams, expected", [pytest.param(*r[1:], id=r[0])
                                                      for r in SHAPE_ROWS])
def test_the_files_each_network_loads(weight_caches, shape, hparams, expected):
    from lpa_domainbed.weights import missing_weights, required_weights

    assert _names(required_weights(shape, hparams)) == [(*e, False) for e in expected]
    for _, name in expected:
        weight_caches.add(name)
    assert _names(required_weights(shape, hparams)) == [(*e, True) for e in expected]
    assert missing_weights(shape, hparams) == []


def test_where_the_caches_are(weight_caches, tmp_path, monkeypatch):
    from lpa_domainbed.weights import required_weights

    torch_file, timm_folder = required_weights((3, 224, 224), {})
    assert torch_file.path == weight_caches.torch / RESNET50
    assert timm_folder.path == weight_caches.hub / TIMM
    weight_caches.add(TIMM, hub_file="pytorch_model.bin")  # timm's fallback file also serves
    assert required_weights((3, 224, 224), {})[1].present
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "elsewhere"))  # wins over HF_HOME
    moved = required_weights((3, 224, 224), {})[1]
    assert (moved.variable, moved.path, moved.present) == \
        ("HF_HUB_CACHE", tmp_path / "elsewhere" / TIMM, False)


def test_the_fetch_commands_name_the_real_sources(weight_caches):
    from lpa_domainbed.weights import required_weights

    torch_file, timm_folder = required_weights((3, 224, 224), {})
    assert torch_file.fetch_command == \
        f"curl -L -o {RESNET50} https://download.pytorch.org/models/{RESNET50}"
    assert torch_file.copy_into == weight_caches.torch
    assert "hf_hub_download('timm/resnet50.ram_in1k', 'model.safetensors', cache_dir='.')" \
        in timm_folder.fetch_command and timm_folder.copy_into == weight_caches.hub


def _hub_error():
    from huggingface_hub.errors import LocalEntryNotFoundError

    return LocalEntryNotFoundError("Cannot find the requested files in the disk cache")


LINE_ROWS = [  # (id, error, hparams, fragments; None: not about the weights)
    ("torchvision download", URLError("[Errno -2] Name or service not known"),
     {"resnet50_augmix": False}, ["TORCH_HOME", RESNET50, "URLError", "curl -L -o"]),
    ("timm from the hub", _hub_error, {}, ["HF_HOME", TIMM, "LocalEntryNotFoundError",
                                            "hf_hub_download", "1 more missing"]),
    ("no weight error", ValueError("bad hparam"), {"resnet50_augmix": False}, None),
]


@pytest.mark.parametrize("error, hparams, fragments", [pytest.param(*r[1:], id=r[0])
                                                       for r in LINE_ROWS])
def test_a_failed_load_is_one_line_naming_the_variable_and_file(weight_caches, error, hparams,
                                                                  fragments):
    from lpa_domainbed.weights import missing_weights, weight_error_line

    error = error() if callable(error) else error
    missing = missing_weights((3, 224, 224), hparams)
    line = weight_error_line(error, missing)
    if fragments is None:
        assert line is None
        return
    assert "\n" not in line and all(f in line for f in fragments), line
    assert weight_error_line(error, []) is None  # nothing missing: not about the weights


def test_a_chained_network_error_counts(weight_caches):
    from lpa_domainbed.weights import missing_weights, weight_error_line

    try:
        try:
            raise ConnectionError("no route to host")
        except ConnectionError as cause:
            raise RuntimeError("download failed") from cause
    except RuntimeError as error:
        line = weight_error_line(error, missing_weights((3, 224, 224), {"resnet18": True,
                                                                        "resnet50_augmix": False}))
    assert RESNET18 in line and "TORCH_HOME" in line


def _resnet_hparams(**overrides):
    from domainbed import hparams_registry

    return {**hparams_registry.default_hparams("ERM", "PACS"), **overrides}


def test_domainbeds_resnet_without_torchvision_weights(weight_caches, monkeypatch):
    """DomainBed's real ResNet, whose torchvision download fails as offline: one line."""
    import torch.hub
    from domainbed import networks

    from lpa_domainbed.weights import PretrainedWeightsMissing, explain_weight_errors

    def offline(url, dst, *args, **kwargs):
        raise URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    hparams = _resnet_hparams(resnet50_augmix=False)
    with pytest.raises(PretrainedWeightsMissing) as raised:
        with explain_weight_errors((3, 224, 224), hparams):
            networks.ResNet((3, 224, 224), hparams)
    line = str(raised.value)
    assert str(weight_caches.torch / RESNET50) in line and "TORCH_HOME" in line


def test_domainbeds_resnet_without_timm_weights(weight_caches, torch_home, monkeypatch):
    """torchvision's ResNet-18 is in TORCH_HOME (random weights); timm's model is not in the
    hub cache and the hub is offline: the line names HF_HOME and timm's folder."""
    from domainbed import networks
    from huggingface_hub import constants

    from lpa_domainbed.weights import PretrainedWeightsMissing, explain_weight_errors

    monkeypatch.setenv("TORCH_HOME", str(torch_home))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(weight_caches.hub))
    hparams = _resnet_hparams(resnet18=True)
    with pytest.raises(PretrainedWeightsMissing) as raised:
        with explain_weight_errors((3, 224, 224), hparams):
            networks.ResNet((3, 224, 224), hparams)
    line = str(raised.value)
    assert str(weight_caches.hub / TIMM) in line and "HF_HOME" in line
    assert RESNET18 not in str(raised.value)  # that one is present


def test_a_process_ends_with_the_one_line(tmp_path):
    code = ("from urllib.error import URLError\n"
            "from lpa_domainbed.weights import explain_weight_errors\n"
            "with explain_weight_errors((3, 224, 224), {'resnet50_augmix': False}):\n"
            "    raise URLError('Name or service not known')\n")
    out = run_python(["-c", code], cwd=tmp_path, env={"TORCH_HOME": str(tmp_path / "t")})
    assert out.returncode == 1
    assert out.stderr.strip().startswith("pretrained weights not found")
    assert len(out.stderr.strip().splitlines()) == 1 and RESNET50 in out.stderr


@pytest.mark.parametrize("hparams, shape, warned", [
    ({"resnet18": True}, (3, 224, 224), True),
    ({"resnet18": True, "resnet50_augmix": True}, None, True),
    ({"resnet18": True, "resnet50_augmix": False}, (3, 224, 224), False),
    ({}, (3, 224, 224), False),
    ({"resnet18": True}, (3, 28, 28), False),  # no ResNet there
])
def test_resnet18_overridden_by_resnet50_augmix_warns(hparams, shape, warned):
    from lpa_domainbed.weights import resnet18_override_warning

    warning = resnet18_override_warning(hparams, shape)
    assert (warning is not None) == warned
    if warned:
        assert '"resnet50_augmix": false' in warning and "resnet50.ram_in1k" in warning


def test_the_core_module_imports_nothing_heavy_at_import():
    out = run_python(["-c", "import sys, lpa_domainbed.weights; "
                            "print(sorted(m for m in ('torch', 'timm', 'huggingface_hub', "
                            "'lpa_domainbed.tools') if m in sys.modules))"],
                     cwd=Path(__file__).parent, env={"LPA_DOMAINBED_AUTOLOAD": "0"})
    assert out.returncode == 0 and out.stdout.strip() == "[]", out.stderr
