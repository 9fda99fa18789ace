"""Query groups are chosen by the tokens' tags: on every family, each group's rows are exactly the intended
text, checked by decoding the tokens (docs/query-groups.md)."""

from __future__ import annotations

import numpy as np
import pytest
import tiny_models
import torch

from corehead.attention.recorder import ROW_GROUPS, group_rows, plan_rows
from corehead.data.synthetic import make_sample
from corehead.models.base import ChatAdapter, Encoded

# the text after the visual input that no group holds, per family: the visual input's closing wrapper
# (<|vision_end|>; LLaVA's and InternVL's newline after the image; NeXT's and OneVision's trailing
# image-newline placeholder) and, when the answer is teacher-forced, the end of turn after it
LEFT_OUT = {
    "builtin": ("<|vision_end|>", "<|im_end|>"),
    "qwen2_vl": ("<|vision_end|>", "<|im_end|>"),
    "qwen2_5_vl": ("<|vision_end|>", "<|im_end|>"),
    "llava": ("\n", "</s>"),
    "next": ("<image>\n", "</s>"),
    "onevision": ("<image>\n", "<|im_end|>"),
    "internvl": ("</img>\n", "<|im_end|>"),
}
VIDEO = {"builtin", "qwen2_vl", "qwen2_5_vl", "onevision", "internvl"}
CASES = [
    (family, domain) for family in LEFT_OUT for domain in ("scenes", "clips") if domain == "scenes" or family in VIDEO
]


def _adapter(family: str) -> ChatAdapter:
    builders = {
        "builtin": tiny_models.tiny_builtin,
        "qwen2_vl": tiny_models.tiny_qwen2_vl,
        "qwen2_5_vl": tiny_models.tiny_qwen2_5_vl,
        "internvl": tiny_models.tiny_internvl,
    }
    return builders[family]() if family in builders else tiny_models.tiny_llava(family)


@pytest.mark.parametrize(("family", "domain"), CASES)
def test_each_group_holds_exactly_its_tagged_text(family: str, domain: str) -> None:
    adapter = _adapter(family)
    sample = make_sample(domain, 3, 0)
    for answer in (True, False):
        e = adapter.encode(sample, answer=answer)

        def text(rows: np.ndarray, e: Encoded = e) -> str:
            return str(adapter.tokenizer.decode(e.inputs["input_ids"][0][rows]))

        groups = group_rows(e)
        gold = sample.answer if answer else ""
        pieces = adapter.chat.pieces(adapter.items(sample.units), sample.question)
        opening = "".join(text for _, text in pieces[[tag for tag, _ in pieces].index("question") + 1 :])
        assert text(groups["question"]) == sample.question
        assert text(groups["answer"]) == gold
        assert text(np.arange(groups["prompt_end"][0] + 1)).endswith(opening)
        # 'all': the question, the assistant turn's opening and the answer, contiguous, nothing else
        rows = groups["all"]
        assert text(rows) == sample.question + opening + gold
        assert np.array_equal(rows, np.arange(rows[0], rows[-1] + 1)) and rows[0] == groups["question"][0]
        after = np.arange(int(e.token_map.positions.max()) + 1, e.length)
        wrapper, end = LEFT_OUT[family]
        if domain == "clips" and family == "onevision":
            wrapper = "<video>\n"
        assert text(np.setdiff1d(after, rows)) == wrapper + (end if answer else "")


def test_plan_rows_average_exactly_the_groups_rows(tiny_builtin: ChatAdapter) -> None:
    """In a left-padded batch each group's weights are 1 / (its row count) on its rows, shifted by the padding."""
    samples = [make_sample("scenes", 3, 0), make_sample("pages", 3, 1)]
    encoded = [tiny_builtin.encode(s, answer=True) for s in samples]
    width = max(e.length for e in encoded)
    plan = plan_rows(encoded, width, [np.zeros(len(e.token_map)) for e in encoded])
    for b, e in enumerate(encoded):
        for g, name in enumerate(ROW_GROUPS):
            want = group_rows(e)[name] + width - e.length
            chosen = plan.row_groups[b, :, g] > 0
            assert sorted(plan.rows[b][chosen].tolist()) == sorted(want.tolist())
            assert torch.allclose(plan.row_groups[b, chosen, g], torch.full((len(want),), 1.0 / len(want)))
