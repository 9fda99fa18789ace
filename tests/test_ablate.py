"""The ablation experiment: honest controls, every mode cutting exactly its heads, resumable rows, statistics."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from corehead.attention.recorder import decoder_attention, plan_rows, record
from corehead.data.synthetic import generate, make_sample
from corehead.experiments.ablate import ablate, conditions, intervened, parse_k, plan_conditions, summarize
from corehead.heads import HeadScores, make_headset
from corehead.metrics.ram import STATS
from corehead.metrics.stats import paired_permutation_p
from corehead.models.base import sample_region_tokens
from corehead.models.qwen_vl import QwenVLAdapter


def _headset(n_layers: int = 2, n_heads: int = 4):
    mean = np.arange(n_layers * n_heads, dtype=float).reshape(n_layers, n_heads)[::-1].copy()
    scores = HeadScores("ram", "all", mean, mean, mean, 1)
    return make_headset(scores, scores.ranking()[:1], {"count": 1}, "tiny", "synthetic:all", n_kv_heads=1)


def test_controls_have_the_same_size_and_never_include_top_heads() -> None:
    ranking = _headset().ranking
    conds = conditions(ranking, ks=[2, 3], seeds=4)
    assert [c.name for c in conds[:6]] == ["top", "bottom", "random-0", "random-1", "random-2", "random-3"]
    for c in conds:
        assert len(c.heads) == c.k and len(set(c.heads)) == c.k
        top = set(ranking[: c.k])
        if c.name == "top":
            assert set(c.heads) == top
        elif c.name == "bottom":
            assert set(c.heads) == set(ranking[-c.k :])
        else:
            assert not set(c.heads) & top
    assert conds == conditions(ranking, ks=[2, 3], seeds=4)  # seeded
    assert len({c.heads for c in conds if c.name.startswith("random") and c.k == 2}) > 1
    assert [c.name for c in conditions(ranking, [2], seeds=2, controls=("random",))] == ["top", "random-0", "random-1"]
    with pytest.raises(ValueError, match="k must be between"):
        conditions(ranking, ks=[8])
    with pytest.raises(ValueError, match="controls must be among"):
        conditions(ranking, ks=[2], controls=("middle",))


def test_plan_compares_rankings_with_controls_from_the_first() -> None:
    first, second = _headset().ranking, _headset().ranking[::-1]
    plan = plan_conditions({"ram:question": first, "ram:answer": second}, [2], seeds=2, user=[(1, 1)])
    names = [(c.ranking, c.name) for c in plan]
    assert names[:2] == [("", "none"), ("", "user")]
    assert ("ram:answer", "top") in names and ("ram:answer", "bottom") not in names
    assert next(c for c in plan if c.ranking == "ram:answer").heads == tuple(second[:2])


def test_k_takes_shares_of_all_heads_and_counts() -> None:
    assert parse_k("1%,2%,5%,10%,20%", 64) == [1, 3, 6, 13]  # 1% and 2% of 64 both round to one head
    assert parse_k("3, 6,5%", 64) == [3, 6]
    for bad, match in (("five", "counts or percentages"), ("100%", "between 1 and 63"), ("", "no k")):
        with pytest.raises(ValueError, match=match):
            parse_k(bad, 64)


def test_permutation_p_values() -> None:
    assert paired_permutation_p(np.zeros(10)) == 1.0
    assert paired_permutation_p(np.ones(12)) < 0.001  # all 12 pairs agree: only 2 of 4096 sign patterns do
    noisy = np.random.default_rng(0).normal(0, 1, 40)
    assert paired_permutation_p(noisy) > 0.05
    with pytest.raises(ValueError):
        paired_permutation_p(np.zeros(0))


def test_rows_resume_and_effects_are_paired(tiny_builtin: QwenVLAdapter, tmp_path: Path) -> None:
    samples = list(generate("scenes", 4, seed=9))
    headset = _headset()
    rows = ablate(tiny_builtin, samples, headset, tmp_path, ks=[2], seeds=1, batch_size=2)
    assert len(rows) == 4 * 4  # none, top, bottom, random-0
    lines = (tmp_path / "ablation.jsonl").read_text().splitlines()
    (tmp_path / "ablation.jsonl").write_text("\n".join(lines[:9]) + "\n" + lines[9][:7])  # interrupted
    again = ablate(tiny_builtin, samples, headset, tmp_path, ks=[2], seeds=1, batch_size=2)
    keys = [
        (r["ranking"], r["condition"], r["k"], r["id"])
        for r in map(json.loads, (tmp_path / "ablation.jsonl").read_text().splitlines())
    ]
    assert len(keys) == len(set(keys)) == 16
    assert sorted(json.dumps(r, sort_keys=True) for r in again) == sorted(json.dumps(r, sort_keys=True) for r in rows)
    table = {(t["condition"], t["k"]): t for t in summarize(again)}
    base = {r["id"]: r["answer_logprob"] for r in again if r["condition"] == "none"}
    top = {r["id"]: r["answer_logprob"] for r in again if r["condition"] == "top"}
    assert table[("top", 2)]["delta_logprob"] == pytest.approx(np.mean([top[i] - base[i] for i in base]))
    lo, hi = table[("top", 2)]["delta_logprob_ci"]
    assert lo <= table[("top", 2)]["delta_logprob"] <= hi
    assert table[("none", 0)]["delta_logprob"] == 0.0 and table[("none", 0)]["p_value"] == 1.0
    assert table[("top", 2)]["delta_logprob"] != 0.0  # ablating heads changes the model
    written = json.loads((tmp_path / "ablation.json").read_text())  # the run's summary, beside its rows
    assert written == {"heads": "ram:all", "mode": "zero", "conditions": json.loads(json.dumps(summarize(again)))}
    assert (tmp_path / "ablation.png").read_bytes()[:4] == b"\x89PNG"
    with pytest.raises(ValueError, match=r"other settings \(mode was \"zero\""):
        ablate(tiny_builtin, samples, headset, tmp_path, ks=[2], seeds=1, batch_size=2, mode="mean")


def test_top_is_compared_with_the_mean_of_its_random_controls() -> None:
    def row(name: str, i: int, correct: bool) -> dict:
        return {"ranking": "r", "condition": name, "k": 2, "id": f"s{i}", "correct": correct, "answer_logprob": 0.0}

    rows = [{**row("none", i, True), "k": 0, "ranking": ""} for i in range(6)]
    rows += [row("top", i, i < 3) for i in range(6)]  # wrong on s3..s5
    rows += [row("random-0", i, True) for i in range(6)] + [row("random-1", i, i != 0) for i in range(6)]
    table = {t["condition"]: t for t in summarize(rows)}
    # per sample: top - mean(random) = [1-0.5, 0, 0, -1, -1, -1]
    assert table["top"]["vs_random"] == pytest.approx(np.mean([0.5, 0, 0, -1, -1, -1]))
    assert table["top"]["delta_accuracy"] == pytest.approx(-0.5)
    assert "vs_random" not in table["random-0"]


def _record_under(adapter: QwenVLAdapter, samples, mode: str, heads, forbid_mode: str | None = None):
    """Per-layer recorded statistics [B, H, G, S] of a batch, with `heads` cut in `mode` (or nothing)."""
    from corehead.experiments.modes import ablation_mode

    encoded = [adapter.encode(s) for s in samples]
    batch = adapter.collate(encoded)
    width = batch["input_ids"].shape[1]
    regions = [sample_region_tokens(s, e.token_map).indices for s, e in zip(samples, encoded, strict=True)]
    plan = plan_rows(encoded, width, regions, [np.zeros(0, dtype=np.int64)] * len(samples), [0] * len(samples))
    forbid = ablation_mode(mode).forbidden(samples, encoded)
    with (
        torch.no_grad(),
        decoder_attention(adapter.model),
        record(plan),
        intervened(adapter.model, mode, heads, forbid=forbid),
    ):
        adapter.model(**batch)
    return {layer: stats[..., : len(STATS)] for layer, stats in plan.stats.items()}, encoded


@pytest.mark.parametrize("mode", ["mask-visual", "mask-region", "query-zero"])
def test_attention_modes_change_exactly_the_targeted_heads(tiny_builtin: QwenVLAdapter, mode: str) -> None:
    """Checked from recorded attention rows: barred keys get no attention, a zeroed query attends uniformly,
    and the other heads of the first layer (upstream of any change) are untouched."""
    samples = [make_sample("scenes", 3, 0), make_sample("pages", 3, 1)]  # lengths differ: a padded batch
    targets = ((0, 1), (1, 2))
    base, _ = _record_under(tiny_builtin, samples, "zero", ())
    cut, encoded = _record_under(tiny_builtin, samples, mode, targets)
    ram, visual = STATS.index("ram"), STATS.index("visual_mass")
    others = [h for h in range(base[0].shape[1]) if h != 1]
    torch.testing.assert_close(cut[0][:, others], base[0][:, others])
    for layer, head in targets:
        if mode == "mask-visual":
            assert torch.all(cut[layer][:, head, :, visual] == 0)
        elif mode == "mask-region":
            assert torch.all(cut[layer][:, head, :, ram] == 0) and torch.all(
                cut[layer][:, head, :3, visual] > 0
            )  # no answer rows
        else:  # uniform over the keys the prompt-end row sees: visual tokens / (prompt_end + 1)
            for b, e in enumerate(encoded):
                want = len(e.token_map) / (e.prompt_end + 1)
                assert float(cut[layer][b, head, 2, visual]) == pytest.approx(want, rel=1e-4)
    assert not torch.allclose(cut[1], base[1])


def test_cutting_a_planted_retrieval_head_destroys_what_it_does(tiny_qwen2_vl: QwenVLAdapter) -> None:
    """The planted head carries the square's colour to the last position: cutting it (any mode) makes the
    output nearly blind to that colour; cutting any other single head does not."""
    from planted import HEAD, plant_head, square_samples

    red, blue = square_samples(6, (230, 20, 20)), square_samples(6, (20, 40, 230))
    adapter = plant_head(tiny_qwen2_vl, red[0])
    model = adapter.model

    def sensitivity(mode: str, heads) -> float:
        """Mean distance between the last-position logits of red and blue squares at the same places."""
        from corehead.experiments.modes import ablation_mode

        logits = []
        for samples in (red, blue):
            encoded = [adapter.encode(s) for s in samples]
            forbid = ablation_mode(mode).forbidden(samples, encoded)
            with torch.no_grad(), intervened(model, mode, heads, forbid=forbid):
                logits.append(model(**adapter.collate(encoded)).logits[:, -1])
        return float((logits[0] - logits[1]).norm(dim=-1).mean())

    full = sensitivity("zero", ())
    n_layers, n_heads = (
        model.config.get_text_config().num_hidden_layers,
        model.config.get_text_config().num_attention_heads,
    )
    for mode in ("zero", "mask-region"):
        assert sensitivity(mode, ((0, HEAD),)) < 0.3 * full
    for layer in range(n_layers):
        for head in range(n_heads):
            if (layer, head) != (0, HEAD):
                assert sensitivity("zero", ((layer, head),)) > 0.8 * full


def test_bad_modes_are_refused(tiny_builtin: QwenVLAdapter, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="mode must be one of"):
        ablate(tiny_builtin, list(generate("scenes", 1)), _headset(), tmp_path, ks=[1], mode="shuffle")
    with (
        pytest.raises(ValueError, match="needs the forbidden keys"),
        intervened(tiny_builtin.model, "mask-visual", ((0, 0),)),
    ):
        pass


def test_patching_writes_the_source_values_into_exactly_the_targeted_slices(tiny_builtin: QwenVLAdapter) -> None:
    from test_interventions import _o_proj_inputs

    from corehead.attention.interventions import HeadPatch, capture_head_outputs
    from corehead.experiments.modes import last_prompt_token

    model = tiny_builtin.model
    target = [tiny_builtin.encode(make_sample(d, 5, 0)) for d in ("scenes", "pages")]
    source = [tiny_builtin.encode(make_sample(d, 6, 1)) for d in ("clips", "scenes")]
    values = capture_head_outputs(model, tiny_builtin.collate(source), last_prompt_token(source))
    batch = tiny_builtin.collate(target)
    positions = last_prompt_token(target)
    heads = ((0, 1), (0, 3))
    base = _o_proj_inputs(model, batch)
    with HeadPatch(heads, values, positions).apply(model):
        patched = _o_proj_inputs(model, batch)
    dim = values[0].shape[-1]
    x, y = base[0].view(*base[0].shape[:2], -1, dim), patched[0].view(*patched[0].shape[:2], -1, dim)
    rows = torch.arange(2)
    torch.testing.assert_close(y[rows, positions][:, [1, 3]], values[0][:, [1, 3]])
    y[rows, positions, 1], y[rows, positions, 3] = x[rows, positions, 1], x[rows, positions, 3]
    assert torch.equal(x, y)  # every other slice and position of layer 0 is untouched


def test_patching_the_planted_head_carries_the_source_colour(tiny_qwen2_vl: QwenVLAdapter) -> None:
    """Patched from a blue square, the planted head alone moves a red square's output half the way or more to
    the blue one's; any other single head barely moves it."""
    from planted import HEAD, plant_head, square_samples

    from corehead.attention.interventions import capture_head_outputs
    from corehead.experiments.modes import last_prompt_token

    red, blue = square_samples(6, (230, 20, 20)), square_samples(6, (20, 40, 230))
    adapter = plant_head(tiny_qwen2_vl, red[0])
    model = adapter.model
    red_enc, blue_enc = [adapter.encode(s) for s in red], [adapter.encode(s) for s in blue]
    red_batch, blue_batch = adapter.collate(red_enc), adapter.collate(blue_enc)
    values = capture_head_outputs(model, blue_batch, last_prompt_token(blue_enc))
    with torch.no_grad():
        want = model(**blue_batch).logits[:, -1]
        gap = float((model(**red_batch).logits[:, -1] - want).norm(dim=-1).mean())

    def gap_after(head) -> float:
        with torch.no_grad(), intervened(model, "patch", (head,), source=(values, last_prompt_token(red_enc))):
            return float((model(**red_batch).logits[:, -1] - want).norm(dim=-1).mean())

    text = model.config.get_text_config()
    assert gap_after((0, HEAD)) < 0.6 * gap
    for layer in range(text.num_hidden_layers):
        for head in range(text.num_attention_heads):
            if (layer, head) != (0, HEAD):
                assert gap_after((layer, head)) > 0.9 * gap


def test_patch_sources_have_another_answer_and_prefer_the_same_input() -> None:
    from dataclasses import replace

    from corehead.experiments.ablate import pair_sources

    a, b, c = (make_sample("scenes", 1, i) for i in range(3))
    same_image = replace(a, id="a2", answer=a.answer + "x")
    sources = pair_sources([a, b, c, same_image])
    assert sources[a.id].id == "a2" and sources["a2"].id == a.id
    assert all(sources[s.id].answer != s.answer for s in (b, c))
    with pytest.raises(ValueError, match="no other sample has a different answer"):
        pair_sources([a, replace(a, id="copy")])
