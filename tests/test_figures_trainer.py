"""The figures' in-process trainer equals ``python -m domainbed.scripts.train``, checkpoint by
checkpoint (so the figures are DomainBed's training, only faster)."""

from __future__ import annotations

import pytest

pytest.importorskip("domainbed", reason="DomainBed checkout not importable; run make setup")

import torch  # noqa: E402

from lpa_domainbed.tools import figures  # noqa: E402


@pytest.mark.parametrize("spec", [
    figures.RunSpec.make("LPA", 3, 1, lpa_eps=0.2),  # PGD search, an override, trial 1
    figures.RunSpec.make("ManifoldMixup", 0, 0),  # draws from numpy's RNG (the probe must not)
], ids=lambda spec: spec.algorithm)
def test_trainer_equals_domainbed_train_script(spec, tmp_path):
    """``train_run`` gives, at every checkpoint, the accuracies and mean losses of
    ``python -m domainbed.scripts.train`` with the same arguments and seed (as DomainBed's
    sweep passes them), and selects the checkpoint DomainBed's training-domain validation
    selects."""
    import json

    from conftest import REPO, run_python
    from domainbed.lib import misc
    from domainbed.lib.query import Q
    from domainbed.model_selection import IIDAccuracySelectionMethod

    settings = figures.Settings(steps=60, trials=1, test_envs=(spec.test_env,),
                                checkpoint_freq=20, data_dir=str(tmp_path / "data"))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        ours = figures.train_run(spec, settings)
    finally:
        torch.set_num_threads(threads)
    seed = misc.seed_hash(settings.dataset, spec.algorithm, [spec.test_env], 0, spec.trial)
    out = run_python(["-m", "domainbed.scripts.train", "--dataset", settings.dataset,
                      "--algorithm", spec.algorithm, "--data_dir", settings.data_dir,
                      "--output_dir", str(tmp_path / "train"), "--steps", "60",
                      "--checkpoint_freq", "20", "--seed", str(seed),
                      "--trial_seed", str(spec.trial), "--test_envs", str(spec.test_env),
                      "--hparams", json.dumps(dict(spec.overrides)), "--skip_model_save"],
                     cwd=REPO, env={"OMP_NUM_THREADS": "1"})
    assert out.returncode == 0, out.stderr[-3000:]
    theirs = [json.loads(line) for line in (tmp_path / "train" / "results.jsonl").open()]
    assert [c["step"] for c in ours["checkpoints"]] == [r["step"] for r in theirs] == \
        [0, 20, 40, 59]
    for mine, ref in zip(ours["checkpoints"], theirs):
        accs = [k for k in ref if k.endswith("_acc")]
        assert len(accs) == 8  # in and out split of each of the four domains
        for key in accs + ["loss"]:
            assert mine[key] == pytest.approx(ref[key], rel=1e-6, abs=1e-9), (mine["step"], key)
    selected = IIDAccuracySelectionMethod.run_acc(Q(theirs))
    assert ours["selected"]["val_acc"] == pytest.approx(selected["val_acc"])
    assert ours["selected"]["test_acc"] == pytest.approx(selected["test_acc"])
