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


def test_a_name_clashing_with_a_builtin_is_refused_and_nothing_is_written(monkeypatch):
    import domainbed.algorithms as A

    from lpa_domainbed import algorithms, registration
    from lpa_domainbed.registry import Registry

    clashing = Registry("algorithm")
    clashing.add("MyNew", type("MyNew", (), {}))
    clashing.add("ERM", type("ERM", (), {}))
    monkeypatch.setattr(algorithms, "load", lambda: clashing)
    fake = types.ModuleType("domainbed.algorithms")
    fake.ERM, fake.ALGORITHMS = A.ERM, ["ERM"]
    with pytest.raises(ValueError, match="already defines 'ERM'.*rename"):
        registration._register_algorithms(fake)
    assert fake.ALGORITHMS == ["ERM"] and not hasattr(fake, "MyNew")


@pytest.mark.parametrize("dataset", ["RotatedMNIST", "PACS", "VLCS", "RotatedDigits"])
@pytest.mark.parametrize("algorithm", ["ERM", "DANN", "Mixup", "CORAL"])
def test_builtin_hparams_are_exactly_domainbeds_own(algorithm, dataset):
    from domainbed import hparams_registry

    original = hparams_registry._hparams.__wrapped__
    for seed in (0, 1, 12345):
        ours = hparams_registry._hparams(algorithm, dataset, seed)
        theirs = original(algorithm, dataset, seed)
        if dataset == "RotatedDigits":  # DomainBed has no entry for our dataset's lr etc.
            from lpa_domainbed.datasets.rotated_digits import RotatedDigits

            for spec in RotatedDigits.HPARAMS:
                theirs.pop(spec.name, None), ours.pop(spec.name)
        assert ours == theirs


def test_our_hparams_are_seeded_per_name_like_domainbeds():
    from domainbed import hparams_registry
    from domainbed.lib import misc

    from lpa_domainbed.algorithms import load

    for name, cls in load().items():
        random = hparams_registry.random_hparams(name, "PACS", 3)
        default = hparams_registry.default_hparams(name, "PACS")
        for spec in cls.hparam_specs("PACS"):
            assert default[spec.name] == spec.default
            assert random[spec.name] == spec.sample(
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
