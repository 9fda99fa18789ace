"""The tables the commands print: built from the summaries the studies return or write, never computed here."""

from __future__ import annotations

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


def print_ablation(conditions: list[dict[str, Any]], title: str) -> None:
    """Every condition of an ablation: accuracy, its paired change with CI and p, top vs random."""
    view = Table(title=title)
    columns = ("ranking", "condition", "k", "accuracy", "Δ accuracy [95% CI]", "p", "top − random [95% CI]")
    patched = any("to_source" in row for row in conditions)
    for col in (*columns, "Δ answer log-prob [95% CI]", *(["to source's answer"] if patched else [])):
        view.add_column(col, justify="right")
    for row in conditions:
        lo, hi = row["delta_accuracy_ci"]
        lo_lp, hi_lp = row["delta_logprob_ci"]
        vs = ""
        if "vs_random" in row:
            vlo, vhi = row["vs_random_ci"]
            vs = f"{row['vs_random']:+.3f} [{vlo:+.3f}, {vhi:+.3f}]"
        view.add_row(
            row["ranking"],
            row["condition"],
            str(row["k"]),
            f"{row['accuracy']:.3f}",
            f"{row['delta_accuracy']:+.3f} [{lo:+.3f}, {hi:+.3f}]",
            f"{row['p_value']:.3g}",
            vs,
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


def print_acceleration(methods: list[dict[str, Any]], title: str) -> None:
    """Every KV method: visual KV kept, accuracy with CI, time, memory and KV bytes (ratios to full)."""
    view = Table(title=title)
    columns = ("method", "visual KV kept", "accuracy [95% CI]", "prefill", "decode / token", "peak memory", "KV bytes")
    for col in columns:
        view.add_column(col, justify="right")
    for row in methods:
        lo, hi = row["accuracy_ci"]
        view.add_row(
            row["method"],
            f"{row['visual_kv_share']:.0%}",
            f"{row['accuracy']:.3f} [{lo:.3f}, {hi:.3f}]",
            _with_ratio(row, "prefill_s", "ms", 1e3),
            _with_ratio(row, "decode_s_per_token", "ms", 1e3),
            _with_ratio(row, "peak_memory_bytes", "MiB", 2**-20),
            _with_ratio(row, "kv_bytes", "KiB", 2**-10),
        )
    out.print(view)


def print_core_heads(headsets: dict[str, Any], n_score: int) -> None:
    """Per domain of a study: its CoRe heads, the RAM of the top one, the layers they sit in."""
    table = Table(title=f"CoRe heads (top 5% by RAM over all text rows; {n_score} samples per domain)")
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


def _sweep_cell(row: dict[str, Any]) -> str:
    lo, hi = row["delta_accuracy_ci"]
    return f"{row['accuracy']:.2f} ({row['delta_accuracy']:+.2f} [{lo:+.2f}, {hi:+.2f}])"


def print_sweep(sweep: dict[str, list[dict[str, Any]]], n: int, seeds: int, mode: str = "zero") -> None:
    """Per domain and k: accuracy with the top-k, bottom-k and random-k heads cut (drops with 95% CIs)."""
    cutting = "zeroing heads" if mode == "zero" else f"cutting heads ({mode})"
    table = Table(title=f"{cutting} ({n} samples per domain; Δ vs the full model, 95% CI)")
    for col in ("domain", "k", "full model", "top-k", "bottom-k", f"random-k (mean of {seeds})", "top − random"):
        table.add_column(col, justify="right")
    for domain, rows in sweep.items():
        full = next(r for r in rows if r["condition"] == "none")
        for k in sorted({r["k"] for r in rows if r["k"]}):
            at = {r["condition"]: r for r in rows if r["k"] == k}
            random = [r["accuracy"] for name, r in at.items() if name.startswith("random-")]
            lo, hi = at["top"].get("vs_random_ci", [float("nan")] * 2)
            table.add_row(
                domain,
                str(k),
                f"{full['accuracy']:.2f}",
                _sweep_cell(at["top"]),
                _sweep_cell(at["bottom"]),
                f"{sum(random) / len(random):.2f}",
                f"{at['top'].get('vs_random', float('nan')):+.2f} [{lo:+.2f}, {hi:+.2f}]",
            )
    out.print(table)


def print_kv_comparison(compared: dict[str, list[dict[str, Any]]], methods: list[str], title: str) -> None:
    """Per domain of a study: accuracy and KV bytes (vs full) of each method."""
    table = Table(title=title)
    for col in ("domain", *(f"{m}: accuracy, KV bytes" for m in methods)):
        table.add_column(col, justify="right")
    for domain, rows in compared.items():
        by = {r["method"]: r for r in rows}
        table.add_row(domain, *(f"{by[m]['accuracy']:.2f}, {by[m]['kv_bytes_vs_full']:.2f}x" for m in methods))
    out.print(table)
