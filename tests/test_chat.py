"""The prompt comes from the checkpoint's own chat template: found in its folder, rendered with the system
turn it writes (or one's own, or none), the question and answer located by character offsets."""

from __future__ import annotations

import copy
import json
import logging
import re
from pathlib import Path

import checkpoints
import numpy as np
import pytest
import tiny_models
from geometry_checks import probe_sample, probe_units
from helpers import invoke

from corehead.models import load_model
from corehead.models.base import ChatAdapter
from corehead.models.builtin import CHAT, CHAT_TEMPLATE
from corehead.models.chat import TemplateChat
from corehead.models.qwen_vl import QWEN2_FALLBACK, QwenVLAdapter

MARKER = "<<a fine-tuned checkpoint's own marker>>"
SAMPLE = probe_sample(probe_units([("image", 64, 48)]))


def _prompt(adapter: ChatAdapter, answer: bool = False) -> str:
    return str(adapter.tokenizer.decode(adapter.encode(SAMPLE, answer=answer).inputs["input_ids"][0]))


def _save(adapter: QwenVLAdapter, folder: Path, template: str | None) -> Path:
    """The adapter's model, tokenizer (with `template`, or none) and image processor as a checkpoint folder."""
    adapter.model.save_pretrained(folder)
    adapter.tokenizer.chat_template = template
    try:
        adapter.tokenizer.save_pretrained(folder)
    finally:
        adapter.tokenizer.chat_template = CHAT_TEMPLATE
    adapter.image_processor.save_pretrained(folder)
    return folder


def test_a_checkpoint_folder_with_its_own_template_gets_it(tiny_builtin: QwenVLAdapter, tmp_path: Path) -> None:
    """A fine-tuned checkpoint's template (here one that writes a marker line) is the prompt, in the tokenizer's
    config or as the processor's chat_template.jinja / chat_template.json."""
    custom = CHAT_TEMPLATE.replace("{% for message in messages %}", MARKER + "\n{% for message in messages %}")
    folder = _save(tiny_builtin, tmp_path / "tokenizer-template", custom)
    adapter = load_model(str(folder))
    assert adapter.chat.source == "checkpoint template" and adapter.prompt["from"] == "checkpoint template"
    text = _prompt(adapter)
    assert text.startswith(MARKER + "\n<|im_start|>user\n<|vision_start|><|image_pad|>")
    assert text.endswith("What colour is the star?<|im_end|>\n<|im_start|>assistant\n")
    # the processor's own file wins over the tokenizer's template (transformers 5 saves that as the .jinja)
    other = _save(tiny_builtin, tmp_path / "processor-template", CHAT_TEMPLATE)
    (other / "chat_template.jinja").unlink(missing_ok=True)
    (other / "chat_template.json").write_text(json.dumps({"chat_template": custom.replace(MARKER, "json")}))
    assert _prompt(load_model(str(other))).startswith("json\n<|im_start|>user")
    (other / "chat_template.jinja").write_text(custom.replace(MARKER, "jinja"))
    assert _prompt(load_model(str(other))).startswith("jinja\n<|im_start|>user")


def test_a_checkpoint_without_a_template_falls_back_with_a_notice(
    tiny_builtin: QwenVLAdapter, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    folder = _save(tiny_builtin, tmp_path / "bare", None)
    with caplog.at_level(logging.WARNING, logger="corehead"):
        adapter = load_model(str(folder))
    assert adapter.chat.source == "fallback" and adapter.prompt["from"] == "fallback"
    assert [r.getMessage() for r in caplog.records] == [
        "bare has no chat template; using corehead's hand-written prompt for its family"
    ]
    # the Qwen3-VL fallback writes what the real Qwen3-VL template writes for one image and a question
    real = TemplateChat(checkpoints.template("qwen3_vl"), tiny_builtin.tokenizer)
    assert re.sub(r"(<\|image_pad\|>)+", "<|image_pad|>", _prompt(adapter)) == real.prompt(["image"], SAMPLE.question)


def test_the_builtin_template_is_what_the_builtin_model_was_trained_on(tiny_builtin: QwenVLAdapter) -> None:
    """The shipped template and the trainer's hand-written format give the same text, images and videos alike."""
    for items in (["image"], ["image", "image"], ["video"]):
        rendered = TemplateChat(CHAT_TEMPLATE, tiny_builtin.tokenizer).prompt(items, "Q?", answer=True)
        written = "".join(t for _, t in CHAT.pieces(items, "Q?", "ANSWER"))
        assert rendered.replace("\ue000answer\ue001", "ANSWER") == written + "\n"


def test_qwen2_prompts_open_with_the_templates_system_turn_or_ones_own() -> None:
    adapter = tiny_models.tiny_qwen2_vl()
    default = "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n<|vision_start|>"
    assert _prompt(adapter).startswith(default)
    assert adapter.prompt == {"from": "checkpoint template", "system": "template default"}
    try:
        adapter.set_system_prompt("Answer in one word.")
        assert _prompt(adapter).startswith("<|im_start|>system\nAnswer in one word.<|im_end|>\n<|im_start|>user\n")
        adapter.set_system_prompt(drop=True)
        assert adapter.prompt["system"] == "none"
        text = _prompt(adapter, answer=True)
        assert text.startswith("<|im_start|>user\n<|vision_start|>") and "system" not in text
        assert text.endswith("What colour is the star?<|im_end|>\n<|im_start|>assistant\nred<|im_end|>")
        with pytest.raises(ValueError, match="not both"):
            adapter.set_system_prompt("x", drop=True)
    finally:
        adapter.set_system_prompt()
    # the fallback writes the same default system turn as the real template
    fallback = "".join(t for _, t in QWEN2_FALLBACK.pieces(["image"], "Q?"))
    assert fallback == TemplateChat(checkpoints.template("qwen2_vl"), adapter.tokenizer).prompt(["image"], "Q?")


def test_no_system_prompt_is_a_no_op_for_a_template_without_one() -> None:
    adapter = tiny_models.tiny_llava("llava")
    chat = TemplateChat(checkpoints.template("llava"), adapter.tokenizer)
    plain = chat.prompt(["image"], "Q?")
    chat.drop_system = True
    assert chat.prompt(["image"], "Q?") == plain == "USER: <image>\nQ? ASSISTANT:"


@pytest.mark.parametrize("family", ["qwen2_vl", "llava", "internvl"])
def test_question_and_answer_rows_are_found_by_offsets_in_the_real_templates(family: str) -> None:
    """Tokenized as one string, the question's and the answer's tokens decode to exactly their texts."""
    builders = {"qwen2_vl": tiny_models.tiny_qwen2_vl, "internvl": tiny_models.tiny_internvl}
    adapter = copy.copy(builders[family]() if family in builders else tiny_models.tiny_llava(family))  # cached
    adapter.chat = TemplateChat(checkpoints.template(family), adapter.tokenizer)
    enc = adapter.encode(SAMPLE, answer=True)
    ids = enc.inputs["input_ids"][0]
    assert adapter.tokenizer.decode(ids[enc.question]) == SAMPLE.question
    assert adapter.tokenizer.decode(ids[enc.answer]).strip() == SAMPLE.answer
    assert enc.prompt_end == enc.answer[0] - 1
    assert np.all(enc.tags[enc.token_map.positions] == "vision")


def test_the_system_prompt_options_reach_the_run_manifest(tmp_path: Path) -> None:
    out = tmp_path / "score"
    invoke("score", "--data", "synthetic:scenes", "--limit", "1", "--out", str(out), "--no-system-prompt")
    prompt = json.loads((out / "manifest.json").read_text())["prompt"]
    assert prompt == {"from": "checkpoint template", "system": "none"}
