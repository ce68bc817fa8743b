"""Every registered algorithm can be copied and saved whole (SWAD keeps a copy of the model
it wraps), and ``probe()`` leaves every algorithm exactly as it was."""

from __future__ import annotations

import copy
import io
import pickle

import pytest

from conftest import requires_domainbed
from test_algorithms import algorithm_names, batches, make

pytestmark = requires_domainbed
torch = pytest.importorskip("torch")


def _attributes(alg):
    """Per module, its plain attributes (submodules, parameters and buffers apart)."""
    skip = {"_modules", "_parameters", "_buffers", "training"}
    return {(path, key): value for path, module in alg.named_modules()
            for key, value in vars(module).items() if key not in skip}


def _unchanged(before, after) -> list[str]:
    changed = sorted(set(before) ^ set(after))
    for key in set(before) & set(after):
        old, new = before[key], after[key]
        same = old is new or (not isinstance(old, torch.Tensor) and type(old) is type(new)
                              and _equal(old, new))
        if not same:
            changed.append(key)
    return changed


def _equal(a, b) -> bool:
    try:
        return bool(a == b)
    except Exception:  # objects without a meaningful ==: identity was required
        return False


@pytest.mark.parametrize("name", algorithm_names())
def test_every_algorithm_deep_copies_and_pickles_after_training(name):
    alg = make(name)
    alg.update(batches())
    copied = copy.deepcopy(alg)
    assert type(copied) is type(alg)
    for (key, value), (_, other) in zip(alg.state_dict().items(), copied.state_dict().items()):
        assert torch.equal(value, other) and value.data_ptr() != other.data_ptr(), key
    buffer = io.BytesIO()
    torch.save(alg, buffer)
    restored = torch.load(io.BytesIO(buffer.getvalue()), weights_only=False)
    assert type(pickle.loads(pickle.dumps(alg))) is type(alg)
    assert type(restored) is type(alg)
    x, _ = batches(seed=3)[0]
    alg.eval(), copied.eval(), restored.eval()
    assert torch.equal(alg.predict(x), copied.predict(x))
    assert torch.equal(alg.predict(x), restored.predict(x))
    copied.update(batches(seed=4))  # the copy trains on its own
    assert copied.steps_done == alg.steps_done + 1


@pytest.mark.parametrize("name", algorithm_names())
def test_probe_leaves_every_attribute_and_buffer_unchanged(name):
    alg = make(name)
    alg.update(batches())
    attributes = _attributes(alg)
    state = {k: v.clone() for k, v in alg.state_dict().items()}
    x, y = batches(seed=2)[0]
    alg.probe(x, y)
    assert _unchanged(attributes, _attributes(alg)) == []
    after = alg.state_dict()
    assert list(after) == list(state)
    assert all(torch.equal(state[k], after[k]) for k in state)


def test_the_check_sees_a_changed_attribute():
    alg = make("Dropout")
    before = _attributes(alg)
    alg.last_mask = torch.ones(1)
    alg.steps_done = 7
    assert set(_unchanged(before, _attributes(alg))) == {("", "last_mask"), ("", "steps_done")}
