"""Causal test of head rankings: cut the top-k heads and same-size controls, measure the damage honestly.

Conditions: `none` (the model as is); for each k, `top` (the k best-ranked heads), `bottom` (the k
worst-ranked) and `random-s` for each seed s (k heads drawn uniformly from outside the top k, so never a
top head); `user` (a given head set). Several rankings can be compared causally (RAM on question rows vs
answer rows, RAM minus distractor mass, ...): each contributes its top-k; the controls come from the first.

Modes, how a head is cut: `zero` / `mean` (its slice of the o_proj input), `query-zero` (the legacy
uniform-attention ablation of Retrieval Head and SparseMM), `mask-visual` / `mask-region` (it may not
attend to any visual token / to the sample's region tokens; renormalised over the rest), and `patch`
(activation patching: at the last prompt token, its slice takes the value it had on a paired source sample
with another answer; rows then also say whether the answer moved to the source's answer). Each mode is a
small class in experiments/modes/, registered in `MODES`.

Every sample is answered under every condition; rows (ranking, condition, k, sample, prediction, correct,
gold-answer log-prob) are appended to RUN/ablation.jsonl as produced, and a rerun skips the rows already
there. Effects are paired differences against `none` (and, for top-k, against the mean of the same-k random
controls) with 95% bootstrap intervals and a paired sign-flip permutation test; they go to RUN/ablation.json
and RUN/ablation.png when the run is done.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch

from corehead.attention.interventions import Head
from corehead.data.sample import Sample
from corehead.experiments.modes import MODES, AblationMode, Needs, ablation_mode, last_prompt_token
from corehead.experiments.runs import Shard
from corehead.experiments.study import JsonRows, Position, Study, Work, run_study
from corehead.heads import HeadSet
from corehead.metrics.stats import bootstrap_mean_ci, paired_permutation_p
from corehead.metrics.tasks import score_answer
from corehead.models.base import ChatAdapter, Encoded
from corehead.plots import ablation_sweep
from corehead.runfolder import RunFolder

__all__ = [
    "CONTROLS",
    "MODES",
    "Condition",
    "ablate",
    "conditions",
    "intervened",
    "pair_sources",
    "parse_k",
    "plan_conditions",
    "summarize",
]

CONTROLS: tuple[str, ...] = ("bottom", "random")
ConditionKey = tuple[str, str, int]  # ranking, condition name, k


@dataclass(frozen=True)
class Condition:
    """One ablation: which ranking chose the heads, a name (none, top, bottom, random-S, user), k, the heads."""

    ranking: str
    name: str
    k: int
    heads: tuple[Head, ...]

    @property
    def key(self) -> ConditionKey:
        return self.ranking, self.name, self.k


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


def conditions(
    ranking: list[Head], ks: list[int], seeds: int = 5, controls: tuple[str, ...] = CONTROLS, name: str = "ram:all"
) -> list[Condition]:
    """For each k: top-k, then the controls asked for: bottom-k, `seeds` random-k drawn outside the top k."""
    unknown = set(controls) - set(CONTROLS)
    if unknown:
        raise ValueError(f"controls must be among {', '.join(CONTROLS)}; got {', '.join(sorted(unknown))}")
    out = []
    for k in ks:
        if not 0 < k < len(ranking):
            raise ValueError(f"k must be between 1 and {len(ranking) - 1}, got {k}")
        out.append(Condition(name, "top", k, tuple(ranking[:k])))
        if "bottom" in controls:
            out.append(Condition(name, "bottom", k, tuple(ranking[-k:])))
        if "random" in controls:
            outside = ranking[k:]
            for seed in range(seeds):
                pick = np.random.default_rng([seed, k]).choice(len(outside), size=k, replace=False)
                out.append(Condition(name, f"random-{seed}", k, tuple(outside[int(i)] for i in sorted(pick))))
    return out


def plan_conditions(
    rankings: dict[str, list[Head]],
    ks: list[int],
    seeds: int = 5,
    controls: tuple[str, ...] = CONTROLS,
    user: list[Head] | None = None,
) -> list[Condition]:
    """The whole experiment: none, the user's set, each ranking's top-k; controls from the first ranking."""
    out = [Condition("", "none", 0, ())]
    if user:
        out.append(Condition("", "user", len(user), tuple(user)))
    for i, (name, ranking) in enumerate(rankings.items()):
        out += conditions(ranking, ks, seeds, controls if i == 0 else (), name)
    return out


def intervened(
    model: Any,
    mode: str,
    heads: tuple[Head, ...],
    means: dict[int, torch.Tensor] | None = None,
    forbid: torch.Tensor | None = None,
    source: tuple[dict[int, torch.Tensor], torch.Tensor] | None = None,
) -> AbstractContextManager[Any]:
    """Cut `heads` in `mode` for the forwards run inside; `forbid` ([B, L] bool) for the mask-* modes,
    `source` (the source run's head outputs, the positions to patch) for `patch`."""
    return ablation_mode(mode).applied(model, heads, Needs(means or {}, forbid, source))


@torch.no_grad()
def _answer_logprob(adapter: ChatAdapter, encoded: list[Encoded]) -> list[float]:
    """Log-probability of each gold answer (its tokens and the end of turn), teacher-forced."""
    batch = adapter.collate(encoded)
    logits = adapter.model(**{k: v.to(adapter.model.device) for k, v in batch.items()}).logits.float()
    logp = logits.log_softmax(-1)
    width = batch["input_ids"].shape[1]
    out = []
    for b, e in enumerate(encoded):
        targets = np.concatenate([e.answer, [e.answer[-1] + 1]]) + width - e.length  # answer tokens + end
        ids = batch["input_ids"][b, targets]
        out.append(float(logp[b, targets - 1].gather(-1, ids[:, None].to(logp.device)).sum()))
    return out


def pair_sources(samples: list[Sample]) -> dict[str, Sample]:
    """For patching: each sample's source, a sample with another answer, on the same visual input where one
    exists (another question about the same image), else the next such sample in the list."""
    by_units: dict[tuple[str, ...], list[Sample]] = {}
    for s in samples:
        by_units.setdefault(tuple(u.source for u in s.units), []).append(s)
    out = {}
    for i, s in enumerate(samples):
        same = [o for o in by_units[tuple(u.source for u in s.units)] if o.answer != s.answer]
        later = [o for o in samples[i + 1 :] + samples[:i] if o.answer != s.answer]
        if not same and not later:
            raise ValueError(f"sample {s.id}: no other sample has a different answer to patch from")
        out[s.id] = (same or later)[0]
    return out


@dataclass
class _Batch:
    """One batch encoded once for every condition: prompts, prompts with gold answers, patch sources."""

    samples: list[Sample]
    prompts: list[Encoded]
    answered: list[Encoded]
    sources: list[Encoded]


def _encode(adapter: ChatAdapter, samples: list[Sample], sources: dict[str, Sample]) -> _Batch:
    prompts = [adapter.encode(s) for s in samples]
    answered = [adapter.encode(s, answer=True) for s in samples]
    patched = [adapter.encode(sources[s.id]) for s in samples] if sources else []
    return _Batch(samples, prompts, answered, patched)


def _answer(
    adapter: ChatAdapter,
    mode: AblationMode,
    batch: _Batch,
    heads: tuple[Head, ...],
    means: dict[int, torch.Tensor],
    max_new_tokens: int,
) -> tuple[list[str], list[float]]:
    """Greedy answers and gold-answer log-probs of a batch with `heads` cut."""
    outputs = mode.source_outputs(adapter, batch.sources) if heads else None
    out: list[Any] = []
    for encoded in (batch.prompts, batch.answered):
        source = (outputs, last_prompt_token(encoded)) if outputs is not None else None
        with mode.applied(adapter.model, heads, Needs(means, mode.forbidden(batch.samples, encoded), source)):
            if encoded is batch.answered:
                out.append(_answer_logprob(adapter, encoded))
            else:
                out.append(adapter.generate_encoded(encoded, max_new_tokens))
    return out[0], out[1]


def _row_key(row: dict[str, Any]) -> tuple[str, str, int, str]:
    return row["ranking"], row["condition"], row["k"], row["id"]


@dataclass(frozen=True)
class AblateStudy(Study):
    """Every sample answered under every condition of `plan`; rows keyed by (ranking, condition, k, id)."""

    name: ClassVar[str] = "ablate"
    dataset: str
    mode: str
    rankings: dict[str, list[Head]]
    user: list[Head] | None
    plan: list[Condition]
    ks: list[int]
    seeds: int
    controls: tuple[str, ...]
    batch_size: int
    max_new_tokens: int
    sources: dict[str, Sample]
    heads: str  # what ranked the heads, for the summary (a heads.json, or the rankings' names)

    def settings(self, adapter: ChatAdapter) -> dict[str, Any]:
        return {
            "model": adapter.name,
            "dataset": self.dataset,
            "mode": self.mode,
            "rankings": self.rankings,
            "user": self.user or [],
        }

    def info(self, adapter: ChatAdapter) -> dict[str, Any]:
        return {"ks": self.ks, "seeds": self.seeds, "controls": list(self.controls), "batch_size": self.batch_size}

    def keys(self, sample: Sample) -> list[Hashable]:
        return [(*c.key, sample.id) for c in self.plan]

    def store(self, out: Path | None, shard: Shard, position: Position) -> JsonRows:
        place = {c.key: i for i, c in enumerate(self.plan)}
        path = RunFolder(out).rows(self.name) if out is not None else None
        return JsonRows(path, _row_key, lambda r: (place.get(_row_key(r)[:3], len(place)), position(r["id"])), shard)

    @contextmanager
    def session(self, adapter: ChatAdapter, samples: list[Sample]) -> Iterator[Work]:
        mode = ablation_mode(self.mode)
        means = mode.means(adapter, samples, self.batch_size)

        def work(batch: list[Sample], done: set[Hashable]) -> Iterator[tuple[Any, int]]:
            encoded: _Batch | None = None  # encoded once for the conditions that need the same samples
            for condition in self.plan:
                todo = [s for s in batch if (*condition.key, s.id) not in done]
                if not todo:
                    continue
                if encoded is None or [s.id for s in encoded.samples] != [s.id for s in todo]:
                    encoded = _encode(adapter, todo, self.sources)
                answers, logps = _answer(adapter, mode, encoded, condition.heads, means, self.max_new_tokens)
                rows = [self._row(adapter, mode, condition, *r) for r in zip(todo, answers, logps, strict=True)]
                yield rows, len(rows)

        yield work

    def _row(
        self, adapter: ChatAdapter, mode: AblationMode, condition: Condition, sample: Sample, answer: str, logp: float
    ) -> dict[str, Any]:
        row = {
            "ranking": condition.ranking,
            "condition": condition.name,
            "k": condition.k,
            "id": sample.id,
            "mode": self.mode,
            "heads": [list(h) for h in condition.heads],
            "prediction": answer,
            "correct": score_answer(sample, answer, adapter.parse_boxes),
            "answer_logprob": logp,
        }
        if mode.paired:  # did the answer move to the source's?
            source = self.sources[sample.id]
            row["source"] = source.id
            row["to_source"] = score_answer(source, answer, adapter.parse_boxes)
        return row

    def summarise(
        self, adapter: ChatAdapter, samples: list[Sample], rows: Any, out: Path | None, shard: Shard
    ) -> dict[str, Any] | None:
        return {"heads": self.heads, "mode": self.mode, "conditions": summarize(rows)} if shard.main else None

    def publish(self, folder: RunFolder, summary: dict[str, Any], samples: list[Sample]) -> None:
        super().publish(folder, summary, samples)
        title = f"{self.mode} ablation ({len(samples)} samples)"
        ablation_sweep(summary["conditions"], title, folder.figure(self.name))


def ablate(
    adapter: ChatAdapter,
    samples: list[Sample],
    rankings: HeadSet | dict[str, list[Head]],
    out: Path,
    ks: list[int],
    seeds: int = 5,
    mode: str = "zero",
    controls: tuple[str, ...] = CONTROLS,
    user: list[Head] | None = None,
    batch_size: int = 8,
    max_new_tokens: int = 16,
    on_progress: Callable[[int], None] | None = None,
    sources: dict[str, Sample] | None = None,
    dataset: str = "custom",
    shard: Shard | None = None,
    heads: str | None = None,
) -> list[dict[str, Any]]:
    """Answer every sample under every condition; rows go to out/ablation.jsonl (resumable, and sharded
    under a distributed launch: see experiments/runs.py), then the paired effects to out/ablation.json
    (labelled with `heads`, what ranked them; default the rankings' names) and out/ablation.png. Each batch
    is encoded once for all conditions.

    For mode `patch`, `sources` maps each sample id to the sample patched from (default: pair_sources).
    """
    cut = ablation_mode(mode)
    sources = sources or (pair_sources(samples) if cut.paired else {})
    if isinstance(rankings, HeadSet):
        rankings = {f"{rankings.metric}:{rankings.query}": rankings.ranking}
    plan = plan_conditions(rankings, ks, seeds, controls, user)
    label = heads if heads is not None else ",".join(rankings)
    study = AblateStudy(
        dataset, mode, rankings, user, plan, ks, seeds, controls, batch_size, max_new_tokens, sources, label
    )
    return run_study(study, adapter, samples, out, shard, on_progress).rows


def _effect(diffs: np.ndarray) -> tuple[float, list[float], float]:
    """Mean paired difference, its 95% bootstrap interval and the permutation p-value."""
    mean, low, high = bootstrap_mean_ci(diffs[:, None])
    return float(mean[0]), [float(low[0]), float(high[0])], paired_permutation_p(diffs)


def summarize(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per (ranking, condition, k): accuracy, mean answer log-prob, paired effects vs `none` (and for top-k
    vs the mean of the same-k random controls) with 95% CIs and permutation p-values."""
    base = {r["id"]: r for r in rows if r["condition"] == "none"}
    groups: dict[tuple[str, str, int], dict[str, dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault((r["ranking"], r["condition"], r["k"]), {})[r["id"]] = r
    randoms: dict[int, dict[str, list[float]]] = {}  # k -> id -> correctness under each random control
    to_source: dict[int, dict[str, list[float]]] = {}  # the same for moving to the source's answer (patch)
    for (_, name, k), by_id in groups.items():
        if name.startswith("random-"):
            for i, r in by_id.items():
                randoms.setdefault(k, {}).setdefault(i, []).append(float(r["correct"]))
                to_source.setdefault(k, {}).setdefault(i, []).append(float(r.get("to_source", 0.0)))

    def order(key: tuple[str, str, int]) -> tuple[int, str, int, str]:
        ranking, name, k = key
        return (k, ranking, {"none": 0, "user": 1, "top": 2, "bottom": 3}.get(name, 4), name)

    table = []
    for key in sorted(groups, key=order):
        ranking, name, k = key
        by_id = groups[key]
        common = [i for i in sorted(base) if i in by_id]
        if not common:
            continue
        acc = np.array([float(by_id[i]["correct"]) for i in common])
        d_acc = acc - np.array([float(base[i]["correct"]) for i in common])
        d_logp = np.array([by_id[i]["answer_logprob"] - base[i]["answer_logprob"] for i in common])
        row: dict[str, Any] = {"ranking": ranking, "condition": name, "k": k, "n": len(common)}
        row["accuracy"] = float(acc.mean())
        row["delta_accuracy"], row["delta_accuracy_ci"], row["p_value"] = _effect(d_acc)
        row["delta_logprob"], row["delta_logprob_ci"], row["delta_logprob_p"] = _effect(d_logp)
        paired = [i for i in common if i in randoms.get(k, {})]
        if name == "top" and paired:
            vs = np.array([float(by_id[i]["correct"]) - np.mean(randoms[k][i]) for i in paired])
            row["vs_random"], row["vs_random_ci"], row["vs_random_p"] = _effect(vs)
        if "to_source" in by_id[common[0]]:  # patching: how often the answer became the source's
            moved = np.array([float(by_id[i]["to_source"]) for i in common])
            row["to_source"] = float(moved.mean())
            if name == "top" and paired:
                vs = np.array([float(by_id[i]["to_source"]) - np.mean(to_source[k][i]) for i in paired])
                row["to_source_vs_random"], row["to_source_vs_random_ci"], row["to_source_vs_random_p"] = _effect(vs)
        table.append(row)
    return table
