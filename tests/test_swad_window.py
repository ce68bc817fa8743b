"""SWAD's loss-valley rule against hand-made validation-loss sequences (no torch needed)."""

from __future__ import annotations

import pytest

from lpa_domainbed.algorithms.swad_window import LossValley


def run(losses, n_converge=3, n_tolerance=6, ratio=0.3):
    """Every segment index added, in order, evaluation by evaluation, then at the end."""
    window, added = LossValley(n_converge, n_tolerance, ratio), []
    for loss in losses:
        added += window.evaluate(loss)
    added += window.finish()
    return window, added


def test_converges_late_and_stays_in_the_valley():
    # decreasing until evaluation 5 (the minimum), flat after: converged when 5 is the oldest
    # of the last three, at evaluation 7; threshold 1.3 * mean(1.0, 1.05, 1.1)
    losses = [3.0, 2.5, 2.0, 1.5, 1.2, 1.0, 1.05, 1.1, 1.02, 1.04, 1.03, 1.06]
    window, added = run(losses)
    assert window.converged and window.threshold == pytest.approx(1.3 * 1.05)
    assert added[0] == 4  # 1.2 <= threshold: one segment before the start joins (N_e - N_s)
    assert added == list(range(4, 12)) and not window.dead
    assert window.start == 4 and window.end == 11


def test_never_converges_averages_the_last_segment():
    window, added = run([5.0, 4.0, 3.0, 2.0, 1.0, 0.5])  # still falling at the end
    assert not window.dead and added == [5] and window.start == window.end == 5


def test_rise_and_fall_ends_the_window_for_good():
    # converged at 0 (threshold 1.3 * 1.1 = 1.43); segment j is decided with losses j..j+5:
    # 1 (min 1.1) and 2 (min 1.2) join, 3 sees only 3.0s: the valley is dead, and the fall
    # after it changes nothing
    losses = [1.0, 1.1, 1.2] + [3.0] * 7 + [1.0, 1.0]
    window, added = run(losses)
    assert window.threshold == pytest.approx(1.3 * 1.1)
    assert added == [0, 1, 2] and window.dead and window.end == 2


def test_a_rise_shorter_than_the_tolerance_is_tolerated():
    losses = [1.0, 1.1, 1.2] + [3.0] * 5 + [1.0] * 4  # 5 high losses < N_e = 6
    assert run(losses)[1] == list(range(12))


def test_the_end_of_training_settles_the_undecided_segments():
    # converged at 0; segments 1.. are still undecided when training stops at evaluation 4
    window, added = run([1.0, 1.1, 1.2, 1.1, 2.0])
    assert added == [0, 1, 2, 3]  # min of the rest within 1.43 for 1..3, not for 4 (2.0)


def test_bad_settings_name_the_hparams():
    with pytest.raises(ValueError, match="swad_n_converge"):
        LossValley(0, 6, 0.3)


def test_its_state_round_trips():
    window, _ = run([2.0, 1.0, 1.5, 1.4], n_converge=2)
    again = LossValley()
    again.load_state_dict(window.state_dict())
    assert vars(again) == vars(window)
