"""Registration into the real DomainBed: idempotent, refuses clashes, built-ins untouched."""

import types

import numpy as np
import pytest

from conftest import requires_domainbed

pytestmark = requires_domainbed


def test_register_is_idempotent():
    import domainbed.algorithms as A
    import domainbed.command_launchers as C
    import domainbed.datasets as D

    import lpa_domainbed
    from lpa_domainbed.algorithms import load

    lpa_domainbed.register()
    lpa_domainbed.register()
    for name, cls in load().items():
        assert A.ALGORITHMS.count(name) == 1 and A.get_algorithm_class(name) is cls
    assert D.DATASETS.count("RotatedDigits") == 1 and D.num_environments("RotatedDigits") == 4
    assert "local_parallel" in C.REGISTRY


def test_a_name_clashing_with_a_builtin_is_refused_and_nothing_is_written(capsys):
    import domainbed.algorithms as A
    from domainbed import hparams_registry as H

    from lpa_domainbed.algorithms import ALGORITHMS
    from lpa_domainbed.hparams import HParam, fixed

    def snapshot():
        return ([H.default_hparams("ERM", d) for d in ("RotatedDigits", "PACS")]
                + [H.random_hparams("ERM", d, 5) for d in ("RotatedDigits", "PACS")])

    before = snapshot()
    clashing = type("ERM", (A.Algorithm,), {
        "hparam_specs": classmethod(lambda cls, d=None: [HParam("extra", 1, fixed(1))])})
    with pytest.raises(ValueError, match="taken by DomainBed's built-in domainbed.algorithms.ERM"):
        ALGORITHMS.add("ERM", clashing)
    assert "ERM" not in ALGORITHMS and A.ERM is not clashing
    assert repr(snapshot()) == repr(before)  # byte-identical, random draws included
    # a later registration still works, through DomainBed's own lookup
    later = type("LaterAlg", (A.ERM,), {})
    ALGORITHMS.add("LaterAlg", later)
    try:
        import lpa_domainbed

        lpa_domainbed.register()
        assert A.get_algorithm_class("LaterAlg") is later and "LaterAlg" in A.ALGORITHMS
    finally:
        ALGORITHMS.discard("LaterAlg"), A.ALGORITHMS.remove("LaterAlg"), delattr(A, "LaterAlg")


def test_a_clash_names_the_real_owner():
    from lpa_domainbed.algorithms import ALGORITHMS
    from lpa_domainbed.algorithms.base import ActivationPerturbation

    mine = type("LPA", (ActivationPerturbation,), {"__module__": "my_algs"})
    with pytest.raises(ValueError, match="already registered by lpa_domainbed's "
                                         "lpa_domainbed.algorithms.lpa.LPA"):
        ALGORITHMS.add("LPA", mine)


def test_a_clash_found_when_copying_is_refused_with_one_warning(capsys):
    from lpa_domainbed import registration
    from lpa_domainbed.registry import Registry

    import domainbed.algorithms as A

    entries = Registry("algorithm")  # filled while DomainBed was not imported: no early check
    mine = entries.add("MyNew", type("MyNew", (), {}))
    entries.add("ERM", type("ERM", (), {}))
    fake = types.ModuleType("fake_domainbed_algorithms")
    fake.ERM, fake.ALGORITHMS = A.ERM, ["ERM"]
    registration._copy_into(fake, entries, fake.ALGORITHMS, "algorithm")
    registration._copy_into(fake, entries, fake.ALGORITHMS, "algorithm")
    assert fake.ALGORITHMS == ["ERM", "MyNew"] and fake.MyNew is mine and fake.ERM is A.ERM
    assert list(entries) == ["MyNew"]
    err = capsys.readouterr().err
    assert err.count("refused to register algorithm 'ERM'") == 1
    assert "DomainBed's built-in domainbed.algorithms.ERM" in err


@pytest.mark.parametrize("dataset", ["RotatedMNIST", "PACS", "VLCS", "RotatedDigits",
                                     "StyleDigits"])
@pytest.mark.parametrize("algorithm", ["ERM", "DANN", "Mixup", "CORAL"])
def test_builtin_hparams_are_exactly_domainbeds_own(algorithm, dataset):
    from domainbed import hparams_registry

    original = hparams_registry._hparams.__wrapped__
    for seed in (0, 1, 12345):
        ours = hparams_registry._hparams(algorithm, dataset, seed)
        theirs = original(algorithm, dataset, seed)
        if dataset in ("RotatedDigits", "StyleDigits"):  # DomainBed has no entry for ours
            from lpa_domainbed.datasets import DATASETS

            for spec in DATASETS[dataset].HPARAMS:
                theirs.pop(spec.name, None), ours.pop(spec.name)
        assert ours == theirs


def test_our_hparams_are_seeded_per_name_like_domainbeds():
    from domainbed import hparams_registry
    from domainbed.lib import misc

    from lpa_domainbed.algorithms import load
    from lpa_domainbed.hparams import specs_of

    for name, cls in load().items():
        random = hparams_registry.random_hparams(name, "PACS", 3)
        default = hparams_registry.default_hparams(name, "PACS")
        for spec in specs_of(cls, "PACS"):  # HPARAM_DEFAULTS applied
            assert default[spec.name] == spec.default
            assert random[spec.name] == spec.draw(
                np.random.RandomState(misc.seed_hash(3, spec.name)))
        # DomainBed's own hparams of this algorithm are those of any ERM-like algorithm
        erm = hparams_registry.random_hparams("ERM", "PACS", 3)
        assert {k: random[k] for k in erm} == erm


def test_small_split_raises_a_clear_error_instead_of_spinning():
    import torch
    from domainbed.lib.fast_data_loader import InfiniteDataLoader

    from lpa_domainbed.registration import SmallSplitError

    data = torch.utils.data.TensorDataset(torch.zeros(5, 2), torch.zeros(5))
    with pytest.raises(SmallSplitError, match="fewer than batch_size=8.*batch_size"):
        InfiniteDataLoader(data, None, batch_size=8, num_workers=0)
    loader = InfiniteDataLoader(data, None, batch_size=4, num_workers=0)
    assert len(next(iter(loader))[0]) == 4


def test_rotated_digits_is_deterministic_and_rotated():
    import torch
    from domainbed import datasets

    a = datasets.RotatedDigits(None, [0], {})
    b = datasets.RotatedDigits(None, [0], {})
    assert a.input_shape == (64,) and a.num_classes == 10 and len(a) == 4
    assert sum(len(e) for e in a) == 1797
    for ea, eb in zip(a, b):
        assert torch.equal(ea.tensors[0], eb.tensors[0])
        assert set(ea.tensors[1].tolist()) == set(range(10))
    # the 0-degree domain is the raw digits; others differ from their unrotated images
    from lpa_domainbed.datasets.rotated_digits import load_digits

    images, _ = load_digits()
    order = np.random.RandomState(0).permutation(len(images))
    parts = np.array_split(order, 4)
    assert np.allclose(a[0].tensors[0].numpy(), images[parts[0]].reshape(-1, 64), atol=1e-6)
    assert not np.allclose(a[3].tensors[0].numpy(), images[parts[3]].reshape(-1, 64), atol=1e-2)
