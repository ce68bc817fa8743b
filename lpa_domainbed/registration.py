"""Register lpa_domainbed's algorithms, hyperparameters, datasets and launchers into DomainBed.

DomainBed itself stays unmodified: we set module attributes and extend its lists/dicts:

* ``domainbed.algorithms``: each algorithm class as a module attribute (what
  ``get_algorithm_class`` finds) and its name appended to ``ALGORITHMS``;
* ``domainbed.hparams_registry._hparams``: wrapped, so our algorithms' and datasets'
  hyperparameters are added with DomainBed's per-name seeding (built-ins are untouched);
* ``domainbed.datasets``: each dataset class as an attribute and in ``DATASETS``;
* ``domainbed.command_launchers.REGISTRY``: our launchers;
* ``domainbed.lib.fast_data_loader.InfiniteDataLoader``: a guard that raises a clear error
  for a split smaller than the batch size (DomainBed would otherwise loop forever).

Every step is idempotent; a name that clashes with a DomainBed built-in raises ``ValueError``.
"""

from __future__ import annotations

import functools
import importlib

__all__ = ["register", "on_module_loaded", "SmallSplitError"]

_MARK = "_lpa_domainbed_registered"


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


def _check_clash(module, name, obj, what):
    existing = module.__dict__.get(name)
    if existing is not None and existing is not obj:
        raise ValueError(
            f"cannot register {what} {name!r}: {module.__name__} already defines {name!r} "
            f"({existing!r}). DomainBed's built-ins are never replaced; rename ours.")


def _register_algorithms(module):
    # Not once-only: an algorithm registered later (a user's own) is added on the next call.
    from lpa_domainbed.algorithms import load

    for name, cls in load().items():
        _check_clash(module, name, cls, "algorithm")
    for name, cls in load().items():
        setattr(module, name, cls)
        if name not in module.ALGORITHMS:
            module.ALGORITHMS.append(name)


def _register_datasets(module):
    from lpa_domainbed.datasets import load

    for name, cls in load().items():
        _check_clash(module, name, cls, "dataset")
    for name, cls in load().items():
        setattr(module, name, cls)
        if name not in module.DATASETS:
            module.DATASETS.append(name)


@_once
def _patch_hparams(module):
    from domainbed.lib import misc

    from lpa_domainbed import hparams as hp

    original = module._hparams

    @functools.wraps(original)
    def _hparams(algorithm, dataset, random_seed):
        hparams = original(algorithm, dataset, random_seed)
        from lpa_domainbed.algorithms import load as load_algorithms
        from lpa_domainbed.datasets import load as load_datasets

        datasets, algorithms = load_datasets(), load_algorithms()
        if dataset in datasets:
            hp.define(hparams, datasets[dataset].HPARAMS, random_seed, misc.seed_hash,
                      override=True)
        if algorithm in algorithms:
            hp.define(hparams, algorithms[algorithm].hparam_specs(dataset), random_seed,
                      misc.seed_hash)
        return hparams

    module._hparams = _hparams


def _register_launchers(module):
    from lpa_domainbed.tools.launchers import LAUNCHERS

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


def on_module_loaded(name, module):
    """Called by the autoload finder right after DomainBed module ``name`` has executed."""
    _STEPS[name](module)


def register():
    """Register everything into DomainBed (importing it); safe to call any number of times."""
    for name, step in _STEPS.items():
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as e:
            if e.name and e.name.split(".")[0] == "domainbed":
                raise ModuleNotFoundError(
                    "DomainBed is not importable. Run 'make setup' (it clones DomainBed at the "
                    "pinned commit into $DOMAINBED_DIR, default ~/.cache/lpa-domainbed/DomainBed, "
                    "and puts it on the virtual environment's path).") from e
            raise
        step(module)
