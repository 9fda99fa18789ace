"""The built-in model's trainer: it learns, and a resumed run equals an uninterrupted one."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from transformers import AutoModelForImageTextToText

from corehead.models.builtin.train import TrainConfig, make_batch, train


def _small(steps: int, **kw: object) -> TrainConfig:
    opts: dict = dict(steps=steps, batch_size=4, lr=3e-3, warmup=2, eval_every=10_000, eval_n=2, small=True)
    opts.update(kw)
    return TrainConfig(**opts)


def _losses(out: Path) -> list[tuple[int, float]]:
    rows = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    return [(r["step"], r["loss"]) for r in rows]


def test_loss_falls_and_model_saves(tmp_path: Path) -> None:
    summary = train(tmp_path, _small(24, checkpoint_every=100))
    losses = [loss for _, loss in _losses(tmp_path)]
    assert len(losses) == 24
    assert np.mean(losses[-4:]) < 0.7 * np.mean(losses[:4])
    assert set(summary["heldout"]) == {"scenes", "pages", "clips"}
    model = AutoModelForImageTextToText.from_pretrained(tmp_path)  # transformers' own loader, offline
    assert model.config.model_type == "qwen3_vl"
    assert (tmp_path / "tokenizer.json").exists() and (tmp_path / "preprocessor_config.json").exists()


def test_resume_reproduces_uninterrupted_run(tmp_path: Path) -> None:
    whole, parts = tmp_path / "whole", tmp_path / "parts"
    train(whole, _small(6, checkpoint_every=3))
    train(parts, _small(3, checkpoint_every=3))
    # a crash after the checkpoint leaves rows that the resume must drop, not duplicate
    with (parts / "train_log.jsonl").open("a") as log:
        log.write(json.dumps({"step": 4, "loss": 99.0}) + "\n")
    train(parts, _small(6, checkpoint_every=3))
    a, b = _losses(whole), _losses(parts)
    assert [s for s, _ in b] == [1, 2, 3, 4, 5, 6]
    assert np.allclose([loss for _, loss in a], [loss for _, loss in b], atol=2e-3)


def test_batches_supervise_only_answers(tmp_path: Path) -> None:
    from transformers import Qwen3VLForConditionalGeneration

    from corehead.models.builtin import build_config, build_image_processor, build_tokenizer
    from corehead.models.qwen_vl import QwenVLAdapter

    tok = build_tokenizer()
    adapter = QwenVLAdapter(
        Qwen3VLForConditionalGeneration(build_config(tok, small=True)), tok, build_image_processor(), "t"
    )
    batch, aux = make_batch(adapter, _small(1, batch_size=6), step=0)
    supervised = batch["labels"][batch["labels"] != -100]
    words = set(tok.decode([int(t)]).strip() for t in supervised)
    from corehead.data.synthetic import COLOURS, DIGITS

    assert words <= {*COLOURS, *DIGITS, "<|im_end|>"}  # answers, and the end of each answered turn
    n_visual = int(((batch["mm_token_type_ids"] == 1) | (batch["mm_token_type_ids"] == 2)).sum())
    assert aux.shape == (n_visual, 2)
    assert int((aux[:, 0] > 0).sum()) > 0 and torch.all(aux >= 0)


def test_training_can_start_from_trained_weights(tmp_path: Path) -> None:
    first = tmp_path / "first"
    train(first, _small(2, checkpoint_every=100))
    start = AutoModelForImageTextToText.from_pretrained(first)
    seen: list[float] = []
    train(
        tmp_path / "second", _small(1, lr=0.0, warmup=1, init=str(first)), on_step=lambda s, r: seen.append(r["loss"])
    )
    again = AutoModelForImageTextToText.from_pretrained(tmp_path / "second")
    for (name, a), (_, b) in zip(start.state_dict().items(), again.state_dict().items(), strict=True):
        assert torch.equal(a, b), name  # lr 0: the weights it started from, untouched
