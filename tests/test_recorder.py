"""RAM recording against an independent computation from eager `output_attentions`."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from corehead.attention.recorder import ROW_GROUPS, decoder_attention, plan_rows, record
from corehead.data.sample import Sample
from corehead.data.synthetic import DOMAINS, make_sample
from corehead.metrics.ram import STATS
from corehead.models.base import ChatAdapter, Encoded, VisualTokenMap, sample_region_tokens
from corehead.models.qwen_vl import QwenVLAdapter
from corehead.models.regions import distractor_weights, region_weights


def _reference(attn: np.ndarray, rows: np.ndarray, vis: np.ndarray, region: set, objects: list[set]) -> list:
    """Stats of one head from a full [L, L] eager attention matrix, written out plainly; `objects` holds the
    token set of each distractor object (distractor mass: the mean over objects of each one's mass)."""
    amap = attn[rows].mean(axis=0)[vis] if len(rows) else np.zeros(len(vis))
    ram = sum(amap[i] for i in region)
    visual = amap.sum()
    share = ram / max(visual, 1e-12)
    lift = share / (len(region) / len(vis))
    p = amap / max(visual, 1e-12)
    entropy = -sum(x * np.log(x) for x in p if x > 0)
    top_in = float(int(np.argmax(amap)) in region)
    d = float(np.mean([sum(amap[i] for i in obj) for obj in objects])) if objects else 0.0
    return [ram, visual, share, lift, entropy, top_in, d, ram - d]


def _object_tokens(sample: Sample, token_map: VisualTokenMap) -> list[set]:
    """The token set of each distractor object: the union over its regions (same `object`) of their tokens."""
    by_object: dict[object, set] = {}
    for k, region in enumerate(sample.distractors):
        tokens, _ = token_map.region_tokens(region)
        by_object.setdefault(region.object if region.object is not None else k, set()).update(tokens.tolist())
    return list(by_object.values())


def _query_rows(e: Encoded) -> dict[str, np.ndarray]:
    """Each query group's rows, written independently of the recorder: 'all' is the contiguous text from
    the question's first token through the gold answer (question, assistant turn opening, answer)."""
    last = e.answer[-1] if len(e.answer) else e.prompt_end
    return {
        "all": np.arange(e.question[0], last + 1),
        "question": e.question,
        "prompt_end": np.array([e.prompt_end]),
        "answer": e.answer,
    }


def test_recorded_stats_equal_eager_attention(qwen_family: QwenVLAdapter) -> None:
    _check_against_eager(qwen_family, [make_sample(d, 4, i) for d in DOMAINS for i in range(2)])


def _check_against_eager(adapter: ChatAdapter, samples: list[Sample]) -> None:
    """Record a padded batch (lengths differ) and compare every statistic with eager attention."""
    model = adapter.model
    encoded = [adapter.encode(s, answer=True) for s in samples]
    batch = adapter.collate(encoded)
    width = batch["input_ids"].shape[1]
    regions = [region_weights(s, e.token_map).weights for s, e in zip(samples, encoded, strict=True)]
    dists = [distractor_weights(s, e.token_map).weights for s, e in zip(samples, encoded, strict=True)]
    plan = plan_rows(encoded, width, regions, dists)
    plan.keep_maps = True
    with torch.no_grad():
        plain = model(**batch).logits
        with decoder_attention(model), record(plan):
            recorded = model(**batch).logits
        model.set_attn_implementation({"text_config": "eager"})
        try:
            eager = model(**batch, output_attentions=True)
        finally:
            model.set_attn_implementation({"text_config": "sdpa"})
    real = batch["attention_mask"].bool()
    assert torch.allclose(recorded[real], plain[real], atol=1e-5)  # recording does not change the output
    n_layers = model.config.get_text_config().num_hidden_layers
    assert sorted(plan.stats) == list(range(n_layers))
    for b, (e, s) in enumerate(zip(encoded, samples, strict=True)):
        shift = width - e.length
        groups = _query_rows(e)
        tm = e.token_map
        region = set(sample_region_tokens(s, tm).indices.tolist())
        objects = _object_tokens(s, tm)
        for layer in range(n_layers):
            attn = eager.attentions[layer][b].double().numpy()
            for h in range(attn.shape[0]):
                for g, name in enumerate(ROW_GROUPS):
                    rows = groups[name] + shift
                    amap = attn[h][rows].mean(axis=0)[tm.positions + shift] if len(rows) else np.zeros(len(tm))
                    np.testing.assert_allclose(plan.maps[layer][b, h, g, : len(tm)].double().numpy(), amap, atol=1e-6)
                    per_unit = np.zeros(len(s.units))
                    for j in range(len(tm)):  # a video token's mass is split evenly over its frames
                        per_unit[tm.units[j] : tm.units[j] + tm.spans[j]] += amap[j] / tm.spans[j]
                    got_units = plan.stats[layer][b, h, g, len(STATS) : len(STATS) + len(s.units)].double().numpy()
                    np.testing.assert_allclose(got_units, per_unit, atol=1e-6, err_msg=f"unit mass b{b} l{layer} h{h}")
                    want = _reference(attn[h], rows, tm.positions + shift, region, objects)
                    got = plan.stats[layer][b, h, g, : len(STATS)].double().numpy()
                    np.testing.assert_allclose(
                        got, want, rtol=1e-5, atol=1e-5, err_msg=f"{STATS} b{b} l{layer} h{h} {name}"
                    )


@pytest.mark.parametrize("kind", ["llava", "next", "onevision", "internvl"])
def test_recorder_on_llava_and_internvl(kind: str) -> None:
    """The same exact agreement with eager attention on the other families' text decoders (Llama, Qwen2)."""
    from test_internvl_adapter import tiny_internvl
    from test_llava_adapters import tiny_llava

    adapter = tiny_internvl() if kind == "internvl" else tiny_llava(kind)
    domains = ("scenes", "pages", "clips") if kind in ("onevision", "internvl") else ("scenes", "pages")
    _check_against_eager(adapter, [make_sample(d, 5, i) for d in domains for i in range(2)])


def test_generated_rows_equal_eager_attention_during_generate(tiny_qwen2_vl: QwenVLAdapter, tmp_path) -> None:
    """`--query generated`: each generated token's row, averaged over the answer, as eager attention gives it."""
    from corehead.experiments.score import ScoreOptions, score

    adapter, model = tiny_qwen2_vl, tiny_qwen2_vl.model
    samples = [make_sample(d, 6, 0) for d in DOMAINS]
    new_tokens = 4
    run = score(
        adapter, samples, tmp_path, "gen", ScoreOptions(batch_size=3, generated=True, max_new_tokens=new_tokens)
    )
    encoded = [adapter.encode(s) for s in samples]
    batch = adapter.collate(encoded)
    width = batch["input_ids"].shape[1]
    model.set_attn_implementation({"text_config": "eager"})
    try:
        with torch.no_grad():
            out = model.generate(
                **batch,
                max_new_tokens=new_tokens,
                do_sample=False,
                output_attentions=True,
                return_dict_in_generate=True,
                eos_token_id=adapter.end_token,
                pad_token_id=adapter.pad_token,
            )
    finally:
        model.set_attn_implementation({"text_config": "sdpa"})
    generated = out.sequences[:, width:]
    rows = {(r["sample_id"], r["layer"], r["head"]): r for r in run.table.to_pylist() if r["query"] == "generated"}
    for b, (s, e) in enumerate(zip(samples, encoded, strict=True)):
        tokens = generated[b].tolist()
        answer_len = tokens.index(adapter.end_token) if adapter.end_token in tokens else len(tokens)
        region = set(sample_region_tokens(s, e.token_map).indices.tolist())
        objects = _object_tokens(s, e.token_map)
        vis = e.token_map.positions + width - e.length
        for layer in range(model.config.get_text_config().num_hidden_layers):
            for h in range(model.config.get_text_config().num_attention_heads):
                per_step = [
                    _reference(
                        out.attentions[t][layer][b, h].double().numpy(),
                        np.array([0]),
                        vis,
                        region,
                        objects,
                    )
                    for t in range(1, min(answer_len + 1, len(out.attentions)))
                ]
                got = [rows[(s.id, layer, h)][k] for k in STATS]
                if not per_step:
                    assert all(np.isnan(got))
                    continue
                np.testing.assert_allclose(got, np.mean(per_step, axis=0), rtol=1e-4, atol=1e-5)
