"""The benchmark's core on a tiny configuration: records, targets and reports (no timings
are asserted, only that every figure is there and is a positive finite number)."""

from __future__ import annotations

import dataclasses
import json
import math

import pytest

from conftest import requires_domainbed

pytestmark = requires_domainbed
torch = pytest.importorskip("torch")


def positive_finite(value) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value) and value > 0


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    from lpa_domainbed.tools import bench

    out = tmp_path_factory.mktemp("bench")
    net = dataclasses.replace(bench.MNIST_CNN, per_domain=2)
    settings = bench.Settings(warmup=1, rounds=1, mem_reps=1, clock="cpu", threads=1)
    timing = out / "timing.json"
    timing.write_text(json.dumps({"sweep_wall_time_s": 41.0, "total_wall_time_s": 43.0,
                                  "jobs": 36, "jobs_run": 36, "commit": "abc1234",
                                  "domainbed_commit": "def5678", "machine": "a test box"}))
    threads = torch.get_num_threads()
    records = bench.run([net], settings, "cpu", out=out, log=None, demo_timing=timing)
    assert torch.get_num_threads() == threads  # restored
    return records, out


def test_every_variant_has_a_complete_record(tiny_run):
    from lpa_domainbed.tools import bench

    records, out = tiny_run
    saved = json.loads((out / "latest.json").read_text())
    assert saved == json.loads(json.dumps(records))
    rows = [r for r in saved if r["kind"] == "benchmark"]
    assert [(r["algorithm"], r["mode"]) for r in rows] == \
        [(v.algorithm, v.mode) for v in bench.variants()]
    for r in rows:
        for field in ("network", "algorithm", "mode", "ratio_vs_erm", "floor_ratio",
                      "peak_mem_ratio", "time_ms", "machine"):
            assert field in r, (field, r["algorithm"])
        assert r["network"] == "MNIST_CNN" and r["network_built"] == "DomainBed's MNIST_CNN"
        for field in ("time_ms", "ratio_vs_erm", "peak_mem_ratio", "transient_mem_ratio",
                      "peak_bytes", "wall_ms", "cpu_ms"):
            assert positive_finite(r[field]), (field, r)
        assert r["machine"]["device"] == "cpu" and r["machine"]["torch"] == torch.__version__
    by_key = {(r["algorithm"], r["mode"]): r for r in rows}
    assert by_key[("ERM", "-")]["ratio_vs_erm"] == 1.0
    assert by_key[("ERM", "-")]["peak_mem_ratio"] == 1.0
    for key in [("LPA", "exact"), ("LPA", "lowrank"), ("ADA", "clean_w=0.5"), ("LPA_LPL", "exact")]:
        r = by_key[key]
        assert positive_finite(r["floor_ratio"]) and r["floor_ratio"] > 1, key
        assert positive_finite(r["ratio_vs_floor"])
        assert r["pgd_steps"] == 3
    assert by_key[("ADA", "clean_w=0.5")]["floor_with_clean_ratio"] > \
        by_key[("ADA", "clean_w=0.5")]["floor_ratio"]
    for key in [("ERM", "-"), ("LPA", "amortized"), ("Dropout", "element"),
                ("ManifoldMixup", "-")]:
        assert by_key[key]["floor_ratio"] is None, key


def test_targets_and_reports(tiny_run):
    records, out = tiny_run
    targets = [r for r in records if r["kind"] == "target"]
    names = " | ".join(t["target"] for t in targets)
    for expected in ("LPA exact", "ADA", "LPA amortized time vs ERM", "Dropout time vs ERM",
                     "ManifoldMixup time vs ERM", "low-rank"):
        assert expected in names
    assert "peak memory" not in names  # a target on ResNet-50 only; MNIST_CNN's is reported
    assert all(isinstance(t["met"], bool) and positive_finite(t["value"]) for t in targets)
    md = (out / "latest.md").read_text()
    assert "| MNIST_CNN | LPA | exact |" in md and "## Targets" in md
    assert ("MET" in md or "MISSED" in md) and "torch " + torch.__version__ in md
    demo = [r for r in records if r["kind"] == "demo"]
    assert len(demo) == 1 and demo[0]["sweep_wall_time_s"] == 41.0
    assert demo[0]["total_wall_time_s"] == 43.0 and demo[0]["commit"] == "abc1234"
    assert (demo[0]["jobs"], demo[0]["jobs_run"]) == (36, 36)
    assert "sweep wall time: 41 s (43 s with the tables), 36 of 36 jobs" in md
    assert "machine: a test box" in md


def test_demo_record_without_or_with_a_broken_timing_json_says_why(tmp_path):
    from lpa_domainbed.tools import bench

    rec = bench.demo_record(tmp_path / "missing" / "timing.json")
    assert rec["kind"] == "demo" and rec["sweep_wall_time_s"] is None
    assert "does not exist" in rec["note"] and "make demo" in rec["note"]
    broken = tmp_path / "timing.json"
    broken.write_text("{not json")
    assert "not readable JSON" in bench.demo_record(broken)["note"]
    broken.write_text(json.dumps({"jobs": 3}))
    assert "sweep_wall_time_s" in bench.demo_record(broken)["note"]


def test_memory_target_applies_to_resnet50_only():
    from lpa_domainbed.tools import bench

    def row(network, algorithm, mode, mem):
        return {"kind": "benchmark", "network": network, "algorithm": algorithm, "mode": mode,
                "ratio_vs_erm": 1.0, "peak_mem_ratio": mem, "time_ms_all": [1.0]}

    records = [row(net, "ERM", "-", 1.0) for net in ("ResNet-50", "MNIST_CNN")] + \
        [row(net, "LPA", "amortized", 1.4) for net in ("ResNet-50", "MNIST_CNN")]
    memory = [t for t in bench.evaluate_targets(records) if "peak memory" in t["target"]]
    assert [(t["network"], t["target"], t["met"]) for t in memory] == \
        [("ResNet-50", "LPA amortized peak memory vs ERM", False)]


def test_search_steps_is_the_algorithms_own():
    from lpa_domainbed.tools import bench
    from lpa_domainbed.tools.bench.config import EXPLICIT_VARIANTS, available

    net = dataclasses.replace(bench.MNIST_CNN, per_domain=2)
    steps = {v.key: bench.search_steps(bench.build(v, net, "cpu")) for v in bench.variants()
             if v.algorithm in ("ERM", "LPA", "ADA", "Dropout")}
    expected = {"ERM": 0, "LPA[exact]": 3, "LPA[amortized]": 0, "LPA[lowrank]": 3,
                "ADA[clean_w=0.5]": 3, "ADA[clean_w=0]": 3, "Dropout[element]": 0}
    expected.update({v.key: 3 for v in EXPLICIT_VARIANTS  # the bfloat16 searches
                     if v.mode.endswith("bf16") and available(v)})
    assert steps == expected
    lpa5 = bench.build(bench.Variant("LPA", "T=5", {"lpa_steps": 5}), net, "cpu")
    assert lpa5.search_steps == 5


def test_peak_memory_sees_the_update_allocations():
    from lpa_domainbed.tools import bench

    net = dataclasses.replace(bench.MNIST_CNN, per_domain=2)
    alg = bench.build(bench.Variant("ERM", "-"), net, "cpu")
    batch = bench.make_batch(net, "cpu")
    alg.update(batch)
    mem = bench.measure_memory(alg, batch, "cpu")
    params = sum(p.numel() * p.element_size() for p in alg.parameters())
    assert mem["resident_bytes"] >= 4 * params  # weights, grads, Adam's two moments
    # the forward pass keeps at least the first convolution's 64x28x28 output per image
    assert mem["transient_bytes"] >= 6 * 64 * 28 * 28 * 4


def test_random_weights_are_the_same_on_every_call(tmp_path):
    """Seed 0 means the same weights each time (tests and the benchmark rely on it)."""
    import torch

    from lpa_domainbed.tools.bench.weights import write_random_weights

    files = []
    for i in range(2):
        home = write_random_weights(tmp_path / str(i), ("resnet18",))
        (path,) = (home / "hub" / "checkpoints").iterdir()
        files.append(torch.load(path))
    assert files[0].keys() == files[1].keys()
    assert all(torch.equal(files[0][k], files[1][k]) for k in files[0])


def test_a_variant_of_an_option_the_code_lacks_is_left_out():
    from lpa_domainbed.tools.bench.config import Variant, available, variants

    assert available(Variant("LPA", "exact", {"lpa_steps": 3}))
    assert not available(Variant("LPA", "x", {"lpa_no_such_option": 1}))
    assert all(available(v) for v in variants())


def test_a_bfloat16_search_has_its_floor_from_the_bfloat16_tail():
    from types import SimpleNamespace

    from lpa_domainbed.tools.bench.floor import floor_ratios

    cut = SimpleNamespace(name="featurizer.network.layer3")
    # the first bfloat16 evaluation casts the weights (0.05), the later ones reuse them (0.04)
    tails = [{cut.name: {"tail": 0.2, "tail_bfloat16": 0.05, "tail_bfloat16_cached": 0.04,
                         "clean_backward": 0.1}}]
    fp32 = SimpleNamespace(search_steps=3, cuts=[cut], hparams={"lpa_steps": 3})
    bf16 = SimpleNamespace(search_steps=3, cuts=[cut],
                           hparams={"lpa_steps": 3, "lpa_search_precision": "bfloat16"})
    assert floor_ratios(fp32, tails, [1.0])["floor_ratio"] == pytest.approx(1.6)
    floor = floor_ratios(bf16, tails, [1.0])
    assert floor["floor_ratio"] == pytest.approx(1.13)
    assert floor["tail_ms"] == {cut.name: pytest.approx(50.0)}
    # ADA training on the clean loss: its first tail is that float32 pass
    ada = SimpleNamespace(search_steps=3, cuts=[cut], hparams={
        "ada_clean_weight": 0.5, "ada_search_precision": "bfloat16"})
    floor = floor_ratios(ada, tails, [1.0])
    assert floor["floor_ratio"] == pytest.approx(1.29)
    assert floor["floor_with_clean_ratio"] == pytest.approx(1.39)


def test_a_target_for_some_devices_only_is_left_out_on_the_others():
    from lpa_domainbed.tools import bench

    def row(algorithm, mode, device):
        return {"kind": "benchmark", "network": "ResNet-50", "algorithm": algorithm,
                "mode": mode, "time_ms_all": [1.0, 2.0] if mode == "exact" else [1.2, 2.6],
                "peak_mem_ratio": 1.0, "machine": {"device": device}}

    for device, expected in (("cpu", [pytest.approx(1.25)]), ("cuda", [])):
        records = [row("ERM", "-", device), row("LPA", "exact", device),
                   row("LPA", "lowrank", device)]
        lowrank = [t["value"] for t in bench.evaluate_targets(records) if "low-rank" in t["target"]]
        assert lowrank == expected, device


def test_the_tail_probe_times_the_tail_under_bfloat16_autocast():
    from lpa_domainbed.tools import bench
    from lpa_domainbed.tools.bench.timing import Clock, TailProbe

    net = dataclasses.replace(bench.MNIST_CNN, per_domain=2)
    probe = TailProbe(net, ["featurizer.bn2"], "cpu", bench.make_batch(net, "cpu"),
                      Clock("cpu", "cpu"), ("bfloat16", "float32"))
    (times,) = probe.measure().values()
    assert set(times) == {"tail", "clean_backward", "tail_bfloat16", "tail_bfloat16_cached"}
    assert all(positive_finite(t) for t in times.values())
