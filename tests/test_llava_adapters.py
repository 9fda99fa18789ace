"""LLaVA-1.5, LLaVA-NeXT and LLaVA-OneVision adapters on tiny random models of the real architectures.

Geometry is checked against what the model really feeds each token, independently of the adapter: the
pixel_values are un-patchified here and reduced per ViT patch, those patch features are ordered by the
model's own `pack_image_features` / `apply_pooling` (newline tokens included) and scattered into the
placeholder tokens as the model scatters them. Two probes: every cell of the map painted a unique colour
(that colour must reach the token the map assigns it), and a dithered coordinate gradient (the centroid of
the pixels each token sees must lie at its cell's centre, which also covers bilinear shrinking and pooling).
"""

from __future__ import annotations

import re
from collections.abc import Callable

import numpy as np
import pytest
import torch
from geometry_checks import (
    WHITE,
    Spec,
    assert_forward_and_generate,
    assert_regions_round_trip,
    nearest,
    paint,
    probe_sample,
    probe_units,
    spaced_palette,
)
from PIL import Image
from tiny_models import TINY_PINPOINTS, llava_text_config, llava_tokenizer, tiny_llava
from transformers import LlavaConfig, LlavaForConditionalGeneration, LlavaNextConfig, LlavaNextForConditionalGeneration
from transformers.models.llava.image_processing_pil_llava import LlavaImageProcessorPil
from transformers.models.llava_next.image_processing_pil_llava_next import LlavaNextImageProcessorPil
from transformers.models.llava_next.modeling_llava_next import image_size_to_num_patches

from corehead.data.sample import Region, Sample, SampleError
from corehead.data.synthetic import make_sample
from corehead.models.base import VisualTokenMap
from corehead.models.llava import (
    CHATML,
    LLAMA3,
    MISTRAL,
    LlavaAdapter,
    LlavaNextAdapter,
    LlavaOnevisionAdapter,
    make_adapter,
)

NEWLINE = -1.0e4  # the image_newline feature in our probe runs


# --------------------------------------------------------------------------- what the model feeds each token


Reduce = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def _background(adapter: LlavaAdapter) -> torch.Tensor:
    """OneVision's square padding colour for several images (the processor's mean, in 0..255)."""
    return torch.tensor([int(x * 255) for x in adapter.image_processor.image_mean], dtype=torch.float32)


def _patches(adapter: LlavaAdapter, tiles: torch.Tensor, reduce: Reduce) -> torch.Tensor:
    """Our un-patchify: normalised tiles [T, 3, S, S] -> reduce(pixels 0..255 of each ViT patch) [T, n*n, C],
    in the vision tower's row-major patch order (its stride-p convolution ignores a tile's last S % p px)."""
    vision = adapter.model.config.vision_config
    proc = adapter.image_processor
    p, n = vision.patch_size, vision.image_size // vision.patch_size
    mean = torch.tensor(proc.image_mean).view(1, 3, 1, 1)
    std = torch.tensor(proc.image_std).view(1, 3, 1, 1)
    pixels = ((tiles * std + mean) * 255)[:, :, : n * p, : n * p]
    blocks = pixels.reshape(len(tiles), 3, n, p, n, p).permute(0, 2, 4, 1, 3, 5).reshape(len(tiles), n * n, 3, p * p)
    return reduce(blocks, _background(adapter))


def _fed(adapter: LlavaAdapter, inputs: dict[str, torch.Tensor], reduce: Reduce) -> np.ndarray:
    """Feature each sequence position receives [L, C]: NaN for text, NEWLINE rows for newline tokens."""
    model, config = adapter.model.model, adapter.model.config
    ids = inputs["input_ids"][0]
    fed: torch.Tensor | None = None

    def scatter(token: int, features: torch.Tensor) -> None:
        nonlocal fed
        if fed is None:
            fed = torch.full((len(ids), features.shape[-1]), float("nan"))
        slots = ids == token
        assert int(slots.sum()) == len(features)  # exactly as many placeholders as the model has features
        fed[slots] = features

    if "pixel_values" in inputs:
        values = inputs["pixel_values"]
        if values.dim() == 4:  # LLaVA-1.5: one tile per image
            scatter(config.image_token_id, _patches(adapter, values, reduce).flatten(0, 1))
        else:
            sizes = inputs["image_sizes"]
            several = "batch_num_images" in inputs and int(inputs["batch_num_images"][0]) > 1
            tiles = config.vision_config.image_size
            counts = [1 if several else image_size_to_num_patches(s, config.image_grid_pinpoints, tiles) for s in sizes]
            features = [_patches(adapter, values[i, :k], reduce) for i, k in enumerate(counts)]
            newline = torch.full((features[0].shape[-1],), NEWLINE)
            if isinstance(adapter, LlavaOnevisionAdapter):
                kwargs = {"vision_aspect_ratio": config.vision_aspect_ratio}
            else:
                kwargs = {"vision_feature_select_strategy": config.vision_feature_select_strategy}
            packed, _ = model.pack_image_features(features, sizes, image_newline=newline, **kwargs)
            scatter(config.image_token_id, torch.cat(packed))
    if "pixel_values_videos" in inputs:
        videos = inputs["pixel_values_videos"]
        pooled = model.apply_pooling(_patches(adapter, videos.flatten(0, 1), reduce))
        pooled = pooled.reshape(len(videos), -1, pooled.shape[-1])
        newline = torch.full((len(videos), 1, pooled.shape[-1]), NEWLINE)
        scatter(config.video_token_id, torch.cat([pooled, newline], dim=1).flatten(0, 1))
    assert fed is not None
    return fed.numpy()


def _colour(blocks: torch.Tensor, background: torch.Tensor) -> torch.Tensor:
    """Per patch: median colour of its image pixels (neither the zero padding of anyres tiles nor OneVision's
    square padding), and the share of its pixels that are image."""
    black = blocks.amax(dim=-2) < 24
    mask = ~(black | ((blocks - background.view(3, 1)).norm(dim=-2) < 24))
    colour = blocks.masked_fill(~mask[..., None, :], float("nan")).nanmedian(dim=-1).values.nan_to_num(0.0)
    return torch.cat([colour, mask.float().mean(-1, keepdim=True)], dim=-1)


def _moments(blocks: torch.Tensor, background: torch.Tensor) -> torch.Tensor:
    """Per patch: means of R*m, G*m and m, with m the image share of each pixel. Blue is 255 in the image and
    is the padding's blue in square padding, which resampling blends linearly; zero padding weighs nothing."""
    red, green, blue = blocks.unbind(dim=-2)
    m = ((blue - background[2]) / (255.0 - background[2])).clamp(0, 1) * (blue >= 50)
    red_m = (red - (1 - m) * background[0]) * (blue >= 50)
    green_m = (green - (1 - m) * background[1]) * (blue >= 50)
    return torch.stack([red_m.mean(-1), green_m.mean(-1), m.mean(-1)], dim=-1)


# --------------------------------------------------------------------------- probes


def _layers(token_map: VisualTokenMap) -> list[np.ndarray]:
    """Tokens split into layers whose cells do not overlap within a unit (NeXT: the base grid, then the tiles)."""
    layers: list[list[int]] = []
    c, u = token_map.cells, token_map.units
    for i in range(len(token_map)):
        for layer in layers:
            o = np.asarray(layer)
            overlap = (np.minimum(c[o, 2], c[i, 2]) - np.maximum(c[o, 0], c[i, 0]) > 1e-9) & (
                np.minimum(c[o, 3], c[i, 3]) - np.maximum(c[o, 1], c[i, 1]) > 1e-9
            )
            if not (overlap & (u[o] == u[i])).any():
                layer.append(i)
                break
        else:
            layers.append([i])
    return [np.asarray(layer) for layer in layers]


def _gradient(w: int, h: int, salt: int) -> Image.Image:
    """Red and green rise 0..250 across x and y (dithered, so patch means are unbiased); blue is 255."""
    rng = np.random.default_rng(salt)
    red = np.floor((np.arange(w) + 0.5) / w * 250 + rng.random((h, w)))
    green = np.floor((np.arange(h)[:, None] + 0.5) / h * 250 + rng.random((h, w)))
    return Image.fromarray(np.stack([red, green, np.full((h, w), 255.0)], axis=-1).astype(np.uint8))


def _square_padded(adapter: LlavaAdapter, inputs: dict[str, torch.Tensor]) -> bool:
    """Whether images were padded to a square (LLaVA-1.5's do_pad, OneVision's several images)."""
    if isinstance(adapter, LlavaOnevisionAdapter):
        return "batch_num_images" in inputs and int(inputs["batch_num_images"][0]) > 1
    return type(adapter) is LlavaAdapter and bool(adapter.image_processor.do_pad)


def _least_seen(adapter: LlavaAdapter, inputs: dict[str, torch.Tensor]) -> float:
    """Share of tokens whose patch is mostly image; square padding leaves slivers of image at its edges."""
    return 0.5 if _square_padded(adapter, inputs) else 0.85


def _check_positions(adapter: LlavaAdapter, inputs: dict[str, torch.Tensor], token_map: VisualTokenMap) -> None:
    """The map's positions are the placeholders the model fills, less newlines (and, after square padding,
    less tokens that see almost no image)."""
    fed = _fed(adapter, inputs, _colour)
    ids = inputs["input_ids"][0].numpy()
    config = adapter.model.config
    placeholder = np.isin(ids, [config.image_token_id, getattr(config, "video_token_id", -1)])
    newline = fed[:, 0] == NEWLINE
    slots = np.flatnonzero(placeholder & ~newline)
    positions = token_map.positions
    assert np.all(np.diff(positions) > 0)
    if not _square_padded(adapter, inputs):
        assert np.array_equal(positions, slots)
        return
    assert np.isin(positions, slots).all()
    left_out = np.setdiff1d(slots, positions)
    assert np.all(fed[left_out, 3] < 0.25)


def _check_colours(adapter: LlavaAdapter, spec: list[Spec], salt: int = 0) -> None:
    """Paint each layer's cells uniquely; each token must receive its own cell's colour."""
    probe = adapter.encode(probe_sample(probe_units(spec)))
    token_map = probe.token_map
    _check_positions(adapter, probe.inputs, token_map)
    checked = 0
    for k, layer in enumerate(_layers(token_map)):
        colours = spaced_palette(len(layer), salt + k)
        images = []
        for u, (_, w, h) in enumerate(spec):
            mine = token_map.units[layer] == u
            images.append(paint(w, h, token_map.cells[layer][mine], colours[mine], WHITE))
        enc = adapter.encode(probe_sample(probe_units(spec, images)))
        assert np.array_equal(enc.token_map.positions, token_map.positions)
        fed = _fed(adapter, enc.inputs, _colour)[token_map.positions[layer]]
        seen = fed[:, 3] >= 0.25  # tokens whose patch is mostly image (the rest: slivers at a padded edge)
        found = fed[seen, :3]
        assert np.array_equal(nearest(found, colours), np.flatnonzero(seen))
        checked += int(seen.sum())
    assert checked >= _least_seen(adapter, probe.inputs) * len(token_map)


def _check_centroids(adapter: LlavaAdapter, spec: list[Spec]) -> None:
    """The centroid of the image pixels each token sees lies at its cell's centre (within a quarter cell)."""
    images = [_gradient(w, h, salt=i) for i, (_, w, h) in enumerate(spec)]
    enc = adapter.encode(probe_sample(probe_units(spec, images)))
    token_map = enc.token_map
    moments = _fed(adapter, enc.inputs, _moments)[token_map.positions]
    seen = moments[:, 2] >= 0.25
    assert seen.mean() >= _least_seen(adapter, enc.inputs)
    sizes = np.array([(w, h) for _, w, h in spec], dtype=float)[token_map.units]
    centroid = moments[:, :2] / moments[:, 2:3] / 250.0 * sizes
    cells = token_map.cells
    centre = (cells[:, :2] + cells[:, 2:]) / 2
    extent = cells[:, 2:] - cells[:, :2]
    error = np.abs(centroid - centre)[seen]
    assert np.all(error <= 0.25 * extent[seen] + 1.0), np.max(error / (extent[seen] + 1e-9))


# --------------------------------------------------------------------------- geometry tests

SIZES = [(256, 256), (300, 170), (640, 90), (90, 500), (33, 45)]
# At real scale, images upscaled several times have cells of a few pixels, which bicubic resampling blurs
# across patches: the colour probe needs cells of some pixels (the centroid probe covers those sizes).
TINY = ("llava", "llava-pad", "llava-squash", "next", "onevision")
COLOUR_CASES = [(kind, size) for kind in TINY for size in SIZES] + [
    (kind, size) for kind in ("llava-real", "next-real") for size in [(256, 256), (300, 170), (800, 600), (1200, 400)]
]


@pytest.mark.parametrize(("kind", "size"), COLOUR_CASES, ids=[f"{k}-{w}x{h}" for k, (w, h) in COLOUR_CASES])
def test_cells_carry_their_colour(kind: str, size: tuple[int, int]) -> None:
    _check_colours(tiny_llava(kind), [("image", *size)])


@pytest.mark.parametrize("size", [*SIZES, (800, 600), (2300, 1700)], ids=lambda s: f"{s[0]}x{s[1]}")
@pytest.mark.parametrize("kind", [*TINY, "llava-real", "next-real", "onevision-real"])
def test_cell_centres_match_fed_pixels(kind: str, size: tuple[int, int]) -> None:
    _check_centroids(tiny_llava(kind), [("image", *size)])


@pytest.mark.parametrize("size", [(3000, 20), (20, 3000), (1500, 16)], ids=lambda s: f"{s[0]}x{s[1]}")
@pytest.mark.parametrize("kind", ["next-real", "onevision-real"])
def test_extreme_aspect_ratios(kind: str, size: tuple[int, int]) -> None:
    """Bands so thin that unpadding keeps a few patch rows of the tiles (OneVision), or none (NeXT: only the
    base grid, and for a tall band one newline per empty row)."""
    adapter = tiny_llava(kind)
    _check_centroids(adapter, [("image", *size)])
    enc = adapter.encode(probe_sample(probe_units([("image", *size)])))
    _check_positions(adapter, enc.inputs, enc.token_map)
    base = adapter.per_tile**2
    assert (len(enc.token_map) == base) == (kind == "next-real")


def test_square_padding_leaves_out_tokens_of_padding() -> None:
    """LLaVA-1.5 with do_pad: a 36x12 band padded to 36x36 keeps only the patch rows that see the band."""
    adapter = tiny_llava("llava-pad")
    token_map = adapter.encode(probe_sample(probe_units([("image", 72, 24)]))).token_map
    assert len(token_map) == 4 * 2  # of 4x4 patches, the two middle rows (y 9..27 of 36) see the band
    assert token_map.cells[:, 1].min() == 0 and token_map.cells[:, 3].max() == 24


def test_onevision_shrinks_large_grids_as_the_model_does() -> None:
    """anyres_max_9: a 2300x1700 image's 5x6-tile grid is shrunk bilinearly; tokens cover their footprints."""
    adapter = tiny_llava("onevision-real")
    enc = adapter.encode(probe_sample(probe_units([("image", 2300, 1700)])))
    n = 384 // 14
    tile_tokens = len(enc.token_map) - n * n
    assert tile_tokens < 9 * 1.21 * n * n  # shrunk: far fewer than the 30 tiles' 21870 patches
    _check_positions(adapter, enc.inputs, enc.token_map)


@pytest.mark.parametrize("kind", ["llava", "next", "onevision", "next-real", "onevision-real"])
def test_several_images_keep_their_own_tokens(kind: str) -> None:
    spec = [("page", 192, 256), ("page", 250, 130), ("page", 90, 300)]
    adapter = tiny_llava(kind)
    if not kind.endswith("-real"):
        _check_colours(adapter, spec, salt=7)
    _check_centroids(adapter, spec)
    token_map = adapter.encode(probe_sample(probe_units(spec))).token_map
    assert token_map.units.tolist() == sorted(token_map.units.tolist()) and set(token_map.units) == {0, 1, 2}
    if kind.startswith("onevision"):  # several images: one square base grid each, less its padding tokens
        n = adapter.per_tile
        assert len(token_map) < 3 * n * n
    assert np.all(token_map.spans == 1)


@pytest.mark.parametrize("n_frames", [1, 3])
def test_onevision_video_tokens_cover_their_frames(n_frames: int) -> None:
    adapter = tiny_llava("onevision")
    spec = [("frame", 160, 96)] * (n_frames - 1) + [("frame", 70, 120)]  # frames may differ in size
    _check_colours(adapter, spec, salt=3)
    _check_centroids(adapter, spec)
    enc = adapter.encode(probe_sample(probe_units(spec)))
    assert enc.inputs["pixel_values_videos"].shape == (1, n_frames, 3, 36, 36)
    assert enc.token_map.units.tolist() == [f for f in range(n_frames) for _ in range(4)]  # 4x4 patches pooled 2x2
    assert np.all(enc.token_map.spans == 1)
    ids = enc.inputs["input_ids"][0]
    video = torch.nonzero(ids == adapter.video_token)[:, 0]
    assert len(video) == 4 * n_frames + 1 and int(video[-1]) not in enc.token_map.positions  # trailing newline


def test_onevision_real_video_and_mixed_input() -> None:
    """Real geometry: 27x27 patches pooled to 14x14 per frame; an image then a video in one prompt."""
    adapter = tiny_llava("onevision-real")
    spec = [("image", 300, 170), ("frame", 320, 240), ("frame", 320, 240)]
    _check_centroids(adapter, spec)
    enc = adapter.encode(probe_sample(probe_units(spec)))
    assert int((enc.inputs["input_ids"] == adapter.video_token).sum()) == 2 * 14 * 14 + 1
    assert int(enc.inputs["batch_num_images"][0]) == 1  # one image: anyres tiles, as the processor does
    _check_positions(adapter, enc.inputs, enc.token_map)


def test_region_boxes_round_trip_through_tokens() -> None:
    """box -> tokens -> union of their cells covers the box to within one cell, for every synthetic domain."""
    for kind, domains in [
        ("llava", ["scenes", "pages"]),
        ("next", ["scenes", "pages"]),
        ("onevision", ["scenes", "pages", "clips"]),
    ]:
        adapter = tiny_llava(kind)
        for domain in domains:
            for i in range(3):
                assert_regions_round_trip(adapter, make_sample(domain, 3, i), half_inside=False)


# --------------------------------------------------------------------------- the models run on the encoded inputs


@pytest.mark.parametrize("kind", ["llava", "next", "onevision"])
def test_forward_padded_batch_and_generate(kind: str) -> None:
    adapter = tiny_llava(kind)
    domains = ["scenes", "pages", "clips"] if kind == "onevision" else ["scenes", "pages"]
    encoded, _ = assert_forward_and_generate(adapter, [make_sample(d, 0, i) for d in domains for i in range(2)])
    assert len({e.length for e in encoded}) > 1  # the batch really is padded


REAL_INPUTS = [
    ("llava-real", [("image", 300, 170), ("image", 90, 500)]),
    ("next-real", [("image", 640, 90), ("image", 300, 170)]),
    ("onevision-real", [("image", 2300, 1700)]),
    ("onevision-real", [("image", 300, 170), ("image", 90, 500), ("frame", 320, 240), ("frame", 320, 240)]),
]


@pytest.mark.parametrize(("kind", "spec"), REAL_INPUTS, ids=[f"{k}-{len(s)}-units" for k, s in REAL_INPUTS])
def test_real_geometry_runs_in_the_model(kind: str, spec: list[Spec]) -> None:
    """At the real checkpoints' tile, patch and pinpoint sizes the model accepts exactly our placeholders."""
    adapter = tiny_llava(kind)
    enc = adapter.encode(probe_sample(probe_units(spec)))
    with torch.no_grad():
        logits = adapter.model(**enc.inputs).logits
    assert logits.shape[1] == enc.length and torch.isfinite(logits).all()


def _prompt(adapter: LlavaAdapter, sample: Sample) -> str:
    text = adapter.tokenizer.decode(adapter.encode(sample, answer=True).inputs["input_ids"][0])
    return re.sub(r"(<image>)+", "<image>", re.sub(r"(<video>)+", "<video>", text))


def test_chat_formats_match_the_checkpoints() -> None:
    frames = [("frame", 64, 64)] * 2
    two = probe_units([("image", 64, 64), ("image", 64, 48)])
    q = "What colour is the star?"
    llava = _prompt(tiny_llava("llava"), probe_sample(two))
    assert llava == f"<s>USER: <image>\n<image>\n{q} ASSISTANT:red</s>"
    assert _prompt(tiny_llava("next"), probe_sample(two)) == llava
    onevision = _prompt(tiny_llava("onevision"), probe_sample(two[:1] + probe_units(frames)))
    assert onevision == f"<|im_start|>user\n<image><video>\n{q}<|im_end|>\n<|im_start|>assistant\nred<|im_end|>"
    # LLaVA-NeXT follows its language model: Mistral's [INST], Llama-3's headers, ChatML for Yi/Qwen
    base = tiny_llava("next")
    for tok, text_type, expected in [
        (llava_tokenizer("llama"), "mistral", MISTRAL),
        (llava_tokenizer("llama3"), "llama", LLAMA3),
        (llava_tokenizer("qwen"), "qwen2", CHATML),
    ]:
        config = base.model.config.to_dict()
        config["text_config"] = llava_text_config(tok, text_type)
        config["image_token_index"] = tok.convert_tokens_to_ids("<image>")
        model = LlavaNextForConditionalGeneration(LlavaNextConfig(**config)).eval()
        adapter = LlavaNextAdapter(model, tok, base.image_processor, "next-chat")
        assert adapter.chat == expected and adapter.chat.source == "fallback"
        assert adapter.end_token == tok.convert_tokens_to_ids(expected.end)
        with torch.no_grad():
            model(**adapter.encode(probe_sample(two)).inputs)


def test_make_adapter_loads_the_image_processor(tmp_path) -> None:
    for kind in ["llava", "next", "onevision"]:
        fixture = tiny_llava(kind)
        folder = tmp_path / kind
        fixture.image_processor.save_pretrained(folder)
        adapter = make_adapter(fixture.model, fixture.tokenizer, str(folder), kind)
        assert type(adapter) is type(fixture) and type(adapter.image_processor) is type(fixture.image_processor)
        sample = probe_sample(probe_units([("image", 300, 170)]))
        assert np.array_equal(adapter.encode(sample).token_map.cells, fixture.encode(sample).token_map.cells)


# --------------------------------------------------------------------------- bad input


@pytest.mark.parametrize("kind", ["llava", "next"])
def test_video_is_refused_where_unsupported(kind: str) -> None:
    with pytest.raises(SampleError, match="does not support video"):
        tiny_llava(kind).encode(make_sample("clips", 0, 0))


@pytest.mark.parametrize("kind", ["llava", "next", "onevision"])
def test_too_small_images_and_empty_inputs_are_refused(kind: str) -> None:
    adapter = tiny_llava(kind)
    with pytest.raises(SampleError, match="smaller than one 8-px patch"):
        adapter.encode(probe_sample(probe_units([("image", 64, 64), ("image", 7, 100)])))
    with pytest.raises(SampleError, match="at least one visual unit"):  # e.g. a video with zero frames
        adapter.encode(Sample("empty", [], "q?", "a", [Region(0, None)]))
    if kind == "onevision":
        with pytest.raises(SampleError, match="smaller than one"):
            adapter.encode(probe_sample(probe_units([("frame", 64, 64), ("frame", 64, 5)])))


def test_onevision_videos_of_a_batch_need_equal_frame_counts() -> None:
    adapter = tiny_llava("onevision")
    short = adapter.encode(probe_sample(probe_units([("frame", 64, 64)] * 2)))
    long = adapter.encode(probe_sample(probe_units([("frame", 64, 64)] * 3)))
    with pytest.raises(ValueError, match="equal frame counts"):
        adapter.collate([short, long])
    with pytest.raises(SampleError, match="equal frame counts"):  # two videos in one prompt
        adapter.encode(probe_sample(probe_units([("frame", 64, 64)] * 2 + [("image", 64, 64)] + [("frame", 64, 64)])))


def test_unsupported_towers_and_mismatched_processors_are_refused() -> None:
    base = tiny_llava("llava")
    config = base.model.config.to_dict()
    config["vision_feature_select_strategy"] = "full"  # would keep CLIP's class token
    model = LlavaForConditionalGeneration(LlavaConfig(**config))
    with pytest.raises(ValueError, match="not supported"):
        LlavaAdapter(model, base.tokenizer, base.image_processor, "full")
    stretchy = LlavaImageProcessorPil(
        size={"shortest_edge": 36, "longest_edge": 80}, crop_size=base.image_processor.crop_size
    )
    with pytest.raises(SampleError, match="unsupported resize setting"):
        LlavaAdapter(base.model, base.tokenizer, stretchy, "stretchy").encode(
            probe_sample(probe_units([("image", 64, 48)]))
        )
    nxt = tiny_llava("next")
    wrong = LlavaNextImageProcessorPil(
        size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}, image_grid_pinpoints=TINY_PINPOINTS
    )
    with pytest.raises(ValueError, match="does not match the model"):
        LlavaNextAdapter(nxt.model, nxt.tokenizer, wrong, "wrong")
