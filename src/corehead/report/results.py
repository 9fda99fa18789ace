"""The report's ablation and acceleration sections, from the summaries their runs wrote
(ablation.json, accelerate.json)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from corehead import plots
from corehead.report.page import Page, ci, esc, num, table, wall
from corehead.runfolder import RunFolder


def ablation(page: Page, index: int, label: str, run: Path) -> dict[str, Any]:
    """The section of one ablation run: its sweep figure and every condition; returns its numbers."""
    folder = RunFolder(run)
    result = folder.read_summary("ablate")
    conditions = result["conditions"]
    n = max((r["n"] for r in conditions), default=0)
    slug = f"ablation{index}"
    title = f"{result['mode']} ablation ({label}, {n} samples)"
    figure = page.plot(lambda p: plots.ablation_sweep(conditions, title, p), slug, title)
    rows = []
    for r in conditions:
        vs = ""
        if "vs_random" in r:
            vs = f"{r['vs_random']:+.3f} {ci(r['vs_random_ci'], fmt='+.3f')}"
        rows.append(
            [esc(r["ranking"]), esc(r["condition"]), str(r["k"]), str(r["n"]), f"{r['accuracy']:.3f}",
             f"{r['delta_accuracy']:+.3f} {ci(r['delta_accuracy_ci'], fmt='+.3f')}", num(r["p_value"], ".3g"),
             f"{r['delta_logprob']:+.2f} {ci(r['delta_logprob_ci'], fmt='+.2f')}", vs]
        )  # fmt: skip
    header = ["ranking", "condition", "k", "n", "accuracy", "Δ accuracy [95% CI]", "p", "Δ answer log-prob"]
    heads = f"heads: <code>{esc(result['heads'])}</code>; " if result.get("heads") else ""
    manifest = folder.manifest()
    about = f"<p>{heads}wall time {esc(wall(manifest))}</p>"
    page.add(f"Ablation {label}", f"{about}{figure}{table([*header, 'top − random'], rows, 'num ablation')}", slug)
    return {"label": label, "path": str(run), "wall_s": manifest.get("wall_s"), **result}


def _with_ratio(row: dict[str, Any], key: str, unit: str, scale: float) -> str:
    """A measurement in `unit`, with its ratio to full attention when known."""
    if row.get(key) is None:
        return "n/a (CPU)" if key == "peak_memory_bytes" else "n/a"
    ratio = row.get(f"{key}_vs_full")
    return f"{row[key] * scale:.3g} {unit}" + (f" ({ratio:.2f}x)" if ratio is not None else "")


def acceleration(page: Page, index: int, label: str, run: Path) -> dict[str, Any]:
    """The section of one acceleration run: accuracy vs KV kept and vs decode time, and every method."""
    folder = RunFolder(run)
    result = folder.read_summary("accelerate")
    methods = result["methods"]
    slug = f"acceleration{index}"
    title = f"{label}: budget {result['budget']}"
    kv = page.plot(lambda p: plots.kv_tradeoff(methods, f"accuracy vs KV kept ({title})", p), f"{slug}-kv", "KV")
    speed = page.plot(
        lambda p: plots.decode_tradeoff(methods, f"accuracy vs decode time ({title})", p), f"{slug}-decode", "decode"
    )
    rows = [
        [esc(r["method"]), str(r["n"]), f"{r['visual_kv_share']:.0%}",
         f"{r['accuracy']:.3f} {ci(r['accuracy_ci'])}", _with_ratio(r, "prefill_s", "ms", 1e3),
         _with_ratio(r, "decode_s_per_token", "ms", 1e3), _with_ratio(r, "kv_bytes", "KiB", 2**-10),
         _with_ratio(r, "peak_memory_bytes", "MiB", 2**-20)]
        for r in methods
    ]  # fmt: skip
    header = ["method", "n", "visual KV kept", "accuracy [95% CI]", "prefill", "decode / token", "KV bytes"]
    about = f"budget {result['budget']}; prefill {result['prefill']}; query-agnostic {result['query_agnostic']}"
    manifest = folder.manifest()
    about += f"; wall time {wall(manifest)}"
    body = f'<p>{esc(about)}</p><div class="pair">{kv}{speed}</div>'
    body += table([*header, "peak memory"], rows, "num acceleration")
    page.add(f"Acceleration {label}", body, slug)
    return {"label": label, "path": str(run), "wall_s": manifest.get("wall_s"), **result}
