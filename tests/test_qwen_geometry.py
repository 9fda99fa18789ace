"""The visual token map against the pixels the processor really feeds each token.

Each cell the map assigns to a token is painted a unique colour in the original image; after the
processor's resize and patching, the centre of that token's patches (read back from pixel_values by
our own un-patchify) must carry that colour. This checks the resize scaling, the merge order and the
token order at once, for odd sizes, extreme aspect ratios, several pages and video.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from geometry_checks import (
    assert_forward_and_generate,
    assert_marks,
    assert_regions_round_trip,
    nearest,
    paint,
    palette,
    probe_sample,
)
from PIL import Image
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import smart_resize

from corehead.data.sample import Region, Sample, VisualUnit
from corehead.models.qwen_vl import QwenVLAdapter


def _token_blocks(pixel_rows: np.ndarray, adapter: QwenVLAdapter) -> np.ndarray:
    """Our own un-patchify: rows of pixel_values -> [tokens, temporal, C, 32, 32] in 0..255."""
    p, m, t = adapter.patch, adapter.merge, adapter.temporal
    patches = pixel_rows.reshape(-1, m, m, 3, t, p, p)  # token, mh, mw, C, t, ph, pw
    blocks = patches.transpose(0, 4, 3, 1, 5, 2, 6).reshape(-1, t, 3, m * p, m * p)
    mean = np.asarray(adapter.image_processor.image_mean).reshape(1, 1, 3, 1, 1)
    std = np.asarray(adapter.image_processor.image_std).reshape(1, 1, 3, 1, 1)
    return (blocks * std + mean) * 255.0


def _centre_colours(blocks: np.ndarray) -> np.ndarray:
    q = blocks.shape[-1] // 4
    return blocks[..., q:-q, q:-q].mean(axis=(-1, -2))  # [tokens, temporal, C]


@pytest.mark.parametrize("size", [(256, 256), (300, 170), (640, 90), (90, 500), (800, 600), (33, 45)])
def test_image_cells_match_fed_pixels(qwen_family: QwenVLAdapter, size: tuple[int, int]) -> None:
    width, height = size
    probe = VisualUnit("image", "probe", width, height, image=Image.new("RGB", size))
    token_map = qwen_family.encode(probe_sample([probe])).token_map
    colours = palette(len(token_map))
    unit = VisualUnit("image", "painted", width, height, image=paint(width, height, token_map.cells, colours))
    enc = qwen_family.encode(probe_sample([unit]))
    assert len(enc.token_map) == len(colours)
    blocks = _token_blocks(enc.inputs["pixel_values"].numpy(), qwen_family)
    found = _centre_colours(blocks)[:, 0]
    assert np.array_equal(nearest(found, colours), np.arange(len(colours)))
    assert np.abs(found - colours).max() < 40  # resampling blurs edges, never the centre of a cell
    # cells tile the whole image and positions are exactly the image placeholder tokens
    cells = enc.token_map.cells
    assert cells[:, 0].min() == 0 and cells[:, 1].min() == 0
    assert cells[:, 2].max() == pytest.approx(width) and cells[:, 3].max() == pytest.approx(height)
    area = ((cells[:, 2] - cells[:, 0]) * (cells[:, 3] - cells[:, 1])).sum()
    assert area == pytest.approx(width * height)
    ids = enc.inputs["input_ids"][0]
    assert torch.equal(torch.nonzero(ids == qwen_family.image_token)[:, 0], torch.from_numpy(enc.token_map.positions))


def test_several_pages_keep_their_own_tokens(qwen_family: QwenVLAdapter) -> None:
    sizes = [(192, 256), (250, 130), (192, 256)]
    probes = [
        VisualUnit("page", f"p{i}", w, h, page=i + 1, image=Image.new("RGB", (w, h))) for i, (w, h) in enumerate(sizes)
    ]
    token_map = qwen_family.encode(probe_sample(probes)).token_map
    colours = palette(len(token_map), salt=1)
    pages = []
    for i, (w, h) in enumerate(sizes):
        mine = token_map.units == i
        pages.append(
            VisualUnit("page", f"p{i}", w, h, page=i + 1, image=paint(w, h, token_map.cells[mine], colours[mine]))
        )
    enc = qwen_family.encode(probe_sample(pages))
    assert enc.token_map.units.tolist() == sorted(enc.token_map.units.tolist())
    assert set(enc.token_map.units.tolist()) == {0, 1, 2}
    found = _centre_colours(_token_blocks(enc.inputs["pixel_values"].numpy(), qwen_family))[:, 0]
    assert np.array_equal(nearest(found, colours), np.arange(len(colours)))
    grid = enc.inputs["image_grid_thw"]
    assert grid.shape == (3, 3) and int((grid.prod(1) // 4).sum()) == len(enc.token_map)


@pytest.mark.parametrize("n_frames", [4, 5])
def test_video_tokens_cover_their_frame_pairs(qwen_family: QwenVLAdapter, n_frames: int) -> None:
    w, h = 160, 96
    probes = [
        VisualUnit("frame", f"f{f}", w, h, frame=f, timestamp=f * 0.5, image=Image.new("RGB", (w, h)))
        for f in range(n_frames)
    ]
    token_map = qwen_family.encode(probe_sample(probes)).token_map
    per_frame = int((token_map.units == 0).sum())
    cells = token_map.cells[:per_frame]
    palettes = [palette(per_frame, salt=10 + f) for f in range(n_frames)]
    frames = [
        VisualUnit("frame", f"f{f}", w, h, frame=f, timestamp=f * 0.5, image=paint(w, h, cells, palettes[f]))
        for f in range(n_frames)
    ]
    enc = qwen_family.encode(probe_sample(frames))
    groups = (n_frames + 1) // 2
    assert len(enc.token_map) == groups * per_frame
    assert enc.token_map.units.tolist() == [2 * g for g in range(groups) for _ in range(per_frame)]
    expected_spans = [min(2, n_frames - 2 * g) for g in range(groups) for _ in range(per_frame)]
    assert enc.token_map.spans.tolist() == expected_spans
    found = _centre_colours(_token_blocks(enc.inputs["pixel_values_videos"].numpy(), qwen_family))
    for g in range(groups):
        rows = slice(g * per_frame, (g + 1) * per_frame)
        for half in range(2):
            frame = min(2 * g + half, n_frames - 1)  # the processor repeats the last frame to fill a pair
            assert np.array_equal(nearest(found[rows, half], palettes[frame]), np.arange(per_frame))
    text = qwen_family.tokenizer.decode(enc.inputs["input_ids"][0])
    if qwen_family.timestamps:  # Qwen3-VL: "<t seconds>" before each frame pair; 0.0 s and 0.5 s -> 0.25 s
        assert "<0.2 seconds>" in text or "<0.3 seconds>" in text
        assert text.count("<|vision_start|>") == groups
    else:
        assert "seconds" not in text and text.count("<|vision_start|>") == 1
    factor = qwen_family.patch * qwen_family.merge
    rh, rw = smart_resize(h, w, factor=factor, min_pixels=factor * factor, max_pixels=320 * 320)
    assert enc.inputs["video_grid_thw"].tolist() == [[groups, rh // qwen_family.patch, rw // qwen_family.patch]]


def test_forward_and_generate_on_all_modalities(qwen_family: QwenVLAdapter) -> None:
    from corehead.data.synthetic import DOMAINS, make_sample

    assert_forward_and_generate(qwen_family, [make_sample(d, 0, i) for d in DOMAINS for i in range(2)])


def test_encode_marks_question_prompt_end_and_answer(qwen_family: QwenVLAdapter) -> None:
    from corehead.data.synthetic import make_sample

    sample = make_sample("scenes", 0, 0)
    enc = assert_marks(qwen_family, sample)
    assert qwen_family.tokenizer.decode(enc.inputs["input_ids"][0][enc.prompt_end]).endswith("\n")
    no_answer = qwen_family.encode(sample)
    assert len(no_answer.answer) == 0 and no_answer.prompt_end == no_answer.length - 1


def test_region_boxes_round_trip_through_tokens(qwen_family: QwenVLAdapter) -> None:
    """box -> tokens -> union of their cells covers the box to within one cell, for every synthetic domain."""
    from corehead.data.synthetic import DOMAINS, make_sample

    for domain in DOMAINS:
        for i in range(4):  # every chosen cell is also at least half inside the box
            assert_regions_round_trip(qwen_family, make_sample(domain, 3, i), half_inside=True)


def test_small_and_missing_regions(tiny_builtin: QwenVLAdapter) -> None:
    from corehead.data.sample import SampleError
    from corehead.models.base import sample_region_tokens

    unit = VisualUnit("image", "blank", 256, 256, image=Image.new("RGB", (256, 256)))
    token_map = tiny_builtin.encode(probe_sample([unit])).token_map
    idx, fell_back = token_map.region_tokens(Region(0, (40.0, 40.0, 50.0, 50.0)))  # inside cell (1, 1)
    assert fell_back and len(idx) == 1
    assert token_map.cells[idx[0]].tolist() == [32.0, 32.0, 64.0, 64.0]
    whole, fell_back = token_map.region_tokens(Region(0, None))
    assert not fell_back and len(whole) == 64
    sample = Sample("ghost", [unit], "q?", "a", [Region(3, None)])
    with pytest.raises(SampleError, match="ghost"):
        sample_region_tokens(sample, token_map)
    counted = sample_region_tokens(
        Sample("tiny", [unit], "q?", "a", [Region(0, (40.0, 40.0, 50.0, 50.0)), Region(0, (0.0, 0.0, 64.0, 64.0))]),
        token_map,
    )
    assert counted.fallbacks == 1 and len(counted.indices) == 4


def test_frame_cap_keeps_evenly_spaced_frames(tiny_builtin: QwenVLAdapter) -> None:
    from corehead.data.sample import SampleError
    from corehead.data.synthetic import make_sample
    from corehead.models.base import sample_region_tokens

    sample = make_sample("clips", 0, 2)  # 8 frames
    tiny_builtin.max_frames = 4
    try:
        enc = tiny_builtin.encode(sample)
        token_map = enc.token_map
        assert int(enc.inputs["video_grid_thw"][0][0]) == 2  # 4 kept frames -> 2 temporal patches
        assert sorted(set(token_map.units.tolist())) == [0, 5]  # kept frames 0, 2, 5, 7; pairs start at 0 and 5
        assert sorted(set(token_map.spans.tolist())) == [3]  # (0, 2) and (5, 7) each span three frames
        assert token_map.covers_unit(1).any() and not token_map.covers_unit(3).any()
        capped = Sample(sample.id, sample.units, sample.question, sample.answer, [Region(3, (0, 0, 10, 10))])
        with pytest.raises(SampleError, match=r"clips-s0-00002.*capped away"):
            sample_region_tokens(capped, token_map)
    finally:
        tiny_builtin.max_frames = None


def test_pixel_cap_shrinks_images_and_keeps_geometry(qwen_family: QwenVLAdapter) -> None:
    size = dict(qwen_family.image_processor.size)
    qwen_family.cap_pixels(128 * 128)
    try:
        unit = VisualUnit("image", "big", 640, 480, image=Image.new("RGB", (640, 480)))
        enc = qwen_family.encode(probe_sample([unit]))
        rows, cols = (int(v) for v in enc.inputs["image_grid_thw"][0][1:])
        assert rows * cols * qwen_family.patch**2 <= 128 * 128
        cells = enc.token_map.cells
        assert cells[:, 2].max() == pytest.approx(640) and cells[:, 3].max() == pytest.approx(480)
    finally:
        for key, value in size.items():
            qwen_family.image_processor.size[key] = value


def test_bad_inputs_name_the_sample(tiny_builtin: QwenVLAdapter) -> None:
    from corehead.data.sample import SampleError

    thin = VisualUnit("image", "thin", 400, 1, image=Image.new("RGB", (400, 1)))  # aspect ratio 400 > 200
    with pytest.raises(SampleError, match=r"'thin-one'.*aspect ratio"):
        tiny_builtin.encode(Sample("thin-one", [thin], "q?", "a", [Region(0, None)]))
    with pytest.raises(SampleError, match=r"'no-units'.*at least one visual unit"):
        tiny_builtin.encode(Sample("no-units", [], "q?", "a", [Region(0, None)]))
    liar = VisualUnit("image", "liar", 50, 50, image=Image.new("RGB", (60, 50)))
    with pytest.raises(SampleError, match=r"'liar-one'.*60x50 px but its unit says 50x50"):
        tiny_builtin.encode(Sample("liar-one", [liar], "q?", "a", [Region(0, None)]))
