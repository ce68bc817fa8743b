"""LPA followed by dropout at the same layer: the "Dropout+LPA" bar of the paper's Figure 3(a)
("LPA can be combined with existing methods as a plug-in module").

Figure-only on purpose: it is not registered with DomainBed, so ``@lpa_domainbed`` sweeps,
the embedded demo, the tables and the benchmark (which cover every registered algorithm) do
not run it. ``lpa_domainbed.tools.figures.algorithm_class("LPA_Dropout")`` returns it; the figures'
trainer, which is proven equal to ``domainbed.scripts.train`` for the registered algorithms
(tests/test_figures.py), trains it like any other. See docs/figures.md.
"""

from __future__ import annotations

from lpa_domainbed.algorithms.dropout import Dropout, dropout_mask
from lpa_domainbed.algorithms.lpa import LPA

__all__ = ["LPADropout"]


class LPADropout(LPA):
    """LPA, then dropout on LPA's output, at the same layer in one ``perturb``:
    ``a~ = (a + delta_c) * m / (1 - p)`` (eq. 2 with LPA's ``delta_c`` of eq. 8, then the
    dropout mask). The PGD search (eqs. 9-11) sees the clean activation, as it is LPA's own;
    the mask is drawn afterwards, as a dropout layer placed after the perturbation would.
    Hparams: LPA's and Dropout's ``dropout_*``."""

    @classmethod
    def hparam_specs(cls, dataset=None):
        return super().hparam_specs(dataset) + [
            s for s in Dropout.hparam_specs(dataset) if s.name.startswith("dropout_")]

    def perturb(self, a, y, step, tail, state):
        a_lpa = super().perturb(a, y, step, tail, state)
        h = self.hparams
        mask = dropout_mask(a_lpa, h["dropout_p"], h["dropout_kind"],
                            int(h["dropout_block_size"]))
        return a_lpa * mask.to(a_lpa.dtype)
