"""The built-in model's training batches: multi-turn chats about synthetic scenes, with probe labels.

Several questions about one input share one sequence (a multi-turn chat), so each vision forward
supervises many answers; a curriculum mixes a one-hop form (" star" -> "red": the answer right after the
naming token) into the realistic chat prompt. Each visual token is labelled with the shape and value drawn
in its cell, for the trainer's probe. Every input is drawn from the synthetic 'train' stream.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import torch

from corehead.data.sample import Region, VisualUnit
from corehead.data.synthetic import CLIP_FPS, COLOURS, DIGITS, DOMAINS, SEGMENT_FRAMES, SHAPES, Scene, make_scene
from corehead.models.base import Assembled, VisualTokenMap
from corehead.models.builtin import CHAT
from corehead.models.builtin.recipe import TrainConfig, compact_share
from corehead.models.chat import Piece
from corehead.models.qwen_vl import QwenVLAdapter

VALUES: tuple[str, ...] = (*COLOURS, *DIGITS)


def chat_pieces(scene: Scene, rng: np.random.Generator, compact: bool, max_turns: int) -> tuple[str, list[Piece]]:
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
            pieces.append(("text", "\n" + CHAT.user))
        pieces += [("question", fact.question), ("prompt", CHAT.assistant), ("answer", fact.answer), ("end", CHAT.end)]
    return CHAT.user, pieces


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


def cell_labels(scene: Scene, token_map: VisualTokenMap) -> np.ndarray:
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
    share = compact_share(cfg, step)
    for b in range(cfg.batch_size):
        index = step * cfg.batch_size + b
        weights = np.asarray(cfg.domain_weights, dtype=float)
        domain = DOMAINS[int(rng.choice(len(DOMAINS), p=weights / weights.sum()))]
        scene = make_scene(domain, cfg.seed, index, split="train")
        if cfg.still_video and domain == "scenes" and rng.random() < cfg.still_video:
            scene = still_video(scene)
        prefix, chat = chat_pieces(scene, rng, bool(rng.random() < share), cfg.max_turns)
        visual = CHAT.visual(adapter.items(scene.units))
        assembled = adapter.assemble(scene.units, [("prompt", prefix), ("vision", visual), *chat])
        rows.append(assembled)
        cells = cell_labels(scene, assembled.token_map)
        (video_labels if scene.units[0].kind == "frame" else image_labels).append(cells)
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


class Batches(torch.utils.data.Dataset):
    """The training batches from step `start` on, indexable so data-loading workers can build them ahead."""

    def __init__(self, adapter: QwenVLAdapter, cfg: TrainConfig, start: int) -> None:
        self.adapter, self.cfg, self.start = adapter, cfg, start

    def __len__(self) -> int:
        return max(0, self.cfg.steps - self.start)

    def __getitem__(self, i: int) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        return make_batch(self.adapter, self.cfg, self.start + i)


def one_thread(worker: int) -> None:
    """A data-loading worker builds batches on one thread (the model has the others)."""
    torch.set_num_threads(1)
