"""The report's ablation and acceleration sections, from the summaries their runs wrote
(ablation.json, accelerate.json). An ablation's random controls show the mean over their draws with an
interval that includes the draw; p-values stand beside their Holm adjustment over rankings and k."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from corehead import plots
from corehead.report.page import Page, ci, esc, num, table, wall
from corehead.runfolder import RunFolder

CONTROLS = ("random", "random-layer-matched", "bottom")  # what a top row is compared with, in its columns


def _versus(row: dict[str, Any], control: str) -> str:
    """A top row's difference to a control, its 95% CI and Holm-adjusted p ('' where not compared)."""
    field = "vs_" + control.replace("-", "_")
    if field not in row:
        return ""
    return f"{row[field]:+.3f} {ci(row[f'{field}_ci'], fmt='+.3f')} p={num(row.get(f'{field}_p_holm'), '.2g')}"


def _held_out(result: dict[str, Any]) -> str:
    """What the run says about the samples the head set was scored on, and the controls it could not draw."""
    held = result.get("held_out")
    if held is None or held.get("scored_digest") is None:
        text = "held out: not checked (the head set does not record its scored samples)"
    elif held["allow_overlap"] and held["overlap"]:
        text = f"held out: NO, {held['overlap']} scored sample(s) kept (--allow-overlap)"
    else:
        text = f"held out: yes ({held['excluded']} scored sample(s) excluded)"
    if result.get("skipped"):
        text += f"; {result['skipped']} sample(s) the mode cannot cut skipped"
    if result.get("reference"):
        text += f"; head means over {result['reference']['n']} reference samples never evaluated"
    for gap in result.get("unavailable", []):
        text += f"; no {gap['condition']} control for {gap['ranking']} at k={gap['k']} ({gap['reason']})"
    return text


def ablation(page: Page, index: int, label: str, run: Path) -> dict[str, Any]:
    """The section of one ablation run: its sweep figure and every condition; returns its numbers."""
    folder = RunFolder(run)
    result = folder.read_summary("ablate")
    conditions = result["conditions"]
    n = max((r["n"] for r in conditions), default=0)
    slug = f"ablation{index}"
    title = f"{result['mode']} ablation ({label}, {n} samples)"
    figure = page.plot(lambda p: plots.ablation_sweep(conditions, title, p), slug, title)
    rows = [
        [esc(r["ranking"]), esc(r["condition"]), str(r["k"]), str(r["n"]), str(len(r.get("draws", []))),
         f"{r['accuracy']:.3f}", f"{r['delta_accuracy']:+.3f} {ci(r['delta_accuracy_ci'], fmt='+.3f')}",
         num(r["p_value"], ".3g"), num(r.get("p_holm"), ".3g"),
         f"{r['delta_logprob']:+.2f} {ci(r['delta_logprob_ci'], fmt='+.2f')}", *(_versus(r, c) for c in CONTROLS)]
        for r in conditions
    ]  # fmt: skip
    header = ["ranking", "condition", "k", "n", "draws", "accuracy", "Δ accuracy [95% CI]", "p", "p (Holm)"]
    versus = [f"top − {c} [95% CI] p (Holm)" for c in CONTROLS]
    heads = f"heads: <code>{esc(result['heads'])}</code>; " if result.get("heads") else ""
    manifest = folder.manifest()
    about = f"<p>{heads}wall time {esc(wall(manifest))}</p><p>{esc(_held_out(result))}</p>"
    body = f"{about}{figure}{table([*header, 'Δ answer log-prob', *versus], rows, 'num ablation')}"
    page.add(f"Ablation {label}", body, slug)
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

    def paired(r: dict[str, Any], reference: str) -> str:  # accuracy minus the reference's, paired by sample
        d = r.get("paired", {}).get(reference)
        return "" if d is None else f"{d['delta']:+.3f} {ci(d['ci'], fmt='+.3f')} p={num(d['p'], '.2g')}"

    rows = [
        [esc(r["method"]) + (f" ({len(r['draws'])} draws)" if "draws" in r else ""), str(r["n"]),
         f"{r['visual_kv_share']:.0%}", f"{r['accuracy']:.3f} {ci(r['accuracy_ci'])}", paired(r, "full"),
         paired(r, "core"), _with_ratio(r, "prefill_s", "ms", 1e3), _with_ratio(r, "decode_s_per_token", "ms", 1e3),
         _with_ratio(r, "kv_bytes", "KiB", 2**-10), _with_ratio(r, "peak_memory_bytes", "MiB", 2**-20)]
        for r in methods
    ]  # fmt: skip
    header = ["method", "n", "visual KV kept", "accuracy [95% CI]", "− full [95% CI] p", "− core [95% CI] p"]
    about = f"budget {result['budget']}; prefill {result['prefill']}; query-agnostic {result['query_agnostic']}"
    manifest = folder.manifest()
    about += f"; wall time {wall(manifest)}"
    body = f'<p>{esc(about)}</p><p>{esc(_held_out(result))}</p><div class="pair">{kv}{speed}</div>'
    body += table([*header, "prefill", "decode / token", "KV bytes", "peak memory"], rows, "num acceleration")
    page.add(f"Acceleration {label}", body, slug)
    return {"label": label, "path": str(run), "wall_s": manifest.get("wall_s"), **result}
