"""Tests for lpa_domainbed.tools.figures: plots and CSVs from fabricated tables, the run cache, the
layer list, the LPA+Dropout combination, and one tiny end-to-end figure on RotatedDigits (the
trainer against DomainBed's train script: test_figures_trainer.py)."""

from __future__ import annotations

import itertools

import pytest

pytest.importorskip("domainbed", reason="DomainBed checkout not importable; run make setup")

import pandas as pd  # noqa: E402
import torch  # noqa: E402

from lpa_domainbed.tools import figures  # noqa: E402

TRIALS, TEST_ENVS = (0, 1), (0, 3)


# ----------------------------------------------------------------------------- fabricated inputs
def fabricated_fig1(algorithms=figures.FIG1_ALGORITHMS, classes=3):
    """rel = 0.1 * (algorithm index + 1) + 0.01 * class, identical over runs."""
    rows = []
    for (i, name), env, trial, cls in itertools.product(
            enumerate(algorithms), TEST_ENVS, TRIALS, range(classes)):
        rows.append({"algorithm": name, "layer": "featurizer.hiddens.0", "test_env": env,
                     "trial": trial, "class": cls, "rel": 0.1 * (i + 1) + 0.01 * cls})
    return pd.DataFrame(rows)


def accuracy_rows(labels: dict, base: float):
    """Runs of one setting: acc = base + env + trial (so per-trial means are base+1.5+trial)."""
    return [{**labels, "test_env": env, "trial": trial, "acc": base + env + trial, "step": 99}
            for env, trial in itertools.product(TEST_ENVS, TRIALS)]


def fabricated_fig4a(with_erm=True):
    layers = ["featurizer.input", "featurizer.hiddens.0", "featurizer.output = features",
              "logits"]
    rows = accuracy_rows({"algorithm": "ERM", "layer": "", "layer_index": -1,
                          "is_default": False}, 70) if with_erm else []
    for index, layer in enumerate(layers):
        rows += accuracy_rows({"algorithm": "LPA", "layer": layer, "layer_index": index,
                               "is_default": index == 1}, 71 + index)
    return pd.DataFrame(rows)


def fabricated_fig7(params=tuple(figures.FIG7_GRIDS)):
    rows = accuracy_rows({"algorithm": "ERM", "param": "", "value": float("nan"),
                          "is_default": False}, 70)
    for param in params:
        for value in figures.FIG7_GRIDS[param]:
            rows += accuracy_rows({"algorithm": "LPA", "param": param, "value": value,
                                   "is_default": value == 0.1}, 70 + 10 * value)
    return pd.DataFrame(rows)


def fabricated_fig3a(methods=tuple(figures.FIG3A_METHODS)):
    rows = []
    for i, method in enumerate(methods):
        rows += accuracy_rows({"method": method, "algorithm": figures.FIG3A_METHODS[method]},
                              70 + i)
    return pd.DataFrame(rows)


def assert_written(output, columns, n_rows):
    assert output.png.exists() and output.png.stat().st_size > 5000, "PNG missing or empty"
    assert output.png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    table = pd.read_csv(output.csv)
    assert list(table.columns) == columns
    assert len(table) == n_rows
    return table


# ----------------------------------------------------------------------------- plots and CSVs
def test_fig1_one_row_per_algorithm_and_class(tmp_path):
    output = figures.plot_fig1(fabricated_fig1(), tmp_path, "fabricated")
    table = assert_written(output, ["algorithm", "layer", "class", "mean", "se", "n_trials",
                                    "n_test_envs"], 4 * 3)
    row = table[(table.algorithm == "ADA") & (table["class"] == 2)].iloc[0]
    assert row["mean"] == pytest.approx(0.32) and row["se"] == pytest.approx(0)
    assert set(table.n_trials) == {2} and set(table.n_test_envs) == {2}
    assert output.notes == []


def test_fig1_missing_algorithm_is_left_out_and_noted(tmp_path):
    output = figures.plot_fig1(fabricated_fig1(("LPA", "Dropout")), tmp_path)
    table = assert_written(output, ["algorithm", "layer", "class", "mean", "se", "n_trials",
                                    "n_test_envs"], 2 * 3)
    assert set(table.algorithm) == {"LPA", "Dropout"}
    assert any("ADA" in n and "ManifoldMixup" in n for n in output.notes)


def test_fig1_without_any_input_still_writes_a_figure(tmp_path):
    output = figures.plot_fig1(pd.DataFrame(), tmp_path)
    assert output.png.exists() and pd.read_csv(output.csv).empty
    assert output.notes


def test_fig4a_layers_in_order_and_erm_reference(tmp_path):
    output = figures.plot_fig4a(fabricated_fig4a(), tmp_path, "fabricated")
    table = assert_written(output, ["algorithm", "layer", "layer_index", "mean", "se",
                                    "n_trials", "n_test_envs"], 5)
    lpa = table[table.algorithm == "LPA"].sort_values("layer_index")
    assert list(lpa.layer)[-1] == "logits"
    # per-trial means over the two held-out domains: base + 1.5 + trial -> mean base + 2
    assert list(lpa["mean"]) == pytest.approx([73, 74, 75, 76])
    assert list(lpa["se"]) == pytest.approx([0.5 / 2 ** 0.5] * 4)  # DomainBed's formula
    assert table[table.algorithm == "ERM"]["mean"].iloc[0] == pytest.approx(72)


def test_fig4a_without_erm_plots_lpa_and_says_so(tmp_path):
    output = figures.plot_fig4a(fabricated_fig4a(with_erm=False), tmp_path)
    assert_written(output, ["algorithm", "layer", "layer_index", "mean", "se", "n_trials",
                            "n_test_envs"], 4)
    assert any("ERM" in n for n in output.notes)


def test_fig7_one_row_per_param_value_plus_erm(tmp_path):
    output = figures.plot_fig7(fabricated_fig7(), tmp_path, "fabricated")
    n_values = sum(len(g) for g in figures.FIG7_GRIDS.values())
    table = assert_written(output, ["algorithm", "param", "value", "mean", "se", "n_trials",
                                    "n_test_envs"], n_values + 1)
    assert set(table.param.dropna()) == set(figures.FIG7_GRIDS)
    assert table[table.algorithm == "ERM"]["value"].isna().all()


def test_fig7_missing_panel_is_noted(tmp_path):
    output = figures.plot_fig7(fabricated_fig7(("lpa_eps",)), tmp_path)
    assert output.png.exists()
    assert any("lpa_beta" in n for n in output.notes)
    assert any("lpa_lowrank" in n for n in output.notes)


def test_fig3a_bars_in_method_order(tmp_path):
    output = figures.plot_fig3a(fabricated_fig3a(), tmp_path, "fabricated")
    table = assert_written(output, ["method", "mean", "se", "n_trials", "n_test_envs"],
                           len(figures.FIG3A_METHODS))
    assert list(table.method) == list(figures.FIG3A_METHODS)


def test_fig3a_missing_combination_is_left_out_and_noted(tmp_path):
    output = figures.plot_fig3a(fabricated_fig3a(("ERM", "LPA", "LPL")), tmp_path)
    table = assert_written(output, ["method", "mean", "se", "n_trials", "n_test_envs"], 3)
    assert list(table.method) == ["ERM", "LPA", "LPL"]
    assert any("LPA+Dropout" in n and "LPA+LPL" in n for n in output.notes)


def test_summarize_one_trial_has_zero_standard_error():
    table = pd.DataFrame({"algorithm": ["A", "A"], "test_env": [0, 1], "trial": [0, 0],
                          "acc": [70.0, 80.0]})
    row = figures.summarize(table, ["algorithm"]).iloc[0]
    assert (row["mean"], row["se"], row["n_trials"], row["n_test_envs"]) == (75, 0, 1, 2)


# ----------------------------------------------------------------------------- plan, cache
def test_mlp_layers_end_with_logits_and_merge_identical_cuts():
    settings = figures.Settings(test_envs=(0,))
    layers, default = figures.perturbation_layers(settings)
    labels = [label for _, label in layers]
    assert labels == ["featurizer.input", "featurizer.hiddens.0",
                      "featurizer.output = features", "logits"]
    assert default == "featurizer.hiddens.0"


def test_plan_shares_runs_between_figures():
    settings = figures.Settings(trials=1, test_envs=(0,))
    layers = [("featurizer.input", "featurizer.input"),
              ("featurizer.hiddens.0", "featurizer.hiddens.0"), ("logits", "logits")]
    plan = figures.plan_figures(figures.FIGURES, settings, layers, "featurizer.hiddens.0")
    specs = figures.unique_specs(plan)
    lpa_default = figures.RunSpec.make("LPA", 0, 0)
    assert all(lpa_default in {s for s, _ in rows} for rows in plan.values())
    assert figures.RunSpec.make("LPL", 0, 0) in specs  # Figure 4a's logits point is LPL
    assert len(specs) == len(set(specs))


def fake_record(acc):
    return {"checkpoints": [], "selected": {"step": 4, "val_acc": 0.5, "test_acc": acc,
                                            "probe": None}, "train_seconds": 0.0}


def test_cache_is_reused_and_keyed_by_hparams(tmp_path):
    settings = figures.Settings(steps=5, trials=1, test_envs=(0,))
    cache = figures.RunCache(tmp_path)
    specs = [figures.RunSpec.make("ERM", 0, 0), figures.RunSpec.make("LPA", 0, 0, lpa_eps=0.2)]
    calls = []
    first = figures.run_all(specs, settings, cache,
                            trainer=lambda s, _: calls.append(s) or fake_record(0.5),
                            log=lambda *a, **k: None)
    assert calls == specs

    def must_not_train(spec, _):
        raise AssertionError(f"trained {spec} although it is cached")

    second = figures.run_all(specs, settings, cache, trainer=must_not_train,
                             log=lambda *a, **k: None)
    assert second == first
    other = figures.RunSpec.make("LPA", 0, 0, lpa_eps=0.3)  # another hparam value: new run
    figures.run_all([other], settings, cache, trainer=lambda s, _: calls.append(s) or
                    fake_record(0.6), log=lambda *a, **k: None)
    assert calls[-1] == other
    longer = figures.Settings(steps=6, trials=1, test_envs=(0,))  # other steps: new run
    figures.run_all(specs[:1], longer, cache, trainer=lambda s, _: calls.append(s) or
                    fake_record(0.6), log=lambda *a, **k: None)
    assert len(calls) == 4


# ----------------------------------------------------------------------------- LPA + Dropout
def test_lpa_dropout_perturbs_more_than_lpa_and_trains():
    from domainbed import algorithms, hparams_registry

    hparams = hparams_registry.default_hparams("LPA", "RotatedDigits")
    torch.manual_seed(0)
    combined = figures.algorithm_class("LPA_Dropout")((64,), 4, 2, hparams)
    torch.manual_seed(0)
    lpa = algorithms.get_algorithm_class("LPA")((64,), 4, 2, hparams)
    assert combined.hparams["dropout_p"] == 0.1 and combined.cuts[0].name == lpa.cuts[0].name
    x, y = torch.randn(16, 64), torch.arange(16) % 4
    rel_combined = torch.nanmean(next(iter(combined.probe(x, y).rel_perturbation.values())))
    rel_lpa = torch.nanmean(next(iter(lpa.probe(x, y).rel_perturbation.values())))
    assert rel_combined > rel_lpa > 0
    out = combined.update([(x[:8], y[:8]), (x[8:], y[8:])])
    assert torch.isfinite(torch.tensor(out["loss"]))
    with pytest.raises(ValueError, match="dropout_p"):
        figures.algorithm_class("LPA_Dropout")((64,), 4, 2, {**hparams, "dropout_p": 1.5})


# ----------------------------------------------------------------------------- end to end
@pytest.fixture(scope="module")
def tiny_fig1(tmp_path_factory):
    """``main --only fig1`` with 5 steps, 1 trial, held-out domain 0 on RotatedDigits."""
    out = tmp_path_factory.mktemp("figures")
    threads = torch.get_num_threads()
    args = ["--only", "fig1", "--steps", "5", "--trials", "1", "--test_env", "0",
            "--out", str(out)]
    try:
        assert figures.main(args) == 0
    finally:
        torch.set_num_threads(threads)  # main sets it for the process; keep other tests' own
    return out, args


def test_tiny_fig1_end_to_end(tiny_fig1):
    out, _ = tiny_fig1
    table = pd.read_csv(out / "fig1_activation_variation.csv")
    # Figure 1's bar groups: the four algorithms and LPA (mean_accuracy + varied)
    assert set(table.algorithm) == set(figures.FIG1_ALGORITHMS) | set(figures.FIG1_VARIANTS)
    assert len(table) == 5 * 10 and table["mean"].notna().all() and (table["mean"] > 0).all()
    assert set(table.layer) == {"featurizer.hiddens.0"}
    assert (out / "fig1_activation_variation.png").stat().st_size > 5000
    assert len(list((out / "cache").glob("*.json"))) == 5
    assert "fig1: LPA" in (out / "summary.md").read_text()


def test_tiny_fig1_second_call_uses_the_cache(tiny_fig1, monkeypatch):
    out, args = tiny_fig1
    before = (out / "fig1_activation_variation.csv").read_text()

    def must_not_train(spec, settings):
        raise AssertionError(f"trained {spec.describe()} although it is cached")

    monkeypatch.setattr(figures, "train_run", must_not_train)
    threads = torch.get_num_threads()
    try:
        assert figures.main(args) == 0
    finally:
        torch.set_num_threads(threads)
    assert (out / "fig1_activation_variation.csv").read_text() == before
