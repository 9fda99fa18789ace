"""Train the built-in tiny VLM from scratch on the synthetic domains (resumable, CPU-friendly).

What makes a 6M-parameter VLM learn retrieval in hours on two CPU cores (minutes on a GPU):
- several questions about one input in one sequence (a multi-turn chat), so each vision forward
  supervises many answers;
- an auxiliary loss on the merged visual tokens predicting the shape and value drawn in each cell (a
  throwaway linear head, kept only in checkpoints), so the vision tower learns to see before the decoder
  learns to ask; `value_focus` weights the cells that show an object, where fine glyphs (6, 8, 9) are read;
- a curriculum from a one-hop form (" star" -> "red": the answer right after the naming token) to the
  realistic chat prompt ("What colour is the star?" ... assistant "red"), mixed throughout.
Every input is drawn from the synthetic 'train' stream, disjoint from the 'eval' stream used to measure.
"""

from __future__ import annotations

import copy
import json
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_model, save_model
from torch import nn
from transformers import Qwen3VLForConditionalGeneration

from corehead.data.sample import Region, VisualUnit
from corehead.data.synthetic import (
    CLIP_FPS,
    COLOURS,
    DIGITS,
    DOMAINS,
    SEGMENT_FRAMES,
    SHAPES,
    Scene,
    generate,
    make_scene,
)
from corehead.experiments.evaluate import evaluate
from corehead.models import resolve
from corehead.models.base import VisualTokenMap
from corehead.models.builtin import build_config, build_image_processor, build_tokenizer
from corehead.models.qwen_vl import ASSISTANT, END, USER, Assembled, Piece, QwenVLAdapter

VALUES: tuple[str, ...] = (*COLOURS, *DIGITS)
CHECKPOINT = "checkpoint"


@dataclass
class TrainConfig:
    """Options of one training run; saved beside the checkpoint so a resume uses the same ones."""

    steps: int = 4500
    batch_size: int = 16
    lr: float = 1e-3
    warmup: int = 200
    aux_weight: float = 1.0
    value_focus: float = 0.0  # extra weight of the probe's value loss on cells that show an object
    max_turns: int = 6
    compact_start: float = 0.8  # share of one-hop sequences early in training
    compact_end: float = 0.25
    curriculum_steps: tuple[int, int] = (2000, 3500)
    domain_weights: tuple[float, ...] = (1.0, 2.0, 3.0)  # how often each of DOMAINS is drawn
    still_video: float = 0.25  # share of scenes inputs shown as a still video (see `still_video`)
    init: str | None = None  # start from these weights ('builtin' or a folder) instead of random ones
    eval_every: int = 250
    eval_n: int = 50  # held-out samples per domain at each evaluation
    target: float = 0.97  # stop once every domain reaches this at an evaluation
    checkpoint_every: int = 100
    seed: int = 0
    small: bool = False
    layers: int | None = None  # decoder layers (None: the built-in architecture's)
    threads: int = 2
    workers: int = 0  # processes building batches ahead of the model (worth it beside a GPU)


def _compact_share(cfg: TrainConfig, step: int) -> float:
    """Share of one-hop sequences at `step`; a continuation from trained weights keeps the final mix."""
    if cfg.init is not None:
        return cfg.compact_end
    a, b = cfg.curriculum_steps
    if step < a:
        return cfg.compact_start
    if step >= b:
        return cfg.compact_end
    return cfg.compact_start + (cfg.compact_end - cfg.compact_start) * (step - a) / (b - a)


def _lr(cfg: TrainConfig, step: int) -> float:
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    progress = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
    return cfg.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))


def _pieces(scene: Scene, rng: np.random.Generator, compact: bool, max_turns: int) -> tuple[str, list[Piece]]:
    """Text around the visual input: several one-hop pairs, or a multi-turn chat about the scene."""
    order = rng.permutation(len(scene.facts))
    if compact:
        pieces: list[Piece] = []
        for i in order:
            fact = scene.facts[int(i)]
            pieces += [("question", " " + fact.compact), ("answer", " " + fact.answer)]
        return "", pieces
    turns = order[: int(rng.integers(1, max_turns + 1))]
    pieces = []
    for n, i in enumerate(turns):
        fact = scene.facts[int(i)]
        if n:
            pieces.append(("text", "\n" + USER))
        pieces += [("question", fact.question), ("prompt", ASSISTANT), ("answer", fact.answer), ("end", END)]
    return USER, pieces


def still_video(scene: Scene) -> Scene:
    """A one-image scene shown as a still video of one temporal patch, asking the same questions.

    The decoder otherwise learns to find a shape among image tokens and, separately and more weakly,
    among video tokens (the shipped model answers a scene given as a still video at 0.57, as an image at
    1.0); this shares the one skill between both kinds of input.
    """
    image = scene.units[0]
    frames = [
        VisualUnit(
            "frame",
            f"{image.source}/frame{f}",
            image.width,
            image.height,
            frame=f,
            timestamp=f / CLIP_FPS,
            image=image.image,
        )
        for f in range(SEGMENT_FRAMES)
    ]
    facts = [replace(f, regions=[Region(k, r.box) for k in range(len(frames)) for r in f.regions]) for f in scene.facts]
    things = [replace(t, unit=k) for k in range(len(frames)) for t in scene.things]
    return Scene(scene.domain, frames, facts, things)


def _cell_labels(scene: Scene, token_map: VisualTokenMap) -> np.ndarray:
    """Per visual token: (shape id, value id) of the object drawn in its cell (0 = nothing).

    A cell is labelled when it holds the object's centre or a fifth of its area is inside the object's
    box, so every token that sees a good part of an object learns to say what it is.
    """
    labels = np.zeros((len(token_map), 2), dtype=np.int64)
    c = token_map.cells
    area = (c[:, 2] - c[:, 0]) * (c[:, 3] - c[:, 1])
    for thing in scene.things:
        x0, y0, x1, y1 = thing.box
        cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
        inter = np.clip(np.minimum(c[:, 2], x1) - np.maximum(c[:, 0], x0), 0, None) * np.clip(
            np.minimum(c[:, 3], y1) - np.maximum(c[:, 1], y0), 0, None
        )
        centre = (c[:, 0] <= cx) & (cx < c[:, 2]) & (c[:, 1] <= cy) & (cy < c[:, 3])
        hit = token_map.covers_unit(thing.unit) & (centre | (inter >= 0.2 * area))
        labels[hit] = (SHAPES.index(thing.shape) + 1, VALUES.index(thing.value) + 1)
    return labels


def make_batch(adapter: QwenVLAdapter, cfg: TrainConfig, step: int) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """The step-th training batch (deterministic for the seed): model inputs with labels, aux labels."""
    rng = np.random.default_rng([cfg.seed, step])
    rows: list[Assembled] = []
    image_labels: list[np.ndarray] = []
    video_labels: list[np.ndarray] = []
    share = _compact_share(cfg, step)
    for b in range(cfg.batch_size):
        index = step * cfg.batch_size + b
        weights = np.asarray(cfg.domain_weights, dtype=float)
        domain = DOMAINS[int(rng.choice(len(DOMAINS), p=weights / weights.sum()))]
        scene = make_scene(domain, cfg.seed, index, split="train")
        if cfg.still_video and domain == "scenes" and rng.random() < cfg.still_video:
            scene = still_video(scene)
        prefix, pieces = _pieces(scene, rng, bool(rng.random() < share), cfg.max_turns)
        assembled = adapter.assemble(scene.units, prefix, pieces)
        rows.append(assembled)
        cell_labels = _cell_labels(scene, assembled.token_map)
        (video_labels if scene.units[0].kind == "frame" else image_labels).append(cell_labels)
    encoded = [r.encoded(adapter.with_mm_types) for r in rows]
    batch = adapter.collate(encoded)
    width = batch["input_ids"].shape[1]
    labels = torch.full_like(batch["input_ids"], -100)
    for r, row in enumerate(rows):
        tags = np.array(row.tags)
        keep = np.flatnonzero((tags == "answer") | (tags == "end"))
        offset = width - len(row.ids)
        labels[r, keep + offset] = torch.tensor(row.ids)[keep]
    batch["labels"] = labels
    # the vision tower encodes all images first, then all videos (Qwen3VLModel.forward)
    aux = torch.from_numpy(np.concatenate(image_labels + video_labels))
    return batch, aux


class _Batches(torch.utils.data.Dataset):
    """The training batches from step `start` on, indexable so data-loading workers can build them ahead."""

    def __init__(self, adapter: QwenVLAdapter, cfg: TrainConfig, start: int) -> None:
        self.adapter, self.cfg, self.start = adapter, cfg, start

    def __len__(self) -> int:
        return max(0, self.cfg.steps - self.start)

    def __getitem__(self, i: int) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        return make_batch(self.adapter, self.cfg, self.start + i)


def _one_thread(worker: int) -> None:
    torch.set_num_threads(1)


class _Aux(nn.Module):
    """Throwaway probe on merged visual tokens: predicts the cell's shape and value."""

    def __init__(self, hidden: int) -> None:
        super().__init__()
        self.shape = nn.Linear(hidden, len(SHAPES) + 1)
        self.value = nn.Linear(hidden, len(VALUES) + 1)

    def loss(self, feats: torch.Tensor, labels: torch.Tensor, value_focus: float = 0.0) -> torch.Tensor:
        """Cross-entropy over all cells; `value_focus` adds the value loss again over the object cells only.

        Empty cells dominate the plain mean, so a value that is hard to read (6, 8 and 9 on pages)
        barely moves it; the focused term gives those cells their own weight.
        """
        ce = nn.functional.cross_entropy
        loss = ce(self.shape(feats), labels[:, 0]) + ce(self.value(feats), labels[:, 1])
        shown = labels[:, 1] > 0
        if value_focus and bool(shown.any()):
            loss = loss + value_focus * ce(self.value(feats[shown]), labels[shown, 1])
        return loss


def _continue_probe(aux: _Aux, trained: Path) -> None:
    """Start a continuation's probe from the run it continues, or at zero where that run left none.

    A random probe would send large gradients into the trained visual features for its first steps;
    a zero one sends none until it has learnt something.
    """
    if trained.exists():
        load_model(aux, trained)
        return
    for p in aux.parameters():
        nn.init.zeros_(p)


def heldout_accuracy(adapter: QwenVLAdapter, n: int, seed: int) -> dict[str, float]:
    """Exact-match accuracy of generated answers on n held-out samples per domain."""
    adapter.model.eval()
    samples = [s for domain in DOMAINS for s in generate(domain, n, seed=seed, split="eval")]
    result = evaluate(adapter, samples, batch_size=32, max_new_tokens=4)
    return {domain: v["accuracy"] for domain, v in result.by_domain().items()}


def train(out: Path, cfg: TrainConfig, on_step: Callable[[int, dict[str, Any]], None] | None = None) -> dict:
    """Train into `out` (resuming from out/checkpoint if present); returns the final held-out accuracies.

    Runs on the GPU when there is one (the batches, built on the CPU, are the same either way).
    """
    torch.set_num_threads(cfg.threads)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    out.mkdir(parents=True, exist_ok=True)
    ckpt = out / CHECKPOINT
    tokenizer = build_tokenizer()
    processor = build_image_processor()
    torch.manual_seed(cfg.seed)
    if cfg.init is not None:  # continue from trained weights (a fresh optimizer and schedule)
        model = Qwen3VLForConditionalGeneration.from_pretrained(resolve(cfg.init))
        if cfg.layers is not None and cfg.layers != model.config.get_text_config().num_hidden_layers:
            model = grow_decoder(model, cfg.layers)
    else:
        model = Qwen3VLForConditionalGeneration(build_config(tokenizer, small=cfg.small, layers=cfg.layers))
    aux = _Aux(model.config.get_text_config().hidden_size)
    if cfg.init is not None:
        _continue_probe(aux, Path(resolve(cfg.init)) / CHECKPOINT / "aux.safetensors")
    trained: list[nn.Module] = [model, aux]
    params = [p for module in trained for p in module.to(device).parameters()]
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=0.01)
    start = 0
    if (ckpt / "state.json").exists():
        state = json.loads((ckpt / "state.json").read_text())
        # resume with the stored options; the step budget may be raised; threads and checkpointing are this run's
        stored = {
            **state["config"],
            "curriculum_steps": tuple(state["config"]["curriculum_steps"]),
            "domain_weights": tuple(state["config"].get("domain_weights", (1.0, 1.0, 1.0))),
        }
        run = {"threads": cfg.threads, "workers": cfg.workers, "checkpoint_every": cfg.checkpoint_every}
        cfg = TrainConfig(**{**stored, **run, "steps": max(cfg.steps, stored["steps"])})
        load_model(model, ckpt / "model.safetensors")
        load_model(aux, ckpt / "aux.safetensors")
        opt.load_state_dict(torch.load(ckpt / "optimizer.pt", weights_only=True, map_location="cpu"))
        start = int(state["step"])
    adapter = QwenVLAdapter(model, tokenizer, processor, "builtin")
    feats: list[torch.Tensor] = []
    hook = model.model.visual.merger.register_forward_hook(lambda m, i, o: feats.append(o))
    log_path = out / "train_log.jsonl"
    if log_path.exists():  # drop rows written after the checkpoint we resume from: they will be redone
        kept = [line for line in log_path.read_text().splitlines() if json.loads(line)["step"] <= start]
        log_path.write_text("".join(line + "\n" for line in kept))
    log = log_path.open("a", encoding="utf-8")
    began = time.time()
    step = start
    accuracy: dict[str, float] = {}
    batches = torch.utils.data.DataLoader(
        _Batches(adapter, cfg, start),
        batch_size=None,
        num_workers=cfg.workers,
        worker_init_fn=_one_thread,
        prefetch_factor=4 if cfg.workers else None,
    )
    try:
        for step, (batch, aux_labels) in enumerate(batches, start):
            model.train()
            batch = {k: v.to(device) for k, v in batch.items()}
            aux_labels = aux_labels.to(device)
            for group in opt.param_groups:
                group["lr"] = _lr(cfg, step)
            feats.clear()
            output = model(**batch)
            aux_loss = aux.loss(torch.cat(feats), aux_labels, cfg.value_focus)
            loss = output.loss + cfg.aux_weight * aux_loss
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            record: dict[str, Any] = {
                "step": step + 1,
                "loss": round(output.loss.item(), 4),
                "aux_loss": round(aux_loss.item(), 4),
                "lr": _lr(cfg, step),
                "seconds": round(time.time() - began, 1),
            }
            done = step + 1
            if done % cfg.eval_every == 0 or done == cfg.steps:
                with torch.no_grad():
                    accuracy = heldout_accuracy(adapter, cfg.eval_n, seed=1000 + done)
                record["heldout"] = accuracy
            log.write(json.dumps(record) + "\n")
            log.flush()
            if on_step is not None:
                on_step(done, record)
            if done % cfg.checkpoint_every == 0 or done == cfg.steps:
                _checkpoint(ckpt, model, aux, opt, cfg, done)
            if accuracy and min(accuracy.values()) >= cfg.target and "heldout" in record:
                _checkpoint(ckpt, model, aux, opt, cfg, done)
                break
    finally:
        hook.remove()
        log.close()
    model.eval()
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    processor.save_pretrained(out)
    summary = {"steps": step + 1, "config": asdict(cfg), "heldout": accuracy}
    (out / "training.json").write_text(json.dumps(summary, indent=2))
    return summary


def grow_decoder(model: Qwen3VLForConditionalGeneration, layers: int) -> Qwen3VLForConditionalGeneration:
    """The same model with a deeper decoder that computes exactly the same function to start with.

    The trained layers keep their order, spread evenly with the first and the last in place; each new
    layer starts as the identity (its attention output and MLP down projections are zero), so training
    continues from what was learned and the new layers add room to compose (function-preserving growth).
    """
    old = model.config.get_text_config().num_hidden_layers
    if layers <= old:
        raise ValueError(f"can only grow the decoder: it has {old} layers, asked for {layers}")
    config = copy.deepcopy(model.config)
    text = config.get_text_config()
    text.num_hidden_layers = layers
    text.layer_types = ["full_attention"] * layers
    grown = Qwen3VLForConditionalGeneration(config)
    place = [round(i * (layers - 1) / max(1, old - 1)) for i in range(old)]
    prefix = "model.language_model.layers."
    state = {}
    for key, value in model.state_dict().items():
        if key.startswith(prefix):
            index, rest = key[len(prefix) :].split(".", 1)
            key = f"{prefix}{place[int(index)]}.{rest}"
        state[key] = value
    new = sorted(set(range(layers)) - set(place))
    for i in new:
        layer = grown.model.language_model.layers[i]
        state[f"{prefix}{i}.self_attn.o_proj.weight"] = torch.zeros_like(layer.self_attn.o_proj.weight)
        state[f"{prefix}{i}.mlp.down_proj.weight"] = torch.zeros_like(layer.mlp.down_proj.weight)
    missing, unexpected = grown.load_state_dict(state, strict=False)
    fresh = {f"{prefix}{i}." for i in new}
    if unexpected or any(not any(k.startswith(f) for f in fresh) for k in missing):
        raise RuntimeError(f"growing the decoder lost weights: missing {missing}, unexpected {unexpected}")
    return grown


def _checkpoint(
    path: Path, model: nn.Module, aux: nn.Module, opt: torch.optim.Optimizer, cfg: TrainConfig, step: int
) -> None:
    """Write the resumable state atomically enough: tensors first, the step file last."""
    path.mkdir(parents=True, exist_ok=True)
    save_model(model, str(path / "model.safetensors"))
    save_model(aux, str(path / "aux.safetensors"))
    torch.save(opt.state_dict(), path / "optimizer.pt")
    (path / "state.json").write_text(json.dumps({"step": step, "config": asdict(cfg)}))
