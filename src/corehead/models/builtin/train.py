"""Train the built-in tiny VLM from scratch on the synthetic domains (resumable, CPU-friendly).

What makes a 6M-parameter VLM learn retrieval in hours on two CPU cores (minutes on a GPU):
- several questions about one input in one sequence (a multi-turn chat), so each vision forward
  supervises many answers (batches.py);
- an auxiliary loss on the merged visual tokens predicting the shape and value drawn in each cell (a
  throwaway linear head, kept only in checkpoints), so the vision tower learns to see before the decoder
  learns to ask; `value_focus` weights the cells that show an object, where fine glyphs (6, 8, 9) are read;
- a curriculum from a one-hop form (" star" -> "red": the answer right after the naming token) to the
  realistic chat prompt ("What colour is the star?" ... assistant "red"), mixed throughout (recipe.py).
Every input is drawn from the synthetic 'train' stream, disjoint from the 'eval' stream used to measure.
How answers are measured is the caller's: `train(..., evaluate=)` takes it as a callback (the models
layer knows no study).
"""

from __future__ import annotations

import copy
import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, TextIO

import torch
from safetensors.torch import load_model, save_model
from torch import nn
from transformers import Qwen3VLForConditionalGeneration

from corehead.data.sample import Sample
from corehead.data.synthetic import DOMAINS, SHAPES, generate
from corehead.models import resolve
from corehead.models.builtin import build_config, build_image_processor, build_tokenizer
from corehead.models.builtin.batches import VALUES, Batches, one_thread
from corehead.models.builtin.recipe import TrainConfig, learning_rate
from corehead.models.qwen_vl import QwenVLAdapter
from corehead.models.shape import ModelShape

CHECKPOINT = "checkpoint"
# (adapter, held-out samples) -> accuracy per domain, e.g. built on corehead.experiments.evaluate.evaluate
Evaluate = Callable[[QwenVLAdapter, list[Sample]], dict[str, float]]


class Probe(nn.Module):
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


def _continue_probe(aux: Probe, trained: Path) -> None:
    """Start a continuation's probe from the run it continues, or at zero where that run left none.

    A random probe would send large gradients into the trained visual features for its first steps;
    a zero one sends none until it has learnt something.
    """
    if trained.exists():
        load_model(aux, trained)
        return
    for p in aux.parameters():
        nn.init.zeros_(p)


@dataclass
class _Trainee:
    """What a run updates: the model, its probe and their optimizer."""

    model: Qwen3VLForConditionalGeneration
    aux: Probe
    opt: torch.optim.Optimizer
    params: list[nn.Parameter]

    @classmethod
    def create(cls, cfg: TrainConfig, tokenizer: Any, device: torch.device) -> _Trainee:
        """Random weights, or `cfg.init`'s (grown to `cfg.layers`) with the probe it was trained with."""
        if cfg.init is not None:  # continue from trained weights (a fresh optimizer and schedule)
            model = Qwen3VLForConditionalGeneration.from_pretrained(resolve(cfg.init))
            if cfg.layers is not None and cfg.layers != ModelShape.of(model).n_layers:
                model = grow_decoder(model, cfg.layers)
        else:
            model = Qwen3VLForConditionalGeneration(build_config(tokenizer, small=cfg.small, layers=cfg.layers))
        aux = Probe(model.config.get_text_config().hidden_size)
        if cfg.init is not None:
            _continue_probe(aux, Path(resolve(cfg.init)) / CHECKPOINT / "aux.safetensors")
        trained: list[nn.Module] = [model, aux]
        params = [p for module in trained for p in module.to(device).parameters()]
        return cls(model, aux, torch.optim.AdamW(params, lr=cfg.lr, weight_decay=0.01), params)

    def step(
        self,
        cfg: TrainConfig,
        step: int,
        batch: dict[str, torch.Tensor],
        aux_labels: torch.Tensor,
        feats: list[torch.Tensor],
    ) -> dict[str, Any]:
        """One optimizer step on a batch; `feats` collects the merged visual tokens of the forward."""
        self.model.train()
        for group in self.opt.param_groups:
            group["lr"] = learning_rate(cfg, step)
        feats.clear()
        output = self.model(**batch)
        aux_loss = self.aux.loss(torch.cat(feats), aux_labels, cfg.value_focus)
        loss = output.loss + cfg.aux_weight * aux_loss
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.params, 1.0)
        self.opt.step()
        return {
            "step": step + 1,
            "loss": round(output.loss.item(), 4),
            "aux_loss": round(aux_loss.item(), 4),
            "lr": learning_rate(cfg, step),
        }

    def resume(self, ckpt: Path, cfg: TrainConfig) -> tuple[TrainConfig, int]:
        """Load the checkpoint in `ckpt` if there is one: the run's stored options and the step to go on from."""
        if not (ckpt / "state.json").exists():
            return cfg, 0
        state = json.loads((ckpt / "state.json").read_text())
        # resume with the stored options; the step budget may be raised; threads and checkpointing are this run's
        stored = {
            **state["config"],
            "curriculum_steps": tuple(state["config"]["curriculum_steps"]),
            "domain_weights": tuple(state["config"].get("domain_weights", (1.0, 1.0, 1.0))),
        }
        run = {"threads": cfg.threads, "workers": cfg.workers, "checkpoint_every": cfg.checkpoint_every}
        cfg = TrainConfig(**{**stored, **run, "steps": max(cfg.steps, stored["steps"])})
        load_model(self.model, ckpt / "model.safetensors")
        load_model(self.aux, ckpt / "aux.safetensors")
        self.opt.load_state_dict(torch.load(ckpt / "optimizer.pt", weights_only=True, map_location="cpu"))
        return cfg, int(state["step"])

    def save(self, path: Path, cfg: TrainConfig, step: int) -> None:
        """Write the resumable state atomically enough: tensors first, the step file last."""
        path.mkdir(parents=True, exist_ok=True)
        save_model(self.model, str(path / "model.safetensors"))
        save_model(self.aux, str(path / "aux.safetensors"))
        torch.save(self.opt.state_dict(), path / "optimizer.pt")
        (path / "state.json").write_text(json.dumps({"step": step, "config": asdict(cfg)}))


def heldout_accuracy(adapter: QwenVLAdapter, evaluate: Evaluate, n: int, seed: int) -> dict[str, float]:
    """`evaluate`'s accuracy per domain on n held-out samples per domain."""
    adapter.model.eval()
    return evaluate(adapter, [s for domain in DOMAINS for s in generate(domain, n, seed=seed, split="eval")])


def _open_log(path: Path, start: int) -> TextIO:
    """The training log, for appending; rows written after the checkpoint resumed from are dropped (redone)."""
    if path.exists():
        kept = [line for line in path.read_text().splitlines() if json.loads(line)["step"] <= start]
        path.write_text("".join(line + "\n" for line in kept))
    return path.open("a", encoding="utf-8")


def train(
    out: Path,
    cfg: TrainConfig,
    on_step: Callable[[int, dict[str, Any]], None] | None = None,
    evaluate: Evaluate | None = None,
) -> dict:
    """Train into `out` (resuming from out/checkpoint if present); returns the final held-out accuracies.

    Every `cfg.eval_every` steps `evaluate` measures held-out samples, and the run stops once every domain
    reaches `cfg.target`; without it nothing is measured. Runs on the GPU when there is one (the batches,
    built on the CPU, are the same either way).
    """
    torch.set_num_threads(cfg.threads)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tokenizer()
    processor = build_image_processor()
    torch.manual_seed(cfg.seed)
    trainee = _Trainee.create(cfg, tokenizer, device)
    cfg, start = trainee.resume(out / CHECKPOINT, cfg)
    adapter = QwenVLAdapter(trainee.model, tokenizer, processor, "builtin")
    step, accuracy = _loop(out, cfg, trainee, adapter, start, on_step, evaluate)
    trainee.model.eval()
    trainee.model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    processor.save_pretrained(out)
    summary = {"steps": step + 1, "config": asdict(cfg), "heldout": accuracy}
    (out / "training.json").write_text(json.dumps(summary, indent=2))
    return summary


def _loop(
    out: Path,
    cfg: TrainConfig,
    trainee: _Trainee,
    adapter: QwenVLAdapter,
    start: int,
    on_step: Callable[[int, dict[str, Any]], None] | None,
    evaluate: Evaluate | None,
) -> tuple[int, dict[str, float]]:
    """Train from step `start` to `cfg.steps` (or the target), logging, measuring and checkpointing as it
    goes; returns the last step index and the last held-out accuracies."""
    device = next(trainee.model.parameters()).device
    feats: list[torch.Tensor] = []
    hook = trainee.model.model.visual.merger.register_forward_hook(lambda m, i, o: feats.append(o))
    log = _open_log(out / "train_log.jsonl", start)
    began = time.time()
    step = start
    accuracy: dict[str, float] = {}
    batches = torch.utils.data.DataLoader(
        Batches(adapter, cfg, start),
        batch_size=None,
        num_workers=cfg.workers,
        worker_init_fn=one_thread,
        prefetch_factor=4 if cfg.workers else None,
    )
    try:
        for step, (batch, aux_labels) in enumerate(batches, start):
            inputs = {k: v.to(device) for k, v in batch.items()}
            record = trainee.step(cfg, step, inputs, aux_labels.to(device), feats)
            record["seconds"] = round(time.time() - began, 1)
            done = step + 1
            if evaluate is not None and (done % cfg.eval_every == 0 or done == cfg.steps):
                with torch.no_grad():
                    accuracy = heldout_accuracy(adapter, evaluate, cfg.eval_n, seed=1000 + done)
                record["heldout"] = accuracy
            log.write(json.dumps(record) + "\n")
            log.flush()
            if on_step is not None:
                on_step(done, record)
            reached = "heldout" in record and bool(accuracy) and min(accuracy.values()) >= cfg.target
            if done % cfg.checkpoint_every == 0 or done == cfg.steps or reached:
                trainee.save(out / CHECKPOINT, cfg, done)
            if reached:
                break
    finally:
        hook.remove()
        log.close()
    return step, accuracy


def grow_decoder(model: Qwen3VLForConditionalGeneration, layers: int) -> Qwen3VLForConditionalGeneration:
    """The same model with a deeper decoder that computes exactly the same function to start with.

    The trained layers keep their order, spread evenly with the first and the last in place; each new
    layer starts as the identity (its attention output and MLP down projections are zero), so training
    continues from what was learned and the new layers add room to compose (function-preserving growth).
    """
    old = ModelShape.of(model).n_layers
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
