"""A job restarted in its own directory (a Slurm requeue, any rerun of the same command) appends
a second attempt to results.jsonl, since DomainBed's train script opens it in append mode.
The tables read only the last attempt, mark the cells that use it and list the job, whatever
launcher wrote it; every record stays on disk."""

import json

import pandas as pd
import pytest

from conftest import HAVE_DOMAINBED, NO_DOMAINBED

pytestmark = [pytest.mark.torch, pytest.mark.skipif(not HAVE_DOMAINBED, reason=NO_DOMAINBED)]
TDV = "training_domain_validation"


def restarted_sweep(tmp_path, second_done=True):
    """ERM on ColoredMNIST (3 domains, 2 trials); job ERM_0_0's first attempt selected 90%, its
    restart (appended to the same results.jsonl) 40%; both attempts checkpoint the same
    validation accuracies, so a selection over both would keep the first attempt's 90%."""
    from test_tables import write_algorithm, write_job

    root = tmp_path / "sweep"
    write_algorithm(root, "ColoredMNIST", "ERM", 0.60, 0.02)
    first = write_job(tmp_path / "first", "x", "ColoredMNIST", "ERM", 0, 0, 0.9, 0.9)
    job = root / "ColoredMNIST_ERM_0_0"
    last = (job / "results.jsonl").read_text()
    last = last.replace('"env0_in_acc": 0.6,', '"env0_in_acc": 0.4,')
    (job / "results.jsonl").write_text((first / "results.jsonl").read_text() + last)
    if not second_done:
        (job / "done").unlink()
    return root, job


def test_restarted_job_uses_its_last_attempt_and_is_marked(tmp_path):
    from lpa_domainbed.tools import tables

    root, job = restarted_sweep(tmp_path)
    on_disk = (job / "results.jsonl").read_bytes()
    with pytest.warns(UserWarning, match="1 restarted job"):
        result = tables.make_tables([root], "r", out_root=tmp_path / "results", plots=False)
    cells = result.cells.set_index(["selection", "algorithm", "test_env"])
    cell = cells.loc[(TDV, "ERM", "+90%")]
    assert cell["mean"] == pytest.approx((40 + 62) / 2)  # last attempt (40) and trial 1 (62)
    assert cell["restarted_jobs"] == 1 and cell["text"].endswith("‡")
    assert cells.loc[(TDV, "ERM", "+80%"), "restarted_jobs"] == 0  # other domains unmarked
    assert cells.loc[(TDV, "ERM", "Avg"), "text"].endswith("‡")
    assert result.report.restarted_jobs.keys() == {str(job)}
    assert "holds 2 attempts" in result.report.restarted_jobs[str(job)]
    markdown = (tmp_path / "results" / "r" / f"{TDV}.md").read_text()
    assert "1 restarted jobs (last attempt used, marked ‡)" in markdown
    assert "## Restarted jobs" in markdown and f"- {job}: results.jsonl holds 2" in markdown
    assert "‡ uses a restarted job" in markdown
    latex = (tmp_path / "results" / "r" / f"{TDV}.tex").read_text()
    assert r"$^\ddagger$" in latex
    csv = pd.read_csv(tmp_path / "results" / "r" / f"{TDV}.csv")
    assert csv.restarted_jobs.sum() > 0
    assert (job / "results.jsonl").read_bytes() == on_disk  # every record stays on disk


def test_without_restarts_the_csv_keeps_its_columns(tmp_path):
    from test_tables import write_algorithm

    from lpa_domainbed.tools import tables

    write_algorithm(tmp_path / "sweep", "ColoredMNIST", "ERM", 0.60, 0.02)
    tables.make_tables([tmp_path / "sweep"], "c", out_root=tmp_path / "results", plots=False)
    csv = pd.read_csv(tmp_path / "results" / "c" / f"{TDV}.csv")
    assert list(csv.columns) == tables.CSV_COLUMNS


def test_a_restart_still_running_is_incomplete_and_restarted(tmp_path):
    from lpa_domainbed.tools.tables_load import load_records

    root, job = restarted_sweep(tmp_path, second_done=False)
    lines = (job / "results.jsonl").read_text().splitlines()
    (job / "results.jsonl").write_text("\n".join(lines[:5]) + "\n")  # 2nd attempt: step 0
    with pytest.warns(UserWarning):
        records, report = load_records(root)
    assert str(job) in report.incomplete_jobs and str(job) in report.restarted_jobs
    run = [r for r in records if r.get("_lpa_restarted_job") == str(job)
           and r["args"]["hparams_seed"] == 0]
    assert [r["step"] for r in run] == [0]  # the last attempt only


def test_done_from_an_earlier_attempt_does_not_make_a_restart_complete(tmp_path):
    """A finished job rerun in its directory and killed early: 'done' is the first attempt's."""
    from lpa_domainbed.tools.tables_load import load_records

    root, job = restarted_sweep(tmp_path)
    lines = (job / "results.jsonl").read_text().splitlines()
    (job / "results.jsonl").write_text("\n".join(lines[:5]) + "\n")
    with pytest.warns(UserWarning):
        _, report = load_records(root)
    assert "its last attempt stopped at step 0 (an earlier one reached 100)" in (
        report.incomplete_reasons[str(job)])


def test_records_of_several_runs_in_one_file_are_not_a_restart(tmp_path):
    """Steps restart per run: two hparams seeds in one file are two runs, one attempt each."""
    from test_tables import write_job

    from lpa_domainbed.tools.tables_load import load_records

    write_job(tmp_path / "sweep", "job_0", "ColoredMNIST", "ERM", 0, 0, 0.6, 0.65)
    records, report = load_records(tmp_path / "sweep")
    steps = [(r["args"]["hparams_seed"], r["step"]) for r in records]
    assert steps == [(0, 0), (0, 100), (1, 0), (1, 100)] and not report.restarted_jobs
    assert json.dumps(report.restarted_jobs) == "{}"
