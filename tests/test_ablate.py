"""The ablation experiment: honest controls, every mode cutting exactly its heads, resumable rows, statistics."""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch

from corehead.attention.recorder import decoder_attention, plan_rows, record
from corehead.data.synthetic import generate, make_sample
from corehead.experiments.ablate import ablate, conditions, intervened, parse_k, plan_conditions, summarize
from corehead.experiments.ablation_plan import unavailable
from corehead.experiments.heldout import held_out
from corehead.heads import HeadScores, make_headset, scored_samples
from corehead.metrics.ram import STATS
from corehead.metrics.stats import holm, paired_permutation_p
from corehead.models.qwen_vl import QwenVLAdapter
from corehead.models.regions import region_weights


def _headset(n_layers: int = 2, n_heads: int = 4, scored: list[str] | None = None):
    mean = np.arange(n_layers * n_heads, dtype=float).reshape(n_layers, n_heads)[::-1].copy()
    scores = HeadScores("ram", "all", mean, mean, mean, 1)
    record = scored_samples("synthetic:scenes", 9, scored) if scored is not None else None
    return make_headset(scores, scores.ranking()[:1], {"count": 1}, "tiny", "synthetic:all", 1, scored=record)


def _clustered_ranking(n_layers: int = 4, n_heads: int = 12, seed: int = 0) -> list[tuple[int, int]]:
    """All heads, the best ones mostly in layer 1 (as in real models), the rest in random order."""
    heads = [(layer, head) for layer in range(n_layers) for head in range(n_heads)]
    rng = np.random.default_rng(seed)
    first = [h for h in heads if h[0] == 1][:4]
    rest = [heads[int(i)] for i in rng.permutation(len(heads)) if heads[int(i)] not in first]
    return [*first[:2], rest[0], *first[2:], *rest[1:]]


def test_controls_have_the_same_size_and_never_include_their_rankings_top_heads() -> None:
    ranking = _clustered_ranking()
    conds = conditions(ranking, ks=[3, 5], seeds=4)
    assert [(c.name, c.draw) for c in conds[:10]] == [
        ("top", None), ("bottom", None), *(("random", s) for s in range(4)),
        *(("random-layer-matched", s) for s in range(4)),
    ]  # fmt: skip
    for c in conds:
        top = ranking[: c.k]
        assert len(c.heads) == c.k and len(set(c.heads)) == c.k
        if c.name == "top":
            assert list(c.heads) == top
        elif c.name == "bottom":
            assert list(c.heads) == ranking[-c.k :]
        else:
            assert not set(c.heads) & set(top)
        if c.name == "random-layer-matched":  # the top set's heads per layer, drawn outside it
            assert Counter(layer for layer, _ in c.heads) == Counter(layer for layer, _ in top)
    assert conds == conditions(ranking, ks=[3, 5], seeds=4)  # seeded
    for name in ("random", "random-layer-matched"):
        assert len({c.heads for c in conds if c.name == name and c.k == 5}) > 1  # the draws differ
    layers = Counter(layer for c in conds if c.name == "random" for layer, _ in c.heads)
    assert len(layers) == 4  # a plain random control spreads over every layer
    assert [c.name for c in conditions(ranking, [2], seeds=2, controls=("random",))] == ["top", "random", "random"]
    with pytest.raises(ValueError, match="k must be between"):
        conditions(ranking, ks=[48])
    with pytest.raises(ValueError, match="controls must be among"):
        conditions(ranking, ks=[2], controls=("middle",))


def test_each_ranking_draws_its_own_controls() -> None:
    """Controls drawn outside the first ranking's top could hold another ranking's top heads; each ranking's
    own never do."""
    first, second = _clustered_ranking(seed=0), _clustered_ranking(seed=0)[::-1]
    plan = plan_conditions({"ram:question": first, "ram:answer": second}, [4], seeds=20, user=[(1, 1)])
    assert [(c.ranking, c.name) for c in plan[:2]] == [("", "none"), ("", "user")]
    for name, ranking in (("ram:question", first), ("ram:answer", second)):
        mine = [c for c in plan if c.ranking == name]
        assert [c.heads for c in mine if c.name == "top"] == [tuple(ranking[:4])]
        assert {c.name for c in mine} == {"top", "bottom", "random", "random-layer-matched"}
        drawn = [h for c in mine if c.name.startswith("random") for h in c.heads]
        assert len(drawn) == 2 * 20 * 4 and not set(drawn) & set(ranking[:4])
    answer_draws = {h for c in plan if c.ranking == "ram:answer" and c.name == "random" for h in c.heads}
    assert answer_draws & set(first[:4])  # the first ranking's top heads are fair game for the second's


def test_controls_that_cannot_be_drawn_are_left_out_and_listed() -> None:
    ranking = _headset().ranking  # 2 layers x 4 heads, the top 4 all in layer 0
    conds = conditions(ranking, ks=[3, 5], seeds=2)
    assert {(c.name, c.k) for c in conds} == {("top", 3), ("bottom", 3), ("random", 3), ("top", 5), ("bottom", 5)}
    assert unavailable({"r": ranking}, [3, 5]) == [
        {"ranking": "r", "condition": "random-layer-matched", "k": 3,
         "reason": "layer 0 has 3 of the top 3 heads but only 1 outside them"},
        {"ranking": "r", "condition": "random", "k": 5, "reason": "only 3 heads lie outside the top 5"},
        {"ranking": "r", "condition": "random-layer-matched", "k": 5,
         "reason": "layer 0 has 4 of the top 5 heads but only 0 outside them"},
    ]  # fmt: skip


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


def _keys(path: Path) -> list[tuple]:
    rows = map(json.loads, path.read_text().splitlines())
    return [(r["ranking"], r["condition"], r["k"], r["draw"], r["id"]) for r in rows]


def test_rows_resume_and_effects_are_paired(tiny_builtin: QwenVLAdapter, tmp_path: Path) -> None:
    samples = list(generate("scenes", 4, seed=9))
    headset = _headset()
    rows = ablate(tiny_builtin, samples, headset, tmp_path, ks=[2], seeds=1, batch_size=2)
    assert len(rows) == 4 * 5  # none, top, bottom, random (1 draw), random-layer-matched (1 draw)
    lines = (tmp_path / "ablation.jsonl").read_text().splitlines()
    (tmp_path / "ablation.jsonl").write_text("\n".join(lines[:9]) + "\n" + lines[9][:7])  # interrupted
    again = ablate(tiny_builtin, samples, headset, tmp_path, ks=[2], seeds=1, batch_size=2)
    keys = _keys(tmp_path / "ablation.jsonl")
    assert len(keys) == len(set(keys)) == 20 and {k[3] for k in keys if k[1].startswith("random")} == {0}
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
    held = {"excluded": 0, "overlap": 0, "allow_overlap": False, "scored_digest": None}  # no record: unknown
    assert written == {
        "heads": "ram:all", "mode": "zero", "held_out": held, "skipped": 0, "unavailable": [],
        "conditions": json.loads(json.dumps(summarize(again))),
    }  # fmt: skip
    assert json.loads((tmp_path / "manifest.json").read_text())["held_out"] == held
    assert (tmp_path / "ablation.png").read_bytes()[:4] == b"\x89PNG"
    with pytest.raises(ValueError, match=r"other settings \(mode was \"zero\""):
        reference = list(generate("scenes", 2, seed=10))
        ablate(
            tiny_builtin, samples, headset, tmp_path, ks=[2], seeds=1, batch_size=2, mode="mean", reference=reference
        )
    old = [{k: v for k, v in json.loads(line).items() if k != "draw"} for line in lines]
    (tmp_path / "ablation.jsonl").write_text("".join(json.dumps(r) + "\n" for r in old))
    with pytest.raises(ValueError, match="older corehead"):
        ablate(tiny_builtin, samples, headset, tmp_path, ks=[2], seeds=1, batch_size=2)


def test_samples_the_head_set_was_scored_on_are_held_out(tiny_builtin: QwenVLAdapter, tmp_path: Path) -> None:
    """Ablating on the scoring run's own samples: they are excluded, counted and recorded; with
    allow_overlap they are kept and the result is marked."""
    samples = list(generate("scenes", 4, seed=9))
    scored = [samples[0].id, samples[2].id, "scenes-s9-99999"]
    headset = _headset(scored=scored)
    digest = hashlib.sha256("\n".join(sorted(scored)).encode()).hexdigest()
    rows = ablate(tiny_builtin, samples, headset, tmp_path / "held", ks=[1], seeds=1, controls=("random",))
    assert {r["id"] for r in rows} == {samples[1].id, samples[3].id}
    held = {"excluded": 2, "overlap": 2, "allow_overlap": False, "scored_digest": digest}
    assert json.loads((tmp_path / "held" / "ablation.json").read_text())["held_out"] == held
    assert json.loads((tmp_path / "held" / "manifest.json").read_text())["held_out"] == held
    kept = ablate(tiny_builtin, samples, headset, tmp_path / "kept", ks=[1], seeds=1, controls=("random",),
                  allow_overlap=True)  # fmt: skip
    assert {r["id"] for r in kept} == {s.id for s in samples}
    summary = json.loads((tmp_path / "kept" / "ablation.json").read_text())
    assert summary["held_out"] == {**held, "excluded": 0, "allow_overlap": True}
    assert all(r["n"] == 4 for r in summary["conditions"])
    check = held_out(samples, headset, False)
    assert check.overlap == scored[:2] and check.known and "excluded 2 sample(s)" in check.message()
    assert "overlap not checked" in held_out(samples, _headset(), False).message()
    with pytest.raises(ValueError, match="all 2 samples were scored on"):
        held_out(samples[:1] + samples[2:3], headset, False)


def test_top_is_compared_with_each_control_over_samples_and_draws() -> None:
    def row(name: str, i: int, correct: bool, draw: int | None = None) -> dict:
        heads = [[1, draw]] if draw is not None else [[0, 0]]
        return {"ranking": "r", "condition": name, "k": 2, "draw": draw, "id": f"s{i}", "correct": correct,
                "answer_logprob": 0.0, "heads": heads}  # fmt: skip

    rows = [{**row("none", i, True), "k": 0, "ranking": ""} for i in range(6)]
    rows += [row("top", i, i < 3) for i in range(6)]  # wrong on s3..s5
    rows += [row("random", i, True, 0) for i in range(6)] + [row("random", i, i != 0, 1) for i in range(6)]
    rows += [row("bottom", i, i != 5) for i in range(6)]
    table = {t["condition"]: t for t in summarize(rows)}
    # per sample: top - mean(random) = [1-0.5, 0, 0, -1, -1, -1]
    assert table["top"]["vs_random"] == pytest.approx(np.mean([0.5, 0, 0, -1, -1, -1]))
    assert table["top"]["vs_bottom"] == pytest.approx(np.mean([0, 0, 0, -1, -1, 0]))
    assert table["top"]["delta_accuracy"] == pytest.approx(-0.5)
    assert "vs_random" not in table["random"] and "vs_random_layer_matched" not in table["top"]
    assert table["random"]["accuracy"] == pytest.approx(11 / 12)
    assert table["random"]["draws"] == [
        {"seed": 0, "heads": [[1, 0]], "accuracy": 1.0, "delta_accuracy": 0.0, "delta_logprob": 0.0},
        {"seed": 1, "heads": [[1, 1]], "accuracy": pytest.approx(5 / 6), "delta_accuracy": pytest.approx(-1 / 6),
         "delta_logprob": 0.0},
    ]  # fmt: skip
    lo, hi = table["top"]["vs_random_ci"]
    assert lo < table["top"]["vs_random"] < hi < 0.1
    assert table["top"]["vs_bottom_p"] == paired_permutation_p(np.array([0, 0, 0, -1, -1, 0.0]))


def test_p_values_are_holm_adjusted_over_rankings_and_k() -> None:
    rng = np.random.default_rng(1)
    rows = [{"ranking": "", "condition": "none", "k": 0, "draw": None, "id": f"s{i}", "correct": True,
             "answer_logprob": 0.0} for i in range(12)]  # fmt: skip
    for ranking, k, hurt in (("a", 1, 0.1), ("a", 2, 0.5), ("b", 1, 0.9), ("b", 2, 0.3)):
        rows += [{"ranking": ranking, "condition": "top", "k": k, "draw": None, "id": f"s{i}",
                  "correct": bool(rng.random() > hurt), "answer_logprob": -float(rng.random())}
                 for i in range(12)]  # fmt: skip
    tops = [t for t in summarize(rows) if t["condition"] == "top"]
    raw = [t["p_value"] for t in tops]
    order = sorted(range(4), key=lambda i: raw[i])
    want = [0.0] * 4
    running = 0.0
    for rank, i in enumerate(order):  # Holm by hand: (m - rank) p, kept monotone, capped at 1
        running = max(running, min(1.0, (4 - rank) * raw[i]))
        want[i] = running
    assert [t["p_holm"] for t in tops] == pytest.approx(want)
    assert [t["delta_logprob_p_holm"] for t in tops] == pytest.approx(holm([t["delta_logprob_p"] for t in tops]))
    assert min(want) < 0.05 and any(t["p_holm"] > t["p_value"] for t in tops)


def _record_under(adapter: QwenVLAdapter, samples, mode: str, heads, forbid_mode: str | None = None):
    """Per-layer recorded statistics [B, H, G, S] of a batch, with `heads` cut in `mode` (or nothing)."""
    from corehead.experiments.modes import ablation_mode

    encoded = [adapter.encode(s) for s in samples]
    batch = adapter.collate(encoded)
    width = batch["input_ids"].shape[1]
    regions = [region_weights(s, e.token_map).weights for s, e in zip(samples, encoded, strict=True)]
    plan = plan_rows(encoded, width, regions)
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


def test_mask_region_refuses_a_sample_without_regions_or_skips_it(tiny_builtin: QwenVLAdapter, tmp_path: Path) -> None:
    from dataclasses import replace

    from corehead.experiments.modes import ablation_mode

    samples = list(generate("scenes", 3, seed=9))
    samples[1] = replace(samples[1], regions=[])
    with pytest.raises(ValueError, match=rf"sample '{samples[1].id}': field 'regions': mode mask-region needs"):
        ablate(tiny_builtin, samples, _headset(), tmp_path / "a", ks=[1], seeds=1, mode="mask-region")
    assert not (tmp_path / "a").exists()  # refused before anything ran
    rows = ablate(
        tiny_builtin, samples, _headset(), tmp_path / "b", ks=[1], seeds=1, mode="mask-region", skip_invalid=True
    )
    assert {r["id"] for r in rows} == {samples[0].id, samples[2].id}
    assert json.loads((tmp_path / "b" / "ablation.json").read_text())["skipped"] == 1
    encoded = [tiny_builtin.encode(s) for s in samples]
    with pytest.raises(ValueError, match=samples[1].id):  # the mode itself never silently masks nothing
        ablation_mode("mask-region").forbidden(samples, encoded)
    assert ablation_mode("mask-visual").problem(samples[1]) is None  # other modes can cut it


def test_every_condition_none_included_runs_on_coreheads_attention(tiny_builtin: QwenVLAdapter, tmp_path: Path) -> None:
    """What each attention call of the decoder dispatched to, during a zero and a mask-visual ablation: always
    corehead's registered attention, so `none` and the cut conditions differ only by the cut."""
    from corehead.attention.interventions import decoder_layers
    from corehead.attention.recorder import NAME

    model = tiny_builtin.model
    attention = decoder_layers(model)[0].self_attn
    seen: list[str] = []
    hook = attention.register_forward_pre_hook(lambda m, a: seen.append(m.config._attn_implementation))
    try:
        for mode in ("zero", "mask-visual"):
            ablate(tiny_builtin, list(generate("pages", 2, seed=9)), _headset(), tmp_path / mode, ks=[1], seeds=1,
                   controls=("bottom",), mode=mode, max_new_tokens=2)  # fmt: skip
    finally:
        hook.remove()
    assert len(seen) >= 2 * 3 * 3 and set(seen) == {NAME}  # modes x conditions x (prefill, decode, log-prob)
    assert attention.config._attn_implementation != NAME  # restored afterwards
    rows = [json.loads(line) for line in (tmp_path / "zero" / "ablation.jsonl").read_text().splitlines()]
    none = [r["answer_logprob"] for r in rows if r["condition"] == "none"]
    with decoder_attention(model):
        from corehead.experiments.ablate import gold_scores

        direct = gold_scores(tiny_builtin, [tiny_builtin.encode(s, answer=True) for s in generate("pages", 2, 9)])[0]
    assert sorted(none) == sorted(direct)  # exactly the numbers of the plain model on corehead's attention


def test_mean_ablation_takes_per_type_means_from_a_reference_set_never_evaluated(
    tiny_builtin: QwenVLAdapter, tmp_path: Path
) -> None:
    from corehead.data.sample import write_jsonl
    from corehead.experiments.modes.mean import reference_samples

    samples = list(generate("scenes", 3, seed=9))
    reference = reference_samples("synthetic:scenes", samples, 4, seed=10, data_seed=9)
    assert len(reference) == 4 and not {s.id for s in reference} & {s.id for s in samples}
    with pytest.raises(ValueError, match="needs its own seed"):
        reference_samples("synthetic:scenes", samples, 4, seed=9, data_seed=9)
    kind = {"ks": [1], "seeds": 1, "controls": ("random",), "mode": "mean"}
    with pytest.raises(ValueError, match=r"holds 1 evaluated sample\(s\)"):
        ablate(tiny_builtin, samples, _headset(), tmp_path / "x", reference=[*reference, samples[2]], **kind)
    with pytest.raises(ValueError, match="give reference"):
        ablate(tiny_builtin, samples, _headset(), tmp_path / "x", **kind)
    ablate(tiny_builtin, samples, _headset(), tmp_path / "ok", reference=reference, **kind)
    digest = hashlib.sha256("\n".join(sorted(s.id for s in reference)).encode()).hexdigest()
    assert json.loads((tmp_path / "ok" / "manifest.json").read_text())["reference"] == {"n": 4, "digest": digest}
    assert json.loads((tmp_path / "ok" / "ablation.json").read_text())["reference"] == {"n": 4, "digest": digest}
    folder = tmp_path / "data"  # a dataset file: drawn from the samples that are not evaluated
    write_jsonl([*samples, *generate("pages", 4, seed=5)], folder)
    evaluated = [s for s in reference_samples(str(folder), [], 7, seed=0) if s.id in {x.id for x in samples}]
    drawn = reference_samples(str(folder), evaluated, 10, seed=1)
    assert len(evaluated) == 3 and len(drawn) == 4 and not {s.id for s in drawn} & {s.id for s in samples}
    with pytest.raises(ValueError, match="none is left"):
        reference_samples(str(folder), drawn + evaluated, 2, seed=1)
