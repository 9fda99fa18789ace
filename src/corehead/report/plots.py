"""Figures for scoring, ablation and KV-compression results; each takes the summary rows a command wrote.

Figures are built with matplotlib's object API (no pyplot state, no display needed); every function
writes one PNG and returns its path.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle


def head_map(scores: np.ndarray, selected: list[tuple[int, int]], title: str, path: Path) -> Path:
    """Heat map of a per-head score [layers, heads], the selected heads outlined."""
    fig = Figure(figsize=(max(4.0, scores.shape[1] * 0.35), max(2.5, scores.shape[0] * 0.35)))
    ax = fig.subplots()
    image = ax.imshow(scores, cmap="viridis", aspect="auto")
    for layer, head in selected:
        ax.add_patch(Rectangle((head - 0.5, layer - 0.5), 1, 1, fill=False, edgecolor="red", linewidth=1.5))
    ax.set_xlabel("head")
    ax.set_ylabel("layer")
    ax.set_title(title)
    fig.colorbar(image, ax=ax)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    return path


def ablation_sweep(table: list[dict[str, Any]], title: str, path: Path) -> Path:
    """Accuracy against k for each ranking's top-k, bottom-k and the random controls (mean over seeds),
    with the full model as a line; top-k and bottom-k carry their 95% intervals."""
    fig = Figure(figsize=(6.0, 4.0))
    ax = fig.subplots()
    full = next((r["accuracy"] for r in table if r["condition"] == "none"), None)
    if full is not None:
        ax.axhline(full, color="black", linestyle=":", label="full model")
    series: dict[str, dict[int, list[dict[str, Any]]]] = {}
    for r in table:
        if r["condition"] in ("none", "user"):
            continue
        name = "random (mean)" if r["condition"].startswith("random-") else f"{r['condition']} ({r['ranking']})"
        series.setdefault(name, {}).setdefault(r["k"], []).append(r)
    for name, by_k in sorted(series.items()):
        ks = sorted(by_k)
        acc = np.array([np.mean([r["accuracy"] for r in by_k[k]]) for k in ks])
        line = ax.plot(ks, acc, marker="o", label=name)[0]
        if not name.startswith("random"):
            base = full if full is not None else 0.0
            low = [base + by_k[k][0]["delta_accuracy_ci"][0] for k in ks]
            high = [base + by_k[k][0]["delta_accuracy_ci"][1] for k in ks]
            ax.fill_between(ks, low, high, color=line.get_color(), alpha=0.15)
    ax.set_xlabel("heads cut (k)")
    ax.set_ylabel("accuracy")
    ax.set_ylim(-0.02, 1.02)
    ax.set_title(title)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    return path


def kv_tradeoff(table: list[dict[str, Any]], title: str, path: Path) -> Path:
    """Accuracy (95% CI) against KV bytes kept (share of full), one point per method."""
    fig = Figure(figsize=(6.0, 4.0))
    ax = fig.subplots()
    for r in table:
        share = r["kv_bytes_vs_full"] if r["kv_bytes_vs_full"] is not None else 1.0
        lo, hi = r["accuracy_ci"]
        ax.errorbar(share, r["accuracy"], yerr=[[r["accuracy"] - lo], [hi - r["accuracy"]]], fmt="o", capsize=3)
        ax.annotate(r["method"], (share, r["accuracy"]), textcoords="offset points", xytext=(5, 3), fontsize=8)
    ax.set_xlabel("KV bytes kept (share of full)")
    ax.set_ylabel("accuracy")
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    return path
