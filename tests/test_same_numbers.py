"""The same accuracies and losses as the baseline commit, both run on this machine
(tests/same_numbers.py)."""

from __future__ import annotations

import os

import pytest

from conftest import requires_domainbed
import same_numbers

pytestmark = [requires_domainbed, pytest.mark.slow]

# A subset by default (each run is a train process); LPA_SAME_NUMBERS=all checks every one.
SUBSET = ["LPA", "LPA_Amortized"]


def test_train_script_gives_the_numbers_of_the_baseline_commit():
    names = same_numbers.algorithms() if os.environ.get("LPA_SAME_NUMBERS") == "all" else SUBSET
    try:
        old = same_numbers.baseline(names)
    except same_numbers.BaselineUnavailable as error:
        pytest.skip(f"the baseline commit cannot be run here: {error}")
    problems = same_numbers.differences(old, same_numbers.run_all(names))
    assert not problems, "\n".join(problems)


def test_the_comparison_sees_a_changed_number():
    baseline = {"RotatedDigits/LPA": [{"loss": 1.0, "env0_out_acc": 0.5}]}
    changed = {"RotatedDigits/LPA": [{"loss": 1.001, "env0_out_acc": 0.5}]}
    assert same_numbers.differences(baseline, baseline) == []
    assert "loss" in same_numbers.differences(baseline, changed)[0]
