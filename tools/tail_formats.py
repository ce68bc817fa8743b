"""Tail evaluation cost by precision and memory format, against one ERM update.

ResNet-50 (DomainBed's default, random weights), cut after layer3, DomainBed's PACS batch (3 x
32). Times one PGD tail evaluation (layer4, pooling, classifier, backward to the cut) in
float32 and bfloat16 autocast, with the cut's activation in contiguous (NCHW) or channels_last
layout, each as a ratio to the same run's ERM update; and the ERM update with the whole
network and batch in channels_last.

    python tools/tail_formats.py [--device cuda] [--per_domain 32] [--reps 20]
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics

import torch
import torch.nn.functional as F


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--per_domain", type=int, default=32)
    p.add_argument("--reps", type=int, default=20)
    args = p.parse_args()
    from lpa_domainbed.perturb.layers import resolve_cuts
    from lpa_domainbed.perturb.pgd import search_region
    from lpa_domainbed.perturb.tail import CutForward
    from lpa_domainbed.tools import bench
    from lpa_domainbed.tools.bench.timing import Clock

    dev = args.device
    net = dataclasses.replace(bench.RESNET50, per_domain=args.per_domain)

    clock = Clock("wall", dev)  # the benchmark's clock: synchronizes CUDA before reading

    def timed(fn, reps):
        fn(), fn()
        out = []
        for _ in range(reps):
            t0 = clock()
            fn()
            out.append(clock() - t0)
        return statistics.median(out)

    with bench.offline_weights():
        erm = bench.build(bench.Variant("ERM", "-"), net, dev)
        erm_cl = bench.build(bench.Variant("ERM", "-"), net, dev)
    batch = bench.make_batch(net, dev)
    batch_cl = [(x.contiguous(memory_format=torch.channels_last), y) for x, y in batch]
    erm_cl.to(memory_format=torch.channels_last)
    t_erm = timed(lambda: erm.update(batch), args.reps)
    t_erm_cl = timed(lambda: erm_cl.update(batch_cl), args.reps)

    cuts = resolve_cuts(erm, ["layer3"])
    forward = CutForward(erm.network, cuts)
    x = torch.cat([x for x, _ in batch])
    y = torch.cat([y for _, y in batch])
    rows = {}

    def on_cut(cut, a, tail):
        with torch.enable_grad():
            for fmt, layout in (("contiguous", torch.contiguous_format),
                                ("channels_last", torch.channels_last)):
                z = a.detach().contiguous(memory_format=layout)
                z.requires_grad_(True)
                for precision in ("float32", "bfloat16"):
                    def one():
                        with search_region(z.device, precision) as evaluation:
                            for _ in range(3):  # a T=3 search: one cast, three evaluations
                                with evaluation():
                                    logits = tail(z)
                                loss = F.cross_entropy(logits.float(), y)
                                torch.autograd.grad(loss, z)
                    rows[(precision, fmt)] = timed(one, args.reps) / 3

    with torch.no_grad():
        forward.run(x, on_cut)
    name = torch.cuda.get_device_name() if dev == "cuda" else "CPU"
    print(f"device {name}, torch {torch.__version__}, batch {x.shape[0]}, "
          f"cudnn.allow_tf32={torch.backends.cudnn.allow_tf32}")
    print(f"ERM update: {1e3 * t_erm:.1f} ms; all channels_last: {1e3 * t_erm_cl:.1f} ms "
          f"({t_erm_cl / t_erm:.3f}x)")
    print("| precision | layout at the cut | ms per evaluation (T=3 mean) | x ERM | "
          "floor 1 + 3 t / t_ERM |")
    print("|---|---|---:|---:|---:|")
    for (precision, fmt), t in rows.items():
        print(f"| {precision} | {fmt} | {1e3 * t:.2f} | {t / t_erm:.4f} | "
              f"{1 + 3 * t / t_erm:.3f} |")


if __name__ == "__main__":
    main()
