"""``latest.md``: the benchmark table, the targets and the demo's wall time."""

from __future__ import annotations

from lpa_domainbed.tools.bench.config import NetworkSpec, Settings
from lpa_domainbed.tools.runinfo import machine_line

__all__ = ["markdown"]


def _fmt(value, spec=".3f", none="-"):
    return none if value is None else format(value, spec)


def markdown(records: list[dict], machine: dict, nets: list[NetworkSpec], settings: Settings,
             ) -> str:
    """The report of :func:`~lpa_domainbed.tools.bench.cli.run`'s records, as Markdown."""
    bench = [r for r in records if r["kind"] == "benchmark"]
    targets = [r for r in records if r["kind"] == "target"]
    demo = [r for r in records if r["kind"] == "demo"]
    lines = ["# Training-update benchmark (`python -m lpa_domainbed.tools.bench`)", "",
             f"- Machine: {machine_line(machine)}",
             f"- Repetitions: {settings.warmup} warm-up update(s), then {settings.rounds} "
             f"interleaved rounds (round-robin over the variants); medians.",
             ]
    for net in nets:
        lines.append(f"- {net.describe()}")
    lines.append("- Network, per row: " + "; ".join(
        f"{net.name} = {net.network}" for net in nets) + ".")
    lines += [
        f"- Timed: the real `algorithm.update(minibatches)` on the {settings.clock} clock"
        + (" (process CPU time: with one torch thread it is the update's own work, little "
           "disturbed by other processes on a shared machine)" if settings.clock == "cpu" else "")
        + ". `x ERM` = median over rounds of the same-round ratio to ERM.",
        "- Floor = `1 + T t_tail / t_step` (exact PGD; `t_tail` = tail forward + backward to the "
        "cut's input with `CutForward.tail`, `t_step` = one ERM update); `+clean` adds ADA's "
        "clean-loss backward through the tail.",
        "- Peak memory = bytes the algorithm holds at the update's start (parameters, grads, "
        "buffers, optimizer state, own state, batch) + the highest net increase during the "
        + ("update (`torch.cuda.max_memory_allocated`)."
           if machine["device"] == "cuda" else
           "update (CPU: running sum of the CPU allocator's allocations/frees recorded by "
           "`torch.profiler(profile_memory=True)`). `transient` compares the increases only."),
        "",
        "| network | algorithm | mode | time (ms) | x ERM | floor | x floor | floor +clean "
        "| x floor +clean | peak mem (MiB) | mem x ERM | transient x ERM |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in bench:
        with_clean = r["floor_with_clean_ratio"] != r["floor_ratio"]
        clean = r["floor_with_clean_ratio"] if with_clean else None
        x_clean = r["ratio_vs_floor_with_clean"] if with_clean else None
        lines.append(
            f"| {r['network']} | {r['algorithm']} | {r['mode']} | {r['time_ms']:.1f} | "
            f"{r['ratio_vs_erm']:.3f} | {_fmt(r['floor_ratio'])} | {_fmt(r['ratio_vs_floor'])} | "
            f"{_fmt(clean)} | {_fmt(x_clean)} | {r['peak_bytes'] / 2**20:.1f} | "
            f"{r['peak_mem_ratio']:.3f} | {r['transient_mem_ratio']:.3f} |")
    lines += ["", "## Targets", "", "| network | target | value | limit | |",
              "|---|---|---:|---:|---|"]
    for t in targets:
        lines.append(f"| {t['network']} | {t['target']} | {_fmt(t['value'])} | {t['limit']:.2f} "
                     f"| {'MET' if t['met'] else 'MISSED'} |")
    if demo:
        d = demo[0]
        lines += ["", "## Embedded demo", ""]
        if d["sweep_wall_time_s"] is None:
            lines.append(f"- {d['note']}")
        else:
            ran = (f", {d['jobs_run']} of {d['jobs']} jobs run in that invocation"
                   if d.get("jobs") is not None and d.get("jobs_run") is not None else "")
            total = (f" ({d['total_wall_time_s']:.0f} s with the tables)"
                     if d.get("total_wall_time_s") is not None else "")
            machine_text = (machine_line(d["machine"]) if isinstance(d.get("machine"), dict)
                            else d.get("machine"))
            where = "; ".join(f"{k}: {v}" for k, v in (
                ("commit", d.get("commit")), ("DomainBed", d.get("domainbed_commit")),
                ("machine", machine_text)) if v)
            lines.append(f"- `make demo` sweep wall time: {d['sweep_wall_time_s']:.0f} s{total}"
                         f"{ran} (from {d['source']}" + (f"; {where}" if where else "") + ")")
    return "\n".join(lines) + "\n"
