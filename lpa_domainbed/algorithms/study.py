"""LPA variants that a study compares under their own names (``sweeps/style_study.toml``).

Each is LPA with one hyperparameter's default changed, so that DomainBed's sweep and tables
hold it beside LPA and its difference is measured with a paired interval. They are marked
``STUDY_VARIANT``: ``"@lpa_domainbed"`` in a sweep file (the demo) leaves them out; name them.

* ``LPA_Conjecture``: ``lpa_direction = 'conjecture'``, the search constrained so positive
  classes' activation norms grow and negative classes' shrink (Conjectures 1-2, eqs. 6-7;
  :mod:`lpa_domainbed.perturb.direction`).
* ``LPA_BF16``: ``lpa_search_precision = 'bfloat16'``, the PGD search's tail evaluations in
  bfloat16. Registered only where LPA has that hyperparameter: without it the name would
  silently train the float32 search.
"""

from __future__ import annotations

from lpa_domainbed.algorithms import ALGORITHMS
from lpa_domainbed.algorithms.lpa import LPA

__all__ = ["LPA_Conjecture", "LPA_BF16", "BF16_HPARAM"]

#: the hyperparameter LPA_BF16 sets; LPA_BF16 is registered only when LPA declares it.
BF16_HPARAM = "lpa_search_precision"


@ALGORITHMS.register("LPA_Conjecture")
class LPA_Conjecture(LPA):
    """LPA whose search keeps Conjectures 1-2 (``lpa_direction = 'conjecture'``)."""

    STUDY_VARIANT = True

    HPARAM_DEFAULTS = {"lpa_direction": "conjecture"}


class LPA_BF16(LPA):
    """LPA with the bfloat16 search (``lpa_search_precision = 'bfloat16'``)."""

    STUDY_VARIANT = True

    HPARAM_DEFAULTS = {BF16_HPARAM: "bfloat16"}


if any(spec.name == BF16_HPARAM for spec in LPA.hparam_specs()):
    ALGORITHMS.register("LPA_BF16")(LPA_BF16)
