"""Tests for lpa_domainbed.tools.paired: differences vs a baseline, paired by DomainBed trial seed."""

import math

import numpy as np
import pandas as pd
import pytest

pytest.importorskip("domainbed", reason="DomainBed checkout not importable; run make setup")

from scipy import stats  # noqa: E402
from test_tables import write_job  # noqa: E402  (DomainBed records with a known selection)

from lpa_domainbed.tools import paired, tables  # noqa: E402
from lpa_domainbed.tools.tables_frame import results_frame  # noqa: E402

DATASET = "TwoDomains"  # not a DomainBed dataset: its 2 domains are named '0' and '1'
TDV = "training_domain_validation"
# Selected (training-domain validation) accuracy per (algorithm, held-out domain): trial -> acc
ACCS = {
    ("ERM", 0): {0: 0.60, 1: 0.62, 2: 0.61},
    ("ERM", 1): {0: 0.70, 1: 0.71, 2: 0.75},
    ("Better", 0): {0: 0.63, 1: 0.66, 2: 0.62},  # differences 3, 4, 1 points
    ("Better", 1): {0: 0.75, 1: 0.76, 2: 0.79},  # differences 5, 5, 4 points
    ("Partial", 0): {0: 0.50, 1: 0.60},  # trial 2 missing: only the baseline has it
    ("Partial", 1): {0: 0.80, 1: 0.70, 2: 0.70, 3: 0.90},  # trial 3: no baseline run
    ("Single", 0): {1: 0.65},
    ("Single", 1): {1: 0.68},
}


def write_sweep(root, accs=ACCS):
    """One DomainBed job per (algorithm, held-out domain, trial); the oracle picks acc + 0.05."""
    for (algorithm, env), by_trial in accs.items():
        for trial, acc in by_trial.items():
            write_job(root, f"{algorithm}_{env}_{trial}", DATASET, algorithm, env, trial, acc,
                      acc + 0.05, n_envs=2)
    return root


def hand_interval(diffs):
    """Mean and 95% t interval of differences, by hand (only the t quantile from scipy)."""
    n = len(diffs)
    mean = sum(diffs) / n
    sd = math.sqrt(sum((d - mean) ** 2 for d in diffs) / (n - 1))
    half = stats.t.ppf(0.975, n - 1) * sd / math.sqrt(n)
    return mean, mean - half, mean + half


@pytest.fixture
def rows(tmp_path):
    records, _ = tables.load_records(write_sweep(tmp_path / "sweep"))
    return paired.compute_paired(results_frame(records, (TDV, "oracle")))


def one(rows, algorithm, test_env, selection=TDV):
    match = rows[(rows.selection == selection) & (rows.algorithm == algorithm)
                 & (rows.test_env == test_env)]
    assert len(match) == 1
    return match.iloc[0]


def assert_comparison(row, diffs):
    mean, low, high = hand_interval(diffs)
    assert row["n_pairs"] == len(diffs)
    assert row["mean_diff"] == pytest.approx(mean)
    assert (row["ci_low"], row["ci_high"]) == (pytest.approx(low), pytest.approx(high))
    assert row["excludes_zero"] == (low > 0 or high < 0)


def test_known_differences(rows):
    for selection in (TDV, "oracle"):  # the oracle's picks are all +5 points: same differences
        assert_comparison(one(rows, "Better", "0", selection), [3, 4, 1])
        assert_comparison(one(rows, "Better", "1", selection), [5, 5, 4])
        assert_comparison(one(rows, "Better", "Avg", selection), [4, 4.5, 2.5])
    assert not one(rows, "Better", "0")["excludes_zero"]  # 2.7 [-1.1, 6.5]
    assert one(rows, "Better", "1")["excludes_zero"]  # 4.7 [3.2, 6.1]
    assert one(rows, "Better", "Avg")["note"] == ""
    assert set(rows.baseline) == {"ERM"} and "ERM" not in set(rows.algorithm)
    cell = paired.format_paired_cell(one(rows, "Better", "1"))
    assert cell == "+4.7 [+3.2, +6.1] * (3)"


def test_incomplete_pairs_are_said(rows):
    env0, env1, average = (one(rows, "Partial", e) for e in ("0", "1", "Avg"))
    assert_comparison(env0, [-10, -2])
    assert env0["note"] == "trial 2 only in the baseline"
    assert_comparison(env1, [10, -1, -5])
    assert env1["note"] == "trial 3 only in the algorithm"
    # Avg: only trials with every domain (Partial: 0, 1); per trial mean over the 2 domains
    assert_comparison(average, [0, -1.5])
    assert average["note"] == ("Partial trials 2, 3 without every domain (not in Avg); "
                               "trial 2 only in the baseline")


def test_fewer_than_two_pairs_has_no_interval(rows):
    for test_env, diff in (("0", 3), ("1", -3), ("Avg", 0)):
        row = one(rows, "Single", test_env)
        assert row["n_pairs"] == 1 and row["mean_diff"] == pytest.approx(diff)
        assert math.isnan(row["ci_low"]) and math.isnan(row["ci_high"])
        assert not row["excludes_zero"] and "no interval" in row["note"]
        assert paired.format_paired_cell(row).endswith("(1 pair, no interval)")
    assert paired.paired_difference({}, {0: 0.5})[:2] == (0, pytest.approx(math.nan,
                                                                              nan_ok=True))


def test_identical_differences_give_a_zero_width_interval():
    n, mean, low, high, note = paired.paired_difference({0: 0.6, 1: 0.7}, {0: 0.5, 1: 0.6})
    assert (n, low, high, note) == (2, pytest.approx(mean), pytest.approx(mean),
                                    "identical differences")
    assert mean == pytest.approx(10)


def test_make_tables_writes_paired_files(tmp_path, capsys):
    sweep = write_sweep(tmp_path / "sweep")
    result = tables.make_tables([sweep], "pair", out_root=tmp_path / "results")
    out_dir = tmp_path / "results" / "pair"
    for selection in (TDV, "oracle"):
        for suffix in (".md", ".csv", ".tex"):
            assert (out_dir / f"paired_{selection}{suffix}") in result.files
        png = out_dir / f"paired_{selection}_{DATASET}.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png in result.files
    assert not list(out_dir.glob("paired_leave_one_out*"))  # no 2-test-domain runs
    csv = pd.read_csv(out_dir / f"paired_{TDV}.csv")
    assert list(csv.columns) == ["selection", "dataset", "test_env", "algorithm", "baseline",
                                 "n_pairs", "mean_diff", "ci_low", "ci_high"]
    assert len(csv) == 3 * 3  # Better, Partial, Single x domains 0, 1, Avg
    better = csv[(csv.algorithm == "Better") & (csv.test_env.astype(str) == "Avg")].iloc[0]
    assert better.mean_diff == pytest.approx(hand_interval([4, 4.5, 2.5])[0])
    single = csv[csv.algorithm == "Single"]
    assert single.ci_low.isna().all() and (single.n_pairs == 1).all()
    markdown = (out_dir / f"paired_{TDV}.md").read_text()
    assert "+4.7 [+3.2, +6.1] * (3)" in markdown
    assert "- Partial, 0: trial 2 only in the baseline" in markdown
    assert r"\toprule" in (out_dir / f"paired_{TDV}.tex").read_text()
    printed = capsys.readouterr().out
    assert printed.index("paired differences vs ERM") > printed.index("# pair: model selection")


def test_baseline_flag(tmp_path, capsys):
    sweep = write_sweep(tmp_path / "sweep")
    out_root = tmp_path / "results"
    assert tables.main(["--input_dir", str(sweep), "--name", "b", "--out_root", str(out_root),
                        "--no-plots", "--baseline", "Better"]) == 0
    csv = pd.read_csv(out_root / "b" / f"paired_{TDV}.csv")
    assert set(csv.baseline) == {"Better"} and set(csv.algorithm) == {"ERM", "Partial", "Single"}
    erm = csv[(csv.algorithm == "ERM") & (csv.test_env.astype(str) == "1")].iloc[0]
    assert erm.mean_diff == pytest.approx(-hand_interval([5, 5, 4])[0])
    assert not list((out_root / "b").glob("*.png"))


def test_a_named_baseline_without_runs_is_an_error(tmp_path, capsys):
    """A --baseline typo stops the run, naming the choices; nothing is written or removed."""
    sweep = write_sweep(tmp_path / "sweep")
    out_root = tmp_path / "results"
    assert tables.main(["--input_dir", str(sweep), "--name", "m", "--out_root", str(out_root),
                        "--no-plots", "--baseline", "Nope"]) == 2
    err = capsys.readouterr().err
    assert "--baseline 'Nope' has no runs in this sweep; pass one of: ERM, Better" in err
    assert not (out_root / "m").exists()


def test_without_erm_the_default_baseline_is_a_message(tmp_path, capsys):
    sweep = write_sweep(tmp_path / "sweep", {k: v for k, v in ACCS.items() if k[0] != "ERM"})
    out_root = tmp_path / "results"
    assert tables.main(["--input_dir", str(sweep), "--name", "m", "--out_root", str(out_root),
                        "--no-plots"]) == 0
    assert (out_root / "m" / f"{TDV}.md").is_file()  # the usual tables are still written
    assert not list((out_root / "m").glob("paired*"))
    printed = capsys.readouterr().out
    assert "baseline 'ERM' has no runs in this sweep" in printed
    assert "Better" in printed and "--baseline" in printed


def test_baseline_alone_writes_no_paired_files(tmp_path, capsys):
    sweep = write_sweep(tmp_path / "sweep", {k: v for k, v in ACCS.items() if k[0] == "ERM"})
    result = tables.make_tables([sweep], "alone", out_root=tmp_path / "results", plots=False)
    assert result.paired is None
    assert not list((tmp_path / "results" / "alone").glob("paired*"))
    assert "ERM is the only algorithm" in capsys.readouterr().out


def test_forest_plot_skips_datasets_without_pairs():
    rows = pd.DataFrame([dict(test_env="Avg", algorithm="A", label="A", n_pairs=0,
                              mean_diff=np.nan, ci_low=np.nan, ci_high=np.nan,
                              excludes_zero=False)])
    from lpa_domainbed.tools.paired_plot import plot_forest

    assert plot_forest(rows, "x") is None
    rows.loc[0, ["n_pairs", "mean_diff"]] = 1, 0.5  # one pair: a hollow marker, a PNG
    assert plot_forest(rows, "x")[:8] == b"\x89PNG\r\n\x1a\n"


def test_forest_plot_with_a_held_out_domain_without_pairs():
    """A partial sweep: pairs on one held-out domain, none yet on another (its panel says so)."""
    rows = pd.DataFrame([dict(test_env=env, algorithm="A", label="A", n_pairs=n,
                              mean_diff=diff, ci_low=np.nan, ci_high=np.nan,
                              excludes_zero=False)
                         for env, n, diff in (("0", 1, 0.5), ("1", 0, np.nan))])
    from lpa_domainbed.tools.paired_plot import plot_forest

    assert plot_forest(rows, "x")[:8] == b"\x89PNG\r\n\x1a\n"


def test_pair_compares_two_variants_besides_the_baseline(tmp_path, capsys):
    """--pair A:B adds 'A - B' rows, paired by trial like the baseline's; the rest stays."""
    sweep = write_sweep(tmp_path / "sweep")
    out_root = tmp_path / "results"
    argv = ["--input_dir", str(sweep), "--out_root", str(out_root), "--no-plots"]
    assert tables.main([*argv, "--name", "plain"]) == 0
    assert tables.main([*argv, "--name", "p", "--pair", "Better:Partial", "--pair",
                        "Single:Better"]) == 0
    csv = pd.read_csv(out_root / "p" / f"paired_{TDV}.csv")
    plain = pd.read_csv(out_root / "plain" / f"paired_{TDV}.csv")
    pd.testing.assert_frame_equal(csv.iloc[:len(plain)], plain)  # the baseline rows as before
    extra = csv.iloc[len(plain):]
    assert list(zip(extra.algorithm, extra.baseline)) == [("Better", "Partial")] * 3 + [
        ("Single", "Better")] * 3
    env0 = extra[(extra.baseline == "Partial") & (extra.test_env.astype(str) == "0")].iloc[0]
    assert env0.mean_diff == pytest.approx(hand_interval([13, 6])[0])  # trials 0, 1
    assert env0.ci_low == pytest.approx(hand_interval([13, 6])[1])
    markdown = (out_root / "p" / f"paired_{TDV}.md").read_text()
    assert "| Better - Partial |" in markdown and "Rows 'A - B' (--pair A:B)" in markdown
    assert "- Better - Partial, 0: trial 2 only in the algorithm" in markdown
    assert "Rows 'A - B'" not in (out_root / "plain" / f"paired_{TDV}.md").read_text()
