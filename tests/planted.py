"""A planted retrieval head: one head of a tiny random Qwen2-VL rewired to attend to a red square."""

from __future__ import annotations

import copy

import numpy as np
import torch
from PIL import Image, ImageDraw

from corehead.data.sample import Region, Sample, VisualUnit
from corehead.models.base import sample_region_tokens
from corehead.models.qwen_vl import QwenVLAdapter

HEAD = 3  # the planted head, in layer 0


def square_samples(n: int, colour: tuple[int, int, int] = (230, 20, 20), seed: int = 0) -> list[Sample]:
    """A coloured square at a random place on black; the region is the square."""
    samples = []
    rng = np.random.default_rng(seed)
    for i in range(n):
        img = Image.new("RGB", (224, 224))
        x, y = (int(v) for v in rng.integers(0, 6, size=2) * 28)
        ImageDraw.Draw(img).rectangle((x, y, x + 55, y + 55), fill=colour)
        unit = VisualUnit("image", f"square{i}", 224, 224, image=img)
        samples.append(Sample(f"s{i}", [unit], "Where is the red square?", "here", [Region(0, (x, y, x + 56, y + 56))]))
    return samples


def plant_head(adapter: QwenVLAdapter, sample: Sample) -> QwenVLAdapter:
    """A copy of `adapter` whose layer-0 head HEAD attends to the square's tokens from every row.

    Its key reads the direction that separates the square's layer-0 inputs from the rest; its query is a
    constant on the slowest rotary frequency, so position barely matters.
    """
    planted = copy.copy(adapter)
    planted.model = copy.deepcopy(adapter.model)
    text_model = planted.model.model.language_model
    attn = text_model.layers[0].self_attn
    seen: list[torch.Tensor] = []
    hook = text_model.layers[0].input_layernorm.register_forward_hook(lambda m, i, o: seen.append(o[0]))
    enc = planted.encode(sample)
    with torch.no_grad():
        planted.model(**enc.inputs)
    hook.remove()
    region = enc.token_map.positions[sample_region_tokens(sample, enc.token_map).indices]
    others = np.setdiff1d(np.arange(enc.length), region)
    direction = seen[0][region].mean(0) - seen[0][others].mean(0)
    direction = direction / direction.norm()
    dim = attn.head_dim // 2 - 1
    kv = HEAD // (attn.config.num_attention_heads // attn.config.num_key_value_heads)
    d = attn.head_dim
    with torch.no_grad():
        attn.k_proj.weight[kv * d : (kv + 1) * d] = 0
        attn.k_proj.bias[kv * d : (kv + 1) * d] = 0
        attn.k_proj.weight[kv * d + dim] = 40 * direction
        attn.q_proj.weight[HEAD * d : (HEAD + 1) * d] = 0
        attn.q_proj.bias[HEAD * d : (HEAD + 1) * d] = 0
        attn.q_proj.bias[HEAD * d + dim] = 40.0
    return planted
