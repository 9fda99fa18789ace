"""What an ablation cuts: per ranking and k, the top-k heads and same-size controls drawn from that ranking.

Conditions: `none` (the model as is), `user` (a given head set), and per ranking and k: `top` (its k best
heads), `bottom` (its k worst), `random` (k heads drawn uniformly from outside ITS top k) and
`random-layer-matched` (drawn outside its top k with as many heads in each layer as the top k has; the
top heads of a model sit in few layers, so a control drawn from every layer differs in more than its
rank). Each random control is drawn `seeds` times (draw = the seed); the draws are one condition whose
uncertainty includes the draw. A control that cannot be drawn (fewer heads outside the top k than k, or a
layer without enough of them) is left out and listed by `unavailable`.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Any

import numpy as np

from corehead.attention.interventions import Head

__all__ = [
    "CONTROLS",
    "RANDOM_CONTROLS",
    "Condition",
    "ConditionKey",
    "conditions",
    "parse_k",
    "plan_conditions",
    "unavailable",
]

RANDOM_CONTROLS: tuple[str, ...] = ("random", "random-layer-matched")
CONTROLS: tuple[str, ...] = ("bottom", *RANDOM_CONTROLS)
ConditionKey = tuple[str, str, int, int | None]  # ranking, condition name, k, draw


@dataclass(frozen=True)
class Condition:
    """One ablation: which ranking chose the heads, a name (none, user, top, bottom, random,
    random-layer-matched), k, the heads, and for a random control the seed of its draw."""

    ranking: str
    name: str
    k: int
    heads: tuple[Head, ...]
    draw: int | None = None

    @property
    def key(self) -> ConditionKey:
        return self.ranking, self.name, self.k, self.draw


class Unavailable(ValueError):
    """A control that cannot be drawn for a ranking and k (the reason is the message)."""


def parse_k(spec: str, n_heads: int) -> list[int]:
    """'1%,2%,5%' (shares of all n_heads, at least one head each) or '3,6' (counts): sorted distinct counts."""
    ks = set()
    for part in (p.strip() for p in spec.split(",") if p.strip()):
        try:
            k = max(1, round(float(part[:-1]) / 100 * n_heads)) if part.endswith("%") else int(part)
        except ValueError:
            raise ValueError(f"k takes head counts or percentages such as 1%,5%,3; got {part!r}") from None
        if not 0 < k < n_heads:
            raise ValueError(f"k must be between 1 and {n_heads - 1} heads, got {part}")
        ks.add(k)
    if not ks:
        raise ValueError("no k given")
    return sorted(ks)


def _random(ranking: list[Head], k: int, seed: int) -> tuple[Head, ...]:
    """k heads drawn uniformly from outside the top k, in rank order."""
    outside = ranking[k:]
    if len(outside) < k:
        raise Unavailable(f"only {len(outside)} heads lie outside the top {k}")
    pick = np.random.default_rng([seed, k]).choice(len(outside), size=k, replace=False)
    return tuple(outside[int(i)] for i in sorted(pick))


def _layer_matched(ranking: list[Head], k: int, seed: int) -> tuple[Head, ...]:
    """Per layer, as many heads as the top k has there, drawn uniformly from that layer's heads outside the
    top k; in rank order."""
    counts = Counter(layer for layer, _ in ranking[:k])
    rng = np.random.default_rng([seed, k, 1])
    chosen: set[Head] = set()
    for layer, count in sorted(counts.items()):
        pool = [h for h in ranking[k:] if h[0] == layer]
        if len(pool) < count:
            raise Unavailable(f"layer {layer} has {count} of the top {k} heads but only {len(pool)} outside them")
        chosen.update(pool[int(i)] for i in rng.choice(len(pool), size=count, replace=False))
    return tuple(h for h in ranking if h in chosen)


DRAWS = {"random": _random, "random-layer-matched": _layer_matched}


def _control(ranking: list[Head], k: int, seeds: int, control: str, name: str) -> list[Condition]:
    """One control at k: bottom-k, or `seeds` draws of a random control (Unavailable if it cannot be drawn)."""
    if control == "bottom":
        return [Condition(name, "bottom", k, tuple(ranking[-k:]))]
    return [Condition(name, control, k, DRAWS[control](ranking, k, s), s) for s in range(seeds)]


def _check(ranking: list[Head], k: int, controls: tuple[str, ...]) -> None:
    unknown = set(controls) - set(CONTROLS)
    if unknown:
        raise ValueError(f"controls must be among {', '.join(CONTROLS)}; got {', '.join(sorted(unknown))}")
    if not 0 < k < len(ranking):
        raise ValueError(f"k must be between 1 and {len(ranking) - 1}, got {k}")


def conditions(
    ranking: list[Head], ks: list[int], seeds: int = 5, controls: tuple[str, ...] = CONTROLS, name: str = "ram:all"
) -> list[Condition]:
    """For each k: top-k, then the controls asked for (bottom-k; `seeds` draws of each random control), all
    from `ranking`; a control that cannot be drawn at some k is left out there (see `unavailable`)."""
    out = []
    controls = tuple(dict.fromkeys(controls))  # each control once
    for k in ks:
        _check(ranking, k, controls)
        out.append(Condition(name, "top", k, tuple(ranking[:k])))
        for control in controls:
            try:
                out += _control(ranking, k, seeds, control, name)
            except Unavailable:
                continue
    return out


def unavailable(
    rankings: dict[str, list[Head]], ks: list[int], controls: tuple[str, ...] = CONTROLS
) -> list[dict[str, Any]]:
    """The controls `conditions` leaves out: ranking, condition, k and why."""
    out = []
    for name, ranking in rankings.items():
        for k in ks:
            _check(ranking, k, controls)
            for control in controls:
                try:
                    _control(ranking, k, 1, control, name)
                except Unavailable as why:
                    out.append({"ranking": name, "condition": control, "k": k, "reason": str(why)})
    return out


def plan_conditions(
    rankings: dict[str, list[Head]],
    ks: list[int],
    seeds: int = 5,
    controls: tuple[str, ...] = CONTROLS,
    user: list[Head] | None = None,
) -> list[Condition]:
    """The whole experiment: none, the user's set, then each ranking's top-k with its own controls."""
    out = [Condition("", "none", 0, ())]
    if user:
        out.append(Condition("", "user", len(user), tuple(user)))
    for name, ranking in rankings.items():
        out += conditions(ranking, ks, seeds, controls, name)
    return out
