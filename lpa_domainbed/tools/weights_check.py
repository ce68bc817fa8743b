"""``lpa-domainbed weights NAME``: the pretrained weights a sweep's jobs load, which are in
their caches, and how to fetch the others on a machine with internet; also the preflight of
``lpa-domainbed sweep`` (:func:`check_sweep`), which refuses to launch a sweep whose weights
are missing. Built on :mod:`lpa_domainbed.weights` (what DomainBed's networks load)."""

from __future__ import annotations

import dataclasses
import os

from lpa_domainbed import weights
from lpa_domainbed.tools import sweeps

__all__ = ["SweepWeights", "dataset_input_shape", "check_sweep", "cmd_weights", "add_parser"]


@dataclasses.dataclass
class SweepWeights:
    """What :func:`check_sweep` found for one sweep."""

    files: dict = dataclasses.field(default_factory=dict)  #: path -> (WeightFile, datasets)
    no_weights: list = dataclasses.field(default_factory=list)  #: datasets that load none
    unknown: list = dataclasses.field(default_factory=list)  #: datasets of unknown shape
    warnings: list = dataclasses.field(default_factory=list)

    @property
    def missing(self) -> list:
        return [f for f, _ in self.files.values() if not f.present]


def dataset_input_shape(name: str):
    """The input shape of DomainBed dataset ``name`` without reading its data, or ``None``
    when the class does not tell (its shape is set only once the files are read)."""
    from domainbed import datasets

    cls = datasets.get_dataset_class(name)
    for attribute in ("INPUT_SHAPE", "input_shape"):
        shape = getattr(cls, attribute, None)
        if isinstance(shape, (tuple, list)) and shape:
            return tuple(shape)
    if issubclass(cls, datasets.MultipleEnvironmentImageFolder):
        return (3, 224, 224)  # set in its constructor
    if issubclass(cls, datasets.MultipleEnvironmentMNIST):
        return (1, 28, 28)  # 1 or 2 channels; 28x28 either way
    return None


def _job_hparams(spec, algorithm: str, dataset: str) -> dict:
    """The network-choosing hparams of the sweep's jobs: DomainBed's defaults for the pair,
    then the sweep's ``hparams`` (DomainBed's random search never changes resnet18,
    resnet50_augmix or vit: their draws are constant)."""
    from domainbed import hparams_registry

    return {**hparams_registry.default_hparams(algorithm, dataset), **(spec.hparams or {})}


def check_sweep(spec) -> SweepWeights:
    """The weight files of every (dataset, algorithm) of ``spec``, each once, with the
    datasets that need it; the ``resnet18`` warning when ``resnet50_augmix`` overrides it."""
    import lpa_domainbed

    lpa_domainbed.register()
    found = SweepWeights()
    for dataset in spec.datasets:
        shape = dataset_input_shape(dataset)
        if shape is None:
            found.unknown.append(dataset)
            continue
        needed = []
        for algorithm in spec.expanded_algorithms():
            hparams = _job_hparams(spec, algorithm, dataset)
            needed += weights.required_weights(shape, hparams)
            warning = weights.resnet18_override_warning(hparams, shape)
            if warning and warning not in found.warnings:
                found.warnings.append(warning)
        if not needed:
            found.no_weights.append(dataset)
        for file in needed:
            datasets = found.files.setdefault(str(file.path), (file, []))[1]
            if dataset not in datasets:
                datasets.append(dataset)
    return found


def _where(file) -> str:
    value = os.environ.get(file.variable)
    return f"{file.variable}={value}" if value else f"{file.variable} unset (its default)"


def report(spec, found: SweepWeights) -> str:
    """The text of ``lpa-domainbed weights``: each file present or missing, where it is read
    (and which variable moves it), then one fetch command per missing file."""
    lines = [f"pretrained weights of sweep {spec.name!r}:"]
    for file, datasets in found.files.values():
        state = "present" if file.present else "MISSING"
        lines.append(f"  {state:8} {file.network} for {', '.join(datasets)}\n"
                     f"           {file.path}  ({_where(file)})")
    if found.no_weights:
        lines.append(f"  none needed for {', '.join(found.no_weights)} (small inputs: "
                     f"DomainBed's MLP, MNIST_CNN or Wide-ResNet starts from random weights)")
    if found.unknown:
        lines.append(f"  not checked: {', '.join(found.unknown)} (input shape known only once "
                     f"the data is read)")
    if any(f.variable != "TORCH_HOME" for f, _ in found.files.values()):
        offline = os.environ.get("HF_HUB_OFFLINE")
        lines.append(f"  HF_HUB_OFFLINE={offline}" if offline else
                     "  HF_HUB_OFFLINE unset: set HF_HUB_OFFLINE=1 on nodes without internet "
                     "(the hub cache is then read without trying the network first)")
    missing = found.missing
    if missing:
        lines.append(f"{len(missing)} missing. On a machine with internet, in an empty "
                     f"directory, fetch each and copy it here as told:")
        for file in missing:
            kind = "the folder" if file.variable != "TORCH_HOME" else "the file"
            lines.append(f"  {file.fetch_command}\n    then copy {kind} {file.path.name} "
                         f"into {file.copy_into}/")
        lines.append("Keep the same TORCH_HOME / HF_HOME exported when the sweep runs (every "
                     "launcher passes its environment to the jobs); see docs/offline.md.")
    elif found.files:
        lines.append("every file is present.")
    return "\n".join(lines)


def preflight(spec) -> tuple[list[str], str | None, bool]:
    """For ``lpa-domainbed sweep``: (warnings to print, the report or ``None`` when the sweep
    loads no weights, whether a file is missing)."""
    found = check_sweep(spec)
    text = report(spec, found) if found.files else None
    return found.warnings, text, bool(found.missing)


def cmd_weights(args) -> int:
    """Exit status 0 when every file is present, 1 when some are missing."""
    spec = sweeps.load_sweep(args.name)
    found = check_sweep(spec)
    for warning in found.warnings:
        print(f"warning: {warning}")
    print(report(spec, found))
    return 1 if found.missing else 0


def add_parser(sub, sweep_help: str) -> None:
    p = sub.add_parser(
        "weights", help="the pretrained weights a sweep loads: present or missing, and how to "
                        "fetch each missing one (exit status 1 when any is missing)",
        description="Which pretrained weight files the jobs of a sweep load (torch.hub's cache "
                    "under TORCH_HOME, the Hugging Face hub cache under HF_HOME), which are "
                    "present, and one command per missing file to run on a machine with "
                    "internet, with where to copy what it fetches. Nothing is downloaded.")
    p.add_argument("name", help=sweep_help)
    p.set_defaults(func=cmd_weights)
