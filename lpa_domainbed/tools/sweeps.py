"""Declarative sweeps: ``sweeps/<name>.toml`` -> ``python -m domainbed.scripts.sweep ...``.

A sweep file names DomainBed's own sweep arguments (datasets, algorithms, n_trials,
n_hparams_from, n_hparams, single_test_envs, holdout_fraction, steps, hparams,
command_launcher). ``"@lpa_domainbed"`` in ``algorithms`` stands for every algorithm this
package registers, less its study variants (``STUDY_VARIANT``: named one by one). Nothing
is re-implemented: jobs are listed with DomainBed's own ``make_args_list`` and ``Job`` and
launched by its sweep script.

Every file is checked before anything is made (:func:`load_sweep`): key names and types, and
(``check_names``) that its algorithms, datasets and launcher are registered in DomainBed.
"""

from __future__ import annotations

import dataclasses
import json
import shlex
import sys
import warnings
from importlib import resources
from pathlib import Path

if sys.version_info >= (3, 11):
    import tomllib
else:  # Python 3.10: the same parser from PyPI
    import tomli as tomllib

__all__ = ["SweepSpec", "SweepFileError", "SWEEPS_DIR", "sweeps_dir", "known_sweeps",
           "load_sweep", "check_names", "check_hparams", "sweep_command", "count_jobs",
           "list_jobs", "missing_data", "format_command", "describe_job",
           "validate_sweep_hparams"]

#: where DomainBed's image datasets read their files, relative to --data_dir
DATA_SUBDIRS = {"VLCS": "VLCS", "PACS": "PACS", "OfficeHome": "office_home",
                "TerraIncognita": "terra_incognita", "DomainNet": "domain_net", "SVIRO": "sviro"}

PACKAGE_ALGORITHMS = "@lpa_domainbed"
#: more jobs than any sweep here needs (Table 2: 13,440); listing them takes memory and time
MAX_JOBS = 100_000
_CHECKOUT_SWEEPS = Path(__file__).resolve().parents[2] / "sweeps"


def sweeps_dir() -> Path:
    """The sweep files: the repository's ``sweeps/`` in a checkout (their source), else the
    copy shipped inside the installed package (``lpa_domainbed/tools/sweep_files``)."""
    if (_CHECKOUT_SWEEPS.parent / "pyproject.toml").is_file() and _CHECKOUT_SWEEPS.is_dir():
        return _CHECKOUT_SWEEPS
    return Path(str(resources.files("lpa_domainbed.tools") / "sweep_files"))


SWEEPS_DIR = sweeps_dir()


def known_sweeps() -> list[str]:
    return sorted(p.stem for p in SWEEPS_DIR.glob("*.toml"))


class SweepFileError(ValueError):
    """A sweep file that does not follow the schema; the message names the file."""


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
    path: str = dataclasses.field(default="", compare=False)

    def expanded_algorithms(self) -> list[str]:
        names = []
        for name in self.algorithms:
            if name == PACKAGE_ALGORITHMS:
                from lpa_domainbed.algorithms import load

                names += [n for n, cls in load().items()  # study variants only by name
                          if n not in names and not getattr(cls, "STUDY_VARIANT", False)]
            elif name not in names:
                names.append(name)
        return names


# key -> (what it must be, check); bool is excluded from the integers (TOML true is not 3)
def _is_int(v, low):
    return isinstance(v, int) and not isinstance(v, bool) and v >= low


def _is_names(v):
    return isinstance(v, list) and bool(v) and all(isinstance(x, str) and x for x in v)


_SCHEMA = {
    "name": ("a string", lambda v: isinstance(v, str) and bool(v)),
    "description": ("a string", lambda v: isinstance(v, str)),
    "datasets": ('a non-empty list of strings, e.g. ["PACS"]', _is_names),
    "algorithms": ('a non-empty list of strings, e.g. ["ERM", "LPA"]', _is_names),
    "n_trials": ("an integer >= 1 (no quotes)", lambda v: _is_int(v, 1)),
    "n_hparams_from": ("an integer >= 0 (no quotes)", lambda v: _is_int(v, 0)),
    "n_hparams": ("an integer >= 1 (no quotes)", lambda v: _is_int(v, 1)),
    "single_test_envs": ("true or false", lambda v: isinstance(v, bool)),
    "holdout_fraction": ("a number between 0 and 1", lambda v: isinstance(v, (int, float))
                         and not isinstance(v, bool) and 0 < v < 1),
    "steps": ("an integer >= 1 (no quotes)", lambda v: _is_int(v, 1)),
    "hparams": ("a table of hyperparameters, e.g. {lr = 1e-4}", lambda v: isinstance(v, dict)),
    "command_launcher": ("a string", lambda v: isinstance(v, str) and bool(v)),
}


def _validate(data: dict, path: Path) -> None:
    unknown = set(data) - set(_SCHEMA)
    if unknown:
        raise SweepFileError(f"{path}: unknown keys {sorted(unknown)}; allowed: "
                             f"{sorted(_SCHEMA)}")
    missing = {"name", "datasets", "algorithms"} - set(data)
    if missing:
        raise SweepFileError(f"{path}: missing keys {sorted(missing)}")
    for key, value in data.items():
        expected, ok = _SCHEMA[key]
        if not ok(value):
            raise SweepFileError(f"{path}: '{key}' must be {expected}, not {value!r}")


def check_names(spec: SweepSpec) -> None:
    """Algorithms, datasets and the launcher must be registered in DomainBed (after
    :func:`lpa_domainbed.register`): a typo would otherwise launch jobs that all fail."""
    import lpa_domainbed
    from domainbed import algorithms, command_launchers, datasets

    lpa_domainbed.register()
    for key, names, known in (
            ("algorithms", [a for a in spec.algorithms if a != PACKAGE_ALGORITHMS],
             algorithms.ALGORITHMS),
            ("datasets", spec.datasets, datasets.DATASETS),
            ("command_launcher", [spec.command_launcher], command_launchers.REGISTRY)):
        unknown = [n for n in names if n not in known]
        if unknown:
            extra = f' or "{PACKAGE_ALGORITHMS}"' if key == "algorithms" else ""
            raise SweepFileError(f"{spec.path}: unknown {key} {unknown}; known: "
                                 f"{sorted(known)}{extra}")


def check_hparams(spec: SweepSpec) -> None:
    """The sweep's ``hparams`` checked for every algorithm of the sweep, as each checks them
    when its job starts (:func:`validate_sweep_hparams`: names, types, values), so a typo
    fails here, before any job is launched, not in every job."""
    if not spec.hparams:
        return
    try:
        validate_sweep_hparams(spec.expanded_algorithms(), dict(spec.hparams))
    except ValueError as error:
        raise SweepFileError(f"{spec.path}: hparams:\n{error}") from None


def load_sweep(name_or_path: str, check_registry: bool = True) -> SweepSpec:
    """Load and validate ``sweeps/<name>.toml`` (or a path to a TOML file). With
    ``check_registry`` the names are checked against DomainBed (:func:`check_names`)."""
    path = Path(name_or_path)
    if not path.suffix:
        path = SWEEPS_DIR / f"{name_or_path}.toml"
    if not path.is_file():
        raise FileNotFoundError(f"no sweep {name_or_path!r} ({path}); known sweeps: "
                                f"{known_sweeps()}")
    try:
        with path.open("rb") as f:
            data = tomllib.load(f)
    except tomllib.TOMLDecodeError as error:
        raise SweepFileError(f"{path}: not valid TOML: {error}") from None
    _validate(data, path)
    spec = SweepSpec(**data, path=str(path))
    if check_registry:
        check_names(spec)
    return spec


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


def count_jobs(spec: SweepSpec) -> int:
    """How many jobs DomainBed's ``make_args_list`` makes of the sweep, without making them;
    :class:`SweepFileError` past :data:`MAX_JOBS`."""
    from domainbed import datasets

    algorithms = spec.expanded_algorithms()
    test_envs = 0
    for dataset in spec.datasets:
        n = datasets.num_environments(dataset)
        test_envs += n if spec.single_test_envs else n + n * (n - 1) // 2
    hparams = max(0, spec.n_hparams - spec.n_hparams_from)
    count = spec.n_trials * len(algorithms) * test_envs * hparams
    if count > MAX_JOBS:
        raise SweepFileError(
            f"{spec.path}: the sweep would make {count:,} jobs (n_trials {spec.n_trials} x "
            f"{hparams} hparams draws x {len(algorithms)} algorithms x {test_envs} choices of "
            f"test environments over its datasets); at most {MAX_JOBS:,} are supported (Table "
            f"2 has 13,440): lower n_trials or n_hparams, or split it into several sweep files")
    return count


def list_jobs(spec: SweepSpec, data_dir: str, output_dir: str):
    """DomainBed ``Job`` objects of the sweep (nothing is launched or created; refused past
    :data:`MAX_JOBS`, see :func:`count_jobs`)."""
    from domainbed.scripts import sweep

    count_jobs(spec)

    args_list = sweep.make_args_list(
        n_trials=spec.n_trials, dataset_names=spec.datasets,
        algorithms=spec.expanded_algorithms(), n_hparams_from=spec.n_hparams_from,
        n_hparams=spec.n_hparams, steps=spec.steps, data_dir=str(data_dir),
        task="domain_generalization", holdout_fraction=spec.holdout_fraction,
        single_test_envs=spec.single_test_envs,
        hparams=json.dumps(spec.hparams, sort_keys=True) if spec.hparams else None)
    return [sweep.Job(args, str(output_dir)) for args in args_list]


def describe_job(job) -> str:
    """One line per DomainBed ``Job``: its state, what it trains (trial seed included: the
    trials of one configuration differ only there) and its directory."""
    a = job.train_args
    envs = " ".join(map(str, a["test_envs"]))
    return (f"{job.state}: {a['dataset']} {a['algorithm']} test_envs {envs} hparams_seed "
            f"{a['hparams_seed']} trial_seed {a['trial_seed']} -> {job.output_dir}")


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


def validate_sweep_hparams(algorithms, hparams: dict | None) -> None:
    """Check a sweep file's ``hparams`` (given to every job) for each of ``algorithms``.

    Raises ``ValueError`` listing every problem, one per line, each naming the algorithm:
    an unknown name (for an algorithm of this package, which refuses unknown names at
    construction; for DomainBed's own algorithms, which ignore them, only a name no algorithm
    of the sweep knows), a wrong type, a non-finite number, a value outside an HParam's
    ``choices`` or ``check``. Needs DomainBed importable; an unknown algorithm is a problem.
    """
    from domainbed import algorithms as domainbed_algorithms

    import lpa_domainbed
    from lpa_domainbed import hparams as hp
    from lpa_domainbed.algorithms.base import ActivationPerturbation
    from lpa_domainbed.hparams_check import advice, known_types, problems, registry_types

    lpa_domainbed.register()
    hparams, found, checks = dict(hparams or {}), [], {}
    for name in dict.fromkeys(algorithms):
        try:
            cls = domainbed_algorithms.get_algorithm_class(name)
        except NotImplementedError as error:
            found.append(f"{name}: {error}")
            continue
        checks[name] = (cls, hp.specs_of(cls), registry_types(name))
    anyone_knows = set().union(*(known_types(s, t) for _, s, t in checks.values()))
    for name, (cls, specs, types) in checks.items():
        lenient = set() if issubclass(cls, ActivationPerturbation) else anyone_knows
        found += [f"{name}: {problem}" for problem in problems(name, specs, types, hparams,
                                                               lenient)]
    if found:
        raise ValueError("\n".join(found))
    for name, (_, specs, _) in checks.items():  # valid, but every job would mean little
        for text in advice(specs, hparams):
            warnings.warn(f"{name}: {text}", UserWarning, stacklevel=2)
