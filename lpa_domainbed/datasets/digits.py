"""What the embedded digit datasets share: scikit-learn's digits, and the train-script checks.

``check_train_args`` refuses, with a message naming the fix, what DomainBed's train script
would otherwise turn into a wrong run or a raw exception:

* a ``--test_envs`` index that is not a domain (DomainBed would hold nothing out);
* ``--test_envs`` naming every domain (no training domain is left: a raw ``StopIteration``);
* a ``--holdout_fraction`` outside [0, 1) (a negative one inverts the in/out split and
  trains on the small "holdout" part; 1 or more leaves no training example).
"""

from __future__ import annotations

import gzip
import importlib.resources
import math
import sys

import numpy as np

__all__ = ["load_digits", "check_train_args", "train_script_args"]


def load_digits() -> tuple[np.ndarray, np.ndarray]:
    """Return scikit-learn's digits as ``(images [N, 8, 8] in [0, 1], labels [N])``.

    Reads the CSV inside the installed scikit-learn package directly, so importing
    scikit-learn itself (slow) is not needed.
    """
    try:
        path = importlib.resources.files("sklearn.datasets") / "data" / "digits.csv.gz"
        with path.open("rb") as raw, gzip.open(raw) as f:
            table = np.loadtxt(f, delimiter=",", dtype=np.float32)
    except (ModuleNotFoundError, FileNotFoundError) as e:
        raise RuntimeError(
            "the embedded datasets read scikit-learn's bundled digits; install it with "
            "'pip install scikit-learn' (it is a dependency of lpa-domainbed)") from e
    images = table[:, :-1].reshape(-1, 8, 8) / 16.0
    return images, table[:, -1].astype(np.int64)


def train_script_args():
    """The parsed arguments of DomainBed's train script when it is the running ``__main__``
    (``python -m domainbed.scripts.train``), else ``None`` (a dataset built by other code)."""
    main = sys.modules.get("__main__")
    spec = getattr(main, "__spec__", None)
    if getattr(spec, "name", None) != "domainbed.scripts.train":
        return None
    return getattr(main, "args", None)


def check_train_args(name: str, environments, test_envs, unit: str = "") -> None:
    """Raise ``ValueError`` for test environments or a holdout fraction that would train the
    wrong thing (see the module docs). ``unit`` follows each domain name in the messages."""
    valid = range(len(environments))
    domains = ", ".join(f"{e}{unit}" for e in environments)
    wrong = [e for e in test_envs if e not in valid]
    if wrong:  # DomainBed would train on every domain and hold none out
        raise ValueError(
            f"--test_envs {' '.join(map(str, wrong))}: {name} has no such domain; "
            f"valid indices are {', '.join(map(str, valid))} (domains {domains})")
    if set(test_envs) >= set(valid):
        raise ValueError(
            f"--test_envs {' '.join(map(str, test_envs))} holds out every domain of {name} "
            f"({domains}), so none is left to train on; hold out at most "
            f"{len(environments) - 1} (e.g. --test_envs 0)")
    args = train_script_args()
    fraction = getattr(args, "holdout_fraction", None)
    if isinstance(fraction, (int, float)) and not (math.isfinite(fraction)
                                                   and 0 <= fraction < 1):
        raise ValueError(
            f"--holdout_fraction {fraction}: the fraction of each domain held out for "
            f"validation must be in [0, 1) (DomainBed's default is 0.2); a negative one "
            f"would swap the training and validation splits, 1 or more leaves no training data")
