"""The InternVL adapter on a tiny random InternVL (64-px tiles, 8-px patches, 16 tokens per tile).

Geometry is checked against the pixels the processor really feeds each token: every mapped cell is painted
a unique colour in the original image, and the centre of each token's pixels, found by our own reading of
pixel_values (tiles in <img> block order, patches merged as transformers' pixel_shuffle merges them), must
carry that cell's colour. Tile tokens and thumbnail tokens cover the same pixels, so they are painted and
checked in two passes.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from geometry_checks import (
    Spec,
    assert_cells_cover_box,
    assert_cells_half_inside,
    assert_forward_and_generate,
    assert_marks,
    nearest,
    paint,
    palette,
    probe_sample,
    probe_units,
)
from PIL import Image
from tiny_models import PATCH, TILE, internvl_processor, internvl_tokenizer
from tiny_models import tiny_internvl as tiny_internvl  # still imported from here by test_hybrid, test_recorder
from transformers import InternVLProcessor, PreTrainedTokenizerFast
from transformers.models.got_ocr2.image_processing_pil_got_ocr2 import GotOcr2ImageProcessorPil
from transformers.processing_utils import ProcessorMixin

from corehead.data.sample import Region, SampleError, VisualUnit
from corehead.models.base import Encoded
from corehead.models.internvl import InternVLAdapter, make_adapter

# ------------------------------------------------------------------ our own reading of the model's inputs


def _shuffle_sources(adapter: InternVLAdapter) -> np.ndarray:
    """[tokens per tile, merged patches, 2]: the (row, col) of the patches each token of a tile is made of,
    found by running the model's own pixel_shuffle on a grid of patch coordinates."""
    side = TILE // PATCH
    grid = torch.stack(torch.meshgrid(torch.arange(side), torch.arange(side), indexing="ij"), dim=-1)
    merged = adapter.model.model.pixel_shuffle(grid[None].float(), scale_factor=adapter.model.config.downsample_ratio)
    return merged.reshape(-1, merged.shape[-1] // 2, 2).long().numpy()


def _image_blocks(ids: torch.Tensor, adapter: InternVLAdapter) -> list[np.ndarray]:
    """Positions of the placeholders inside each <img> ... </img> block, in sequence order."""
    vocab = adapter.tokenizer.get_vocab()
    starts = torch.nonzero(ids == vocab["<img>"])[:, 0].tolist()
    ends = torch.nonzero(ids == vocab["</img>"])[:, 0].tolist()
    assert len(starts) == len(ends)
    blocks = []
    for s, e in zip(starts, ends, strict=True):
        assert bool((ids[s + 1 : e] == vocab["<IMG_CONTEXT>"]).all())
        blocks.append(np.arange(s + 1, e))
    return blocks


def _fed_colours(enc: Encoded, adapter: InternVLAdapter) -> np.ndarray:
    """[visual tokens, 3]: mean colour (0..255) of the centre of the pixels feeding each placeholder."""
    proc = adapter.image_processor
    mean = np.asarray(proc.image_mean).reshape(1, 3, 1, 1)
    std = np.asarray(proc.image_std).reshape(1, 3, 1, 1)
    tiles = (enc.inputs["pixel_values"].numpy() * std + mean) * 255.0
    sources = _shuffle_sources(adapter)
    per_tile = len(sources)
    colours, tile = [], 0
    for block in _image_blocks(enc.inputs["input_ids"][0], adapter):
        assert len(block) % per_tile == 0
        for _ in range(len(block) // per_tile):
            for patches in sources:
                y0, x0 = patches.min(0) * PATCH
                y1, x1 = (patches.max(0) + 1) * PATCH
                assert (y1 - y0) * (x1 - x0) == len(patches) * PATCH * PATCH  # one contiguous square
                q = (y1 - y0) // 4
                colours.append(tiles[tile, :, y0 + q : y1 - q, x0 + q : x1 - q].mean(axis=(1, 2)))
            tile += 1
    assert tile == len(tiles)
    return np.array(colours)


def _thumbnail_tokens(token_map_units: np.ndarray, per_tile: int) -> np.ndarray:
    """True for the last tile's tokens of every unit cut into several tiles (its thumbnail)."""
    thumb = np.zeros(len(token_map_units), dtype=bool)
    for unit in np.unique(token_map_units):
        idx = np.flatnonzero(token_map_units == unit)
        if len(idx) > per_tile:
            thumb[idx[-per_tile:]] = True
    return thumb


def _assert_geometry(adapter: InternVLAdapter, specs: list[Spec]) -> Encoded:
    """Paint every token's cell, encode, and check each token is fed its own colour; returns the probe."""
    probe = adapter.encode(probe_sample(probe_units(specs)))
    token_map = probe.token_map
    blocks = _image_blocks(probe.inputs["input_ids"][0], adapter)
    assert len(blocks) == len(specs)
    assert np.array_equal(np.concatenate(blocks), token_map.positions)  # exactly the <IMG_CONTEXT> tokens
    ids = probe.inputs["input_ids"][0]
    assert torch.equal(torch.nonzero(ids == adapter.image_token)[:, 0], torch.from_numpy(token_map.positions))
    assert np.array_equal(token_map.spans, np.ones(len(token_map), dtype=np.int64))
    per_tile = len(_shuffle_sources(adapter))
    thumb = _thumbnail_tokens(token_map.units, per_tile)
    for u, (kind, w, h) in enumerate(specs):
        mine = token_map.units == u
        assert mine.sum() == len(blocks[u])
        if kind == "frame":  # one tile per frame, never a thumbnail
            assert mine.sum() == per_tile
        tiles = adapter.image_processor.get_number_of_image_patches(h, w, {"crop_to_patches": True})
        assert mine.sum() == (1 if kind == "frame" else tiles) * per_tile
        for part in (mine & ~thumb, mine & thumb):  # tile cells, then thumbnail cells, each tile the unit
            if part.any():
                cells = token_map.cells[part]
                assert cells[:, 0].min() == 0 and cells[:, 1].min() == 0
                assert cells[:, 2].max() == pytest.approx(w) and cells[:, 3].max() == pytest.approx(h)
                area = ((cells[:, 2] - cells[:, 0]) * (cells[:, 3] - cells[:, 1])).sum()
                assert area == pytest.approx(w * h)
    colours = palette(len(token_map))
    for chosen in (~thumb, thumb):
        if not chosen.any():
            continue
        images = [
            paint(w, h, token_map.cells[chosen & (token_map.units == u)], colours[chosen & (token_map.units == u)])
            for u, (_, w, h) in enumerate(specs)
        ]
        enc = adapter.encode(probe_sample(probe_units(specs, images)))
        assert np.array_equal(enc.token_map.cells, token_map.cells)
        found = _fed_colours(enc, adapter)[chosen]
        assert np.array_equal(nearest(found, colours[chosen]), np.arange(int(chosen.sum())))
        assert np.abs(found - colours[chosen]).max() < 40  # resampling blurs edges, never a cell's centre
    return probe


# ------------------------------------------------------------------ geometry


@pytest.mark.parametrize(
    "size", [(300, 170), (640, 90), (90, 500), (1000, 37), (64, 64), (128, 128), (45, 61), (257, 255)]
)
def test_image_cells_match_fed_pixels(internvl: InternVLAdapter, size: tuple[int, int]) -> None:
    _assert_geometry(internvl, [("image", *size)])


def test_tiles_and_thumbnail_by_hand(internvl: InternVLAdapter) -> None:
    """300x170 is closest to a 2x1 grid: two 64-px tiles of a 128x64 resize, then a 64x64 thumbnail."""
    token_map = internvl.encode(probe_sample(probe_units([("image", 300, 170)]))).token_map
    assert len(token_map) == 3 * 16
    sx, sy = 300 / 128, 170 / 64
    assert token_map.cells[0] == pytest.approx([0, 0, 16 * sx, 16 * sy])
    assert token_map.cells[5] == pytest.approx([16 * sx, 16 * sy, 32 * sx, 32 * sy])  # row 1, column 1
    assert token_map.cells[16] == pytest.approx([64 * sx, 0, 80 * sx, 16 * sy])  # second tile starts at x=64
    assert token_map.cells[32] == pytest.approx([0, 0, 300 / 4, 170 / 4])  # thumbnail: 4x4 over the image
    assert token_map.cells[47] == pytest.approx([225, 127.5, 300, 170])


def test_several_pages_keep_their_own_tokens(internvl: InternVLAdapter) -> None:
    specs: list[Spec] = [("page", 192, 256), ("page", 250, 130), ("page", 64, 64), ("page", 192, 256)]
    probe = _assert_geometry(internvl, specs)
    units = probe.token_map.units.tolist()
    assert units == sorted(units) and set(units) == {0, 1, 2, 3}
    text = internvl.tokenizer.decode(probe.inputs["input_ids"][0])
    assert text.count("<img>") == 4 and "Frame" not in text


@pytest.mark.parametrize("n_frames", [1, 3])
def test_video_frames_are_single_tiles(internvl: InternVLAdapter, n_frames: int) -> None:
    probe = _assert_geometry(internvl, [("frame", 160, 96)] * n_frames)
    assert probe.token_map.units.tolist() == [f for f in range(n_frames) for _ in range(16)]
    assert probe.token_map.cells[:16].tolist() == probe.token_map.cells[-16:].tolist()
    assert probe.token_map.cells[1] == pytest.approx([40, 0, 80, 24])
    text = internvl.tokenizer.decode(probe.inputs["input_ids"][0]).replace("<IMG_CONTEXT>", "")
    frames = "".join(f"Frame{f + 1}: <img></img>\n" for f in range(n_frames))
    assert text.startswith("<|im_start|>user\n" + frames + "What colour")


def test_images_and_videos_interleaved(internvl: InternVLAdapter) -> None:
    """Each run of consecutive frames is one video, numbered from Frame1; pixels follow the prompt order."""
    specs: list[Spec] = [("frame", 100, 60), ("frame", 100, 60), ("image", 300, 170), ("frame", 90, 120)]
    probe = _assert_geometry(internvl, specs)
    text = internvl.tokenizer.decode(probe.inputs["input_ids"][0]).replace("<IMG_CONTEXT>", "")
    assert "Frame1: <img></img>\nFrame2: <img></img>\n<img></img>\nFrame1: <img></img>\n" in text
    assert probe.inputs["pixel_values"].shape == (1 + 1 + 3 + 1, 3, TILE, TILE)


def test_max_patches_is_read_from_the_processor(internvl: InternVLAdapter) -> None:
    for cap, tiles in ((6, 7), (2, 3), (1, 1)):
        capped = InternVLAdapter(internvl.model, internvl.tokenizer, internvl_processor(cap), "capped")
        enc = capped.encode(probe_sample(probe_units([("image", 640, 90)])))
        assert enc.inputs["pixel_values"].shape[0] == tiles and len(enc.token_map) == 16 * tiles
    capped.image_processor.max_patches = 2  # changing the processor later takes effect too
    assert capped.encode(probe_sample(probe_units([("image", 640, 90)]))).inputs["pixel_values"].shape[0] == 3
    _assert_geometry(capped, [("image", 640, 90), ("image", 90, 500)])


def test_region_boxes_round_trip(internvl: InternVLAdapter) -> None:
    """box -> tokens (tile and thumbnail tokens alike) -> union of their cells covers the box within a cell."""
    rng = np.random.default_rng(7)
    for w, h in ((300, 170), (640, 90), (90, 500), (192, 256)):
        token_map = internvl.encode(probe_sample(probe_units([("image", w, h)]))).token_map
        thumb = _thumbnail_tokens(token_map.units, 16)
        for _ in range(10):
            x0, x1 = np.sort(rng.uniform(0, w, 2))
            y0, y1 = np.sort(rng.uniform(0, h, 2))
            idx, fell_back = token_map.region_tokens(Region(0, (x0, y0, x1, y1)))
            cells = token_map.cells[idx]
            assert_cells_cover_box(cells, (x0, y0, x1, y1))
            if not fell_back:
                assert_cells_half_inside(cells, (x0, y0, x1, y1))
        half, _ = token_map.region_tokens(Region(0, (0.0, 0.0, w / 2, h)))  # a left half: both kinds of token
        assert thumb[half].any() and (~thumb[half]).any()
        assert thumb[half].sum() == 8  # the thumbnail's two left columns


class _ImageOnlyProcessor(InternVLProcessor):
    """transformers' InternVLProcessor without its video slot (which cannot be built without torchvision)."""

    def __init__(self, image_processor: GotOcr2ImageProcessorPil, tokenizer: PreTrainedTokenizerFast) -> None:
        ProcessorMixin.__init__(self, image_processor, tokenizer)
        self.image_seq_length = (TILE // PATCH // 2) ** 2
        self.start_image_token, self.end_image_token = tokenizer.start_image_token, tokenizer.end_image_token
        self.start_image_token_id = tokenizer.start_image_token_id
        self.end_image_token_id = tokenizer.end_image_token_id
        self.image_token, self.image_token_id = tokenizer.context_image_token, tokenizer.context_image_token_id
        self.video_token = tokenizer.video_token
        self.multimodal_pattern = re.compile(
            f"(?P<image>{re.escape(self.image_token)})|(?P<video>{re.escape(self.video_token)})"
        )


def test_same_inputs_as_internvl_processor(internvl: InternVLAdapter) -> None:
    """input_ids and pixel_values equal what transformers' own processor makes of the same prompt."""
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=internvl.tokenizer.backend_tokenizer,
        eos_token="<|im_end|>",
        pad_token="<pad>",
        extra_special_tokens={
            "start_image_token": "<img>",
            "end_image_token": "</img>",
            "context_image_token": "<IMG_CONTEXT>",
            "video_token": "<video>",
        },
    )
    processor = _ImageOnlyProcessor(internvl.image_processor, tokenizer)
    rng = np.random.default_rng(0)
    sizes = [(300, 170), (90, 500), (64, 64), (1000, 37)]
    images = [Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) for w, h in sizes]
    question = "What colour is the star?"
    text = "<|im_start|>user\n" + "<IMG_CONTEXT>\n" * len(images) + question + "<|im_end|>\n<|im_start|>assistant\n"
    expected = processor(images=images, text=text, return_tensors="pt")
    enc = internvl.encode(probe_sample(probe_units([("page", w, h) for w, h in sizes], images)))
    assert torch.equal(enc.inputs["input_ids"], expected["input_ids"])
    assert torch.equal(enc.inputs["pixel_values"], expected["pixel_values"])


# ------------------------------------------------------------------ running the model


def test_forward_padding_and_generate(internvl: InternVLAdapter) -> None:
    from corehead.data.synthetic import DOMAINS, make_sample

    samples = [make_sample(d, 0, i) for d in DOMAINS for i in range(2)]  # one image, pages, video
    kinds = {u.kind for s in samples for u in s.units}
    assert kinds == {"image", "page", "frame"}
    _, batch = assert_forward_and_generate(internvl, samples)
    assert batch["input_ids"][:, 0].tolist().count(internvl.pad_token) == len(samples) - 1  # left padded
    prompts = [internvl.encode(s) for s in samples]
    options = {"max_new_tokens": 3, "do_sample": False, "pad_token_id": internvl.pad_token}
    batch = internvl.collate(prompts)
    with torch.no_grad():
        together = internvl.model.generate(**batch, **options)[:, batch["input_ids"].shape[1] :]
        for i, e in enumerate(prompts):
            alone = internvl.model.generate(**e.inputs, **options)[0, e.length :]
            assert torch.equal(together[i, : len(alone)], alone)  # a batch row may run on after its eos


def test_encode_marks_question_prompt_end_and_answer(internvl: InternVLAdapter) -> None:
    from corehead.data.synthetic import make_sample

    sample = make_sample("pages", 0, 0)
    enc = assert_marks(internvl, sample)
    prompt = internvl.tokenizer.decode(enc.inputs["input_ids"][0][: enc.prompt_end + 1])
    assert prompt.endswith("<|im_end|>\n<|im_start|>assistant\n")
    assert "mm_token_type_ids" not in enc.inputs


def test_make_adapter_reads_a_checkpoint_processor(internvl: InternVLAdapter, tmp_path: Path) -> None:
    """The -hf checkpoints store GotOcr2ImageProcessorFast with crop_to_patches false; tiling still applies."""
    config = {
        "image_processor_type": "GotOcr2ImageProcessorFast",
        "processor_class": "InternVLProcessor",
        "crop_to_patches": False,
        "min_patches": 1,
        "max_patches": 3,
        "size": {"height": TILE, "width": TILE},
        "do_resize": True,
        "do_rescale": True,
        "rescale_factor": 1 / 255,
        "do_normalize": True,
        "image_mean": [0.485, 0.456, 0.406],
        "image_std": [0.229, 0.224, 0.225],
        "resample": 3,
        "do_convert_rgb": True,
    }
    (tmp_path / "preprocessor_config.json").write_text(json.dumps(config))
    adapter = make_adapter(internvl.model, internvl.tokenizer, str(tmp_path), "ckpt")
    assert adapter.image_processor.max_patches == 3
    enc = adapter.encode(probe_sample(probe_units([("image", 640, 90)])))
    assert enc.inputs["pixel_values"].shape[0] == 4  # a 3x1 grid and its thumbnail
    _assert_geometry(adapter, [("image", 300, 170)])


# ------------------------------------------------------------------ errors


def test_bad_inputs_raise_clear_errors(internvl: InternVLAdapter) -> None:
    with pytest.raises(ValueError, match="at least one visual unit"):  # a video with zero frames
        internvl.encode(probe_sample([]))
    empty = VisualUnit("image", "empty.png", 0, 40, image=Image.new("RGB", (0, 40)))
    with pytest.raises(SampleError, match=r"empty \(0x40 px\)"):
        internvl.encode(probe_sample([empty]))
    lying = VisualUnit("frame", "f0", 50, 50, frame=0, timestamp=0.0, image=Image.new("RGB", (40, 50)))
    with pytest.raises(SampleError, match="40x50 px but its unit says 50x50"):
        internvl.encode(probe_sample([lying]))
    with pytest.raises(ValueError, match="lacks InternVL's image tokens"):
        InternVLAdapter(
            internvl.model, internvl_tokenizer(["<pad>", "<|im_start|>", "<|im_end|>"]), internvl_processor(), "x"
        )
    odd = GotOcr2ImageProcessorPil(size={"height": TILE, "width": 2 * TILE})
    with pytest.raises(ValueError, match="square tiles"):
        InternVLAdapter(internvl.model, internvl.tokenizer, odd, "x")
