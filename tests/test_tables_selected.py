"""The selected runs beside the tables (``selected_<selection>.{csv,md}``): which hparams seed,
step and checkpoint DomainBed's model selection chose for each cell and trial."""

import json
import os

import pandas as pd
import pytest

from conftest import HAVE_DOMAINBED, NO_DOMAINBED

pytestmark = [pytest.mark.torch, pytest.mark.skipif(not HAVE_DOMAINBED, reason=NO_DOMAINBED)]
TDV = "training_domain_validation"


def write_run_job(root, name, steps_val, steps_test, test_env=0, trial=0):
    """One job of ColoredMNIST (3 domains) holding out ``test_env``; per hparams seed ``h``,
    ``steps_val[h]`` and ``steps_test[h]``: {step: (validation acc of the training domains,
    test-domain out acc)}; the test-domain in acc (the cell's number) is out acc - 0.05."""
    job = root / name
    job.mkdir(parents=True)
    lines = []
    for hparams_seed, steps in enumerate(steps_val):
        for step, val in steps.items():
            out = steps_test[hparams_seed][step]
            record = {"args": {"dataset": "ColoredMNIST", "algorithm": "ERM",
                               "test_envs": [test_env], "trial_seed": trial,
                               "hparams_seed": hparams_seed},
                      "hparams": {"lr": 0.001 * (hparams_seed + 1)}, "step": step}
            for env in range(3):
                record[f"env{env}_in_acc"], record[f"env{env}_out_acc"] = 0.5, val
            record[f"env{test_env}_in_acc"] = round(out - 0.05, 4)
            record[f"env{test_env}_out_acc"] = out
            lines.append(json.dumps(record))
    (job / "results.jsonl").write_text("\n".join(lines) + "\n")
    (job / "done").write_text("done")
    return job


def selected(out_dir, selection):
    return pd.read_csv(out_dir / f"selected_{selection}.csv", keep_default_na=False)


def test_the_selected_run_step_and_checkpoint(tmp_path):
    """Training-domain validation: hparams 1 at step 50 (its best validation); the oracle:
    hparams 0 (best test-domain out acc at the last step), at its last step, 100."""
    from lpa_domainbed.tools import tables

    job = write_run_job(tmp_path / "sweep", "a1b2c3",
                        [{0: 0.5, 50: 0.6, 100: 0.55}, {0: 0.5, 50: 0.8, 100: 0.7}],
                        [{0: 0.3, 50: 0.5, 100: 0.9}, {0: 0.3, 50: 0.6, 100: 0.4}])
    (job / "model_step50.pkl").write_bytes(b"checkpoint")
    (job / "model.pkl").write_bytes(b"final")
    result = tables.make_tables([tmp_path / "sweep"], "s", out_root=tmp_path / "results",
                                plots=False)
    out = tmp_path / "results" / "s"
    iid, = selected(out, TDV).to_dict("records")
    assert (iid["hparams_seed"], iid["step"], iid["test_env"]) == (1, 50, "+90%")
    assert iid["test_acc"] == pytest.approx(0.55) and iid["val_acc"] == pytest.approx(0.8)
    assert iid["job_dir"] == str(job) and iid["args_hash"] == "a1b2c3"
    assert iid["checkpoint"] == str(job / "model_step50.pkl")
    assert json.loads(iid["hparams"]) == {"lr": 0.002}
    oracle, = selected(out, "oracle").to_dict("records")
    assert (oracle["hparams_seed"], oracle["step"]) == (0, 100)
    assert oracle["checkpoint"] == str(job / "model.pkl")  # the last step: the final model
    cells = result.cells.set_index(["selection", "test_env"])
    assert cells.loc[(TDV, "+90%"), "mean"] == pytest.approx(100 * iid["test_acc"])
    assert cells.loc[("oracle", "+90%"), "mean"] == pytest.approx(100 * oracle["test_acc"])
    markdown = (out / f"selected_{TDV}.md").read_text()
    assert "| ERM         | +90%" in markdown and "model_step50.pkl" in markdown
    assert str(tmp_path) not in markdown  # the full paths are in the CSV


def test_ties_land_where_domainbed_does_and_missing_checkpoints_say_how(tmp_path):
    """Equal accuracies at steps 0 and 50: the argmax takes the first, the oracle the last
    step; without model_step<step>.pkl the row says how to get one."""
    from lpa_domainbed.tools import tables

    write_run_job(tmp_path / "sweep", "job", [{0: 0.7, 50: 0.7, 100: 0.6}],
                  [{0: 0.8, 50: 0.8, 100: 0.8}])
    tables.make_tables([tmp_path / "sweep"], "s", out_root=tmp_path / "results", plots=False)
    out = tmp_path / "results" / "s"
    iid, = selected(out, TDV).to_dict("records")
    oracle, = selected(out, "oracle").to_dict("records")
    assert iid["step"] == 0 and oracle["step"] == 100
    from lpa_domainbed.tools.tables_selected import NOT_SAVED

    assert iid["checkpoint"] == oracle["checkpoint"] == NOT_SAVED
    assert "--save_model_every_checkpoint" in NOT_SAVED


@pytest.mark.integration
def test_every_selected_run_gives_its_cells_number_on_domainbeds_sample(tmp_path):
    """On DomainBed's own sample sweep (2-domain runs too, so leave-one-domain-out): each
    selected run's test accuracy is the one the results frame scored, for every method."""
    import domainbed

    from lpa_domainbed.tools.tables_frame import results_frame
    from lpa_domainbed.tools.tables_load import load_records
    from lpa_domainbed.tools.tables_selected import selected_runs

    sample = os.path.join(os.path.dirname(domainbed.__file__), "misc", "test_sweep_data")
    records, report = load_records(sample)
    assert not report.skipped_records and not report.duplicate_jobs  # DomainBed's own records
    results = results_frame(records)
    runs = selected_runs(records, results)
    frame = results.frame[results.frame.acc.notna()].copy()
    frame["test_env"] = [results.environments[d][e] for d, e in zip(frame.dataset,
                                                                    frame.test_env)]
    keys = ["selection", "dataset", "algorithm", "test_env", "trial_seed"]
    merged = frame.merge(runs, on=keys, validate="one_to_one")
    assert len(merged) == len(frame) == len(runs) and set(runs.selection) == set(
        results.selections)
    assert (merged.acc == merged.test_acc).all()
    on_disk = [(os.path.isdir(d), os.path.basename(d)) for d in runs.job_dir]
    assert all(exists and name for exists, name in on_disk)
    # rows read as the tables do: algorithm (the tables' order), held-out domain, trial
    for (selection, dataset), part in runs.groupby(["selection", "dataset"], sort=False):
        order = [(results.algorithms.index(a), results.environments[dataset].index(e), t)
                 for a, e, t in zip(part.algorithm, part.test_env, part.trial_seed)]
        assert order == sorted(order) and len(set(order)) == len(order) > 1, (selection, dataset)
