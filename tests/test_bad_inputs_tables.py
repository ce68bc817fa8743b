"""Bad inputs and faults around ``lpa-domainbed tables`` (second and third rounds; the third
round's cases are in bad_tables_cases.py), table-driven like test_bad_inputs_tools.py: each row
prepares a sweep, the user's files and the arguments, and gives the exit status, a fragment of
the output, and the files that must still be on disk, unchanged, afterwards. A run that fails
changes no file; no temporary folder (``.*.old.*``, ``.tables.new.*``) may be left."""

import fcntl
import os
import subprocess
import sys

import pytest

import bad_tables_cases as bad
from conftest import HAVE_DOMAINBED, NO_DOMAINBED, REPO

pytestmark = [pytest.mark.torch, pytest.mark.skipif(not HAVE_DOMAINBED, reason=NO_DOMAINBED)]
USER_FILES = ("paired_notes.md", "paired_results_2023.csv", "paired_my_analysis.md")
HELD = []  # descriptors of locks a row holds during its run


def sweep(tmp):
    from test_tables import write_algorithm

    if not (tmp / "sweep").exists():
        write_algorithm(tmp / "sweep", "ColoredMNIST", "ERM", 0.60, 0.02)
        write_algorithm(tmp / "sweep", "ColoredMNIST", "Mixup", 0.50, 0.04)
    return ["--input_dir", str(tmp / "sweep")]


def user_files(folder):
    folder.mkdir(parents=True, exist_ok=True)
    for name in USER_FILES:
        (folder / name).write_text(f"my own {name}\n")
    return [str(folder / name) for name in USER_FILES]


def earlier_run(tmp, *argv):
    """What an earlier run of the tool wrote (plots included)."""
    from lpa_domainbed.tools import tables

    assert tables.main([*sweep(tmp), "--name", "t", "--out_root", str(tmp / "results"),
                        *argv]) == 0


# Each prepare(tmp) returns (argv, files that must survive unchanged).
def rerun_into_results(tmp):
    earlier_run(tmp)
    return [*sweep(tmp), "--name", "t", "--no-plots"], user_files(tmp / "results" / "t")


def rerun_into_users_folder(tmp):
    earlier_run(tmp, "--out_dir", str(tmp / "mine"))
    kept = user_files(tmp / "mine") + [str(tmp / "mine" / "oracle_notes.md")]
    (tmp / "mine" / "oracle_notes.md").write_text("mine\n")
    return [*sweep(tmp), "--name", "t", "--out_dir", str(tmp / "mine"), "--no-plots"], kept


def out_dir_dot(tmp):
    kept = user_files(tmp / "here")
    os.chdir(tmp / "here")
    return [*sweep(tmp), "--name", "t", "--out_dir", "."], kept


def out_dir_dot_twice(tmp):
    argv, kept = out_dir_dot(tmp)
    earlier_run(tmp, "--out_dir", ".")
    return argv + ["--no-plots"], kept


def symlinked_name(tmp):
    (tmp / "elsewhere").mkdir()
    (tmp / "results").mkdir()
    (tmp / "results" / "t").symlink_to(tmp / "elsewhere", target_is_directory=True)
    return [*sweep(tmp), "--name", "t", "--no-plots"], user_files(tmp / "elsewhere")


def dangling_link(tmp):
    (tmp / "results").mkdir()
    (tmp / "results" / "t").symlink_to(tmp / "gone", target_is_directory=True)
    return [*sweep(tmp), "--name", "t"], []


def directory_in_the_way(tmp):
    kept = user_files(tmp / "results" / "t")
    (tmp / "results" / "t" / "oracle.md").mkdir()
    (tmp / "results" / "t" / "oracle.md" / "keep.txt").write_text("keep\n")
    return [*sweep(tmp), "--name", "t"], kept + [str(tmp / "results" / "t" / "oracle.md" /
                                                       "keep.txt")]


def lock_held(tmp):
    """Another writer holds the output directory (lock wait shortened for the test)."""
    kept = user_files(tmp / "results" / "t")
    fd = os.open(tmp / "results" / "t", os.O_RDONLY)
    fcntl.flock(fd, fcntl.LOCK_EX)
    HELD.append(fd)
    return [*sweep(tmp), "--name", "t"], kept


def reference(content):
    def prepare(tmp):
        path = tmp / "ref.csv"
        if content is not None:
            path.write_bytes(content)
        return [*sweep(tmp), "--name", "t", "--reference_csv", str(path)], []
    return prepare


def input_twice(tmp):
    argv = sweep(tmp)
    return [*argv, str(tmp / "sweep" / ".." / "sweep"), "--name", "t", "--no-plots"], []


def pair(spec):
    return lambda tmp: ([*sweep(tmp), "--name", "t", "--no-plots", "--pair", spec], [])


NEEDS = "source, model_selection, algorithm"
def markdown_says(text, name="training_domain_validation.md"):
    return lambda tmp: text in (tmp / "results" / "t" / name).read_text()


def snapshot(folder):
    """Every file under ``folder`` (links not followed) and its bytes."""
    files = {}
    for root, _, names in os.walk(folder):
        for name in names:
            path = os.path.join(root, name)
            files[path] = None if os.path.islink(path) else open(path, "rb").read()
    return files


def written_through(tmp):
    return (tmp / "results" / "t").is_symlink() and (tmp / "elsewhere" / "oracle.md").is_file()


ROWS = [  # (id, prepare, exit status, fragment of stdout + stderr, check(tmp) afterwards)
    ("rerun keeps the user's paired_* files", rerun_into_results, 0, "wrote 16 files", None),
    ("rerun into a user's folder", rerun_into_users_folder, 0, "wrote 16 files", None),
    ("--out_dir .", out_dir_dot, 0, "wrote 19 files to .", None),
    ("--out_dir . twice", out_dir_dot_twice, 0, "wrote 16 files to .", None),
    ("results/NAME a symlink: written through", symlinked_name, 0, "wrote 16 files",
     written_through),
    ("results/NAME a dangling symlink", dangling_link, 2, "is a symbolic link to", None),
    ("a directory where a file goes", directory_in_the_way, 2, "is a directory, where", None),
    ("another writer holds the lock", lock_held, 2, "another writer still holds", None),
    ("--reference_csv binary", reference(b"\x89PNG\r\n\x1a\n\x00\xff\xfe\x00"), 2,
     "is not a UTF-8 CSV file", None),
    ("--reference_csv wrong columns", reference(b"a,b\n1,2\n"), 2,
     "lacks the column(s) source, model_selection, algorithm (it has: a, b)", None),
    ("--reference_csv missing", reference(None), 2, "does not exist", None),
    ("same --input_dir twice", input_twice, 0, "wrote 16 files",
     markdown_says("48 records from 12 jobs")),
    ("--pair of an unknown algorithm", pair("Nope:ERM"), 2, "'Nope' has no runs", None),
    ("--pair not A:B", pair("Mixup"), 2, "write ALGORITHM:BASELINE", None),
    # third round
    *[(f"the user's {name} in --out_dir ., second run", bad.users_table_file(name), 2,
       f"{name}: not written by an earlier run of this tool", bad.users_file_intact(name))
      for name in ("oracle.md", "paired_oracle.md", "selected_oracle.csv")],
    ("a stale <hash>_old copy: counted once", bad.stale_copy, 0,
     "1 duplicate job directory (the same records as another, counted once)",
     bad.copy_counted_once),
    ("one job in two --input_dir, different records", bad.other_run_in_second_input_dir, 2,
     "is in 2 job directories with different records", None),
    ("NaN validation accuracy", bad.nan_where("ColoredMNIST_ERM_0_0", "env1_out_acc", True), 0,
     "skipped 1 record (non-finite accuracy: 1)",
     bad.cell_says("ERM", "+90%", "1 record skipped: non-finite accuracy")),
    ("NaN held-out accuracy drops a trial", bad.nan_where("ColoredMNIST_ERM_0_1", "env0_in_acc",
                                                          False), 0,
     "4 records skipped: non-finite accuracy",
     bad.cell_says("ERM", "+90%", "incomplete (1/2 trials), 4 records skipped")),
    ("records without env2_out_acc", bad.without_out_acc, 0,
     "lacks env2_out_acc (ColoredMNIST has 3 domains)",
     bad.cell_says("Mixup", "+80%", "4 records skipped: lacks env2_out_acc")),
    ("test_envs [9]", bad.extra_job("ColoredMNIST", 9), 0,
     "test_envs [9] outside ColoredMNIST's 3 domains (0 to 2)", None),
    ("a ../ dataset name", bad.extra_job("../x", 0), 0, "dataset '../x' is not a plain name",
     None),
    ("every record unusable", bad.only_unusable_records, 2,
     "no usable records in", None),
    ("--pair given twice", bad.pair_twice, 0, "--pair Mixup:ERM given more than once: compared "
     "once", bad.pair_row_once),
    ("--baseline typo", bad.baseline_typo, 2,
     "--baseline 'EMR' has no runs in this sweep; pass one of: ERM, Mixup", None),
    ("incomplete sweep: Avg and Averages agree", bad.one_trial_lacks_domains, 0,
     "trials with every domain", bad.both_tables_agree),
    ("an algorithm whose jobs all fail", bad.broken_algorithm, 0,
     "ValueError: Broken cannot train",
     bad.cell_says("Broken", "+90%", "no results: 6 jobs failed")),
]


@pytest.mark.parametrize("prepare, status, fragment, check",
                         [pytest.param(*row[1:], id=row[0]) for row in ROWS])
def test_tables_bad_inputs(tmp_path, monkeypatch, capsys, prepare, status, fragment, check):
    from lpa_domainbed.tools import safe_output, tables

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(safe_output, "LOCK_WAIT_S", 0.3, raising=False)
    argv, kept = prepare(tmp_path)
    before = {path: open(path, "rb").read() for path in kept}
    everything = snapshot(tmp_path)
    capsys.readouterr()
    try:
        code = tables.main([*argv, "--out_root", str(tmp_path / "results")])
    except SystemExit as exit_:  # argparse
        code = exit_.code
    finally:
        while HELD:
            os.close(HELD.pop())
    out = "".join(capsys.readouterr())
    assert code == status and fragment in out, out
    if "reference_csv" in argv:
        assert argv[argv.index("--reference_csv") + 1] in out and NEEDS in out
    if status:
        assert "Traceback" not in out and snapshot(tmp_path) == everything
    for path, content in before.items():
        assert open(path, "rb").read() == content, path
    left = [p for p in tmp_path.rglob(".*") if ".old." in p.name or ".tables.new." in p.name]
    assert not left
    assert check is None or check(tmp_path)


def test_only_manifest_files_are_removed(tmp_path):
    """A file of the earlier run that is not written again goes; the user's files stay."""
    earlier_run(tmp_path)
    out = tmp_path / "results" / "t"
    assert (out / "ColoredMNIST_training_domain_validation.png").is_file()
    kept = user_files(out)
    earlier_run(tmp_path, "--no-plots")
    assert not list(out.glob("*.png")) and all(os.path.exists(p) for p in kept)
    assert (out / "oracle.md").is_file()


def test_a_failed_write_leaves_no_temporary_folder(tmp_path, monkeypatch, capsys):
    """A write that fails half-way (disk full, say) leaves whole files and nothing else."""
    from lpa_domainbed.tools import safe_output, tables

    monkeypatch.chdir(tmp_path)
    real = os.replace

    def disk_full(src, dst):
        if str(dst).endswith("oracle.md"):
            raise OSError(28, "No space left on device")
        return real(src, dst)

    monkeypatch.setattr(safe_output.os, "replace", disk_full)
    code = tables.main([*sweep(tmp_path), "--name", "t", "--out_root", str(tmp_path / "r")])
    err = capsys.readouterr().err
    assert code == 2 and "No space left on device" in err and "rerun to finish" in err
    assert not [p for p in (tmp_path / "r").rglob(".tables.new.*")]
    monkeypatch.setattr(safe_output.os, "replace", real)
    assert tables.main([*sweep(tmp_path), "--name", "t", "--out_root", str(tmp_path / "r")]) == 0


def test_domainbed_not_importable_says_how_to_make_it(tmp_path):
    """Both entry points, in an interpreter where DomainBed cannot be imported."""
    hide = "import sys; sys.modules['domainbed'] = None; "
    for call in ("from lpa_domainbed.tools import cli; sys.exit(cli.main(['tables', "
                 "'--input_dir', 'x', '--name', 't']))",
                 "import runpy; sys.argv = ['tables', '--input_dir', 'x', '--name', 't']; "
                 "runpy.run_module('lpa_domainbed.tools.tables', run_name='__main__')"):
        run = subprocess.run([sys.executable, "-c", hide + call], cwd=tmp_path, text=True,
                             capture_output=True, env={**os.environ, "PYTHONPATH": str(REPO)})
        assert run.returncode == 2, run.stderr
        assert "DomainBed is not importable" in run.stderr and "Traceback" not in run.stderr
        for advice in ("make setup", "DOMAINBED_DIR", ".pth"):
            assert advice in run.stderr
        assert list(tmp_path.iterdir()) == []
