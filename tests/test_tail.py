"""CutForward's tail evaluations replay the recorded outputs before the cut and give the
same result as recomputing the whole network with the cut's output replaced."""

from __future__ import annotations

import pytest

from conftest import requires_domainbed

torch = pytest.importorskip("torch")
nn = torch.nn


def tails(net, cut_name, x, runs=2):
    """Logits and gradient of one tail evaluation at ``cut_name`` per run."""
    from lpa_domainbed.perturb.layers import Cut
    from lpa_domainbed.perturb.tail import CutForward

    module = dict(net.named_modules())[cut_name]
    forward = CutForward(net, [Cut(cut_name, module, 1)])
    out = []

    def on_cut(cut, a, tail):
        z = (a.detach() * 1.5).requires_grad_(True)
        logits = tail(z)
        (g,) = torch.autograd.grad(logits.square().sum(), z)
        out.append((logits.detach(), g))
        return None

    for _ in range(runs):
        forward.run(x, on_cut)
    return out


def recomputed(net, cut_name, x):
    """The same tail by brute force: the whole network with the cut returning ``z``."""
    module = dict(net.named_modules())[cut_name]
    holder = {}

    def hook(_, __, a):
        holder["z"] = (a.detach() * 1.5).requires_grad_(True)
        return holder["z"]

    handle = module.register_forward_hook(hook)
    try:
        logits = net(x)
    finally:
        handle.remove()
    (g,) = torch.autograd.grad(logits.square().sum(), holder["z"])
    return [(logits.detach(), g)]


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


@pytest.mark.parametrize("net_cls", [CrossingSkip, DataDependent, WritesIntoRealTensor, Chain])
def test_tail_equals_recomputing_the_network(net_cls):
    torch.manual_seed(0)
    net = net_cls()
    x = torch.randn(5, 4)
    result = tails(net, "b", x, runs=3)
    reference = recomputed(net, "b", x)
    for one in result:
        la, ga = one
        lb, gb = reference[0]
        assert torch.allclose(la, lb, atol=1e-6) and torch.allclose(ga, gb, atol=1e-6)


@requires_domainbed
@pytest.mark.parametrize("dataset,name", [("Debug28", "LPA"), ("Debug28", "ADA"),
                                          ("RotatedDigits", "LPA"), ("Debug224", "LPA")])
def test_domainbed_tails_are_the_same_in_every_pass(dataset, name, request):
    from test_algorithms import batches, hparams_for, make

    if dataset == "Debug224":
        request.getfixturevalue("offline_resnet")
    alg = make(name, dataset, **hparams_for(dataset))
    x = torch.cat([x for x, _ in batches(dataset, per_domain=3)])
    alg.train()
    from lpa_domainbed.perturb.tail import CutForward

    seen = []

    def on_cut(cut, a, tail):
        z = a.detach().requires_grad_(True)
        logits = tail(z)
        seen.append(logits.detach())

    forward = CutForward(alg.network, alg.cuts)
    with torch.no_grad():
        for fw in (forward, forward, CutForward(alg.network, alg.cuts)):
            fw.run(x, on_cut)
    assert torch.equal(seen[0], seen[1]) and torch.equal(seen[1], seen[2])


@requires_domainbed
def test_tail_is_refused_where_the_algorithm_said_it_would_not_use_it():
    from test_algorithms import batches, make

    from lpa_domainbed.algorithms.dropout import Dropout

    class Greedy(Dropout):
        def perturb(self, a, y, step, tail, state):
            tail(a)
            return a

    alg = make("Dropout")
    alg.__class__ = Greedy
    with pytest.raises(RuntimeError, match="uses_tail"):
        alg.update(batches())
