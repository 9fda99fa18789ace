"""The summary of an `accelerate` run: per KV method its accuracy, paired differences to `full` and `core`,
timings, KV bytes and peak memory (RUN/accelerate.json's "methods").

Pairing: every method answers the same samples, so a method is compared with `full` and with `core` sample by
sample (`paired`: the mean difference in accuracy, a 95% bootstrap interval, a paired permutation p). A
drawn method (`random`, one set of KV heads per seed) is summed up over all its draws: its accuracy is the
mean over draws and samples, and its intervals resample the samples and the draws
(metrics.stats.samples_and_draws_ci), so they include the luck of the draw; `draws` lists each draw's
accuracy.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from corehead.experiments.kv_methods import KV_METHODS
from corehead.metrics.stats import paired_permutation_p, samples_and_draws_ci

__all__ = ["REFERENCES", "Correct", "summarize"]

REFERENCES = ("full", "core")  # every method's accuracy is compared, paired, with theirs


@dataclass(frozen=True)
class Correct:
    """A method's correctness per draw and sample: `values` [draws, samples] over the samples every draw
    answered (`ids`), `draws` [(draw, seed)] (one (None, None) for a method that is not drawn)."""

    ids: list[str]
    values: np.ndarray
    draws: list[tuple[int | None, int | None]]

    @classmethod
    def of(cls, rows: list[dict[str, Any]]) -> Correct:
        by_draw: dict[tuple[int | None, int | None], dict[str, float]] = {}
        for r in rows:
            by_draw.setdefault((r.get("draw"), r.get("draw_seed")), {})[r["id"]] = float(r["correct"])
        first = next(iter(by_draw.values()))
        ids = [i for i in first if all(i in answered for answered in by_draw.values())]
        values = np.array([[answered[i] for i in ids] for answered in by_draw.values()]).reshape(len(by_draw), -1)
        return cls(ids, values, list(by_draw))

    def minus(self, other: Correct) -> dict[str, Any] | None:
        """This method's accuracy minus `other`'s on the samples both answered, paired by sample: the mean
        difference, its 95% bootstrap interval over samples and draws, and the two-sided p of a paired
        permutation test (sign flips of the per-sample differences averaged over draws, conditional on the
        drawn sets; with several draws `p_with_draws` is the bootstrap p over samples and draws)."""
        theirs = {i: k for k, i in enumerate(other.ids)}
        both = [k for k, i in enumerate(self.ids) if i in theirs]
        if not both:
            return None
        diffs = self.values[:, both] - other.values[:, [theirs[self.ids[k]] for k in both]].mean(0)
        mean, low, high, p_draws = samples_and_draws_ci(diffs)
        paired = {"delta": mean, "ci": [low, high], "p": paired_permutation_p(diffs.mean(0)), "n": len(both)}
        return paired | ({"p_with_draws": p_draws} if len(diffs) > 1 else {})


def summarize(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per method: accuracy with a 95% CI, its paired difference to `full` and to `core` (`paired`), median
    prefill and decode times, KV bytes; ratios to `full`. A drawn method counts every draw's rows: its
    accuracy is the mean over draws and samples, its intervals resample samples and draws, and `draws`
    lists each draw's accuracy."""
    by_method: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        by_method.setdefault(r["method"], []).append(r)
    correct = {method: Correct.of(group) for method, group in by_method.items()}
    table = [_method_summary(method, group, correct[method]) for method, group in by_method.items()]
    full = next((t for t in table if t["method"] == "full"), None)
    for t in table:
        for key in ("accuracy", "prefill_s", "decode_s_per_token", "kv_bytes", "peak_memory_bytes"):
            base = full.get(key) if full is not None else None
            t[f"{key}_vs_full"] = t[key] / base if base and t[key] is not None else None
        against = {ref: correct[t["method"]].minus(correct[ref]) for ref in REFERENCES if ref in correct}
        t["paired"] = {ref: diff for ref, diff in against.items() if diff is not None and ref != t["method"]}
    order = {m: i for i, m in enumerate(KV_METHODS.names())}
    return sorted(table, key=lambda t: order.get(t["method"], len(order)))


def _method_summary(method: str, group: list[dict[str, Any]], correct: Correct) -> dict[str, Any]:
    """One method's accuracy (over draws and samples), timings, KV bytes and peak memory."""
    mean, low, high, _ = samples_and_draws_ci(correct.values)
    decode = [r["decode_s_per_token"] for r in group if r["decode_s_per_token"] is not None]
    peaks = [r["peak_memory_bytes"] for r in group if r["peak_memory_bytes"] is not None]
    row = {
        "method": method,
        "n": len(correct.ids),
        "visual_kv_share": float(np.mean([r["visual_kv_share"] for r in group])),
        "accuracy": mean,
        "accuracy_ci": [low, high],
        "prefill_s": float(np.median([r["prefill_s"] for r in group])),
        "decode_s_per_token": float(np.median(decode)) if decode else None,
        "kv_bytes": float(np.mean([r["kv_bytes"] for r in group])),
        "kv_bytes_full": float(np.mean([r["kv_bytes_full"] for r in group])),
        "peak_memory_bytes": float(np.max(peaks)) if peaks else None,
    }
    if correct.draws != [(None, None)]:
        accuracy = correct.values.mean(1)
        row["draws"] = [
            {"draw": d, "seed": s, "accuracy": float(a)} for (d, s), a in zip(correct.draws, accuracy, strict=True)
        ]
    return row
