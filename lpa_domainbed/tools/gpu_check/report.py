"""``cuda.json`` and ``cuda.md``: what ``make gpu-check`` found."""

from __future__ import annotations

import json
from pathlib import Path

from lpa_domainbed.tools.runinfo import json_default, machine_line

__all__ = ["write_report", "markdown"]


def _sites(summary: dict, top: int = 3) -> str:
    sites = summary.get("sites") or {}
    shown = [f"`{site}` x{n}" for site, n in list(sites.items())[:top]]
    return "; ".join(shown) + (f"; {len(sites) - top} more" if len(sites) > top else "") \
        if shown else "-"


def markdown(result: dict, bench_md: str | None) -> str:
    """The report as Markdown; ``bench_md`` is the benchmark's own report, appended."""
    lines = ["# GPU check (`make gpu-check`)", "",
             f"- Machine: {machine_line(result['machine'])}",
             f"- Wall time: {result['wall_s']:.0f} s. Synchronizations: "
             "`torch.cuda.set_sync_debug_mode('warn')`, each warning counted per `update()` "
             "call (median and maximum over the calls after the first) with the line of this "
             "package or DomainBed it came from. DomainBed's own ERM has one (`loss.item()`).",
             ""]
    tests = result.get("tests")
    lines += ["## Tests on the GPU", "",
              "- not run" if tests is None else
              f"- `{tests['command']}` with `LPA_DOMAINBED_TEST_DEVICE=cuda`: {tests['summary']} "
              f"({tests['wall_s']:.0f} s)", ""]
    train = result.get("train") or []
    if train:
        lines += ["## DomainBed's train script on Debug224 (ResNet-18, random weights)", "",
                  "| algorithm | result | wall (s) | updates | syncs / update (median) | max "
                  "| where |", "|---|---|---:|---:|---:|---:|---|"]
        for r in train:
            ok = "ok" if r["returncode"] == 0 and r["done"] else f"FAILED ({r['returncode']})"
            lines.append(f"| {r['algorithm']} | {ok} | {r['wall_s']:.0f} | {r.get('calls', '-')} "
                         f"| {r.get('median', '-')} | {r.get('max', '-')} | {_sites(r)} |")
        lines.append("")
    syncs = result.get("bench_syncs") or {}
    if syncs:
        lines += ["## Benchmark updates: synchronizations", "",
                  "| variant | updates | syncs / update (median) | max | where |",
                  "|---|---:|---:|---:|---|"]
        for key, s in syncs.items():
            lines.append(f"| {key} | {s['calls']} | {s['median']} | {s['max']} | {_sites(s)} |")
        lines.append("")
    if bench_md:
        lines += ["## Benchmark", "", bench_md.split("\n", 1)[1].lstrip()]
    return "\n".join(lines).rstrip() + "\n"


def write_report(result: dict, bench_part, out: Path) -> list[Path]:
    """Writes ``out/cuda.json`` (``result`` with the benchmark's records) and ``out/cuda.md``."""
    bench_md = None
    if bench_part is not None:
        from lpa_domainbed.tools.bench.report import markdown as bench_markdown

        records, syncs, (net, settings) = bench_part
        result = {**result, "bench_syncs": syncs, "bench": records}
        bench_md = bench_markdown(records, result["machine"], [net], settings)
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / "cuda.json", out / "cuda.md"]
    paths[0].write_text(json.dumps(result, indent=1, default=json_default) + "\n")
    paths[1].write_text(markdown(result, bench_md))
    return paths
