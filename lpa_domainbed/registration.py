"""Register lpa_domainbed's algorithms, hyperparameters, datasets and launchers into DomainBed.

DomainBed itself stays unmodified: we set module attributes and extend its lists/dicts:

* ``domainbed.algorithms``: each algorithm class as a module attribute (what
  ``get_algorithm_class`` finds) and its name appended to ``ALGORITHMS``;
* ``domainbed.hparams_registry._hparams``: wrapped, so our algorithms' and datasets'
  hyperparameters are added with DomainBed's per-name seeding (built-ins are untouched);
* ``domainbed.datasets``: each dataset class as an attribute and in ``DATASETS``;
* ``domainbed.command_launchers.REGISTRY``: the command launchers in :data:`LAUNCHERS` (the
  package's own come from ``lpa_domainbed.tools.launchers``, which registers them there; it is
  imported through the entry-point group ``lpa_domainbed.launchers`` only when
  ``domainbed.command_launchers`` is, so train processes never load the tooling);
* ``domainbed.lib.fast_data_loader.InfiniteDataLoader``: a guard that raises a clear error
  for a split smaller than the batch size (DomainBed would otherwise loop forever).

Every step is idempotent. After ``domainbed.algorithms`` or ``domainbed.datasets`` the user's
plugin modules are imported (:mod:`lpa_domainbed.plugins`). A name that clashes with one
DomainBed already has is refused with one warning naming the real owner, and changes nothing.
"""

from __future__ import annotations

import functools
import importlib
import os
import sys

from lpa_domainbed.registry import Registry, owner

__all__ = ["register", "on_module_loaded", "SmallSplitError", "LAUNCHERS", "domainbed_advice"]

#: name -> DomainBed command launcher ``fn(commands)``, copied into ``command_launchers.REGISTRY``.
LAUNCHERS: Registry = Registry("command launcher")

_MARK = "_lpa_domainbed_registered"
_REFUSED: set = set()


class SmallSplitError(ValueError):
    """A training split has fewer examples than the batch size."""


def _once(func):
    """Run ``func(module)`` at most once per module object."""

    @functools.wraps(func)
    def wrapper(module):
        done = module.__dict__.setdefault(_MARK, set())
        if func.__name__ not in done:
            func(module)
            done.add(func.__name__)
        return module

    return wrapper


def _clash(module, name, obj) -> str | None:
    """Who owns ``name`` in the DomainBed module, when that is not ``obj``."""
    existing = module.__dict__.get(name)
    return None if existing is None or existing is obj else owner(existing)


def _refuse(kind, name, taken_by):
    """One warning per refused name and interpreter; the refused entry changes nothing."""
    if (kind, name) not in _REFUSED:
        _REFUSED.add((kind, name))
        sys.stderr.write(f"lpa_domainbed: refused to register {kind} {name!r}: the name is taken "
                         f"by {taken_by}; pick another name.\n")


def _copy_into(module, registry, listing, kind):
    # Not once-only: an entry registered later (a user's own) is added on the next call.
    for name, obj in list(registry.items()):
        taken_by = _clash(module, name, obj)
        if taken_by:  # forget it, so no hparams of ours are ever added under that name
            registry.discard(name)
            _refuse(kind, name, taken_by)
            continue
        setattr(module, name, obj)
        if name not in listing:
            listing.append(name)


def _register_algorithms(module):
    from lpa_domainbed.algorithms import load

    _copy_into(module, load(), module.ALGORITHMS, "algorithm")
    _explain_missing_algorithms(module)


@_once
def _explain_missing_algorithms(module):
    """``get_algorithm_class`` names the failed module an unknown algorithm would come from."""
    original = module.get_algorithm_class

    @functools.wraps(original)
    def get_algorithm_class(algorithm_name):
        try:
            return original(algorithm_name)
        except NotImplementedError as error:
            wrapped = _swad_variant(algorithm_name, original)
            if wrapped is not None:
                return wrapped
            from lpa_domainbed.plugins import explain_missing

            hint = explain_missing(algorithm_name)
            if hint is None:
                raise
            raise NotImplementedError(f"{error}. {hint}") from None

    module.get_algorithm_class = get_algorithm_class


def _swad_variant(name: str, lookup):
    """``<Name>_SWAD`` for any algorithm ``lookup`` finds (resolved at lookup time)."""
    from lpa_domainbed.algorithms.swad import swad_class, wrapped_name

    base = wrapped_name(name)
    if base is None:
        return None
    try:
        lookup(base)
    except NotImplementedError:
        raise NotImplementedError(
            f"Algorithm not found: {name}. {name} is SWAD on top of {base!r}, which is not an "
            f"algorithm DomainBed knows: check its spelling, or the plugin that registers it "
            f"(LPA_DOMAINBED_PLUGINS)") from None
    return swad_class(base)


def _register_datasets(module):
    from lpa_domainbed.datasets import load
    from lpa_domainbed.hparams_check import clear_cache

    _copy_into(module, load(), module.DATASETS, "dataset")
    clear_cache()  # a new dataset may bring new hparam names


@_once
def _patch_hparams(module):
    from domainbed.lib import misc

    from lpa_domainbed import hparams as hp

    original = module._hparams

    @functools.wraps(original)
    def _hparams(algorithm, dataset, random_seed):
        from lpa_domainbed import train_command_line

        # DomainBed's train script asks for its hparams right before it reads --hparams, once
        # per run (also when runs share an interpreter): the last moment before its traceback.
        train_command_line.check()
        from lpa_domainbed.algorithms.swad import SPECS, wrapped_name

        base = wrapped_name(algorithm)
        if base is not None:  # <Name>_SWAD: the wrapped algorithm's, with its very draws
            hparams = module._hparams(base, dataset, random_seed)
            hp.define(hparams, SPECS, random_seed, misc.seed_hash)
            return hparams
        hparams = original(algorithm, dataset, random_seed)
        from lpa_domainbed.algorithms import load as load_algorithms
        from lpa_domainbed.datasets import load as load_datasets

        datasets, algorithms = load_datasets(), load_algorithms()
        if dataset in datasets:
            hp.define(hparams, getattr(datasets[dataset], "HPARAMS", []), random_seed, misc.seed_hash,
                      override=True)
        if algorithm in algorithms:
            hp.define(hparams, hp.specs_of(algorithms[algorithm], dataset), random_seed,
                      misc.seed_hash)
        return hparams

    module._hparams = _hparams


def _register_launchers(module):
    from lpa_domainbed.plugins import load_launchers

    load_launchers()  # the launcher modules register into LAUNCHERS (the tooling's own too)
    for name, fn in LAUNCHERS.items():
        existing = module.REGISTRY.get(name)
        if existing is not None and existing is not fn:
            raise ValueError(f"cannot register command launcher {name!r}: DomainBed's "
                             f"REGISTRY already has {existing!r}; rename ours.")
    module.REGISTRY.update(LAUNCHERS)


@_once
def _guard_infinite_loader(module):
    cls = module.InfiniteDataLoader
    original_init = cls.__init__

    @functools.wraps(original_init)
    def __init__(self, dataset, weights, batch_size, num_workers):
        if len(dataset) == 0:
            raise SmallSplitError(
                "a training split is empty: --holdout_fraction holds every example of a "
                "training domain out (as validation data). Use a fraction below 1 "
                "(DomainBed's default is 0.2).")
        if weights is None and len(dataset) < batch_size:
            raise SmallSplitError(
                f"a training split has {len(dataset)} examples, fewer than batch_size="
                f"{batch_size}; DomainBed's InfiniteDataLoader drops incomplete batches and "
                f"would never yield one. Lower the batch size (--hparams "
                f"'{{\"batch_size\": {max(1, len(dataset) // 2)}}}') or --holdout_fraction.")
        original_init(self, dataset, weights, batch_size, num_workers)

    cls.__init__ = __init__


_STEPS = {
    "domainbed.algorithms": _register_algorithms,
    "domainbed.hparams_registry": _patch_hparams,
    "domainbed.datasets": _register_datasets,
    "domainbed.command_launchers": _register_launchers,
    "domainbed.lib.fast_data_loader": _guard_infinite_loader,
}


def _load_plugins():
    """Import the user's plugin modules once, then copy what they registered into DomainBed."""
    from lpa_domainbed import plugins

    if plugins.load():  # the outermost call: plugins may have imported DomainBed themselves
        for name in ("domainbed.algorithms", "domainbed.datasets", "domainbed.command_launchers"):
            if name in sys.modules:
                _STEPS[name](sys.modules[name])


def on_module_loaded(name, module):
    """Called by the autoload finder right after DomainBed module ``name`` has executed."""
    _STEPS[name](module)
    if name in ("domainbed.algorithms", "domainbed.datasets", "domainbed.command_launchers"):
        _load_plugins()


DOMAINBED_COMMIT = "b93c22a"  # the DomainBed commit this package is tested with
_CHECKOUT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # a checkout's root


def domainbed_advice() -> str:
    """How to make DomainBed importable: ``make`` in a checkout of this package, plain
    commands where it is installed (no Makefile)."""
    import sysconfig
    from pathlib import Path

    pth = Path(sysconfig.get_paths()["purelib"]) / "_lpa_domainbed_domainbed.pth"
    line = f"echo /path/to/DomainBed > {pth}"
    checkout = Path(_CHECKOUT)
    if (checkout / "Makefile").is_file() and (checkout / "pyproject.toml").is_file():
        return ("DomainBed is not importable. Run 'make setup' (it clones DomainBed at the "
                f"pinned commit {DOMAINBED_COMMIT} into $DOMAINBED_DIR, default "
                "~/.cache/lpa-domainbed/DomainBed, and puts it on the environment's path); "
                "for a checkout you have: 'make domainbed DOMAINBED_DIR=/path/to/DomainBed', "
                f"or by hand: {line}")
    return ("DomainBed is not importable. Clone it (git clone "
            "https://github.com/facebookresearch/DomainBed; git -C DomainBed checkout "
            f"{DOMAINBED_COMMIT}) and put it on this environment's path with one line: {line} "
            "(or set PYTHONPATH=/path/to/DomainBed)")


def register():
    """Register everything into DomainBed (importing it); safe to call any number of times."""
    for name, step in _STEPS.items():
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as e:
            if e.name and e.name.split(".")[0] == "domainbed":
                raise ModuleNotFoundError(domainbed_advice()) from e
            raise
        on_module_loaded(name, module)
