"""The analytic floor of exact PGD: ``floor = 1 + T t_tail / t_step``.

An update that searches its perturbation by ``T``-step PGD (paper eqs. 9-11) must at least do
ERM's update (``t_step``) plus ``T`` evaluations of the layers after the cut with the backward
to the cut's input (``t_tail`` each), at every cut it perturbs. ``T`` is the algorithm's own
``search_steps`` (0: no search, no floor). A search in reduced precision (its
``*_search_precision`` hparam, e.g. bfloat16) has its floor from the tail timed under that
autocast: its first evaluation casts the tail's weights, the later ones reuse the casts
(``T t_tail`` becomes ``t_tail_first + (T - 1) t_tail_cached``). An algorithm that also
trains on a clean loss through the tail (ADA with ``ada_clean_weight > 0``) does that
backward with weight gradients too: ``floor_with_clean = floor + t_clean_backward / t_step``;
its first tail evaluation is that clean pass, in float32 whatever the search's precision.
"""

from __future__ import annotations

import statistics

from lpa_domainbed.tools.bench.config import search_precision

__all__ = ["search_steps", "floor_ratios"]


def search_steps(alg) -> int:
    """Tail evaluations per cut and update of ``alg``'s search (0 for ERM and the rest)."""
    return int(getattr(alg, "search_steps", 0))


def floor_ratios(alg, tails: list[dict], erm_times: list[float]) -> dict:
    """``floor_ratio``, ``floor_with_clean_ratio`` (medians over rounds, each round's tail
    times over the same round's ERM update) and ``tail_ms`` per cut; all None without a
    search. ``tails``: per round ``{cut: {"tail": s, "clean_backward": s}}``."""
    steps = search_steps(alg)
    if not steps or not tails or not all(c.name in tails[0] for c in alg.cuts):
        return {"floor_ratio": None, "floor_with_clean_ratio": None, "tail_ms": None,
                "pgd_steps": None}
    # The clean loss's weight is ADA's hparam: the only algorithm that trains on it.
    trains_clean = float(alg.hparams.get("ada_clean_weight", 0.0)) > 0
    precision = search_precision(alg.hparams)
    part = "tail" if precision == "float32" else f"tail_{precision}"
    floors, floors_clean = [], []
    # A search that keeps the clean graph evaluates its first tail in float32 (it is part of
    # the training pass); only the other T - 1 run in the search's precision.
    full = 1 if trains_clean and part != "tail" else 0
    for round_tail, t_step in zip(tails, erm_times):
        extra = sum(full * round_tail[c.name]["tail"]
                    + _search_tails(round_tail[c.name], part, steps - full) for c in alg.cuts)
        clean = sum(round_tail[c.name]["clean_backward"] for c in alg.cuts) if trains_clean \
            else 0.0
        floors.append(1 + extra / t_step)
        floors_clean.append(1 + (extra + clean) / t_step)
    return {"floor_ratio": statistics.median(floors),
            "floor_with_clean_ratio": statistics.median(floors_clean),
            "tail_ms": {c.name: 1e3 * statistics.median(rt[c.name][part] for rt in tails)
                        for c in alg.cuts},
            "pgd_steps": steps}


def _search_tails(times: dict, part: str, evaluations: int) -> float:
    """Time of ``evaluations`` tail evaluations in the search's precision: in float32 each
    costs ``tail``; in reduced precision the first casts the weights and the rest reuse them."""
    if evaluations <= 0:
        return 0.0
    cached = times.get(f"{part}_cached", times[part]) if part != "tail" else times[part]
    return times[part] + (evaluations - 1) * cached
