"""Which run model selection chose behind each table cell, and where its checkpoint is:
``selected_<selection>.{csv,md}`` beside the tables of :mod:`lpa_domainbed.tools.tables`.

DomainBed decides; this module only reports. For each group of records (one trial seed,
dataset, algorithm and held-out domain, as :func:`domainbed.lib.reporting.get_grouped_records`
makes them), the selection method's ``hparams_accs`` ranks the runs (one per hparams seed) and
the first is the one whose test accuracy the cell uses (``sweep_acc`` takes exactly that). The
selected step is the checkpoint of that run whose own ``run_acc`` is the run's: where several
checkpoints give the same accuracies, the one DomainBed's choice lands on, the first (an argmax
over the checkpoints, as training-domain validation and leave-one-domain-out take it) or the
last (the oracle takes the last checkpoint).

Each row names the job directory the record was read from and its name (DomainBed's sweep names
a job's directory by the hash of its args), the step, and the checkpoint to load:
``model_step<step>.pkl`` in the job directory, which DomainBed writes at every checkpoint with
``--save_model_every_checkpoint``, or ``model.pkl`` where the selected step is the job's last
(DomainBed writes it when training ends); the hparams are the record's.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from domainbed import model_selection
from domainbed.lib import reporting

from lpa_domainbed.tools.tables_frame import SELECTION_METHODS
from lpa_domainbed.tools.tables_load import JOB_DIR_KEY
from lpa_domainbed.tools.tables_write import markdown_table

__all__ = ["SELECTED_COLUMNS", "selected_runs", "selected_outputs", "NOT_SAVED"]

SELECTED_COLUMNS = ["selection", "dataset", "algorithm", "test_env", "trial_seed",
                    "hparams_seed", "step", "val_acc", "test_acc", "job_dir", "args_hash",
                    "checkpoint", "hparams"]
NOT_SAVED = "not saved (train with --save_model_every_checkpoint)"


def _selected_step(method, run_records, run_acc):
    """The step of ``run_records`` (one run) that ``method`` selected (see the module
    docstring), or None."""
    matches = [step for step, records in run_records.group("step")
               if method.run_acc(records) == run_acc]
    if not matches:
        return None
    return max(matches) if issubclass(method, model_selection.OracleSelectionMethod) \
        else matches[0]


def _checkpoint(job_dir, step, last_step):
    """The file holding the model of ``step`` in ``job_dir``, or :data:`NOT_SAVED`."""
    every = Path(job_dir) / f"model_step{step}.pkl"
    if every.is_file():
        return str(every)
    final = Path(job_dir) / "model.pkl"
    if step == last_step and final.is_file() and (Path(job_dir) / "done").is_file():
        return str(final)
    return NOT_SAVED


def _row(selection, group, environments, run_acc, run_records, step):
    test = model_selection.get_test_records(run_records.filter(lambda r: r["step"] == step))
    record = test[0]
    job_dir = record.get(JOB_DIR_KEY, record["args"].get("output_dir", ""))
    last_step = max(r["step"] for r in run_records
                    if r.get(JOB_DIR_KEY) == record.get(JOB_DIR_KEY))
    return {"selection": selection, "dataset": group["dataset"],
            "algorithm": group["algorithm"],
            "test_env": environments[group["dataset"]][group["test_env"]],
            "trial_seed": group["trial_seed"], "hparams_seed": record["args"]["hparams_seed"],
            "step": step, "val_acc": float(run_acc["val_acc"]),
            "test_acc": float(run_acc["test_acc"]), "job_dir": str(job_dir),
            "args_hash": Path(job_dir).name, "checkpoint": _checkpoint(job_dir, step, last_step),
            "hparams": json.dumps(record.get("hparams", {}), sort_keys=True, default=str)}


def selected_runs(records, results):
    """One row (:data:`SELECTED_COLUMNS`) per selection method of ``results`` (a
    :class:`~tables_frame.ResultsFrame` of ``records``) and group with a selected run, in the
    tables' order (algorithm, held-out domain, trial); accuracies in [0, 1]."""
    groups = reporting.get_grouped_records(records)
    rows = []
    for selection in results.selections:
        method = SELECTION_METHODS[selection]
        for group in groups:
            ranked = method.hparams_accs(group["records"])
            if not len(ranked):
                continue
            run_acc, run_records = ranked[0]
            step = _selected_step(method, run_records, run_acc)
            if step is not None:
                # sorted as the tables read: algorithms in their order, held-out domain, trial
                order = (results.selections.index(selection), group["dataset"],
                         results.algorithms.index(group["algorithm"]), group["test_env"],
                         group["trial_seed"])
                rows.append((order, _row(selection, group, results.environments, run_acc,
                                         run_records, step)))
    rows.sort(key=lambda pair: pair[0])
    return pd.DataFrame([row for _, row in rows], columns=SELECTED_COLUMNS)


def _markdown(rows, method_name, name):
    text = (f"# {name}: the selected runs, model selection: {method_name}\n\n"
            "Per table cell and trial: the run (hparams seed) and step that DomainBed's model "
            "selection chose, its validation and test accuracy (%), and the checkpoint to "
            "load: model_step<step>.pkl in the job directory (written with "
            "--save_model_every_checkpoint), or model.pkl where the step is the job's last. "
            "The job directory, the hparams and the accuracies in full: the CSV beside this "
            "file.\n")
    for dataset, part in rows.groupby("dataset", sort=False):
        table = pd.DataFrame({
            "Algorithm": part.algorithm, "Held-out domain": part.test_env,
            "Trial": part.trial_seed, "Hparams seed": part.hparams_seed, "Step": part.step,
            "Val acc": [f"{100 * v:.1f}" for v in part.val_acc],
            "Test acc": [f"{100 * v:.1f}" for v in part.test_acc],
            "Job": part.args_hash,
            "Checkpoint": [c if c == NOT_SAVED else Path(c).name for c in part.checkpoint],
            "Hparams": part.hparams}).set_index("Algorithm")
        text += f"\n## Dataset: {dataset}\n\n{markdown_table(table)}\n"
    return text


def selected_outputs(records, results, name):
    """``{'selected_<selection>.csv': ..., '.md': ...}`` for every selection method with a
    selected run; nothing is written here."""
    runs = selected_runs(records, results)
    files = {}
    for selection, part in runs.groupby("selection", sort=False):
        files[f"selected_{selection}.csv"] = part.to_csv(index=False)
        files[f"selected_{selection}.md"] = _markdown(part, SELECTION_METHODS[selection].name,
                                                      name)
    return files
