"""An ablation's effects, from its rows (one per ranking, condition, k, draw and sample).

Per (ranking, condition, k) one summary row: accuracy and mean answer log-prob, their paired change
against `none` with a 95% interval and a p-value, and for a random control its draws listed inside
(`draws`: seed, heads, accuracy, changes). Intervals and p-values of a random control resample the
samples AND the draws (metrics.stats.samples_and_draws_ci), so they include the luck of the draw; those of
`top`, `bottom` and `user` resample samples (bootstrap) and flip signs (paired permutation test).

A `top` row also compares top with each control of its ranking and k: `vs_random`,
`vs_random_layer_matched` (top minus the control, per sample and draw; the same two-way bootstrap) and
`vs_bottom` (paired per sample), each with `_ci` and `_p`; for `patch`, the same for the share of answers
moved to the source's (`to_source_vs_*`). Every p-value `X_p` (and `p_value`) has a Holm-adjusted `X_p_holm`
(`p_holm`) beside it, over its family: the rows of the same condition across rankings and k.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np

from corehead.experiments.ablation_plan import CONTROLS, RANDOM_CONTROLS
from corehead.metrics.stats import bootstrap_mean_ci, holm, paired_permutation_p, samples_and_draws_ci

__all__ = ["summarize"]

Rows = list[dict[str, Any]]
ByDraw = dict[int | None, dict[str, dict[str, Any]]]  # draw -> sample id -> row
ORDER = {"none": 0, "user": 1, "top": 2, "bottom": 3, "random": 4, "random-layer-matched": 5}


def _effect(diffs: np.ndarray, drawn: bool) -> tuple[float, list[float], float]:
    """Mean of diffs [draws, samples], its 95% interval and p-value: over samples and draws for a random
    control (`drawn`), else over the samples of its one row (bootstrap interval, permutation p)."""
    if drawn:
        mean, low, high, p = samples_and_draws_ci(diffs)
        return mean, [low, high], p
    centre, lo, hi = bootstrap_mean_ci(diffs[0][:, None])
    return float(centre[0]), [float(lo[0]), float(hi[0])], paired_permutation_p(diffs[0])


def _matrix(by_draw: ByDraw, ids: list[str], key: str) -> np.ndarray:
    """[draws, samples] float values of `key`, draws in seed order."""
    draws = sorted(by_draw, key=lambda d: -1 if d is None else d)
    return np.array([[float(by_draw[d][i].get(key, 0.0)) for i in ids] for d in draws])


def _common(base: dict[str, Any], *groups: ByDraw) -> list[str]:
    """The sample ids (in id order) present in `base` and in every draw of every group."""
    return [i for i in sorted(base) if all(i in rows for g in groups for rows in g.values())]


def _condition(key: tuple[str, str, int], by_draw: ByDraw, base: dict[str, dict[str, Any]]) -> dict[str, Any] | None:
    """The summary row of one (ranking, condition, k)."""
    ranking, name, k = key
    ids = _common(base, by_draw)
    if not ids:
        return None
    drawn = name in RANDOM_CONTROLS
    none: ByDraw = {None: base}
    correct, logp = _matrix(by_draw, ids, "correct"), _matrix(by_draw, ids, "answer_logprob")
    d_acc, d_logp = correct - _matrix(none, ids, "correct"), logp - _matrix(none, ids, "answer_logprob")
    row: dict[str, Any] = {"ranking": ranking, "condition": name, "k": k, "n": len(ids)}
    row["accuracy"] = float(correct.mean())
    row["delta_accuracy"], row["delta_accuracy_ci"], row["p_value"] = _effect(d_acc, drawn)
    row["delta_logprob"], row["delta_logprob_ci"], row["delta_logprob_p"] = _effect(d_logp, drawn)
    patched = "to_source" in next(iter(by_draw.values()))[ids[0]]
    if patched:  # patching: how often the answer became the source's
        row["to_source"] = float(_matrix(by_draw, ids, "to_source").mean())
    if drawn:
        seeds = sorted(d for d in by_draw if d is not None)
        row["draws"] = [
            {
                "seed": seed,
                "heads": by_draw[seed][ids[0]]["heads"],
                "accuracy": float(correct[j].mean()),
                "delta_accuracy": float(d_acc[j].mean()),
                "delta_logprob": float(d_logp[j].mean()),
            }
            for j, seed in enumerate(seeds)
        ]
    return row


def _versus(row: dict[str, Any], top: ByDraw, controls: dict[str, ByDraw], base: dict[str, Any]) -> None:
    """Add to a top row its paired differences to each control of the same ranking and k."""
    patched = "to_source" in row
    for name, control in controls.items():
        ids = _common(base, top, control)
        if not ids:
            continue
        field = "vs_" + name.replace("-", "_")
        for metric, prefix in (("correct", ""), *((("to_source", "to_source_"),) if patched else ())):
            diffs = _matrix(top, ids, metric) - _matrix(control, ids, metric)
            effect = _effect(diffs, name in RANDOM_CONTROLS)
            row[prefix + field], row[f"{prefix}{field}_ci"], row[f"{prefix}{field}_p"] = effect


def _holm(table: Rows) -> None:
    """Holm-adjusted p-values beside the raw ones, per condition name and p-value field."""
    families: dict[tuple[str, str], Rows] = {}
    for row in table:
        if row["condition"] == "none":
            continue
        for key in [k for k in row if k == "p_value" or k.endswith("_p")]:
            families.setdefault((row["condition"], key), []).append(row)
    for (_, key), rows in families.items():
        name = "p_holm" if key == "p_value" else f"{key}_holm"
        for row, adjusted in zip(rows, holm([r[key] for r in rows]), strict=True):
            row[name] = adjusted


def _grouped(rows: Iterable[dict[str, Any]]) -> dict[tuple[str, str, int], ByDraw]:
    groups: dict[tuple[str, str, int], ByDraw] = {}
    for r in rows:
        groups.setdefault((r["ranking"], r["condition"], r["k"]), {}).setdefault(r.get("draw"), {})[r["id"]] = r
    return groups


def summarize(rows: Rows) -> Rows:
    """Per (ranking, condition, k): accuracy, mean answer log-prob, paired effects vs `none` with 95% CIs
    and p-values; top rows also vs each control (see the module doc); Holm-adjusted p-values beside all."""
    groups = _grouped(rows)
    base = next(iter(groups.get(("", "none", 0), {}).values()), {})

    def order(key: tuple[str, str, int]) -> tuple[int, str, int, str]:
        ranking, name, k = key
        return (k, ranking, ORDER.get(name, len(ORDER)), name)

    table = []
    for key in sorted(groups, key=order):
        row = _condition(key, groups[key], base)
        if row is None:
            continue
        if key[1] == "top":
            controls = {c: groups[(key[0], c, key[2])] for c in CONTROLS if (key[0], c, key[2]) in groups}
            _versus(row, groups[key], controls, base)
        table.append(row)
    _holm(table)
    return table
