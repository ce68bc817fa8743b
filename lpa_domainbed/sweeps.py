"""Declarative sweeps: ``sweeps/<name>.toml`` -> ``python -m domainbed.scripts.sweep ...``.

A sweep file names DomainBed's own sweep arguments (datasets, algorithms, n_trials,
n_hparams_from, n_hparams, single_test_envs, holdout_fraction, steps, hparams,
command_launcher). ``"@lpa_domainbed"`` in ``algorithms`` stands for every algorithm this
package registers. Nothing is re-implemented: jobs are listed with DomainBed's own
``make_args_list`` and ``Job`` and launched by its sweep script.
"""

from __future__ import annotations

import dataclasses
import json
import shlex
import sys
import tomllib
from pathlib import Path

__all__ = ["SweepSpec", "SWEEPS_DIR", "load_sweep", "sweep_command", "list_jobs",
           "missing_data"]

#: where DomainBed's image datasets read their files, relative to --data_dir
DATA_SUBDIRS = {"VLCS": "VLCS", "PACS": "PACS", "OfficeHome": "office_home",
                "TerraIncognita": "terra_incognita", "DomainNet": "domain_net", "SVIRO": "sviro"}

SWEEPS_DIR = Path(__file__).resolve().parents[1] / "sweeps"
PACKAGE_ALGORITHMS = "@lpa_domainbed"


@dataclasses.dataclass(frozen=True)
class SweepSpec:
    name: str
    datasets: list[str]
    algorithms: list[str]
    description: str = ""
    n_trials: int = 3
    n_hparams_from: int = 0
    n_hparams: int = 20
    single_test_envs: bool = True
    holdout_fraction: float = 0.2
    steps: int | None = None
    hparams: dict | None = None
    command_launcher: str = "local"

    def expanded_algorithms(self) -> list[str]:
        names = []
        for name in self.algorithms:
            if name == PACKAGE_ALGORITHMS:
                from lpa_domainbed.algorithms import load

                names += [n for n in load() if n not in names]
            elif name not in names:
                names.append(name)
        return names


def load_sweep(name_or_path: str) -> SweepSpec:
    """Load ``sweeps/<name>.toml`` (or a path to a TOML file)."""
    path = Path(name_or_path)
    if not path.suffix:
        path = SWEEPS_DIR / f"{name_or_path}.toml"
    if not path.is_file():
        known = sorted(p.stem for p in SWEEPS_DIR.glob("*.toml"))
        raise FileNotFoundError(f"no sweep {name_or_path!r} ({path}); known sweeps: {known}")
    with path.open("rb") as f:
        data = tomllib.load(f)
    fields = {f.name for f in dataclasses.fields(SweepSpec)}
    unknown = set(data) - fields
    if unknown:
        raise ValueError(f"{path}: unknown keys {sorted(unknown)}; allowed: {sorted(fields)}")
    missing = {"name", "datasets", "algorithms"} - set(data)
    if missing:
        raise ValueError(f"{path}: missing keys {sorted(missing)}")
    return SweepSpec(**data)


def sweep_command(spec: SweepSpec, action: str, data_dir: str, output_dir: str,
                  launcher: str | None = None, python: str = sys.executable) -> list[str]:
    """The ``domainbed.scripts.sweep`` command line for ``action`` (launch, delete_incomplete)."""
    cmd = [python, "-m", "domainbed.scripts.sweep", action,
           "--datasets", *spec.datasets,
           "--algorithms", *spec.expanded_algorithms(),
           "--data_dir", str(data_dir), "--output_dir", str(output_dir),
           "--command_launcher", launcher or spec.command_launcher,
           "--n_trials", str(spec.n_trials),
           "--n_hparams_from", str(spec.n_hparams_from), "--n_hparams", str(spec.n_hparams),
           "--holdout_fraction", str(spec.holdout_fraction), "--skip_confirmation"]
    if spec.single_test_envs:
        cmd.append("--single_test_envs")
    if spec.steps is not None:
        cmd += ["--steps", str(spec.steps)]
    if spec.hparams:
        cmd += ["--hparams", json.dumps(spec.hparams, sort_keys=True)]
    return cmd


def list_jobs(spec: SweepSpec, data_dir: str, output_dir: str):
    """DomainBed ``Job`` objects of the sweep (nothing is launched or created)."""
    from domainbed.scripts import sweep

    args_list = sweep.make_args_list(
        n_trials=spec.n_trials, dataset_names=spec.datasets,
        algorithms=spec.expanded_algorithms(), n_hparams_from=spec.n_hparams_from,
        n_hparams=spec.n_hparams, steps=spec.steps, data_dir=str(data_dir),
        task="domain_generalization", holdout_fraction=spec.holdout_fraction,
        single_test_envs=spec.single_test_envs,
        hparams=json.dumps(spec.hparams, sort_keys=True) if spec.hparams else None)
    return [sweep.Job(args, str(output_dir)) for args in args_list]


def format_command(cmd: list[str]) -> str:
    return " ".join(shlex.quote(c) for c in cmd)


def missing_data(spec: SweepSpec, data_dir) -> list[str]:
    """One line per dataset of the sweep whose files are not under ``data_dir`` (checked for
    DomainBed's image datasets; MNIST variants download themselves, ours are embedded)."""
    problems = []
    for dataset in spec.datasets:
        sub = DATA_SUBDIRS.get(dataset)
        if sub and not (Path(data_dir) / sub).is_dir():
            problems.append(f"{dataset}: no directory {Path(data_dir) / sub}")
    return problems
