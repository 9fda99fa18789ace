"""Head ablations change exactly the targeted heads; attention knockouts equal a masked eager model."""

from __future__ import annotations

import pytest
import torch

from corehead.attention.interventions import (
    TEXT,
    VISUAL,
    AttentionKnockout,
    HeadAblation,
    decoder_layers,
    head_means,
)
from corehead.data.synthetic import make_sample
from corehead.experiments.modes import visual_positions
from corehead.models.qwen_vl import QwenVLAdapter


def _o_proj_inputs(model, batch) -> list[torch.Tensor]:
    """The o_proj input of every decoder layer (what each head contributes), as the model ran."""
    seen: list[torch.Tensor] = []
    hooks = [
        layer.self_attn.o_proj.register_forward_pre_hook(lambda m, a: seen.append(a[0].detach().clone()))
        for layer in decoder_layers(model)
    ]
    try:
        with torch.no_grad():
            logits = model(**batch).logits
    finally:
        for hook in hooks:
            hook.remove()
    return [*seen, logits]


@pytest.mark.parametrize("mode", ["zero", "mean"])
def test_ablation_changes_exactly_the_targeted_heads(qwen_family: QwenVLAdapter, mode: str) -> None:
    model = qwen_family.model
    encoded = [qwen_family.encode(make_sample(d, 1, 0)) for d in ("scenes", "clips")]
    batch = qwen_family.collate(encoded)
    visual = visual_positions(encoded)
    text = model.config.get_text_config()
    dim = getattr(text, "head_dim", None) or text.hidden_size // text.num_attention_heads
    targets = ((1, 0), (1, 2), (0, 3))
    means = head_means(model, [(batch, visual)]) if mode == "mean" else {}
    base = _o_proj_inputs(model, batch)
    with HeadAblation(targets, mode=mode, means=means, visual=visual).apply(model):
        cut = _o_proj_inputs(model, batch)
    after = _o_proj_inputs(model, batch)  # hooks are gone on exit
    assert all(torch.equal(a, b) for a, b in zip(base, after, strict=True))
    real = batch["attention_mask"].bool()
    for layer in range(text.num_hidden_layers):
        x = base[layer].view(*base[layer].shape[:2], -1, dim)
        y = cut[layer].view(*cut[layer].shape[:2], -1, dim)
        hit = [h for lay, h in targets if lay == layer]
        rest = [h for h in range(x.shape[2]) if h not in hit]
        if mode == "zero":
            want = torch.zeros_like(y[..., hit, :])
        else:  # the visual mean at visual positions, the text mean elsewhere
            text_mean, visual_mean = means[layer][TEXT][hit], means[layer][VISUAL][hit]
            want = torch.where(visual[..., None, None], visual_mean, text_mean)
        assert torch.allclose(y[..., hit, :], want, atol=1e-6)
        if layer == 0:  # before any ablated layer's output is used, the other heads are untouched
            assert torch.equal(y[..., rest, :], x[..., rest, :])
    assert not torch.allclose(base[-1][real], cut[-1][real], atol=1e-4)


def test_head_means_are_means_over_real_tokens_of_each_type(tiny_builtin: QwenVLAdapter) -> None:
    """Two reference batches (one padded): per head, the mean over all their real text tokens and the mean
    over all their real visual tokens, which differ (one mean over all positions would mix them)."""
    model = tiny_builtin.model
    batches = []
    for pair in (("scenes", "pages"), ("clips",)):
        encoded = [tiny_builtin.encode(make_sample(d, 2, 0)) for d in pair]
        batches.append((tiny_builtin.collate(encoded), visual_positions(encoded)))
    means = head_means(model, batches)
    dim = model.config.get_text_config().head_dim
    seen: dict[int, list[list[torch.Tensor]]] = {}  # layer -> [text tokens, visual tokens] of every batch
    for batch, visual in batches:
        inputs = _o_proj_inputs(model, batch)
        real = batch["attention_mask"].bool()
        for layer in means:
            x = inputs[layer].view(*real.shape, -1, dim)
            parts = seen.setdefault(layer, [[], []])
            parts[TEXT].append(x[real & ~visual])
            parts[VISUAL].append(x[real & visual])
    for layer, mean in means.items():
        assert mean.shape == (2, model.config.get_text_config().num_attention_heads, dim)
        for kind in (TEXT, VISUAL):
            assert torch.allclose(mean[kind], torch.cat(seen[layer][kind]).mean(0), atol=1e-6)
        assert not torch.allclose(mean[TEXT], mean[VISUAL], atol=1e-3)


def test_bad_ablations_are_refused(tiny_builtin: QwenVLAdapter) -> None:
    with pytest.raises(ValueError, match="layer 9 does not exist"), HeadAblation(((9, 0),)).apply(tiny_builtin.model):
        pass
    with (
        pytest.raises(ValueError, match="heads \\[7\\] do not exist"),
        HeadAblation(((0, 7),)).apply(tiny_builtin.model),
    ):
        pass
    with pytest.raises(ValueError, match="needs head means"):
        HeadAblation(((0, 1),), mode="mean")
    batch = tiny_builtin.collate([tiny_builtin.encode(make_sample("scenes", 2, 0))])
    means = {0: torch.zeros(2, 4, tiny_builtin.model.config.get_text_config().head_dim)}
    with (
        pytest.raises(ValueError, match="needs the batch's visual positions"),
        HeadAblation(((0, 1),), mode="mean", means=means).apply(tiny_builtin.model),
        torch.no_grad(),
    ):
        tiny_builtin.model(**batch)


def test_knockout_of_visual_keys_equals_a_masked_eager_model() -> None:
    """Every head barred from the visual tokens == the eager model given a mask that hides them (LLaVA: plain
    positions, so a 4D mask can be passed straight in)."""
    from test_llava_adapters import tiny_llava

    adapter = tiny_llava("llava")
    model = adapter.model
    enc = adapter.encode(make_sample("scenes", 3, 0))
    inputs = enc.inputs
    length = enc.length
    visual = torch.zeros(1, length, dtype=torch.bool)
    visual[0, torch.as_tensor(enc.token_map.positions)] = True
    text = model.config.get_text_config()
    every = tuple((lay, h) for lay in range(text.num_hidden_layers) for h in range(text.num_attention_heads))
    with torch.no_grad(), AttentionKnockout(every, visual).apply(model):
        ours = model(**inputs).logits
    allowed = torch.tril(torch.ones(length, length, dtype=torch.bool)) & ~visual[0][None, :]
    allowed |= torch.eye(length, dtype=torch.bool) & ~allowed.any(-1, keepdim=True)
    mask = torch.zeros(1, 1, length, length).masked_fill(~allowed, torch.finfo(torch.float32).min)
    model.set_attn_implementation({"text_config": "eager"})
    try:
        with torch.no_grad():
            reference = model(**{**inputs, "attention_mask": mask}).logits
    finally:
        model.set_attn_implementation({"text_config": "sdpa"})
    rows = ~visual[0]  # visual rows that see no key read nothing in ours; compare every text row
    assert torch.allclose(ours[0, rows], reference[0, rows], atol=1e-4)
    with torch.no_grad():
        plain = model(**inputs).logits
    assert not torch.allclose(plain[0, rows], ours[0, rows], atol=1e-3)
