"""Causal test of head rankings: cut the top-k heads and same-size controls, measure the damage honestly.

Conditions (experiments/ablation_plan.py): `none`, `user`, and per ranking and k: `top`, `bottom`, `random`
and `random-layer-matched`, each random control drawn `seeds` times outside that ranking's top k. Every
condition, `none` included, runs through corehead's registered attention (decoder_attention), so the
differences hold no numerical differences between attention implementations.

Held out by construction (experiments/heldout.py): the samples the head set was scored on are excluded
(counted, and recorded in the manifest and ablation.json), unless `allow_overlap` keeps them and marks it.

Modes, how a head is cut: `zero` / `mean` (its slice of the o_proj input; `mean` takes per-type means over
a reference set that is never evaluated), `query-zero` (the legacy uniform-attention ablation of Retrieval
Head and SparseMM), `mask-visual` / `mask-region` (it may not attend to any visual token / to the sample's
region tokens; renormalised over the rest; a sample without a region is an error, or skipped with
`skip_invalid`), and `patch` (activation patching: at the last prompt token, its slice takes the value it
had on a paired source sample with another answer; rows then also say whether the answer moved to the
source's answer). Each mode is a small class in experiments/modes/, registered in `MODES`.

Every sample is answered under every condition; rows (ranking, condition, k, draw, sample, prediction,
correct, gold-answer log-prob) are appended to RUN/ablation.jsonl as produced, and a rerun skips the rows
already there. The effects (experiments/ablation_summary.py) go to RUN/ablation.json and RUN/ablation.png
when the run is done.
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
from corehead.attention.recorder import decoder_attention
from corehead.data.sample import Sample
from corehead.experiments.ablation_plan import (
    CONTROLS,
    Condition,
    conditions,
    parse_k,
    plan_conditions,
    unavailable,
)
from corehead.experiments.ablation_summary import summarize
from corehead.experiments.heldout import HeldOut, held_out, ids_digest
from corehead.experiments.modes import MODES, AblationMode, Needs, ablation_mode, last_prompt_token
from corehead.experiments.runs import Shard
from corehead.experiments.study import JsonRows, Position, Study, Work, run_study
from corehead.heads import HeadSet
from corehead.metrics.tasks import score_answer
from corehead.models.base import ChatAdapter, Encoded
from corehead.plots import ablation_sweep
from corehead.runfolder import RunFolder

__all__ = [
    "CONTROLS",
    "MODES",
    "Chosen",
    "Condition",
    "ablate",
    "choose_samples",
    "conditions",
    "gold_scores",
    "intervened",
    "pair_sources",
    "parse_k",
    "plan_conditions",
    "summarize",
]


def intervened(
    model: Any,
    mode: str,
    heads: tuple[Head, ...],
    means: dict[int, torch.Tensor] | None = None,
    forbid: torch.Tensor | None = None,
    source: tuple[dict[int, torch.Tensor], torch.Tensor] | None = None,
    visual: torch.Tensor | None = None,
) -> AbstractContextManager[Any]:
    """Cut `heads` in `mode` for the forwards run inside; `forbid` ([B, L] bool) for the mask-* modes,
    `source` (the source run's head outputs, the positions to patch) for `patch`, `means` (head_means) and
    `visual` (the batch's visual positions, [B, L] bool) for `mean`."""
    return ablation_mode(mode).applied(model, heads, Needs(means or {}, forbid, source, visual))


def gold_logprobs(logits: torch.Tensor, batch: dict[str, torch.Tensor], encoded: list[Encoded]) -> torch.Tensor:
    """[B] log-probability of each gold answer (its tokens and the end of turn) under teacher forcing, from the
    batch's logits (differentiable); and, as a second row, whether every one of those tokens is the top choice."""
    logp = logits.float().log_softmax(-1)
    width = batch["input_ids"].shape[1]
    sums, tops = [], []
    for b, e in enumerate(encoded):
        targets = torch.as_tensor(np.concatenate([e.answer, [e.answer[-1] + 1]]) + width - e.length)
        ids = batch["input_ids"][b, targets].to(logp.device)
        sums.append(logp[b, targets - 1].gather(-1, ids[:, None]).sum())
        tops.append((logp[b, targets - 1].argmax(-1) == ids).all().to(logp.dtype))
    return torch.stack([torch.stack(sums), torch.stack(tops)])


@torch.no_grad()
def gold_scores(adapter: ChatAdapter, encoded: list[Encoded]) -> tuple[list[float], list[bool]]:
    """Each gold answer's teacher-forced log-probability (its tokens and the end of turn), and whether the model
    ranks every one of those tokens first (teacher-forced correctness)."""
    batch = {k: v.to(adapter.model.device) for k, v in adapter.collate(encoded).items()}
    logp, top = gold_logprobs(adapter.model(**batch).logits, batch, encoded)
    return [float(x) for x in logp], [bool(x) for x in top]


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
        needs = Needs(means, mode.forbidden(batch.samples, encoded), source, mode.visual(encoded))
        with mode.applied(adapter.model, heads, needs):
            if encoded is batch.answered:
                out.append(gold_scores(adapter, encoded)[0])
            else:
                out.append(adapter.generate_encoded(encoded, max_new_tokens))
    return out[0], out[1]


def _row_key(row: dict[str, Any]) -> tuple[str, str, int, int | None, str]:
    return row["ranking"], row["condition"], row["k"], row.get("draw"), row["id"]


def _current_rows(rows: list[dict[str, Any]]) -> None:
    """Refuse a folder written before random controls were one condition with draws (rows without `draw`)."""
    if rows and "draw" not in rows[0]:
        raise ValueError(
            "this run folder holds ablation rows of an older corehead (random-S conditions); use a new --out folder"
        )


@dataclass(frozen=True)
class Chosen:
    """The samples an ablation answers: `held` says which were left out as scored on by the head set,
    `skipped` lists those the mode cannot cut (with skip_invalid)."""

    samples: list[Sample]
    held: HeldOut
    skipped: list[str]


def choose_samples(
    samples: list[Sample], headset: HeadSet | None, allow_overlap: bool, mode: str, skip_invalid: bool = False
) -> Chosen:
    """`samples` less those `headset` was scored on (held_out) and those `mode` cannot cut: an error naming
    the first of those, or, with `skip_invalid`, counted and skipped."""
    held = (
        held_out(samples, headset, allow_overlap)
        if headset is not None
        else HeldOut(list(samples), [], allow_overlap, False)
    )
    cut = ablation_mode(mode)
    problems = [(s, p) for s in held.samples if (p := cut.problem(s)) is not None]
    if problems and not skip_invalid:
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise ValueError(f"{problems[0][1]}{more}; --skip-invalid skips such samples")
    bad = {s.id for s, _ in problems}
    kept = [s for s in held.samples if s.id not in bad]
    if not kept:
        raise ValueError(f"no sample left to ablate in mode {mode} ({len(bad)} skipped)")
    return Chosen(kept, held, sorted(bad))


@dataclass(frozen=True)
class AblateStudy(Study):
    """Every sample answered under every condition of `plan`; rows keyed by (ranking, condition, k, draw, id)."""

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
    chosen: Chosen
    reference: list[Sample]  # the samples `mean` takes its head means from (never evaluated)

    def settings(self, adapter: ChatAdapter) -> dict[str, Any]:
        settings = {
            "model": adapter.name,
            "dataset": self.dataset,
            "mode": self.mode,
            "rankings": self.rankings,
            "user": self.user or [],
        }
        if ablation_mode(self.mode).reference:
            settings["reference"] = {"n": len(self.reference), "digest": ids_digest(s.id for s in self.reference)}
        return settings

    def about(self) -> dict[str, Any]:
        """What the manifest and ablation.json record about the samples and the controls."""
        return {
            "held_out": self.chosen.held.record(),
            "skipped": len(self.chosen.skipped),
            "unavailable": unavailable(self.rankings, self.ks, self.controls),
        }

    def info(self, adapter: ChatAdapter) -> dict[str, Any]:
        plan = {"ks": self.ks, "seeds": self.seeds, "controls": list(self.controls), "batch_size": self.batch_size}
        return {**plan, **self.about()}

    def keys(self, sample: Sample) -> list[Hashable]:
        return [(*c.key, sample.id) for c in self.plan]

    def store(self, out: Path | None, shard: Shard, position: Position) -> JsonRows:
        place = {c.key: i for i, c in enumerate(self.plan)}

        def order(row: dict[str, Any]) -> tuple[int, Any]:
            return place.get(_row_key(row)[:4], len(place)), position(row["id"])

        path = RunFolder(out).rows(self.name) if out is not None else None
        return JsonRows(path, _row_key, order, shard, _current_rows)

    @contextmanager
    def session(self, adapter: ChatAdapter, samples: list[Sample]) -> Iterator[Work]:
        mode = ablation_mode(self.mode)
        with decoder_attention(adapter.model):  # every condition, `none` included, on the same attention path
            means = mode.means(adapter, self.reference, self.batch_size)

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
            "draw": condition.draw,
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
        if not shard.main:
            return None
        summary = {"heads": self.heads, "mode": self.mode, **self.about(), "conditions": summarize(rows)}
        if ablation_mode(self.mode).reference:
            summary["reference"] = self.settings(adapter)["reference"]
        return summary

    def publish(self, folder: RunFolder, summary: dict[str, Any], samples: list[Sample]) -> None:
        super().publish(folder, summary, samples)
        title = f"{self.mode} ablation ({len(samples)} samples)"
        ablation_sweep(summary["conditions"], title, folder.figure(self.name))


def _reference(mode: AblationMode, reference: list[Sample] | None, samples: list[Sample]) -> list[Sample]:
    """The reference set a mode takes its head means from: given, and disjoint from the evaluated samples."""
    if not mode.reference:
        return []
    if not reference:
        raise ValueError(f"mode {mode.name} takes head means from reference samples never evaluated: give reference")
    shared = sorted({s.id for s in reference} & {s.id for s in samples})
    if shared:
        raise ValueError(
            f"the reference set of mode {mode.name} holds {len(shared)} evaluated sample(s) (e.g. {shared[0]!r}); "
            "draw it from other samples (another --reference-seed)"
        )
    return reference


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
    headset: HeadSet | None = None,
    allow_overlap: bool = False,
    reference: list[Sample] | None = None,
    skip_invalid: bool = False,
) -> list[dict[str, Any]]:
    """Answer every sample under every condition; rows go to out/ablation.jsonl (resumable, and sharded
    under a distributed launch: see experiments/runs.py), then the paired effects to out/ablation.json
    (labelled with `heads`, what ranked them; default the rankings' names) and out/ablation.png. Each batch
    is encoded once for all conditions.

    Samples the head set (`rankings` when it is one, else `headset`) was scored on are left out unless
    `allow_overlap`; samples the mode cannot cut are an error, or skipped with `skip_invalid` (choose_samples).
    Mode `mean` takes its head means from `reference`, samples disjoint from the evaluated ones; for mode
    `patch`, `sources` maps each sample id to the sample patched from (default: pair_sources).
    """
    cut = ablation_mode(mode)
    if isinstance(rankings, HeadSet):
        headset, rankings = rankings, {f"{rankings.metric}:{rankings.query}": rankings.ranking}
    chosen = choose_samples(samples, headset, allow_overlap, mode, skip_invalid)
    samples = chosen.samples
    sources = sources or (pair_sources(samples) if cut.paired else {})
    plan = plan_conditions(rankings, ks, seeds, controls, user)
    label = heads if heads is not None else ",".join(rankings)
    study = AblateStudy(
        dataset, mode, rankings, user, plan, ks, seeds, controls, batch_size, max_new_tokens, sources, label,
        chosen, _reference(cut, reference, samples),
    )  # fmt: skip
    return run_study(study, adapter, samples, out, shard, on_progress).rows
