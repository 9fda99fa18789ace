"""Boxes in answers: each family's convention mapped back to the original image's pixels."""

from __future__ import annotations

import pytest
from PIL import Image

from corehead.data.sample import Region, Sample, VisualUnit
from corehead.models.grounding import parse_boxes, raw_boxes, to_image_box
from corehead.models.qwen_vl import QwenVLAdapter


def test_raw_boxes_in_every_written_form() -> None:
    text = 'first [10, 20, 30, 40] then <|box_start|>(1,2),(3,4)<|box_end|> and {"bbox_2d": [5.5, 6, 7, 8]}'
    assert raw_boxes(text) == [(10, 20, 30, 40), (1, 2, 3, 4), (5.5, 6, 7, 8)]
    assert raw_boxes("no box here, only 1, 2, 3") == []


@pytest.mark.parametrize(
    ("family", "text", "expected"),
    [
        ("qwen3_vl", "[250, 500, 750, 1000]", (100.0, 150.0, 300.0, 300.0)),  # 0-1000 of 400x300
        ("internvl", "<box>[[0, 0, 500, 500]]</box>", (0.0, 0.0, 200.0, 150.0)),
        ("llava", "[0.25, 0.5, 0.75, 1.0]", (100.0, 150.0, 300.0, 300.0)),
        ("qwen2_vl", "<|box_start|>(250,500),(750,1000)<|box_end|>", (100.0, 150.0, 300.0, 300.0)),
    ],
)
def test_relative_conventions(family: str, text: str, expected: tuple) -> None:
    assert parse_boxes(text, family, 400, 300) == [pytest.approx(expected)]


def test_absolute_pixels_use_the_size_the_model_saw() -> None:
    # Qwen2.5-VL saw a 400x300 image as 392x308 (multiples of 28): its pixels are that image's pixels
    box = parse_boxes(
        '```json\n[{"bbox_2d": [196, 154, 392, 308], "label": "star"}]\n```', "qwen2_5_vl", 400, 300, (392, 308)
    )
    assert box == [pytest.approx((200.0, 150.0, 400.0, 300.0))]
    with pytest.raises(ValueError, match="size of the image the model saw"):
        to_image_box((1, 2, 3, 4), "pixels", 400, 300)


def test_boxes_are_ordered_and_clipped() -> None:
    assert to_image_box((900, 1200, -50, 100), "thousandths", 100, 100) == (0.0, 10.0, 90.0, 100.0)
    with pytest.raises(ValueError, match="no box convention"):
        parse_boxes("[1, 2, 3, 4]", "bert", 10, 10)


def test_adapter_maps_back_through_its_own_resize(qwen_family: QwenVLAdapter) -> None:
    unit = VisualUnit("image", "x", 333, 171, image=Image.new("RGB", (333, 171)))
    sample = Sample("g", [unit], "Where is the star?", "here", [Region(0, None)])
    grid = qwen_family.encode(sample).inputs["image_grid_thw"][0]
    seen = (int(grid[2]) * qwen_family.patch, int(grid[1]) * qwen_family.patch)
    assert qwen_family.seen_size(unit) == seen  # the same resize the processor applied
    absolute = qwen_family.family == "qwen2_5_vl"
    text = f"[0, 0, {seen[0]}, {seen[1]}]" if absolute else "[0, 0, 1000, 1000]"
    assert qwen_family.parse_boxes(text, unit) == [pytest.approx((0.0, 0.0, 333.0, 171.0))]
