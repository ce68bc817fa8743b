"""SWAD's loss-valley rule (Cha et al., NeurIPS 2021, "SWAD: Domain Generalization by Seeking
Flat Minima", section 3 and its public code): which evaluation segments enter the average.

Training is cut into segments, one per evaluation: segment ``i`` holds every iterate since
evaluation ``i - 1`` (dense averaging), and ``L_i`` is the training domains' validation loss
of the online model at its end. With ``N_s = n_converge``, ``N_e = n_tolerance`` and
``r = tolerance_ratio`` (the authors' defaults 3, 6, 0.3):

* **start**: the first evaluation ``k`` at which the oldest of the last ``N_s`` losses is their
  minimum converges the run at segment ``s = k - N_s + 1``; the threshold is
  ``(1 + r) * mean(L_s .. L_k)`` (the public code's ``th_base``; the paper's text says "the
  minimum", the published numbers come from the code). Up to ``N_e - N_s`` segments right
  before ``s`` whose loss is within the threshold join too, going back until one is not.
* **end**: segment ``j > s`` is decided ``N_e - 1`` evaluations later: it joins when
  ``min(L_j .. L_{j + N_e - 1}) <= threshold``; the first that does not ends the valley for
  good. At the end of training the undecided ones join in order while the minimum of the
  remaining losses is within the threshold; a run that never converged averages its last
  segment (as the public code falls back to its last model).

Deviation from the public code: it adds the converging segment ``s`` twice (once at
convergence, once when it is the oldest of the tolerance window); here every segment enters
at most once, so the average is exactly the mean of the iterates in the window.

:class:`LossValley` holds only numbers (picklable, its state a plain dict): it says which
segment indices to add; the caller keeps the segments themselves.
"""

from __future__ import annotations

__all__ = ["LossValley"]


class LossValley:
    """The window rule, fed one validation loss per evaluation.

    Args: ``n_converge`` (N_s), ``n_tolerance`` (N_e), ``tolerance_ratio`` (r).
    """

    def __init__(self, n_converge: int = 3, n_tolerance: int = 6, tolerance_ratio: float = 0.3):
        if n_converge < 1 or n_tolerance < 1 or tolerance_ratio < 0:
            raise ValueError(f"SWAD's window needs n_converge >= 1, n_tolerance >= 1 and "
                             f"tolerance_ratio >= 0; got {n_converge}, {n_tolerance}, "
                             f"{tolerance_ratio}. Fix swad_n_converge, swad_n_tolerance or "
                             f"swad_tolerance_ratio in --hparams.")
        self.n_converge, self.n_tolerance, self.ratio = n_converge, n_tolerance, tolerance_ratio
        self.losses: list[float] = []
        self.start: int | None = None  # first segment of the window
        self.end: int | None = None  # last segment added so far
        self.threshold: float | None = None
        self.dead = False
        self.finished = False

    @property
    def converged(self) -> bool:
        return self.start is not None

    @property
    def keep(self) -> int:
        """How many of the latest segments the caller must keep (undecided or needed)."""
        return max(self.n_converge, self.n_tolerance)

    def evaluate(self, loss: float) -> list[int]:
        """Record the loss of the segment just ended; return the segments (indices) to add
        to the average now, in order."""
        if self.finished:
            raise RuntimeError("SWAD's window was finished; no evaluation may follow")
        self.losses.append(float(loss))
        k = len(self.losses) - 1
        if self.dead:
            return []
        if not self.converged:
            if k + 1 < self.n_converge:
                return []
            window = self.losses[k - self.n_converge + 1:]
            if min(window) != window[0]:
                return []
            s = k - self.n_converge + 1
            self.threshold = sum(window) / len(window) * (1 + self.ratio)
            first = s
            while (first - 1 >= max(0, s - (self.n_tolerance - self.n_converge))
                   and self.losses[first - 1] <= self.threshold):
                first -= 1
            self.start, self.end = first, s
            return list(range(first, s + 1))
        added = []
        while self.end + self.n_tolerance <= k:  # segment end + 1 has its N_e losses
            j = self.end + 1
            if min(self.losses[j:j + self.n_tolerance]) > self.threshold:
                self.dead = True
                break
            self.end = j
            added.append(j)
        return added

    def finish(self) -> list[int]:
        """At the end of training: the undecided segments that join (see module docs)."""
        self.finished = True
        last = len(self.losses) - 1
        if last < 0:
            return []
        if not self.converged:
            self.start = self.end = last
            return [last]
        added = []
        while not self.dead and self.end < last:
            j = self.end + 1
            if min(self.losses[j:]) > self.threshold:
                break
            self.end = j
            added.append(j)
        return added

    def state_dict(self) -> dict:
        return dict(vars(self))

    def load_state_dict(self, state: dict) -> None:
        vars(self).update(state)
