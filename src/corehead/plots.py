"""Figures for scoring, ablation, KV-compression and scale results; each takes the summary rows a command (or
benchmark) wrote.

Figures are built with matplotlib's object API (no pyplot state, no display needed); every function
writes one figure (PNG, or SVG when the path ends in .svg) and returns its path.
"""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle
from matplotlib.ticker import MaxNLocator


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


def ablation_series(table: list[dict[str, Any]]) -> dict[str, dict[str, list[Any]]]:
    """What ablation_sweep draws: per series (each ranking's top-k, bottom-k, random-k and layer-matched
    random-k; "CONDITION (RANKING)") its k values and, for `accuracy` and `delta_logprob`, the row's value at
    each k (a random control's: the mean over its draws) and its 95% interval (`*_ci`; a random control's
    includes the draw)."""
    grouped: dict[str, dict[int, dict[str, Any]]] = {}
    for r in table:
        if r["condition"] not in ("none", "user"):
            grouped.setdefault(f"{r['condition']} ({r['ranking']})", {})[r["k"]] = r
    full = next((r["accuracy"] for r in table if r["condition"] == "none"), 0.0)
    series: dict[str, dict[str, list[Any]]] = {}
    for name, by_k in sorted(grouped.items()):
        ks = sorted(by_k)
        out: dict[str, list[Any]] = {"k": ks}
        for key, delta, base in (("accuracy", "delta_accuracy", full), ("delta_logprob", "delta_logprob", 0.0)):
            out[key] = [by_k[k][key] for k in ks]
            out[f"{key}_ci"] = [[base + b for b in by_k[k][f"{delta}_ci"]] for k in ks]
        series[name] = out
    return series


def ablation_sweep(table: list[dict[str, Any]], title: str, path: Path) -> Path:
    """Accuracy and the change in the gold answer's log-probability against k (ablation_series), with the
    full model as a line and a 95% band for every series (the random controls' include the draw)."""
    fig = Figure(figsize=(10.0, 4.0))
    axes = fig.subplots(1, 2)
    full = next((r["accuracy"] for r in table if r["condition"] == "none"), None)
    series = ablation_series(table)
    for ax, key, base in zip(axes, ("accuracy", "delta_logprob"), (full, 0.0), strict=True):
        if base is not None:
            ax.axhline(base, color="black", linestyle=":", label="full model")
        for name, data in series.items():
            line = ax.plot(data["k"], data[key], marker="o", label=name)[0]
            low, high = np.array(data[f"{key}_ci"]).T
            ax.fill_between(data["k"], low, high, color=line.get_color(), alpha=0.15)
        ax.set_xlabel("heads cut (k)")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    axes[0].set_ylabel("accuracy")
    axes[0].set_ylim(-0.02, 1.02)
    axes[1].set_ylabel("change in the gold answer's log-prob")
    axes[0].legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    return path


def kv_tradeoff(table: list[dict[str, Any]], title: str, path: Path) -> Path:
    """Accuracy (95% CI) against KV bytes kept (share of full), one point per method."""
    return _tradeoff(table, "kv_bytes_vs_full", "KV bytes kept (share of full)", title, path)


def decode_tradeoff(table: list[dict[str, Any]], title: str, path: Path) -> Path:
    """Accuracy (95% CI) against decode time per token (share of full), one point per method."""
    return _tradeoff(table, "decode_s_per_token_vs_full", "decode time per token (share of full)", title, path)


def _tradeoff(table: list[dict[str, Any]], key: str, xlabel: str, title: str, path: Path) -> Path:
    """Accuracy with its 95% CI against one *_vs_full ratio of each method (1.0 where the ratio is missing)."""
    fig = Figure(figsize=(6.0, 4.0))
    ax = fig.subplots()
    for r in table:
        share = r[key] if r.get(key) is not None else 1.0
        lo, hi = r["accuracy_ci"]
        ax.errorbar(share, r["accuracy"], yerr=[[r["accuracy"] - lo], [hi - r["accuracy"]]], fmt="o", capsize=3)
        ax.annotate(r["method"], (share, r["accuracy"]), textcoords="offset points", xytext=(5, 3), fontsize=8)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("accuracy")
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    return path


def scale_costs(table: list[dict[str, Any]], batch: int, title: str, path: Path) -> Path:
    """Decode time per token (median, min-max as error bars) and KV cache size (GiB) against visual tokens (log
    x), one line per method, at one batch size: how each method's cost grows with the picture."""
    fig = Figure(figsize=(10.0, 4.0))
    axes = fig.subplots(1, 2)
    rows = sorted((r for r in table if r["batch"] == batch), key=lambda r: r["visual_tokens"])
    for method, marker in zip(dict.fromkeys(r["method"] for r in rows), itertools.cycle("osD^v"), strict=False):
        mine = [r for r in rows if r["method"] == method]  # a marker each: methods of equal KV lie on one line
        tokens = [r["visual_tokens"] for r in mine]
        low, mid, high = (np.array([r["decode_ms"][k] for r in mine]) for k in ("min", "median", "max"))
        axes[0].errorbar(tokens, mid, yerr=[mid - low, high - mid], marker=marker, capsize=3, label=method)
        axes[1].plot(tokens, [r["kv_bytes"] / 2**30 for r in mine], marker=marker, fillstyle="none", label=method)
    sizes = sorted({r["visual_tokens"] for r in rows})
    for ax, ylabel in zip(axes, ("decode ms per token", "KV cache (GiB)"), strict=True):
        ax.set_xscale("log")
        ax.set_xticks(sizes, [str(n) for n in sizes])
        ax.minorticks_off()
        ax.set_xlabel("visual tokens")
        ax.set_ylabel(ylabel)
        ax.set_ylim(bottom=0)
    axes[0].legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    return path


def layer_profile(profile: np.ndarray, selected: list[tuple[int, int]], title: str, path: Path) -> Path:
    """Mean score per layer as bars, with the number of selected heads in each layer written on its bar."""
    fig = Figure(figsize=(max(4.0, len(profile) * 0.3), 3.0))
    ax = fig.subplots()
    bars = ax.bar(np.arange(len(profile)), profile, color="tab:blue")
    counts = np.bincount([layer for layer, _ in selected], minlength=len(profile))
    ax.bar_label(bars, labels=[str(c) if c else "" for c in counts], fontsize=8, color="red")
    ax.set_xticks(np.arange(len(profile)))
    ax.set_xlabel("layer (red: selected heads in it)")
    ax.set_ylabel("mean score over heads")
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    return path


def attention_overlay(
    pictures: list[np.ndarray],
    heats: list[list[np.ndarray]],
    boxes: list[tuple[float, float, float, float] | None],
    labels: list[str],
    title: str,
    path: Path,
) -> Path:
    """A grid of one sample's pictures (columns) with each head's attention (rows) laid over them.

    heats[row][unit] is a map at the picture's resolution (any scale; each row is shown relative to its own
    maximum), boxes[unit] the evidence region's box in picture pixels (None: no region there).
    """
    rows, cols = len(heats), len(pictures)
    fig = Figure(figsize=(1.0 + 1.8 * cols, 0.6 + 1.8 * rows))
    axes = np.atleast_2d(fig.subplots(rows, cols, squeeze=False))
    for r, row in enumerate(heats):
        top = max(float(h.max()) for h in row) or 1.0
        for c, (picture, heat) in enumerate(zip(pictures, row, strict=True)):
            ax = axes[r, c]
            ax.imshow(picture)
            ax.imshow(heat / top, cmap="inferno", alpha=0.6, vmin=0.0, vmax=1.0)
            box = boxes[c]
            if box is not None:
                x0, y0, x1, y1 = box
                ax.add_patch(Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, edgecolor="lime", linewidth=1.5))
            ax.set_xticks([])
            ax.set_yticks([])
            if c == 0:
                ax.set_ylabel(labels[r], fontsize=8)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    return path


def unit_mass(masses: dict[str, np.ndarray], xlabel: str, title: str, path: Path) -> Path:
    """Attention mass on each unit (page or frame) per head, one line per head, for multi-unit samples."""
    fig = Figure(figsize=(6.0, 3.0))
    ax = fig.subplots()
    for label, values in masses.items():
        ax.plot(np.arange(len(values)), values, marker="o", label=label)
    ax.set_xticks(np.arange(max(len(v) for v in masses.values())))
    ax.set_xlabel(xlabel)
    ax.set_ylabel("attention mass")
    ax.set_title(title)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    return path


def ram_vs_causal(
    ram: np.ndarray,
    effect: np.ndarray,
    interval: tuple[np.ndarray, np.ndarray],
    core: list[tuple[int, int]],
    causal_top: list[tuple[int, int]],
    xlabel: str,
    title: str,
    path: Path,
) -> Path:
    """Each head's RAM score (x) against its causal effect (y, with its 95% CI as an error bar), all
    [layers, heads]: whether the heads RAM selects (`core`) are the heads the model needs (`causal_top`)."""
    fig = Figure(figsize=(6.5, 4.5))
    ax = fig.subplots()
    low, high = (bound.ravel() for bound in interval)
    y = effect.ravel()
    ax.errorbar(
        ram.ravel(), y, yerr=[y - low, high - y], fmt="o", ms=3, color="grey", ecolor="lightgrey", label="heads"
    )
    marks = {"CoRe heads (RAM)": (core, "o", "red", 70), "causal top heads": (causal_top, "s", "tab:blue", 110)}
    for name, (heads, marker, color, size) in marks.items():
        if heads:
            rows, cols = np.array(heads).T
            at = (ram[rows, cols], effect[rows, cols])
            ax.scatter(*at, s=size, marker=marker, edgecolors=color, facecolors="none", zorder=3, label=name)
    for layer, head in dict.fromkeys([*core, *causal_top]):
        where = (ram[layer, head], effect[layer, head])
        ax.annotate(f"L{layer}H{head}", where, xytext=(6, 3), textcoords="offset points", fontsize=7)
    ax.axhline(0.0, color="black", linestyle=":", linewidth=0.8)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("drop in the gold answer's log-prob when cut")
    ax.set_title(title)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    return path


def causal_layer_profile(causal: np.ndarray, ram: np.ndarray | None, ram_label: str, title: str, path: Path) -> Path:
    """Mean causal effect per layer (left axis) beside the mean RAM score per layer (right axis, when given):
    the two are on different scales, so each line has its own axis."""
    fig = Figure(figsize=(max(5.0, len(causal) * 0.35), 3.2))
    ax = fig.subplots()
    layers = np.arange(len(causal))
    lines = ax.plot(layers, causal, marker="o", color="tab:orange", label="causal effect (left)")
    ax.axhline(0.0, color="black", linestyle=":", linewidth=0.8)
    ax.set_ylabel("mean drop in log-prob")
    if ram is not None:
        right = ax.twinx()
        lines += right.plot(layers, ram, marker="s", color="tab:blue", label=f"{ram_label} (right)")
        right.set_ylabel(ram_label)
    ax.set_xticks(layers)
    ax.set_xlabel("layer")
    ax.set_title(title)
    ax.legend(handles=lines, fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    return path
