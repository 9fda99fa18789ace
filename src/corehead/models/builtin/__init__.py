"""The built-in tiny VLM: a real Qwen3-VL architecture, trained by corehead on its synthetic domains.

It ships in `weights/` (config, safetensors, tokenizer, image processor), loads with transformers' own
`from_pretrained`, offline, and goes through the same adapter as every other Qwen-VL model.
Decoder: 6 layers x 16 query heads / 4 KV heads (96 query heads, GQA groups of 4), hidden 256, head dim 32.
Vision: patch 16, 2x2 merge (32 px per decoder token), temporal patch 2, depth 4, width 128.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import replace
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast, Qwen3VLConfig
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

from corehead.data.synthetic import COLOURS, DIGITS, DOMAINS, SHAPES, TEMPLATES, make_scene
from corehead.models.qwen_vl import QWEN3_FALLBACK

WEIGHTS = Path(__file__).parent / "weights"
SPECIAL_TOKENS = [
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|image_pad|>",
    "<|video_pad|>",
]
VOCAB_SIZE = 512
# The prompt the built-in model is trained on: ChatML without a system turn (as Qwen3-VL), images wrapped in
# <|vision_start|> ... <|vision_end|>, videos as bare <|video_pad|> (the processor writes each temporal
# patch as its own wrapped block after its timestamp). CHAT is the same format for the trainer's chats.
CHAT_TEMPLATE = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' }}"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}{% for item in message['content'] %}"
    "{% if item['type'] == 'image' %}{{ '<|vision_start|><|image_pad|><|vision_end|>' }}"
    "{% elif item['type'] == 'video' %}{{ '<|video_pad|>' }}"
    "{% elif item['type'] == 'text' %}{{ item['text'] }}{% endif %}{% endfor %}{% endif %}"
    "{{ '<|im_end|>\\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
CHAT = replace(QWEN3_FALLBACK, video="<|video_pad|>")


def _corpus() -> list[str]:
    """Every word and phrase the built-in model is asked or answers, for training its tokenizer."""
    lines = ["user\n", "assistant\n", *COLOURS, *DIGITS, *SHAPES]
    for domain in DOMAINS:
        for template in TEMPLATES[domain]:
            for key in SHAPES:
                for t0 in range(0, 10, 2):
                    lines.append(template.format(key=key, t0=t0, t1=t0 + 2))
        for i in range(5):
            lines += [f.question + " " + f.answer for f in make_scene(domain, 0, i, "train").facts]
    lines += [f"<{t + 0.5:.1f} seconds>" for t in range(0, 64)]
    lines += [f"<{t:.1f} seconds>" for t in range(0, 64)]
    return lines


def train_bpe(corpus: Iterable[str], specials: list[str], vocab_size: int) -> Tokenizer:
    """A byte-level BPE tokenizer trained on `corpus` (deterministic), with `specials` as its first ids."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(corpus, trainer=trainer)
    return tok


def build_tokenizer() -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer trained offline on the synthetic corpus (deterministic)."""
    tok = train_bpe(_corpus(), SPECIAL_TOKENS, VOCAB_SIZE)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        bos_token=None,
        unk_token=None,
        chat_template=CHAT_TEMPLATE,
    )


def build_image_processor() -> Qwen2VLImageProcessorPil:
    """Qwen3-VL's image preprocessing (patch 16, merge 2), capped for a CPU-sized model."""
    return Qwen2VLImageProcessorPil(
        patch_size=16,
        merge_size=2,
        temporal_patch_size=2,
        min_pixels=64 * 64,
        max_pixels=320 * 320,
        image_mean=[0.5, 0.5, 0.5],
        image_std=[0.5, 0.5, 0.5],
    )


def build_config(tokenizer: PreTrainedTokenizerFast, small: bool = False, layers: int | None = None) -> Qwen3VLConfig:
    """The built-in architecture; `small` is a faster variant for tests of the trainer; `layers` deepens it."""

    def tok(token: str) -> int:
        return int(tokenizer.convert_tokens_to_ids(token))  # type: ignore[arg-type]

    depth, heads, hidden = (2, 4, 64) if small else (6, 16, 256)
    return Qwen3VLConfig(
        text_config={
            "vocab_size": VOCAB_SIZE,
            "hidden_size": hidden,
            "intermediate_size": hidden * 2,
            "num_hidden_layers": layers or depth,
            "num_attention_heads": heads,
            "num_key_value_heads": heads // 4,
            "head_dim": 32,
            "max_position_embeddings": 8192,
            "rope_parameters": {
                "rope_type": "default",
                "rope_theta": 5_000_000.0,  # as Qwen3-VL: most rotary frequencies stay slow, so heads can match content
                "mrope_section": [6, 5, 5],
                "mrope_interleaved": True,
            },
            "tie_word_embeddings": True,
            "bos_token_id": tok("<|endoftext|>"),
            "eos_token_id": tok("<|im_end|>"),
            "pad_token_id": tok("<|endoftext|>"),
        },
        vision_config={
            "depth": 2 if small else 4,
            "hidden_size": 64 if small else 128,
            "intermediate_size": 128 if small else 384,
            "num_heads": 4,
            "patch_size": 16,
            "spatial_merge_size": 2,
            "temporal_patch_size": 2,
            "out_hidden_size": hidden,
            "num_position_embeddings": 256,
            "deepstack_visual_indexes": [1],
        },
        image_token_id=tok("<|image_pad|>"),
        video_token_id=tok("<|video_pad|>"),
        vision_start_token_id=tok("<|vision_start|>"),
        vision_end_token_id=tok("<|vision_end|>"),
        tie_word_embeddings=True,
    )
