"""The third round's bad inputs of ``lpa-domainbed tables``, as ``prepare(tmp)`` functions and
checks for the rows of test_bad_inputs_tables.py: a user's file with a table's name, one job
seen twice, records that cannot be scored, repeated or mistyped comparison flags, an incomplete
sweep's averages, an algorithm whose jobs all fail."""

import json
import os
import shutil

TDV = "training_domain_validation"


def sweep(tmp):
    from test_bad_inputs_tables import sweep as default_sweep

    return default_sweep(tmp)


def user_files(folder):
    from test_bad_inputs_tables import user_files as write_user_files

    return write_user_files(folder)


def tables_main(tmp, argv):
    from lpa_domainbed.tools import tables

    return tables.main([*argv, "--out_root", str(tmp / "results")])


def users_table_file(name):
    """The user's own ``name`` in ``--out_dir .`` before the first run; run once already."""
    def prepare(tmp):
        kept = user_files(tmp / "here") + [str(tmp / "here" / name)]
        (tmp / "here" / name).write_text(f"my own {name}, not a table\n")
        os.chdir(tmp / "here")
        argv = [*sweep(tmp), "--name", "t", "--out_dir", "."]
        assert tables_main(tmp, argv) == 2  # the first run; the row is the second
        return argv, kept
    return prepare


def users_file_intact(name):
    def check(tmp):
        return (tmp / "here" / name).read_text() == f"my own {name}, not a table\n"
    return check


def stale_copy(tmp):
    """A job's directory copied to ``<hash>_old`` beside it, records unchanged."""
    argv = sweep(tmp)
    job = tmp / "sweep" / "ColoredMNIST_ERM_0_0"
    shutil.copytree(job, job.with_name(job.name + "_old"))
    return [*argv, "--name", "t", "--no-plots"], []


def copy_counted_once(tmp):
    text = (tmp / "results" / "t" / f"{TDV}.md").read_text()
    return (markdown_cell(tmp, "Dataset: ColoredMNIST", "ERM", "+90%") == "61.0 ± 0.7"
            and "ColoredMNIST_ERM_0_0_old: the same records as" in text)


def other_run_in_second_input_dir(tmp):
    """The same job's directory in two --input_dir, with different numbers."""
    argv = sweep(tmp)
    job = tmp / "sweep" / "ColoredMNIST_ERM_0_0"
    copy = tmp / "other" / job.name
    shutil.copytree(job, copy)
    results = copy / "results.jsonl"
    results.write_text(results.read_text().replace('"env0_in_acc": 0.6,', '"env0_in_acc": 0.3,'))
    return [*argv, str(tmp / "other"), "--name", "t"], []


def edit_records(tmp, job, edit):
    """Rewrite each record of ``job`` (in the default sweep) with ``edit(record)``."""
    path = tmp / "sweep" / job / "results.jsonl"
    records = [json.loads(line) for line in path.read_text().splitlines()]
    path.write_text("".join(json.dumps(edit(r)) + "\n" for r in records))


def nan_where(job, key, selected_only):
    """NaN for ``key`` in ``job``'s records (only the one training-domain validation picks)."""
    def prepare(tmp):
        argv = sweep(tmp)

        def edit(record):
            if not selected_only or (record["step"] == 100 and record["args"]["hparams_seed"]):
                record[key] = float("nan")
            return record
        edit_records(tmp, job, edit)
        return [*argv, "--name", "t", "--no-plots"], []
    return prepare


def markdown_cell(tmp, section, algorithm, column, selection=TDV):
    """The text of one cell of ``results/t/<selection>.md``."""
    lines = (tmp / "results" / "t" / f"{selection}.md").read_text().split(f"## {section}\n")[1]
    rows = [[c.strip() for c in line.strip("|").split("|")]
            for line in lines.strip().splitlines() if line.startswith("|")]
    header = rows[0]
    row = next(r for r in rows if r[0] == algorithm)
    return row[header.index(column)]


def cell_says(algorithm, column, *fragments, absent=()):
    def check(tmp):
        text = markdown_cell(tmp, "Dataset: ColoredMNIST", algorithm, column)
        return all(f in text for f in fragments) and not any(a in text for a in absent)
    return check


def without_out_acc(tmp):
    argv = sweep(tmp)
    edit_records(tmp, "ColoredMNIST_Mixup_1_0",
                 lambda r: {k: v for k, v in r.items() if k != "env2_out_acc"})
    return [*argv, "--name", "t", "--no-plots"], []


def extra_job(dataset, test_env):
    """One more job, of ``dataset`` holding out ``test_env``, beside the default sweep."""
    def prepare(tmp):
        from test_tables import write_job

        argv = sweep(tmp)
        write_job(tmp / "sweep", "odd_job", dataset, "ERM", test_env, 0, 0.9, 0.9)
        return [*argv, "--name", "t"], []
    return prepare


def only_unusable_records(tmp):
    from test_tables import write_job

    write_job(tmp / "lone", "odd_job", "ColoredMNIST", "ERM", 9, 0, 0.9, 0.9)
    return ["--input_dir", str(tmp / "lone"), "--name", "t"], []


def pair_twice(tmp):
    return [*sweep(tmp), "--name", "t", "--no-plots", "--pair", "Mixup:ERM",
            "--pair", "Mixup:ERM"], []


def pair_row_once(tmp):
    text = (tmp / "results" / "t" / f"paired_{TDV}.md").read_text()
    return text.count("| Mixup - ERM ") == 1  # one dataset, one row


def baseline_typo(tmp):
    from test_bad_inputs_tables import earlier_run

    earlier_run(tmp)
    kept = sorted(str(p) for p in (tmp / "results" / "t").glob("paired_*"))
    assert len(kept) == 6 + 2  # md, csv, tex per selection, a forest plot per selection
    return [*sweep(tmp), "--name", "t", "--baseline", "EMR"], kept


def one_trial_lacks_domains(tmp):
    """ERM has a third trial on its first domain only."""
    from test_tables import write_job

    argv = sweep(tmp)
    write_job(tmp / "sweep", "ColoredMNIST_ERM_0_2", "ColoredMNIST", "ERM", 0, 2, 0.95, 0.95)
    return [*argv, "--name", "t", "--no-plots"], []


def both_tables_agree(tmp):
    average = markdown_cell(tmp, "Dataset: ColoredMNIST", "ERM", "Avg")
    overview = markdown_cell(tmp, "Averages", "ERM", "ColoredMNIST")
    return average == overview and "trials with every domain" in average


def broken_algorithm(tmp):
    """Every job of algorithm Broken crashed before its first record."""
    argv = sweep(tmp)
    for env in range(3):
        for trial in range(2):
            job = tmp / "sweep" / f"ColoredMNIST_Broken_{env}_{trial}"
            job.mkdir()
            (job / "out.txt").write_text(
                "Environment:\n\tPython: 3.11\nArgs:\n\talgorithm: Broken\n\tcheckpoint_freq: "
                f"None\n\tdataset: ColoredMNIST\n\ttest_envs: [{env}]\n\ttrial_seed: {trial}\n"
                "HParams:\n\tbatch_size: 64\n")
            (job / "err.txt").write_text("Traceback (most recent call last):\n  File \"x\"\n"
                                         "ValueError: Broken cannot train\n")
    return [*argv, "--name", "t", "--no-plots"], []
