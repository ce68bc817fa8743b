"""SWAD (Cha et al., NeurIPS 2021) on top of any DomainBed algorithm: dense weight averaging
over the loss valley of the training domains' validation loss.

``SWAD`` is ERM with SWAD (the paper's Table 2 row); ``<Name>_SWAD`` wraps any algorithm
DomainBed can look up (ours, its built-ins, a plugin's): :func:`swad_class` builds the class,
``domainbed.algorithms.get_algorithm_class`` resolves the name pattern at lookup time (see
``lpa_domainbed.registration``), and the names below are registered outright so sweeps and
tables list them. The wrapped algorithm trains exactly as it would alone; SWAD only watches:

1. after every update, the wrapped algorithm's floating-point parameters and buffers are added
   to the running sum of the current segment (dense averaging, one fused add);
2. at every evaluation (default: the train script's checkpoint frequency, so DomainBed's own
   evaluation right after sees the result), the online model's cross-entropy on the training
   domains' validation splits (:mod:`~lpa_domainbed.algorithms.swad_source`) closes the
   segment, and :class:`~lpa_domainbed.algorithms.swad_window.LossValley` says which segments
   join the average; at the last step the undecided ones are settled;
3. ``predict`` uses the averaged model once the average has begun, the online one before.

Choices where DomainBed's loop differs from SWAD's own (``docs/algorithms.md``): the buffers
(BatchNorm statistics) are averaged like the parameters instead of recomputed by a pass over
the training data (DomainBed's ResNets freeze BatchNorm and MNIST_CNN uses GroupNorm, so no
DomainBed network is affected); DomainBed's model selection picks among all checkpoints, the
online ones before the window opened included, where SWAD reports its final model only.
"""

from __future__ import annotations

import copy
import sys
import time

import torch
import torch.nn.functional as F
from domainbed.algorithms import Algorithm
from domainbed.lib.fast_data_loader import FastDataLoader

from lpa_domainbed import hparams as hp
from lpa_domainbed.algorithms import ALGORITHMS
from lpa_domainbed.algorithms.swad_source import ValidationSource, from_train_script
from lpa_domainbed.algorithms.swad_window import LossValley

__all__ = ["SWAD", "SUFFIX", "swad_class", "wrapped_name"]

SUFFIX = "_SWAD"
SPECS = [
    hp.HParam("swad_n_converge", 3, doc="N_s: evaluations for convergence", check=hp.at_least(1)),
    hp.HParam("swad_n_tolerance", 6, doc="N_e: evaluations of tolerance", check=hp.at_least(1)),
    hp.HParam("swad_tolerance_ratio", 0.3, doc="r: threshold (1 + r) x the valley's loss",
              check=hp.at_least(0)),
    hp.HParam("swad_eval_every", 0, doc="updates between validation losses; 0: the train "
              "script's checkpoint frequency", check=hp.at_least(0)),
]


def wrapped_name(name: str) -> str | None:
    """``"CORAL"`` for ``"CORAL_SWAD"``, ``"ERM"`` for ``"SWAD"``, else None."""
    if name == "SWAD":
        return "ERM"
    return name[:-len(SUFFIX)] if name.endswith(SUFFIX) and len(name) > len(SUFFIX) else None


def _optimizers(algorithm) -> list:
    return [v for v in vars(algorithm).values() if isinstance(v, torch.optim.Optimizer)]


class SWAD(Algorithm):
    """``WRAPPED`` (a DomainBed algorithm name) trained as itself, predicted with SWAD's
    average. Args: DomainBed's; the ``swad_*`` hparams are SWAD's, the rest the wrapped one's.
    """

    WRAPPED = "ERM"

    #: named one by one in a sweep file, never brought by "@lpa_domainbed" (the demo): SWAD
    #: wraps another algorithm rather than being one more perturbation
    STUDY_VARIANT = True

    @classmethod
    def wrapped_class(cls):
        from domainbed import algorithms

        return algorithms.get_algorithm_class(cls.WRAPPED)

    @classmethod
    def hparam_specs(cls, dataset=None) -> list[hp.HParam]:
        return SPECS + hp.specs_of(cls.wrapped_class(), dataset)

    def __init__(self, input_shape, num_classes, num_domains, hparams):
        super().__init__(input_shape, num_classes, num_domains, hparams)
        own = {s.name: s for s in SPECS}
        found = [f"hparam {p}. Fix it in --hparams." for k, v in hparams.items()
                 if k in own and (p := own[k].problem(v))]
        if found:
            raise ValueError(found[0])
        self.hparams = {**{s.name: s.default for s in SPECS}, **hparams}
        inner = {k: v for k, v in hparams.items() if k not in own}
        self.algorithm = self.wrapped_class()(input_shape, num_classes, num_domains, inner)
        h = self.hparams
        self.window = LossValley(h["swad_n_converge"], h["swad_n_tolerance"],
                                 h["swad_tolerance_ratio"])
        try:  # the average: the wrapped model without its optimizers
            memo = {id(opt): None for opt in _optimizers(self.algorithm)}
            self.average = copy.deepcopy(self.algorithm, memo)
        except Exception as error:
            raise TypeError(f"{type(self).__name__}: {self.WRAPPED} cannot be wrapped, its "
                            f"model cannot be copied ({type(error).__name__}: {error})") from None
        self.average.requires_grad_(False)
        self._device_average: dict = {}  # device -> a copy of the average for predict()
        self.register_buffer("averaged_count", torch.zeros((), dtype=torch.long))
        self.register_buffer("segment_count", torch.zeros((), dtype=torch.long))
        self.segment = [torch.zeros_like(t) for t in self._floats(self.algorithm)]
        self.pending: dict[int, tuple[list, int]] = {}  # segment index -> (sums on CPU, count)
        self.steps_done = 0
        self.source: ValidationSource | None = None

    @staticmethod
    def _floats(module) -> list[torch.Tensor]:
        tensors = [p.data for p in module.parameters()] + list(module.buffers())
        return [t for t in tensors if t.is_floating_point()]

    def validate_with(self, splits, every: int, total_steps: int, num_workers: int = 0):
        """Give the validation splits yourself (outside DomainBed's train script)."""
        self.source = ValidationSource(list(splits), int(every), int(total_steps), num_workers)

    # -- one update -----------------------------------------------------------------------
    def update(self, minibatches, unlabeled=None):
        self._device_average.clear()  # training needs the memory; predict() copies it again
        values = dict(self.algorithm.update(minibatches, unlabeled))
        torch._foreach_add_(self.segment, self._floats(self.algorithm))  # dense averaging
        self.segment_count += 1
        step, self.steps_done = self.steps_done, self.steps_done + 1
        source = self.source = self.source or from_train_script()
        every = self.hparams["swad_eval_every"] or source.every
        last = step == source.total_steps - 1
        if step % every == 0 or last:
            started = time.perf_counter()
            values["swad_val_loss"] = self.validation_loss(source)
            self._close_segment(values["swad_val_loss"], last)
            values["swad_val_time"] = time.perf_counter() - started
        return values

    def validation_loss(self, source: ValidationSource) -> float:
        """The online model's cross-entropy on each training domain's validation split,
        averaged over the domains."""
        device = next(self.algorithm.parameters()).device
        was_training = self.algorithm.training
        self.algorithm.eval()
        losses = []
        with torch.no_grad():
            for split in source.splits:
                total, n = 0.0, 0
                for x, y in FastDataLoader(dataset=split, batch_size=64,
                                           num_workers=source.num_workers):
                    logits = self.algorithm.predict(x.to(device))
                    total += float(F.cross_entropy(logits.float(), y.to(device), reduction="sum"))
                    n += len(y)
                losses.append(total / max(n, 1))
        self.algorithm.train(was_training)
        return sum(losses) / max(len(losses), 1)

    def _close_segment(self, loss: float, last: bool) -> None:
        index = len(self.window.losses)
        self.pending[index] = ([t.detach().cpu().clone() for t in self.segment],
                               int(self.segment_count))
        torch._foreach_zero_(self.segment)
        self.segment_count.zero_()
        added = self.window.evaluate(loss)
        if last:
            added += self.window.finish()
        for j in added:
            self._add_to_average(*self.pending[j])
        keep = self.window.keep
        self.pending = {j: v for j, v in self.pending.items() if j > index - keep}

    @torch.no_grad()
    def _add_to_average(self, sums: list, count: int) -> None:
        """average <- (average * n + sum of the segment's iterates) / (n + count)."""
        n = int(self.averaged_count)
        targets = self._floats(self.average)  # on the CPU, as the segment sums
        sums = [s.to(t.device) for s, t in zip(sums, targets)]
        torch._foreach_mul_(targets, n / (n + count))
        torch._foreach_add_(targets, torch._foreach_div(sums, float(n + count)))
        for target, online in zip(self.average.buffers(), self.algorithm.buffers()):
            if not target.is_floating_point():
                target.copy_(online)
        self.averaged_count += count
        self._device_average.clear()

    # -- prediction and checkpoints ---------------------------------------------------------
    def predict(self, x):
        if int(self.averaged_count) == 0:
            return self.algorithm.predict(x)
        if x.device.type == "cpu":
            return self.average.predict(x)
        # The average lives on the CPU, so training holds one extra copy of the weights on
        # the device (the segment sum); an evaluation gets a device copy, kept for its every
        # batch and dropped at the next update.
        average = self._device_average.get(x.device)
        if average is None:
            average = self._device_average[x.device] = copy.deepcopy(self.average).to(x.device)
        return average.train(self.average.training).predict(x)

    def get_extra_state(self):
        return {"window": self.window.state_dict(), "pending": self.pending,
                "segment": [t.cpu() for t in self.segment], "steps_done": self.steps_done}

    def set_extra_state(self, state):
        self.window.load_state_dict(state["window"])
        self.pending = state["pending"]
        self.segment = [s.to(t.device) for s, t in zip(state["segment"], self.segment)]
        self.steps_done = state["steps_done"]

    def _apply(self, fn, *args, **kwargs):
        """``.to(device)`` moves the segment sums too, and leaves the average on the CPU
        (a dtype change applies to it)."""
        module = super()._apply(fn, *args, **kwargs)
        self.segment = [fn(t) for t in self.segment]
        self.average.cpu()
        self._device_average.clear()
        return module


_CLASSES: dict[str, type] = {"SWAD": SWAD}


def swad_class(wrapped: str) -> type:
    """The class ``<wrapped>_SWAD`` (built once, importable from this module by its name)."""
    name = "SWAD" if wrapped == "ERM" else wrapped + SUFFIX
    if name not in _CLASSES:
        if wrapped_name(wrapped) is not None:
            raise ValueError(f"{name}: {wrapped} already has SWAD; wrap an algorithm once")
        _CLASSES[name] = type(name, (SWAD,), {
            "WRAPPED": wrapped, "__module__": __name__, "__qualname__": name,
            "__doc__": f"{wrapped} with SWAD's dense averaging (see the module docs)."})
    return _CLASSES[name]


def __getattr__(name):
    """``<Name>_SWAD`` classes by name, so that pickle finds a class built at lookup time."""
    base = wrapped_name(name)
    if base is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return swad_class(base)


for _wrapped in ("ERM", "LPA", "CORAL", "ManifoldMixup"):
    ALGORITHMS.register("SWAD" if _wrapped == "ERM" else _wrapped + SUFFIX)(swad_class(_wrapped))
sys.modules[__name__].__dict__.update({n: c for n, c in _CLASSES.items()})
