"""Speed and peak memory of every algorithm's training update, relative to ERM.

    python -m lpa_domainbed.tools.bench [--quick] [--device cpu|cuda] [--out results/benchmarks]

(``make bench``.) What it measures, in one process:

* **Networks.** DomainBed's default 224-pixel network, timm's ResNet-50
  (``resnet50_augmix=True``, DomainBed's default; random weights written offline by
  :mod:`~lpa_domainbed.tools.bench.weights`, nothing is downloaded), and MNIST_CNN; every row names
  its network.
* **Time.** For each network, every variant (ERM, LPA exact / amortized / low-rank, LPL,
  LPA_LPL, Dropout, ManifoldMixup, ADA, and any other registered algorithm) is built from the
  same seed, so all share the architecture, the initial weights and the batch. After warm-up
  updates, the real ``algorithm.update(minibatches)`` that DomainBed's training loop calls is
  timed in round-robin order (each round visits every variant once, starting one further
  along each time), for several rounds. ``time_ms`` is the median over rounds;
  ``ratio_vs_erm`` is the median over rounds of the same-round ratio ``t_alg / t_ERM`` (pairing
  within a round cancels slow drifts of the machine's load).
* **Analytic floor of exact PGD.** ``floor = 1 + T * t_tail / t_step``, ``T`` the algorithm's ``search_steps``: ``t_step`` is one ERM
  update, ``t_tail`` one evaluation of the layers after the cut plus the backward to the cut's
  input, timed with the real machinery (``CutForward.tail`` inside a ``CutForward.run`` hook,
  then ``torch.autograd.grad(loss, z)``, as one PGD step does) and interleaved with the
  updates. Several cuts (LPA_LPL) add their terms. ADA with ``ada_clean_weight > 0`` also
  trains on the clean loss: its backward through the tail (with weight gradients) is extra
  work, reported as ``floor_with_clean_ratio = floor + t_clean_backward / t_step``.
* **Peak memory** of one update, after the timing rounds:
  ``peak = resident + transient``. ``resident`` is the bytes held when the update starts by
  what the algorithm owns (parameters, gradients, buffers, optimizer state, its own tensors
  such as LPA's stored perturbations) plus the batch; ``transient`` is the highest net
  increase of allocated bytes during the update. On CUDA it is
  ``torch.cuda.max_memory_allocated() - memory_allocated()`` before; on CPU, which has no
  allocator statistics, it comes from ``torch.profiler`` with ``profile_memory=True``: every
  allocation and free of PyTorch's CPU allocator is recorded in order, and the transient peak
  is the maximum of their running sum. ``peak_mem_ratio`` compares ``peak`` with ERM's;
  ``transient_mem_ratio`` compares the transient parts only (the stricter view).

Outputs ``<out>/latest.json`` and ``<out>/latest.md``. The JSON is a list of records, each
with ``kind``: ``"benchmark"`` (one per network and variant: network, algorithm, mode,
time_ms, ratio_vs_erm, floor_ratio (null where no PGD search runs), peak_mem_ratio, ...,
machine), ``"target"`` (one per target of :data:`~lpa_domainbed.tools.bench.config.TARGETS` and
network, with ``met``; memory is a target on ResNet-50, reported on MNIST_CNN) and ``"demo"``
(the embedded demo sweep's wall time from ``results/demo/timing.json``, or why it is missing).

Modules, one job each: ``config`` (networks, variants, :class:`Settings`, targets), ``weights``
(offline random weights), ``networks`` (build an algorithm, a batch), ``timing`` (clocks,
``t_tail``), ``floor`` (the analytic floor), ``memory`` (peak memory), ``measure`` (one network),
``targets``, ``demo`` (timing.json), ``report`` (Markdown), ``cli`` (``run``, ``main``).
"""

from lpa_domainbed.tools.bench.cli import DEMO_TIMING, main, run
from lpa_domainbed.tools.bench.config import (MNIST_CNN, NETWORKS, RESNET50, TARGETS, NetworkSpec,
                                        Settings, Variant, variants)
from lpa_domainbed.tools.bench.demo import demo_record
from lpa_domainbed.tools.bench.floor import floor_ratios, search_steps
from lpa_domainbed.tools.bench.measure import benchmark_network
from lpa_domainbed.tools.bench.memory import measure_memory, resident_bytes
from lpa_domainbed.tools.bench.networks import build, make_batch
from lpa_domainbed.tools.bench.targets import evaluate_targets
from lpa_domainbed.tools.bench.weights import offline_weights, write_random_weights

__all__ = ["NetworkSpec", "Variant", "Settings", "NETWORKS", "RESNET50", "MNIST_CNN",
           "TARGETS", "DEMO_TIMING", "variants", "run", "main", "benchmark_network",
           "evaluate_targets", "demo_record", "floor_ratios", "search_steps", "build",
           "make_batch", "measure_memory", "resident_bytes", "offline_weights",
           "write_random_weights"]
