"""The pretrained weights DomainBed's networks load, where the loaders look for them, and one
clear line when they cannot be loaded.

DomainBed's featurizer for 224x224 inputs is a ResNet built with ``pretrained=True``:
torchvision's ResNet-18 (``resnet18``) or ResNet-50 first, read from torch.hub's cache
``$TORCH_HOME/hub/checkpoints/<file>`` (downloaded there when absent); then, with
``resnet50_augmix`` (DomainBed's default, true), timm's ``resnet50.ram_in1k`` in its place,
read from the Hugging Face hub cache ``$HF_HOME/hub/models--timm--resnet50.ram_in1k``
(``HF_HUB_CACHE`` overrides the whole path). Inputs of other sizes (an MLP for vectors,
MNIST_CNN for 28x28, a Wide-ResNet for 32x32) start from random weights: nothing is loaded.

Part of the core (DomainBed's train processes import it): torch, torchvision, timm and
huggingface_hub are imported only inside the functions that need them.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import shlex
from collections.abc import Iterator, Sequence
from pathlib import Path

__all__ = ["WeightFile", "PretrainedWeightsMissing", "TIMM_MODEL", "torch_hub_dir",
           "hf_hub_cache", "builds_resnet", "required_weights", "missing_weights",
           "weight_error_line", "explain_weight_errors", "resnet18_override_warning"]

#: the timm model DomainBed builds when ``resnet50_augmix`` is true
TIMM_MODEL = "resnet50.ram_in1k"
#: the files timm reads from the model's hub repository, in its order (safetensors first)
_HF_FILES = ("model.safetensors", "pytorch_model.bin")
#: DomainBed's defaults of the hparams that choose the network
_DEFAULTS = {"resnet18": False, "resnet50_augmix": True, "vit": False}


@dataclasses.dataclass(frozen=True)
class WeightFile:
    """One pretrained file (or, for the Hugging Face hub, one model's cache folder)."""

    network: str    #: what it is, e.g. "torchvision ResNet-50 (ImageNet)"
    variable: str   #: the environment variable that moves it: TORCH_HOME, HF_HOME or HF_HUB_CACHE
    path: Path      #: where the loader reads it
    url: str        #: where it is downloaded from
    present: bool

    @property
    def copy_into(self) -> Path:
        """The directory the fetched file (or folder) goes into."""
        return self.path.parent

    @property
    def fetch_command(self) -> str:
        """A command for a machine with internet that downloads it into the current directory
        (as ``self.path.name``, a file or a folder), to be copied into :attr:`copy_into`."""
        if self.variable == "TORCH_HOME":
            return f"curl -L -o {shlex.quote(self.path.name)} {shlex.quote(self.url)}"
        repo = self.url.split("huggingface.co/", 1)[1]  # no quote, $ or backslash in it
        return (f'python -c "from huggingface_hub import hf_hub_download; hf_hub_download('
                f"'{repo}', '{_HF_FILES[0]}', cache_dir='.')\"")

    def advice(self) -> str:
        """Fetch it, where to copy it (one line)."""
        kind = "the file" if self.variable == "TORCH_HOME" else "the folder (scp -r, rsync -a)"
        return (f"on a machine with internet run `{self.fetch_command}`, then copy {kind} "
                f"{self.path.name} into {self.copy_into}/")


class PretrainedWeightsMissing(SystemExit):
    """A network's pretrained weights are neither in the cache nor downloadable. A
    ``SystemExit`` whose message is one line: a training process ends with that line
    (status 1) instead of a traceback; ``except Exception`` does not catch it."""


def torch_hub_dir() -> Path:
    """torch.hub's directory, as torch computes it now (``$TORCH_HOME/hub``, else
    ``$XDG_CACHE_HOME/torch/hub``, else ``~/.cache/torch/hub``; ``torch.hub.set_dir`` wins)."""
    import torch.hub

    return Path(torch.hub.get_dir()).expanduser()


def hf_hub_cache() -> tuple[Path, str]:
    """(the Hugging Face hub cache, the variable that sets it), read from the environment now
    as huggingface_hub does when it is imported: ``HF_HUB_CACHE``, ``HUGGINGFACE_HUB_CACHE``,
    else ``$HF_HOME/hub`` (``HF_HOME`` defaults to ``$XDG_CACHE_HOME/huggingface``, else
    ``~/.cache/huggingface``)."""
    def expand(value: str) -> Path:
        return Path(os.path.expandvars(os.path.expanduser(value)))

    for variable in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
        if os.environ.get(variable):
            return expand(os.environ[variable]), variable
    cache = os.environ.get("XDG_CACHE_HOME", os.path.join(os.path.expanduser("~"), ".cache"))
    home = os.environ.get("HF_HOME") or os.path.join(cache, "huggingface")
    return expand(home) / "hub", "HF_HOME"


def builds_resnet(input_shape) -> bool:
    """Whether DomainBed's featurizer for ``input_shape`` is its (pretrained) ResNet: 224x224
    images (with ``vit`` false)."""
    shape = tuple(input_shape)
    return len(shape) == 3 and shape[1:3] == (224, 224)


def _get(hparams, key):
    return hparams.get(key, _DEFAULTS[key])


def _torchvision_file(resnet18: bool) -> WeightFile:
    import torchvision

    enum = (torchvision.models.ResNet18_Weights if resnet18
            else torchvision.models.ResNet50_Weights).IMAGENET1K_V1  # pretrained=True's
    path = torch_hub_dir() / "checkpoints" / os.path.basename(enum.url)
    return WeightFile(f"torchvision ResNet-{18 if resnet18 else 50} (ImageNet)",
                      "TORCH_HOME", path, enum.url, path.is_file())


def _timm_file() -> WeightFile:
    from huggingface_hub import try_to_load_from_cache
    from timm.models import get_pretrained_cfg

    repo = get_pretrained_cfg(TIMM_MODEL).hf_hub_id  # "timm/resnet50.ram_in1k"
    cache, variable = hf_hub_cache()
    present = any(isinstance(try_to_load_from_cache(repo, name, cache_dir=str(cache)), str)
                  for name in _HF_FILES)
    folder = cache / ("models--" + repo.replace("/", "--"))
    return WeightFile(f"timm {TIMM_MODEL} (ImageNet, DomainBed's resnet50_augmix)", variable,
                      folder, f"https://huggingface.co/{repo}", present)


def required_weights(input_shape, hparams) -> list[WeightFile]:
    """The files DomainBed's featurizer loads for ``input_shape`` and ``hparams``, in the order
    it loads them, each with ``present`` checked now; ``[]`` when it loads none. With
    ``resnet50_augmix`` DomainBed builds the torchvision ResNet first, then timm's."""
    if not builds_resnet(input_shape) or _get(hparams, "vit"):
        return []
    files = [_torchvision_file(bool(_get(hparams, "resnet18")))]
    if _get(hparams, "resnet50_augmix"):
        files.append(_timm_file())
    return files


def missing_weights(input_shape, hparams) -> list[WeightFile]:
    """The files of :func:`required_weights` that are not in their cache."""
    return [f for f in required_weights(input_shape, hparams) if not f.present]


# Failures of a download or of a cache lookup, by class name so that nothing is imported:
# huggingface_hub's (LocalEntryNotFoundError is also a FileNotFoundError), httpx's, requests'.
_FETCH_ERRORS = {"LocalEntryNotFoundError", "EntryNotFoundError", "OfflineModeIsEnabled",
                 "HfHubHTTPError", "ConnectError", "ConnectTimeout", "ReadTimeout",
                 "ConnectionError", "HTTPError", "TimeoutException", "NetworkError"}


def _chain(error: BaseException | None) -> Iterator[BaseException]:
    """The error, then what caused it."""
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        yield error
        error = error.__cause__ or error.__context__


def _is_fetch_error(error: BaseException) -> bool:
    return any(isinstance(e, OSError) or _FETCH_ERRORS & {c.__name__ for c in type(e).__mro__}
               for e in _chain(error))


def _from_the_hub(error: BaseException) -> bool:
    return any(type(e).__module__.startswith("huggingface_hub") for e in _chain(error))


def weight_error_line(error: BaseException, missing: Sequence[WeightFile]) -> str | None:
    """One line for a network construction that failed with ``error`` while ``missing``
    (:func:`missing_weights`) are not in their caches: the file, its variable, what to do.
    ``None`` when ``error`` is no download or cache failure, or nothing is missing (the error
    is then not about the weights). Pure: reads neither the file system nor the environment."""
    if not missing or not _is_fetch_error(error):
        return None
    hub = _from_the_hub(error)  # the file of the failed loader first
    missing = sorted(missing, key=lambda f: (f.variable == "TORCH_HOME") == hub)
    first = missing[0]
    cause = str(error).strip().splitlines()[0] if str(error).strip() else ""
    cause = f"{type(error).__name__}: {cause}" if cause else type(error).__name__
    others = (f" ({len(missing) - 1} more missing: "
              + ", ".join(str(f.path) for f in missing[1:]) + ")") if len(missing) > 1 else ""
    return (f"pretrained weights not found: {first.network} is read from {first.path} (set by "
            f"{first.variable}), which does not exist, and downloading it failed ({cause}); "
            f"{first.advice()}, or point {first.variable} at a cache that has it{others}. "
            f"'lpa-domainbed weights SWEEP' lists every file a sweep needs.")


@contextlib.contextmanager
def explain_weight_errors(input_shape, hparams) -> Iterator[None]:
    """Around a network's construction: a failure to load its pretrained weights becomes
    :class:`PretrainedWeightsMissing` with :func:`weight_error_line`; any other error passes
    unchanged. Usage: ``with explain_weight_errors(input_shape, hparams): <build the network>``.
    """
    try:
        yield
    except Exception as error:
        try:
            line = weight_error_line(error, missing_weights(input_shape, hparams))
        except Exception:  # the check itself failed: the original error says more
            line = None
        if line is None:
            raise
        raise PretrainedWeightsMissing(line) from None


def resnet18_override_warning(hparams, input_shape=None) -> str | None:
    """The warning for ``resnet18`` set while ``resnet50_augmix`` (DomainBed's default, true)
    replaces the ResNet-18 with timm's ResNet-50; ``None`` otherwise, or when ``input_shape``
    is given and DomainBed builds no ResNet for it."""
    if input_shape is not None and not builds_resnet(input_shape):
        return None
    if not (_get(hparams, "resnet18") and _get(hparams, "resnet50_augmix")):
        return None
    return (f"'resnet18': true has no effect while 'resnet50_augmix' is true (DomainBed's "
            f"default): DomainBed builds timm's ResNet-50 ({TIMM_MODEL}, 23.5M parameters) "
            f"instead; add \"resnet50_augmix\": false to the hparams for a ResNet-18")
