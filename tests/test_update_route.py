"""One update reads top to bottom: the route of one exact-LPA ``update()`` through the
package's files stays short.

The route is measured at run time: every call into a file of the package, in order (calls made
from torch, such as module hooks, included), with consecutive calls in the same file merged and
a repeated stretch (a loop over layers or PGD steps) counted once. A switch is one step of that
route from one file to another. The figures are the structure of the code, not of the CPU.
"""

from __future__ import annotations

import sys
from collections import Counter
from pathlib import Path

import pytest

import lpa_domainbed
from conftest import requires_domainbed
from test_algorithms import batches, make

pytestmark = [requires_domainbed, pytest.mark.torch]
torch = pytest.importorskip("torch")

PACKAGE = Path(lpa_domainbed.__file__).parent
MAX_SWITCHES = 25
MAX_BASE_LPA = 4  # algorithms/base.py <-> algorithms/lpa.py


def collapse_repeats(route: list[str]) -> list[str]:
    """``route`` with every run of a repeated stretch (``A B A B A B``) kept once (``A B``)
    and consecutive equal entries merged."""
    changed = True
    while changed:
        changed = False
        for k in range(1, len(route) // 2 + 1):
            out, i = [], 0
            while i < len(route):
                stretch = route[i:i + k]
                if len(stretch) == k and route[i + k:i + 2 * k] == stretch:
                    j = i + k
                    while route[j:j + k] == stretch:
                        j += k
                    out += stretch
                    i, changed = j, True
                else:
                    out.append(route[i])
                    i += 1
            route = [f for n, f in enumerate(out) if n == 0 or out[n - 1] != f]
    return route


def update_route(alg, minibatches) -> list[str]:
    """The package files one ``alg.update(minibatches)`` calls into, in order (see the module
    docs), as paths relative to the package."""
    calls = []

    def tracer(frame, event, arg):
        path = Path(frame.f_code.co_filename)
        if event == "call" and path.is_relative_to(PACKAGE):
            calls.append(path.relative_to(PACKAGE).as_posix())
        return None  # calls only: no line events inside a frame

    previous = sys.gettrace()
    sys.settrace(tracer)
    try:
        alg.update(minibatches)
    finally:
        sys.settrace(previous)
    return collapse_repeats(calls)


def switches(route, a=None, b=None) -> int:
    steps = list(zip(route, route[1:]))
    if a is None:
        return len(steps)
    return sum(1 for step in steps if set(step) == {a, b})


def test_collapse_repeats_keeps_one_pass_of_a_loop():
    assert collapse_repeats(list("abababc")) == list("abc")
    assert collapse_repeats(list("aabcbcbcd")) == list("abcd")
    assert collapse_repeats(list("abcab")) == list("abcab")  # no repetition: unchanged


def test_one_exact_lpa_update_has_a_short_route():
    alg = make("LPA", lpa_steps=3, lpa_mode="exact")
    data = batches()
    alg.update(data)  # first update apart: lazy initialization is not the route
    route = update_route(alg, data)
    shown = " -> ".join(route)
    assert route[0] == "algorithms/base.py", shown  # DomainBed calls the base's update
    assert "algorithms/lpa_search.py" in route and "perturb/pgd.py" in route, shown
    assert switches(route) <= MAX_SWITCHES, shown
    assert switches(route, "algorithms/base.py", "algorithms/lpa.py") <= MAX_BASE_LPA, shown
    # each LPA hook is entered from the base once: no back-and-forth inside one hook
    assert Counter(route)["algorithms/lpa.py"] <= 3, shown
