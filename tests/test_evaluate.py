"""Evaluation runs: exact-match scoring, per-domain accuracy, resumable prediction files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from corehead.data.synthetic import generate
from corehead.experiments.evaluate import evaluate
from corehead.metrics.tasks import exact_match
from corehead.models.qwen_vl import QwenVLAdapter


@pytest.mark.parametrize(
    ("prediction", "gold", "hit"),
    [("Red.", "red", True), (" the red ", "red", True), ("reddish", "red", False), ("7", "7", True), ("", "7", False)],
)
def test_exact_match(prediction: str, gold: str, hit: bool) -> None:
    assert exact_match(prediction, gold) is hit


def test_resume_answers_only_missing_samples(tiny_builtin: QwenVLAdapter, tmp_path: Path) -> None:
    samples = list(generate("all", 6, seed=5))
    out = tmp_path / "preds.jsonl"
    full = evaluate(tiny_builtin, samples, out=out, batch_size=4, max_new_tokens=2)
    lines = out.read_text().splitlines()
    assert [json.loads(line)["id"] for line in lines] == [s.id for s in samples]
    # an interrupted run: three finished rows and a torn fourth line
    out.write_text("\n".join(lines[:3]) + "\n" + lines[3][:10])
    calls: list[int] = []
    original = tiny_builtin.generate

    def counting(batch: list, max_new_tokens: int = 16) -> list[str]:
        calls.append(len(batch))
        return original(batch, max_new_tokens)

    tiny_builtin.generate = counting  # type: ignore[method-assign]
    try:
        resumed = evaluate(tiny_builtin, samples, out=out, batch_size=4, max_new_tokens=2)
    finally:
        del tiny_builtin.generate
    assert sum(calls) == 3
    ids = [json.loads(line)["id"] for line in out.read_text().splitlines()]
    assert sorted(ids) == sorted(s.id for s in samples) and len(ids) == len(set(ids))
    assert resumed.rows == full.rows
    assert set(resumed.by_domain()) == {"scenes", "pages", "clips"}
    assert resumed.accuracy == pytest.approx(sum(r["correct"] for r in full.rows) / 6)
    tiny_builtin.name = "another-model"
    try:
        with pytest.raises(ValueError, match="holds predictions of model 'tiny-builtin'"):
            evaluate(tiny_builtin, samples, out=out)
    finally:
        tiny_builtin.name = "tiny-builtin"


def test_duplicate_ids_are_refused(tiny_builtin: QwenVLAdapter) -> None:
    sample = next(generate("scenes", 1))
    with pytest.raises(ValueError, match="unique"):
        evaluate(tiny_builtin, [sample, sample])
