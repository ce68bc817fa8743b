"""The DomainBed dataset of a run and its in/out splits, built as ``train.py`` builds them."""

from __future__ import annotations

__all__ = ["make_dataset", "split_environments", "default_test_envs"]


def make_dataset(name: str, data_dir: str, test_env: int, hparams: dict):
    """The DomainBed dataset ``name`` under ``data_dir``, built as train.py builds it (after
    seeding)."""
    from domainbed import datasets

    if name not in vars(datasets):
        raise ValueError(f"unknown dataset {name!r}; DomainBed knows "
                         f"{', '.join(datasets.DATASETS)}")
    return vars(datasets)[name](data_dir, [test_env], hparams)


def split_environments(dataset, test_env: int, holdout_fraction: float, trial: int,
                       class_balanced: bool):
    """train.py's in/out splits (uda_holdout_fraction = 0), with their sampling weights."""
    from domainbed.lib import misc

    in_splits, out_splits = [], []
    for env_i, env in enumerate(dataset):
        out, in_ = misc.split_dataset(env, int(len(env) * holdout_fraction),
                                      misc.seed_hash(trial, env_i))
        if env_i == test_env:
            # train.py splits the held-out in-split once more (an empty uda split); this
            # reorders it, which changes the evaluation order, so we do it too.
            _, in_ = misc.split_dataset(in_, 0, misc.seed_hash(trial, env_i))
        if class_balanced:
            in_weights = misc.make_weights_for_balanced_classes(in_)
            out_weights = misc.make_weights_for_balanced_classes(out)
        else:
            in_weights, out_weights = None, None
        in_splits.append((in_, in_weights))
        out_splits.append((out, out_weights))
    return in_splits, out_splits


def default_test_envs(dataset: str) -> tuple[int, ...]:
    """The first and the last domain (RotatedDigits: 0 and 45 degrees, the two extremes)."""
    from domainbed import datasets

    n = len(vars(datasets)[dataset].ENVIRONMENTS)
    return (0, n - 1) if n > 1 else (0,)
