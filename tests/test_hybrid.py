"""The hybrid KV cache: exact at full budget, really smaller, right positions in decode, the selector's tokens;
accelerate's KV methods and its paired summary."""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch.nn import functional as F
from transformers import AttentionInterface
from transformers.masking_utils import AttentionMaskInterface, eager_mask

from corehead.attention.hybrid import KVPlan, core_plan, hybrid, hybrid_plan
from corehead.data.synthetic import make_sample
from corehead.models.qwen_vl import QwenVLAdapter


def _generate(adapter: QwenVLAdapter, samples, steps: int = 4):
    batch = adapter.collate([adapter.encode(s) for s in samples])
    out = adapter.model.generate(
        **batch,
        max_new_tokens=steps,
        do_sample=False,
        output_logits=True,
        return_dict_in_generate=True,
        eos_token_id=None,
        pad_token_id=adapter.pad_token,
    )
    return torch.stack(out.logits, 1), out.sequences


def _all_heads(model) -> list[tuple[int, int]]:
    text = model.config.get_text_config()
    return [(layer, h) for layer in range(text.num_hidden_layers) for h in range(text.num_attention_heads)]


def test_full_budget_or_all_heads_equal_full_attention(qwen_family: QwenVLAdapter) -> None:
    """Padded batch with an image, pages and a video: every generated step's logits match (1e-5)."""
    samples = [make_sample(d, 2, 0) for d in ("scenes", "pages", "clips")]
    model = qwen_family.model
    with torch.no_grad():
        want, _ = _generate(qwen_family, samples)
        with hybrid(model, [], budget=1.0):
            every_token, _ = _generate(qwen_family, samples)
        with hybrid(model, _all_heads(model), budget=0.0) as state:
            every_head, _ = _generate(qwen_family, samples)
    torch.testing.assert_close(every_token, want, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(every_head, want, atol=1e-5, rtol=1e-5)
    assert set(state.kept.values()) == {1.0}


@pytest.mark.parametrize("selector", ["snap", "merge", "recent", "last"])
def test_reduced_heads_store_budget_many_visual_tokens(tiny_builtin: QwenVLAdapter, selector: str) -> None:
    model = tiny_builtin.model
    sample = make_sample("scenes", 3, 0)
    enc = tiny_builtin.encode(sample)
    n_visual, n_text = len(enc.token_map), enc.length - len(enc.token_map)
    text = model.config.get_text_config()
    n_kv, groups = text.num_key_value_heads, text.num_attention_heads // text.num_key_value_heads
    core = [(0, 0), (1, groups * (n_kv - 1))]  # the first KV head of layer 0, the last of layer 1
    plan = core_plan(model, core, budget=0.25, selector=selector)
    with torch.no_grad(), hybrid_plan(model, plan) as state:
        tiny_builtin.generate([sample], max_new_tokens=1)
    keep = math.ceil(0.25 * n_visual)
    for layer, cache in enumerate(state.layers):
        sizes = {j: buf.keys.shape[2] for buf in cache.buffers for j in buf.heads}
        assert sorted(sizes) == list(range(n_kv))
        for j, size in sizes.items():
            full = (layer, j) in {(0, 0), (1, n_kv - 1)}
            assert size == (n_text + n_visual if full else n_text + keep)
    total = text.num_hidden_layers * n_kv
    full_bytes = 2 * total * (n_text + n_visual) * text.head_dim * 4  # float32 keys and values
    want = (2 * (n_text + n_visual) + (total - 2) * (n_text + keep)) / (total * (n_text + n_visual))
    assert state.kv_bytes() / full_bytes == pytest.approx(want)
    with pytest.raises(ValueError, match="do not exist"):
        core_plan(model, [(0, n_kv * groups)], budget=0.1)


def _kept_positions_attention(kept: dict[tuple[int, int], torch.Tensor], prompt: int, groups: int, prefill: bool):
    """An independent eager attention: query head h of layer l may see, among the prompt's tokens, only
    kept[(l, h // groups)] ([B, S] positions) once decoding (and in the prefill too with `prefill`)."""

    def attend(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
        k = key.repeat_interleave(groups, 1)
        v = value.repeat_interleave(groups, 1)
        scores = query @ k.transpose(-1, -2) * scaling + attention_mask
        if prefill or query.shape[2] == 1:
            for h in range(query.shape[1]):
                allowed = kept.get((module.layer_idx, h // groups))
                if allowed is not None:
                    block = torch.ones(key.shape[0], key.shape[2], dtype=torch.bool)
                    block[:, prompt:] = False
                    block.scatter_(1, allowed, False)
                    scores[:, h] = scores[:, h].masked_fill(block[:, None, :], float("-inf"))
        return (scores.softmax(-1) @ v).transpose(1, 2), None

    return attend


@pytest.mark.parametrize("prefill", [False, True])
def test_decode_after_compression_equals_masking_the_dropped_tokens(qwen_family: QwenVLAdapter, prefill: bool) -> None:
    """Decode steps attend exactly the kept tokens with the right (3-D RoPE) positions: the same logits as
    full attention in which each reduced head is barred from the tokens its buffer dropped (in every prompt
    row too with the prefill option)."""
    tiny_builtin = qwen_family
    model = tiny_builtin.model
    sample = make_sample("clips", 4, 0)
    plan = core_plan(model, [(1, 0)], budget=0.2, selector="snap", prefill=prefill)
    with torch.no_grad(), hybrid_plan(model, plan) as state:
        got, sequence = _generate(tiny_builtin, [sample])
    prompt = tiny_builtin.encode(sample).length
    kept = {
        (layer, j): buf.positions[:, i][buf.positions[:, i] < prompt].view(1, -1)
        for layer, cache in enumerate(state.layers)
        for buf in cache.buffers
        for i, j in enumerate(buf.heads)
        if buf.keys.shape[2] < cache.logical
    }
    text = model.config.get_text_config()
    assert len(kept) == text.num_hidden_layers * text.num_key_value_heads - 1  # all but the one serving (1, 0)
    groups = text.num_attention_heads // text.num_key_value_heads
    AttentionInterface.register("kept_ref", _kept_positions_attention(kept, prompt, groups, prefill))
    AttentionMaskInterface.register("kept_ref", eager_mask)
    model.set_attn_implementation({"text_config": "kept_ref"})
    try:
        with torch.no_grad():
            want, want_sequence = _generate(tiny_builtin, [sample])
    finally:
        model.set_attn_implementation({"text_config": "sdpa"})
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    assert torch.equal(sequence, want_sequence)
    assert not torch.allclose(got[:, 1:], _generate(tiny_builtin, [sample])[0][:, 1:], atol=1e-4)  # it matters


def test_snap_keeps_the_tokens_its_scores_rank_highest(tiny_qwen2_vl: QwenVLAdapter) -> None:
    """Scores recomputed from eager attention: the last 16 prompt rows, averaged over rows and the GQA group,
    pooled over 7 neighbours; the kept visual tokens are exactly the top ones."""
    adapter, model = tiny_qwen2_vl, tiny_qwen2_vl.model
    sample = make_sample("pages", 5, 0)
    enc = adapter.encode(sample)
    last = model.config.get_text_config().num_key_value_heads - 1
    plan = KVPlan({(1, last): 0.3}, "snap")
    with torch.no_grad(), hybrid_plan(model, plan) as state:
        adapter.generate([sample], max_new_tokens=1)
    buf = next(b for b in state.layers[1].buffers if b.heads == [last])
    model.set_attn_implementation({"text_config": "eager"})
    try:
        with torch.no_grad():
            attn = model(**enc.inputs, output_attentions=True).attentions[1][0]  # [H, L, L]
    finally:
        model.set_attn_implementation({"text_config": "sdpa"})
    groups = attn.shape[0] // model.config.get_text_config().num_key_value_heads
    rows = attn[last * groups : (last + 1) * groups, -16:].mean((0, 1))
    pooled = F.avg_pool1d(rows[None, None], 7, stride=1, padding=3, count_include_pad=False)[0, 0]
    visual = torch.as_tensor(enc.token_map.positions)
    keep = math.ceil(0.3 * len(visual))
    want = visual[pooled[visual].topk(keep).indices].sort().values
    got = buf.positions[0, 0][torch.isin(buf.positions[0, 0], visual)]
    assert torch.equal(got, want)


def test_bad_plans_are_refused(tiny_builtin: QwenVLAdapter) -> None:
    with pytest.raises(ValueError, match="selector must be one of"):
        KVPlan({}, "magic")
    with pytest.raises(ValueError, match="between 0 and 1"):
        KVPlan({(0, 0): 1.5})
    with pytest.raises(ValueError, match="not one that merges"):
        KVPlan({(0, 0): 0.5}, "merge", prefill=True)
    with pytest.raises(ValueError, match="outside 2 layers"), hybrid_plan(tiny_builtin.model, KVPlan({(5, 0): 0.1})):
        pass


def test_question_after_compression_continues_the_cache_exactly(qwen_family: QwenVLAdapter) -> None:
    """Query-agnostic use: the visual input is prefilled and compressed (every token kept, but stored in the
    hybrid buffers), then the question arrives as several tokens at once: same logits as one full prefill."""
    from transformers import DynamicCache

    from corehead.experiments.accelerate import SEQUENCE_KEYS

    model = qwen_family.model
    encoded = qwen_family.encode(make_sample("pages", 7, 0))
    batch = qwen_family.collate([encoded])
    cut = int(encoded.token_map.positions.max()) + 1
    text = model.config.get_text_config()
    every = {(layer, j): 1.0 for layer in range(text.num_hidden_layers) for j in range(text.num_key_value_heads)}
    with torch.no_grad():
        want, _ = _generate(qwen_family, [make_sample("pages", 7, 0)])
        with hybrid_plan(model, KVPlan(every)) as state:
            cache = DynamicCache(config=model.config)
            model(**{k: v[:, :cut] if k in SEQUENCE_KEYS else v for k, v in batch.items()}, cache=cache)
            assert all(layer.compressed for layer in state.layers)
            rest = {k: v for k, v in batch.items() if k in SEQUENCE_KEYS}
            out = model.generate(
                **rest, cache=cache, max_new_tokens=4, do_sample=False, output_logits=True, return_dict_in_generate=True
            )
    torch.testing.assert_close(torch.stack(out.logits, 1), want, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("kind", ["llava", "next", "onevision", "internvl"])
def test_hybrid_on_llava_and_internvl(kind: str) -> None:
    """The other families: exact at full budget, smaller at a real one, across a padded batch."""
    from test_internvl_adapter import tiny_internvl
    from test_llava_adapters import tiny_llava

    adapter = tiny_internvl() if kind == "internvl" else tiny_llava(kind)
    model = adapter.model
    samples = [make_sample(d, 8, 0) for d in ("scenes", "pages")]
    text = model.config.get_text_config()
    every = [(layer, h) for layer in range(text.num_hidden_layers) for h in range(text.num_attention_heads)]
    with torch.no_grad():
        want, _ = _generate(adapter, samples)
        with hybrid(model, every[:1], budget=1.0):
            same, _ = _generate(adapter, samples)
        with hybrid(model, every[:1], budget=0.2) as state:
            _generate(adapter, samples)
    torch.testing.assert_close(same, want, atol=1e-5, rtol=1e-5)
    groups = text.num_attention_heads // text.num_key_value_heads
    for index, layer in enumerate(state.layers):
        for buf in layer.buffers:
            whole = index == 0 and 0 in buf.heads  # the KV head serving head (0, 0)
            assert (buf.keys.shape[2] == layer.logical) == whole, (index, buf.heads, groups)


def test_beam_search_is_refused_clearly(tiny_builtin: QwenVLAdapter) -> None:
    batch = tiny_builtin.collate([tiny_builtin.encode(make_sample("scenes", 1, 0))])
    with (
        torch.no_grad(),
        hybrid(tiny_builtin.model, [], budget=0.5),
        pytest.raises(ValueError, match="does not support"),
    ):
        tiny_builtin.model.generate(**batch, max_new_tokens=3, num_beams=2, do_sample=False)


def test_recording_inside_a_hybrid_context_is_refused(tiny_builtin: QwenVLAdapter) -> None:
    """The hybrid state computes the decoder's attention itself: a recording there would stay empty, so it
    raises instead, whichever context is entered first."""
    from corehead.attention.recorder import plan_rows, record

    sample = make_sample("scenes", 1, 0)
    encoded = [tiny_builtin.encode(sample)]
    batch = tiny_builtin.collate(encoded)
    region = np.eye(len(encoded[0].token_map))[0]  # the first visual token
    plan = plan_rows(encoded, encoded[0].length, [region])
    model = tiny_builtin.model
    with torch.no_grad(), hybrid(model, [], budget=0.5), record(plan), pytest.raises(ValueError, match="record"):
        model.generate(**batch, max_new_tokens=1, do_sample=False)
    with torch.no_grad(), record(plan), hybrid(model, [], budget=0.5), pytest.raises(ValueError, match="record"):
        model(**batch)
    assert not plan.stats


def test_knockout_inside_a_hybrid_context_is_refused(tiny_builtin: QwenVLAdapter) -> None:
    from corehead.attention.interventions import AttentionKnockout

    batch = tiny_builtin.collate([tiny_builtin.encode(make_sample("scenes", 1, 0))])
    knockout = AttentionKnockout(((0, 0),), torch.ones_like(batch["attention_mask"], dtype=torch.bool))
    model = tiny_builtin.model
    refused = pytest.raises(ValueError, match="knockouts do not run inside")
    with torch.no_grad(), hybrid(model, [], budget=0.5), knockout.apply(model), refused:
        model.generate(**batch, max_new_tokens=1, do_sample=False)
    refused = pytest.raises(ValueError, match="knockouts do not run inside")
    with torch.no_grad(), knockout.apply(model), hybrid(model, [], budget=0.5), refused:
        model(**batch)


def test_head_ablation_works_inside_a_hybrid_context(tiny_builtin: QwenVLAdapter) -> None:
    """Zero ablation cuts heads at o_proj, after attention: at full budget the hybrid output is the ablated one."""
    from corehead.attention.interventions import HeadAblation

    samples = [make_sample(d, 2, 0) for d in ("scenes", "pages")]
    model = tiny_builtin.model
    cut = HeadAblation(((0, 1), (1, 2)))
    with torch.no_grad():
        plain, _ = _generate(tiny_builtin, samples)
        with cut.apply(model):
            want, _ = _generate(tiny_builtin, samples)
        with hybrid(model, [], budget=1.0), cut.apply(model):
            got, _ = _generate(tiny_builtin, samples)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(want, plain, atol=1e-4)


def test_selectors_are_a_registry() -> None:
    from corehead.attention.hybrid import SELECTORS

    assert SELECTORS.names() == ("snap", "merge", "recent", "last")
    assert [SELECTORS.get(name).keeps_tokens for name in SELECTORS.names()] == [True, False, True, True]


def _rows(method: str, correct: list[list[int]]) -> list[dict]:
    """accelerate.jsonl rows of one method: `correct` [draws][samples] (one draw: not a drawn method)."""
    drawn = len(correct) > 1
    return [
        {"method": method, "draw": d if drawn else None, "draw_seed": 10 + d if drawn else None, "id": f"s{i}",
         "correct": bool(c), "visual_kv_share": 0.5, "prefill_s": 1.0, "decode_s_per_token": 0.1, "kv_bytes": 5.0,
         "kv_bytes_full": 10.0, "peak_memory_bytes": None}
        for d, answers in enumerate(correct)
        for i, c in enumerate(answers)
    ]  # fmt: skip


def test_accelerate_summary_pairs_by_sample_and_resamples_draws() -> None:
    """Differences to full and core are paired by sample (a random draw's by sample and draw); a drawn
    method's interval includes the spread of its draws; p matches the exact sign-flip test."""
    from corehead.experiments.accelerate import summarize

    rows = _rows("full", [[1, 1, 1, 1, 1, 0]]) + _rows("core", [[0, 0, 0, 0, 0, 0]])
    rows += _rows("random", [[1, 1, 1, 1, 1, 1], [0, 0, 0, 0, 0, 0]])
    table = {t["method"]: t for t in summarize(rows)}
    assert set(table["full"]["paired"]) == {"core"} and set(table["core"]["paired"]) == {"full"}
    core = table["core"]["paired"]["full"]
    assert core["delta"] == pytest.approx(-5 / 6) and core["n"] == 6
    assert core["p"] == pytest.approx(2 / 2**5, abs=0.01)  # 5 equal non-zero differences: exact p = 2 / 32
    random = table["random"]
    assert random["accuracy"] == pytest.approx(0.5) and random["n"] == 6
    assert [(d["draw"], d["seed"], d["accuracy"]) for d in random["draws"]] == [(0, 10, 1.0), (1, 11, 0.0)]
    assert random["accuracy_ci"] == [0.0, 1.0]  # every sample agrees within a draw: the width is the draws'
    assert random["paired"]["core"]["delta"] == pytest.approx(0.5)
    assert random["paired"]["full"]["delta"] == pytest.approx((1 / 6 - 5 / 6) / 2)
    assert random["paired"]["core"]["ci"] == [0.0, 1.0] and "p_with_draws" in random["paired"]["core"]
    assert table["core"]["accuracy_vs_full"] == 0.0 and table["core"]["kv_bytes_vs_full"] == 1.0


def test_random_kv_heads_are_drawn_outside_the_core_ones() -> None:
    from corehead.experiments.kv_methods import KVBudget, plan_method
    from corehead.models.shape import ModelShape

    shape = ModelShape(n_layers=3, n_heads=8, n_kv_heads=4, head_dim=8)
    core = frozenset({(0, 1), (1, 2), (2, 0), (2, 3)})
    whole = set()
    for seed in range(50):
        kv = KVBudget(shape, core, np.zeros((3, 4)), 0.1, 0.4, seed, False)
        plan = plan_method("random", kv)
        full = {head for head in shape.kv_heads() if head not in plan.budgets}
        assert len(full) == len(core) and not full & core
        whole |= full
    assert whole == set(shape.kv_heads()) - core  # every other KV head is drawn at some seed
    crowded = KVBudget(shape, frozenset(shape.kv_heads()[:7]), np.zeros((3, 4)), 0.1, 0.6, 0, False)
    with pytest.raises(ValueError, match="leaving 5 to draw as many from"):
        plan_method("random", crowded)


@pytest.mark.parametrize("mask_elements", [1 << 25, 1000])  # one call per buffer / blocks crossing query groups
@pytest.mark.parametrize("prefix", [0, 3])  # the prompt starts with visual tokens (early rows see nothing) or text
def test_fused_prefill_equals_masked_attention(
    monkeypatch: pytest.MonkeyPatch, mask_elements: int, prefix: int
) -> None:
    """The prefill option's attention, against an independent float64 softmax in which every query head sees
    exactly its KV head's kept tokens at or before its row: a left-padded batch, GQA, consecutive and
    scattered reduced heads, two budgets, a full head."""
    import corehead.attention.hybrid as hybrid_module
    from corehead.attention.hybrid import HybridState
    from corehead.attention.recorder import compact_mask

    monkeypatch.setattr(hybrid_module, "PREFILL_MASK_ELEMENTS", mask_elements)
    image, groups, n_kv, dim, length = 7, 3, 4, 8, 40
    torch.manual_seed(prefix)
    ids = torch.randint(10, 50, (2, length))
    ids[:, prefix : prefix + 24] = image
    attention_mask = torch.ones(2, length, dtype=torch.long)
    attention_mask[1, :5] = 0  # the second row is left-padded
    ids[1, :5] = 0
    plan = KVPlan({(0, 0): 0.3, (0, 2): 0.3, (0, 3): 0.1}, "snap", window=4, prefill=True)  # KV head 1 full
    state = HybridState(plan, groups, n_kv, [image])
    state.start(ids, attention_mask, SimpleNamespace(), 1)
    query = torch.randn(2, n_kv * groups, length, dim)
    key, value = torch.randn(2, n_kv, length, dim), torch.randn(2, n_kv, length, dim)
    mask = compact_mask(2, length, length, attention_mask=attention_mask)
    got = state.attend(SimpleNamespace(layer_idx=0), query, key, value, mask, 0.3)  # [B, L, H, D]

    sees = torch.zeros(2, n_kv, length, dtype=torch.bool)  # which prompt tokens each KV head kept
    for buf in state.layers[0].buffers:
        for i, j in enumerate(buf.heads):
            sees[:, j].scatter_(1, buf.positions[:, i], True)
    assert sees[:, 1].all() and not sees[:, 3].all()
    rows, keys = torch.arange(length)[:, None], torch.arange(length)[None, :]
    allowed = sees[:, :, None, :] & (keys <= rows) & attention_mask.bool()[:, None, None, :]  # [B, Hkv, L, L]
    allowed = allowed.repeat_interleave(groups, 1)
    scores = (query.double() @ key.double().repeat_interleave(groups, 1).transpose(-1, -2)) * 0.3
    weights = scores.masked_fill(~allowed, float("-inf")).softmax(-1).nan_to_num(0.0)  # a row seeing nothing: 0
    want = (weights @ value.double().repeat_interleave(groups, 1)).transpose(1, 2)
    assert (~allowed.any(-1)).any()  # some rows see no key (padding, or visual tokens before any kept one)
    torch.testing.assert_close(got.double(), want, atol=1e-5, rtol=1e-5)
