"""The explicit registry and the declarative hparams: no DomainBed needed."""

import numpy as np
import pytest

from lpa_domainbed import hparams as hp
from lpa_domainbed.registry import Registry


def test_registry_refuses_duplicates_and_lists_known_names():
    reg = Registry("algorithm")
    reg.add("A", 1)
    with pytest.raises(ValueError, match="already registered"):
        reg.add("A", 2)
    with pytest.raises(KeyError, match="registered: A"):
        reg["B"]
    assert list(reg) == ["A"] and reg["A"] == 1


def test_registry_rejects_names_domainbed_cannot_use():
    with pytest.raises(ValueError, match="identifier"):
        Registry("dataset").add("not a name", object())


def test_define_seeds_each_name_like_domainbed():
    seed_hash = lambda *a: abs(hash(a)) % 2**31  # noqa: E731
    specs = [hp.HParam("a", 1.0, hp.uniform(0, 1)), hp.HParam("b", 2, hp.choice([5, 6, 7]))]
    out = hp.define({}, specs, 7, seed_hash)
    for spec in specs:
        expected = spec.sample(np.random.RandomState(seed_hash(7, spec.name)))
        assert out[spec.name] == (spec.default, expected)
    # order does not matter: each value depends on (seed, name) only
    assert hp.define({}, specs[::-1], 7, seed_hash) == out


def test_define_refuses_to_overwrite_unless_told():
    seed_hash = lambda *a: 0  # noqa: E731
    hparams = {"lr": (1e-3, 1e-3)}
    with pytest.raises(ValueError, match="already defined"):
        hp.define(hparams, [hp.HParam("lr", 1.0, hp.fixed(1.0))], 0, seed_hash)
    hp.define(hparams, [hp.HParam("lr", 1.0, hp.fixed(1.0))], 0, seed_hash, override=True)
    assert hparams["lr"] == (1.0, 1.0)
