"""The built-in model's trainer: it learns, and a resumed run equals an uninterrupted one."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForImageTextToText

from corehead.data.sample import Sample, VisualUnit
from corehead.experiments.evaluate import evaluate
from corehead.models.base import Assembled
from corehead.models.builtin import CHAT
from corehead.models.builtin.batches import make_batch
from corehead.models.builtin.train import TrainConfig, train
from corehead.models.qwen_vl import QwenVLAdapter


def _accuracy(adapter: QwenVLAdapter, samples: list[Sample]) -> dict[str, float]:
    """The trainer's held-out measure: exact-match accuracy per domain of short greedy answers."""
    result = evaluate(adapter, samples, batch_size=32, max_new_tokens=4)
    return {domain: v["accuracy"] for domain, v in result.by_domain().items()}


def _small(steps: int, **kw: object) -> TrainConfig:
    opts: dict = dict(steps=steps, batch_size=4, lr=3e-3, warmup=2, eval_every=10_000, eval_n=2, small=True)
    opts.update(kw)
    return TrainConfig(**opts)


def _losses(out: Path) -> list[tuple[int, float]]:
    rows = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    return [(r["step"], r["loss"]) for r in rows]


@pytest.mark.slow
def test_loss_falls_and_model_saves(tmp_path: Path) -> None:
    summary = train(tmp_path, _small(24, checkpoint_every=100), evaluate=_accuracy)
    losses = [loss for _, loss in _losses(tmp_path)]
    assert len(losses) == 24
    assert np.mean(losses[-4:]) < 0.7 * np.mean(losses[:4])
    assert set(summary["heldout"]) == {"scenes", "pages", "clips"}
    model = AutoModelForImageTextToText.from_pretrained(tmp_path)  # transformers' own loader, offline
    assert model.config.model_type == "qwen3_vl"
    assert (tmp_path / "tokenizer.json").exists() and (tmp_path / "preprocessor_config.json").exists()


def test_resume_reproduces_uninterrupted_run(tmp_path: Path) -> None:
    whole, parts = tmp_path / "whole", tmp_path / "parts"
    train(whole, _small(6, checkpoint_every=3), evaluate=_accuracy)
    train(parts, _small(3, checkpoint_every=3), evaluate=_accuracy)
    # a crash after the checkpoint leaves rows that the resume must drop, not duplicate
    with (parts / "train_log.jsonl").open("a") as log:
        log.write(json.dumps({"step": 4, "loss": 99.0}) + "\n")
    train(parts, _small(6, checkpoint_every=3), evaluate=_accuracy)
    a, b = _losses(whole), _losses(parts)
    assert [s for s, _ in b] == [1, 2, 3, 4, 5, 6]
    assert np.allclose([loss for _, loss in a], [loss for _, loss in b], atol=2e-3)


def test_data_workers_train_on_the_same_batches(tmp_path: Path) -> None:
    train(tmp_path / "inline", _small(4, checkpoint_every=100), evaluate=_accuracy)
    train(tmp_path / "workers", _small(4, checkpoint_every=100, workers=2), evaluate=_accuracy)
    a, b = _losses(tmp_path / "inline"), _losses(tmp_path / "workers")
    assert [s for s, _ in b] == [1, 2, 3, 4]
    assert np.allclose([loss for _, loss in a], [loss for _, loss in b], atol=1e-4)


def test_batches_supervise_only_answers(tmp_path: Path) -> None:
    adapter = _small_adapter()
    tok = adapter.tokenizer
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
    train(first, _small(2, checkpoint_every=100), evaluate=_accuracy)
    start = AutoModelForImageTextToText.from_pretrained(first)
    seen: list[float] = []
    train(
        tmp_path / "second",
        _small(1, lr=0.0, warmup=1, init=str(first)),
        on_step=lambda s, r: seen.append(r["loss"]),
        evaluate=_accuracy,
    )
    again = AutoModelForImageTextToText.from_pretrained(tmp_path / "second")
    for (name, a), (_, b) in zip(start.state_dict().items(), again.state_dict().items(), strict=True):
        assert torch.equal(a, b), name  # lr 0: the weights it started from, untouched
    # the probe on the visual tokens carries over too, rather than restarting at random
    probe = load_file(first / "checkpoint" / "aux.safetensors")
    carried = load_file(tmp_path / "second" / "checkpoint" / "aux.safetensors")
    assert probe.keys() == carried.keys() and all(torch.equal(probe[k], carried[k]) for k in probe)
    assert all(bool(v.abs().sum() > 0) for v in probe.values())


def test_continuation_without_a_probe_starts_it_at_zero(tmp_path: Path) -> None:
    first = tmp_path / "first"
    train(first, _small(1, checkpoint_every=100), evaluate=_accuracy)
    shutil.rmtree(first / "checkpoint")  # like the shipped weights: a model folder with no run beside it
    train(tmp_path / "second", _small(1, lr=0.0, warmup=1, init=str(first)), evaluate=_accuracy)
    probe = load_file(tmp_path / "second" / "checkpoint" / "aux.safetensors")
    assert all(not v.any() for v in probe.values())  # so its first gradients leave the visual features alone


def _small_adapter():  # type: ignore[no-untyped-def]
    from transformers import Qwen3VLForConditionalGeneration

    from corehead.models.builtin import build_config, build_image_processor, build_tokenizer
    from corehead.models.qwen_vl import QwenVLAdapter

    tok = build_tokenizer()
    torch.manual_seed(0)
    model = Qwen3VLForConditionalGeneration(build_config(tok, small=True)).eval()
    return QwenVLAdapter(model, tok, build_image_processor(), "t")


def test_grown_decoder_starts_as_the_same_function(tmp_path: Path) -> None:
    import pytest

    from corehead.data.synthetic import make_sample
    from corehead.models.builtin.train import grow_decoder

    first = tmp_path / "first"
    train(first, _small(3, checkpoint_every=100), evaluate=_accuracy)
    adapter = _small_adapter()
    inputs = adapter.encode(make_sample("clips", 0, 1), answer=True).inputs
    model = AutoModelForImageTextToText.from_pretrained(first).eval()
    grown = grow_decoder(model, 4).eval()
    assert len(grown.model.language_model.layers) == grown.config.get_text_config().num_hidden_layers == 4
    assert model.config.get_text_config().num_hidden_layers == 2  # the source model is left as it was
    with torch.no_grad():
        before, after = model(**inputs).logits, grown(**inputs).logits
    assert torch.allclose(before, after, atol=1e-5)
    # the trained layers kept their weights, first and last in place; the new ones are not copies
    layers, old = grown.model.language_model.layers, model.model.language_model.layers
    assert torch.equal(layers[0].self_attn.q_proj.weight, old[0].self_attn.q_proj.weight)
    assert torch.equal(layers[3].mlp.up_proj.weight, old[1].mlp.up_proj.weight)
    assert not torch.any(layers[1].self_attn.o_proj.weight) and torch.any(layers[1].self_attn.q_proj.weight)
    with pytest.raises(ValueError, match="can only grow"):
        grow_decoder(model, 2)
    # through the trainer: --init with more layers saves the grown model (lr 0 keeps it as it started)
    train(tmp_path / "deeper", _small(1, lr=0.0, warmup=1, init=str(first), layers=4), evaluate=_accuracy)
    saved = AutoModelForImageTextToText.from_pretrained(tmp_path / "deeper").eval()
    assert saved.config.get_text_config().num_hidden_layers == 4
    with torch.no_grad():
        assert torch.allclose(saved(**inputs).logits, before, atol=1e-5)


def test_still_video_asks_the_same_questions_over_video_tokens() -> None:
    from corehead.data.synthetic import SEGMENT_FRAMES, make_scene
    from corehead.models.builtin.batches import cell_labels, chat_pieces, still_video

    adapter = _small_adapter()
    scene = make_scene("scenes", 0, 4, split="train")
    video = still_video(scene)
    assert [u.kind for u in video.units] == ["frame"] * SEGMENT_FRAMES
    assert all(u.load().tobytes() == scene.units[0].load().tobytes() for u in video.units)
    assert [(f.question, f.answer) for f in video.facts] == [(f.question, f.answer) for f in scene.facts]
    assert [r.unit for r in video.facts[0].regions] == list(range(SEGMENT_FRAMES))
    rng = np.random.default_rng(0)
    prefix, pieces = chat_pieces(scene, rng, False, 2)

    def assemble(units: list[VisualUnit]) -> Assembled:
        return adapter.assemble(units, [("prompt", prefix), ("vision", CHAT.visual(adapter.items(units))), *pieces])

    as_image, as_video = assemble(scene.units), assemble(video.units)
    assert set(as_image.mm_types) == {0, 1} and set(as_video.mm_types) == {0, 2}
    # one temporal patch of the same pixels: the same cells, labelled with the same objects
    assert np.array_equal(as_image.token_map.cells, as_video.token_map.cells)
    labels = cell_labels(video, as_video.token_map)
    assert np.array_equal(labels, cell_labels(scene, as_image.token_map)) and labels[:, 0].any()
    # in a batch: scenes only, all shown as still videos
    batch, aux = make_batch(adapter, _small(1, batch_size=3, domain_weights=(1.0, 0.0, 0.0), still_video=1.0), 0)
    assert not torch.any(batch["mm_token_type_ids"] == 1) and "pixel_values" not in batch
    assert aux.shape == (int((batch["mm_token_type_ids"] == 2).sum()), 2)


def test_train_builtin_refuses_bad_recipe_options(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from corehead.cli import app

    for option, value in (
        ("--domain-weights", "1,2"),
        ("--domain-weights", "a,b,c"),
        ("--still-video", "1.5"),
        ("--lr", "0"),
        ("--value-focus", "-1"),
    ):
        result = CliRunner().invoke(app, ["train-builtin", "--out", str(tmp_path), option, value])
        assert result.exit_code != 0 and option in result.output, (option, value, result.output)
    assert not (tmp_path / "train_log.jsonl").exists()


def test_continuation_keeps_the_final_curriculum_mix() -> None:
    from corehead.models.builtin.recipe import compact_share

    fresh, continued = TrainConfig(), TrainConfig(init="builtin")
    assert compact_share(fresh, 0) == fresh.compact_start
    assert compact_share(fresh, 4000) == fresh.compact_end
    assert compact_share(continued, 0) == continued.compact_end


def test_value_focus_adds_the_value_loss_of_object_cells() -> None:
    from corehead.models.builtin.train import Probe

    torch.manual_seed(0)
    probe = Probe(8)
    feats = torch.randn(6, 8)
    labels = torch.tensor([[0, 0], [3, 12], [0, 0], [5, 9], [0, 0], [1, 2]])
    plain, focused = probe.loss(feats, labels), probe.loss(feats, labels, value_focus=2.0)
    # independently: mean negative log-likelihood of the true value over the three object cells
    logp = torch.log_softmax(probe.value(feats[[1, 3, 5]]), dim=-1)
    nll = -logp[torch.arange(3), torch.tensor([12, 9, 2])].mean()
    assert torch.allclose(focused - plain, 2.0 * nll, atol=1e-6)
    assert torch.equal(
        probe.loss(feats[[0, 2, 4]], labels[[0, 2, 4]], 2.0), probe.loss(feats[[0, 2, 4]], labels[[0, 2, 4]])
    )
