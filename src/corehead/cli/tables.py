"""The tables the commands print: built from the summaries the studies return or write, never computed here."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from rich.table import Table

from corehead.cli.console import out


def accuracy_table(title: str, by_domain: dict[str, dict[str, float]], total: dict[str, float]) -> Table:
    """Accuracy per domain, and over all of them when there are several."""
    table = Table(title=title)
    table.add_column("domain")
    table.add_column("n", justify="right")
    table.add_column("accuracy", justify="right")
    for domain, row in by_domain.items():
        table.add_row(domain, str(int(row["n"])), f"{row['accuracy']:.3f}")
    if len(by_domain) > 1:
        table.add_row("[bold]all[/bold]", str(int(total["n"])), f"[bold]{total['accuracy']:.3f}[/bold]")
    return table


def print_headset(headset: Any, top: int = 10) -> None:
    """A head set's top heads with their CIs, and its layer profile."""
    table = Table(title=f"top heads by {headset.metric} ({headset.query} rows; {headset.n_samples} samples)")
    for col in ("rank", "layer", "head", "kv head", "mean", "95% CI", "selected"):
        table.add_column(col, justify="right")
    mean, low, high = (headset.scores[k] for k in ("mean", "low", "high"))
    chosen = set(headset.selected)
    for rank, (layer, head) in enumerate(headset.ranking[:top], start=1):
        table.add_row(
            str(rank),
            str(layer),
            str(head),
            str(head // headset.groups),
            f"{mean[layer][head]:.3f}",
            f"{low[layer][head]:.3f}-{high[layer][head]:.3f}",
            "yes" if (layer, head) in chosen else "",
        )
    out.print(table)
    profile = Table(title="layer profile (mean score over heads)")
    profile.add_column("layer", justify="right")
    profile.add_column("mean", justify="right")
    profile.add_column("selected heads", justify="right")
    for layer, value in enumerate(headset.layer_profile()):
        profile.add_row(str(layer), f"{value:.4f}", str(sum(1 for l_, _ in headset.selected if l_ == layer)))
    out.print(profile)


def _versus(row: dict[str, Any], control: str, digits: int = 3) -> str:
    """A top row's difference to a control with its 95% CI and Holm-adjusted p ('' where not compared)."""
    field = "vs_" + control.replace("-", "_")
    if field not in row:
        return ""
    lo, hi = row[f"{field}_ci"]
    p = row.get(f"{field}_p_holm")  # absent from summaries written before Holm's adjustment
    return f"{row[field]:+.{digits}f} [{lo:+.{digits}f}, {hi:+.{digits}f}]" + ("" if p is None else f" p={p:.2g}")


def _condition_name(row: dict[str, Any]) -> str:
    draws = row.get("draws")
    return f"{row['condition']} ({len(draws)} draws)" if draws else row["condition"]


CONTROL_COLUMNS = (
    ("random", "top − random"),
    ("random-layer-matched", "top − layer-matched"),
    ("bottom", "top − bottom"),
)


def print_ablation(conditions: list[dict[str, Any]], title: str) -> None:
    """Every condition of an ablation: accuracy (a random control's: the mean over its draws), its paired
    change with CI (a random control's includes the draw), p and Holm-adjusted p; top vs each control."""
    view = Table(title=title)
    columns = ("ranking", "condition", "k", "accuracy", "Δ accuracy [95% CI]", "p", "p (Holm)")
    patched = any("to_source" in row for row in conditions)
    compared = [c for c in CONTROL_COLUMNS if any(_versus(row, c[0]) for row in conditions)]
    versus = [f"{label} [95% CI] p (Holm)" for _, label in compared]
    for col in (*columns, *versus, "Δ answer log-prob [95% CI]", *(["to source's answer"] if patched else [])):
        view.add_column(col, justify="right")
    for row in conditions:
        lo, hi = row["delta_accuracy_ci"]
        lo_lp, hi_lp = row["delta_logprob_ci"]
        view.add_row(
            row["ranking"],
            _condition_name(row),
            str(row["k"]),
            f"{row['accuracy']:.3f}",
            f"{row['delta_accuracy']:+.3f} [{lo:+.3f}, {hi:+.3f}]",
            f"{row['p_value']:.3g}",
            f"{row['p_holm']:.3g}" if "p_holm" in row else "",
            *(_versus(row, control) for control, _ in compared),
            f"{row['delta_logprob']:+.2f} [{lo_lp:+.2f}, {hi_lp:+.2f}]",
            *([f"{row.get('to_source', float('nan')):.3f}"] if patched else []),
        )
    out.print(view)


def _with_ratio(row: dict[str, Any], key: str, unit: str, scale: float) -> str:
    """A measurement in `unit`, with its ratio to full attention when known."""
    if row[key] is None:
        return "n/a (CPU)" if key == "peak_memory_bytes" else "n/a"
    ratio = row[f"{key}_vs_full"]
    return f"{row[key] * scale:.3g} {unit}" + (f" ({ratio:.2f}x)" if ratio is not None else "")


def _paired(row: dict[str, Any], reference: str, digits: int = 3) -> str:
    """A method's accuracy minus the reference method's, paired by sample: mean [95% CI] and p."""
    diff = row.get("paired", {}).get(reference)
    if diff is None:
        return ""
    lo, hi = diff["ci"]
    return f"{diff['delta']:+.{digits}f} [{lo:+.{digits}f}, {hi:+.{digits}f}] p={diff['p']:.2g}"


def _method_name(row: dict[str, Any]) -> str:
    """A method's name, with its number of draws for a drawn method (random)."""
    return row["method"] + (f" ({len(row['draws'])} draws)" if "draws" in row else "")


def print_acceleration(methods: list[dict[str, Any]], title: str) -> None:
    """Every KV method: visual KV kept, accuracy with CI, its paired differences to full and core, time,
    memory and KV bytes (ratios to full)."""
    view = Table(title=title)
    columns = ("method", "visual KV kept", "accuracy [95% CI]", "− full [95% CI]", "− core [95% CI]", "prefill")
    for col in (*columns, "decode / token", "peak memory", "KV bytes"):
        view.add_column(col, justify="right")
    for row in methods:
        lo, hi = row["accuracy_ci"]
        view.add_row(
            _method_name(row),
            f"{row['visual_kv_share']:.0%}",
            f"{row['accuracy']:.3f} [{lo:.3f}, {hi:.3f}]",
            _paired(row, "full"),
            _paired(row, "core"),
            _with_ratio(row, "prefill_s", "ms", 1e3),
            _with_ratio(row, "decode_s_per_token", "ms", 1e3),
            _with_ratio(row, "peak_memory_bytes", "MiB", 2**-20),
            _with_ratio(row, "kv_bytes", "KiB", 2**-10),
        )
    out.print(view)


def print_core_heads(headsets: dict[str, Any], n_score: int) -> None:
    """Per domain of a study: its CoRe heads, the RAM of the top one, the layers they sit in."""
    first = next(iter(headsets.values()))
    rows = f"{first.metric} on {first.query.replace('_', '-')} rows"
    table = Table(title=f"CoRe heads (top 5% by {rows}; {n_score} scoring samples per domain)")
    for col in ("domain", "CoRe heads (layer.head)", "RAM of the top head", "layers of the CoRe heads"):
        table.add_column(col)
    for domain, headset in headsets.items():
        top = headset.selected[0]
        layers = sorted({layer for layer, _ in headset.selected})
        table.add_row(
            domain,
            " ".join(f"{l_}.{h}" for l_, h in headset.selected),
            f"{headset.scores['mean'][top[0]][top[1]]:.3f}",
            ", ".join(map(str, layers)),
        )
    out.print(table)


def _sweep_cell(row: dict[str, Any] | None) -> str:
    if row is None:
        return "–"
    lo, hi = row["delta_accuracy_ci"]
    return f"{row['accuracy']:.2f} ({row['delta_accuracy']:+.2f} [{lo:+.2f}, {hi:+.2f}])"


def print_sweep(sweep: dict[str, list[dict[str, Any]]], n: int, seeds: int, mode: str = "zero") -> None:
    """Per domain, ranking and k: accuracy with the top-k, bottom-k, random-k and layer-matched random-k
    heads cut (the random ones: mean over their draws; drops with 95% CIs, the random ones' including the
    draw), and top minus each random control with its CI and Holm-adjusted p."""
    cutting = "zeroing heads" if mode == "zero" else f"cutting heads ({mode})"
    table = Table(title=f"{cutting} ({n} samples per domain; Δ vs the full model, 95% CI)")
    columns = ("domain", "k", "full model", "top-k", "bottom-k", f"random-k ({seeds} draws)")
    for col in (*columns, f"layer-matched ({seeds} draws)", "top − random, p (Holm)", "top − layer-matched, p (Holm)"):
        table.add_column(col, justify="right")
    for domain, rows in sweep.items():
        full = next(r for r in rows if r["condition"] == "none")
        tops = [r for r in rows if r["condition"] == "top"]
        several = len({r.get("ranking", "") for r in tops}) > 1
        for top in tops:
            ranking, k = top.get("ranking", ""), top["k"]
            at = {r["condition"]: r for r in rows if r["k"] == k and r.get("ranking", "") == ranking}
            table.add_row(
                f"{domain} ({ranking})" if several else domain,
                str(k),
                f"{full['accuracy']:.2f}",
                _sweep_cell(top),
                _sweep_cell(at.get("bottom")),
                _sweep_cell(at.get("random")),
                _sweep_cell(at.get("random-layer-matched")),
                _versus(top, "random", 2),
                _versus(top, "random-layer-matched", 2),
            )
    out.print(table)


def print_kv_comparison(compared: dict[str, list[dict[str, Any]]], methods: list[str], title: str) -> None:
    """Per domain of a study and method: accuracy, its paired differences to full and core (95% CI, p), KV
    bytes (vs full)."""
    table = Table(title=title)
    for col in ("domain", "method", "accuracy", "− full [95% CI]", "− core [95% CI]", "KV bytes"):
        table.add_column(col, justify="right")
    for domain, rows in compared.items():
        by = {r["method"]: r for r in rows}
        for m in methods:
            row = by[m]
            cells = (f"{row['accuracy']:.2f}", _paired(row, "full", 2), _paired(row, "core", 2))
            table.add_row(domain, _method_name(row), *cells, f"{row['kv_bytes_vs_full']:.2f}x")
    out.print(table)


def _with_ci(row: dict[str, Any], name: str) -> str:
    """A statistic with its 95% interval ('n/a' when undefined)."""
    if math.isnan(row[name]):
        return "n/a"
    return f"{row[name]:.3f} [{row[f'{name}_low']:.3f}, {row[f'{name}_high']:.3f}]"


def print_agreement(rows: list[dict[str, Any]], causal: Path) -> None:
    """How well each RAM ranking predicts the causal effects: one line per ranking."""
    first = rows[0]
    view = Table(
        title=f"RAM rankings vs causal effects in {causal} ({first['n_causal']} samples; top k = {first['k']} "
        f"heads; {first['needed']} heads needed: effect CI above 0)"
    )
    shared = "overlap" in first
    for col in ("ranking", "samples", "Spearman [95% CI]", "precision@k [95% CI]", "recall [95% CI]"):
        view.add_column(col, justify="right")
    if shared:
        view.add_column("shared samples", justify="right")
    for row in rows:
        cells = [_with_ci(row, name) for name in ("spearman", "precision", "recall")]
        view.add_row(row["ranking"], str(row["n_ram"]), *cells, *([str(row["overlap"])] if shared else []))
    out.print(view)
