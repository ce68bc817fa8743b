"""CutForward's tail evaluations: recorded outputs the tail cannot read are replaced by
data-free stand-ins, and that never changes a tail's result."""

from __future__ import annotations

import pytest

from conftest import requires_domainbed

torch = pytest.importorskip("torch")
nn = torch.nn


def tails(net, cut_name, x, drop, runs=2):
    """Logits of one tail evaluation at ``cut_name`` per run, plus the records' types."""
    from lpa_domainbed.perturb.layers import Cut
    from lpa_domainbed.perturb.tail import CutForward

    module = dict(net.named_modules())[cut_name]
    forward = CutForward(net, [Cut(cut_name, module, 1)])
    forward.drop_unused_records = drop
    out, kinds = [], []

    def on_cut(cut, a, fw):
        z = (a.detach() * 1.5).requires_grad_(True)
        logits = fw.tail(z, cut)
        (g,) = torch.autograd.grad(logits.square().sum(), z)
        out.append((logits.detach(), g))
        kinds.append({type(o).__name__ for records in fw._records.values() for _, o in records})
        return None

    for _ in range(runs):
        forward.run(x, on_cut)
    return out, kinds


def assert_same(a, b):
    assert len(a) == len(b)
    for (la, ga), (lb, gb) in zip(a, b):
        assert torch.equal(la, lb) and torch.equal(ga, gb)


class CrossingSkip(nn.Module):
    """``a``'s output reaches the tail through a functional op: it must stay recorded."""

    def __init__(self):
        super().__init__()
        self.a, self.b, self.c = nn.Linear(4, 4), nn.Linear(4, 4), nn.Linear(4, 3)

    def forward(self, x):
        s = torch.relu(self.a(x))
        h = self.b(s)
        return self.c(h + s)


class DataDependent(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b, self.c = nn.Linear(4, 4), nn.Linear(4, 4), nn.Linear(4, 3)

    def forward(self, x):
        s = self.a(x)
        if torch.relu(s).sum() > 0:  # reads a value derived from a recorded output
            s = s + 1
        return self.c(self.b(s))


class WritesIntoRealTensor(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b, self.c = nn.Linear(4, 4), nn.Linear(4, 4), nn.Linear(4, 3)

    def forward(self, x):
        acc = torch.zeros(len(x), 4)
        acc.add_(torch.relu(self.a(x)))  # a real tensor written with a recorded output
        return self.c(self.b(x) + acc)


class Chain(nn.Module):
    """Replayed outputs that only feed the next replayed module are never read."""

    def __init__(self):
        super().__init__()
        self.a, self.n, self.b, self.c = nn.Linear(4, 8), nn.LayerNorm(8), nn.Linear(8, 4), \
            nn.Linear(4, 3)

    def forward(self, x):
        x = self.n(torch.relu(self.a(x)).view(len(x), -1))
        return self.c(torch.relu(self.b(x)))


@pytest.mark.parametrize("net_cls,cut,dropped", [
    (CrossingSkip, "b", False), (DataDependent, "b", False), (WritesIntoRealTensor, "b", False),
    (Chain, "b", True)])
def test_stand_ins_replace_exactly_the_unread_records(net_cls, cut, dropped):
    torch.manual_seed(0)
    net = net_cls()
    x = torch.randn(5, 4)
    reference, _ = tails(net, cut, x, drop=False)
    result, kinds = tails(net, cut, x, drop=True, runs=3)
    assert_same(reference, result[:2])
    assert_same(reference[:1], result[2:])
    assert ("_Unused" in kinds[-1]) == dropped, kinds


@requires_domainbed
@pytest.mark.parametrize("dataset,name", [("Debug28", "LPA"), ("Debug28", "ADA"),
                                          ("RotatedDigits", "LPA"), ("Debug224", "LPA")])
def test_domainbed_networks_read_no_record_before_the_cut(dataset, name, request):
    from test_algorithms import batches, hparams_for, make

    if dataset == "Debug224":
        request.getfixturevalue("offline_resnet")
    alg = make(name, dataset, **hparams_for(dataset))
    x = torch.cat([x for x, _ in batches(dataset, per_domain=3)])
    alg.train()
    from lpa_domainbed.perturb.tail import CutForward

    seen = []

    def on_cut(cut, a, fw):
        z = a.detach().requires_grad_(True)
        logits = fw.tail(z, cut)
        seen.append((logits.detach(), {type(o).__name__ for r in fw._records.values()
                                       for _, o in r}))

    forward = CutForward(alg.network, alg.cuts)  # run twice: the second records stand-ins
    plain = CutForward(alg.network, alg.cuts)
    plain.drop_unused_records = False
    with torch.no_grad():
        for fw in (forward, forward, plain):
            fw.run(x, on_cut)
    assert seen[1][1] == {"_Unused"} and "_Unused" not in seen[2][1]
    assert torch.equal(seen[0][0], seen[2][0]) and torch.equal(seen[1][0], seen[2][0])


@requires_domainbed
def test_tail_is_refused_where_the_algorithm_said_it_would_not_use_it():
    from test_algorithms import batches, make

    from lpa_domainbed.algorithms.dropout import Dropout

    class Greedy(Dropout):
        def perturb(self, a, y, ctx):
            ctx.tail(a)
            return a

    alg = make("Dropout")
    alg.__class__ = Greedy
    with pytest.raises(RuntimeError, match="uses_tail"):
        alg.update(batches())
