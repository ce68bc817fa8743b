"""The one results frame behind every table, paired comparison and plot of ``make tables``.

DomainBed's numbers, computed once: records are grouped with
:func:`domainbed.lib.reporting.get_grouped_records` (one group per trial seed, dataset,
algorithm and held-out domain) and each group is scored with each selection method's
``sweep_acc``. The result is one tidy frame, one row per selection method and group::

    selection, dataset, algorithm, test_env (domain index), trial_seed,
    acc (selected test accuracy in [0, 1]; NaN where the method selects nothing),
    single_env (the group has a run with this domain alone held out),
    incomplete, restarted (the jobs of that kind whose records the group uses)

The cells (:mod:`tables_cells`) and the paired differences (:mod:`paired`) are group-bys of it.
Rows keep the order of DomainBed's groups (the order of the records), and every mean is taken
in that order, as DomainBed's ``collect_results`` takes it.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd

from domainbed import algorithms, datasets, model_selection
from domainbed.lib import reporting

from lpa_domainbed.tools.tables_load import INCOMPLETE_KEY, RESTARTED_KEY

__all__ = ["SELECTION_METHODS", "AVERAGE", "FRAME_COLUMNS", "ResultsFrame", "results_frame",
           "trial_averages", "in_registry_order"]

# Keys double as the ``model_selection`` values of the published-results CSV.
SELECTION_METHODS = {
    "training_domain_validation": model_selection.IIDAccuracySelectionMethod,
    "leave_one_out": model_selection.LeaveOneOutSelectionMethod,
    "oracle": model_selection.OracleSelectionMethod,
}
#: the label of an average: the column of the domain average, the row of the dataset average
AVERAGE = "Avg"
FRAME_COLUMNS = ["selection", "dataset", "algorithm", "test_env", "trial_seed", "acc",
                 "single_env", "incomplete", "restarted"]


@dataclasses.dataclass(frozen=True)
class ResultsFrame:
    """The frame (see the module docstring) and what the tables lay out around it: datasets
    and algorithms in DomainBed's registry order, and each dataset's held-out domain names
    (index ``i`` of ``environments[dataset]`` names ``test_env == i``)."""

    frame: pd.DataFrame
    selections: tuple
    datasets: list
    algorithms: list
    environments: dict

    def rows(self, selection, dataset=None, algorithm=None):
        """The rows of one selection method (and dataset, algorithm), in frame order."""
        keep = self.frame.selection == selection
        if dataset is not None:
            keep &= self.frame.dataset == dataset
        if algorithm is not None:
            keep &= self.frame.algorithm == algorithm
        return self.frame[keep]

    def n_trials(self, dataset):
        """How many trial seeds the sweep has for ``dataset`` (any algorithm, any domain)."""
        return self.frame[self.frame.dataset == dataset].trial_seed.nunique()


def in_registry_order(found, registry):
    """DomainBed's order: names in ``registry`` order first, then the others as given."""
    return [n for n in registry if n in found] + [n for n in found if n not in registry]


def _environment_names(dataset, records):
    """Held-out domain names from the dataset class, or env indices for unknown datasets."""
    try:
        return list(datasets.get_dataset_class(dataset).ENVIRONMENTS)
    except NotImplementedError:
        example = records.filter_equals("args.dataset", dataset)[0]
        return [str(i) for i in range(sum(f"env{i}_in_acc" in example for i in range(100)))]


def _jobs(records, key):
    return frozenset(r[key] for r in records if key in r)


def results_frame(records, selections=tuple(SELECTION_METHODS)):
    """Score DomainBed's groups of ``records`` (a ``Q``) once per selection method."""
    groups = reporting.get_grouped_records(records)
    rows = []
    for selection in selections:
        method = SELECTION_METHODS[selection]
        for group in groups:
            group_records = group["records"]
            acc = method.sweep_acc(group_records)
            rows.append((selection, group["dataset"], group["algorithm"], group["test_env"],
                         group["trial_seed"], np.nan if acc is None else acc,
                         any(len(r["args"]["test_envs"]) == 1 for r in group_records),
                         _jobs(group_records, INCOMPLETE_KEY), _jobs(group_records, RESTARTED_KEY)))
    dataset_names = in_registry_order(records.select("args.dataset").unique().sorted(),
                                      datasets.DATASETS)
    return ResultsFrame(
        frame=pd.DataFrame(rows, columns=FRAME_COLUMNS), selections=tuple(selections),
        datasets=dataset_names,
        algorithms=in_registry_order(records.select("args.algorithm").unique(),
                                     algorithms.ALGORITHMS),
        environments={d: _environment_names(d, records) for d in dataset_names})


def trial_averages(rows):
    """Per trial seed of ``rows`` (one selection, dataset and algorithm): the mean selected
    accuracy over the held-out domains that trial has (``acc``; DomainBed's averages table
    takes it so) and how many it has (``n_domains``; the paired dataset average keeps only the
    trials that have every domain). Indexed by trial seed, in order (as DomainBed's ``Q.group``
    orders them); each mean in row order."""
    selected = rows[rows.acc.notna()]
    by_trial = selected.groupby("trial_seed").acc
    return pd.DataFrame({"acc": by_trial.agg(lambda accs: float(np.mean(accs.tolist()))),
                         "n_domains": by_trial.size()})
