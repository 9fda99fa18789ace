"""Hybrid KV cache vs full attention and baselines: the built-in model, then long visual contexts.

    python benchmarks/acceleration.py --builtin-n 100 --budgets 0.05 0.1 0.25 --sizes 4096 16384 32768 \
        --e2e-sizes 4096 --repeats 5

0. Built-in model on each synthetic domain: CoRe heads scored on `--builtin-n` samples of one seed, then
   every method of `corehead accelerate` at each budget on `--builtin-n` other held-out samples
   (accuracy with CI, prefill and decode time, KV bytes; ratios to full), in each of `--settings`:
   decode (compressed after the prefill), prefill (`--prefill`), query-agnostic (`--query-agnostic`).

A real model's attention geometry (head_dim 128, 32 query / 8 KV heads), random weights. CoRe heads on
2 of 8 KV heads per layer (25%), the others keep `--budget` (10%) of the visual tokens (snap selector).

1. Attention alone, one layer. Decode: one query row over the cache, full (one SDPA over dense K/V) vs
   hybrid (one SDPA per buffer: full heads, reduced heads). Prefill (`--prefill-sizes`): one causal SDPA
   vs the prefill option (CoRe heads causal over everything, the others over their kept tokens), next to
   the theoretical speed-up (query-key pairs computed). Interleaved repeats, medians.
2. End to end: a decoder of `--layers` layers (Qwen2, hidden 4096, a small MLP) on n visual tokens plus a
   40-token question: prefill time, decode time per token (8 new tokens), share of decode time spent in
   the attention blocks (projections included), KV bytes; hybrid vs full in one process, interleaved.
Prints one JSON line per measurement with the ratios and the theoretical bound (the share of KV kept).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch
from torch.nn import functional as F

HEAD_DIM, HEADS, KV_HEADS, HIDDEN = 128, 32, 8, 4096
CORE_KV = (0, 1)  # KV heads kept whole in every layer
QUESTION = 40
IMAGE = 7  # the token id standing for a visual token


def _median_time(fn, repeats: int) -> float:  # type: ignore[no-untyped-def]
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def decode_attention(n_visual: int, budget: float, repeats: int) -> dict[str, float]:
    """One decode row's attention over one layer's cache: dense vs the hybrid buffers."""
    from corehead.attention.hybrid import Buffer, HybridLayer, HybridState, KVPlan

    torch.manual_seed(0)
    length = n_visual + QUESTION
    keys, values = torch.randn(1, KV_HEADS, length, HEAD_DIM), torch.randn(1, KV_HEADS, length, HEAD_DIM)
    query = torch.randn(1, HEADS, 1, HEAD_DIM)
    reduced = [j for j in range(KV_HEADS) if j not in CORE_KV]
    kept = QUESTION + int(n_visual * budget + 0.999)
    layer = HybridLayer()
    layer.logical = length
    ones = torch.ones(1, length, dtype=torch.bool)
    layer.compress(
        [
            Buffer(list(CORE_KV), keys[:, list(CORE_KV)].clone(), values[:, list(CORE_KV)].clone(), ones, None),
            Buffer(reduced, keys[:, reduced, :kept].clone(), values[:, reduced, :kept].clone(), ones[:, :kept], None),
        ]
    )
    state = HybridState(KVPlan({}), HEADS // KV_HEADS, KV_HEADS, [IMAGE])
    scale = HEAD_DIM**-0.5

    def full() -> None:
        F.scaled_dot_product_attention(query, keys, values, scale=scale, enable_gqa=True)

    def hybrid() -> None:
        state._attend_buffers(layer, query, scale)

    runs: dict[str, list[float]] = {"full": [], "hybrid": []}
    for _ in range(repeats):  # interleaved
        runs["full"].append(_median_time(full, 20))
        runs["hybrid"].append(_median_time(hybrid, 20))
    full_s, hybrid_s = statistics.median(runs["full"]), statistics.median(runs["hybrid"])
    share = (len(CORE_KV) * length + len(reduced) * kept) / (KV_HEADS * length)
    return {
        "visual_tokens": n_visual,
        "decode_attention_full_ms": round(full_s * 1e3, 3),
        "decode_attention_hybrid_ms": round(hybrid_s * 1e3, 3),
        "speedup": round(full_s / hybrid_s, 2),
        "kv_bytes_ratio": round(layer.kv_bytes() / (2 * keys.nbytes), 3),
        "theoretical_kv_ratio": round(share, 3),
    }


def prefill_attention(n_visual: int, budget: float, repeats: int) -> dict[str, float]:
    """One layer's prefill attention over n visual tokens + the question: one causal SDPA for all heads vs
    the prefill option (CoRe KV heads causal over everything, the others over their kept tokens only)."""
    from corehead.attention.hybrid import Buffer, HybridState, KVPlan
    from corehead.attention.recorder import CompactMask, sdpa

    torch.manual_seed(0)
    length = n_visual + QUESTION
    query = torch.randn(1, HEADS, length, HEAD_DIM)
    keys, values = torch.randn(1, KV_HEADS, length, HEAD_DIM), torch.randn(1, KV_HEADS, length, HEAD_DIM)
    reduced = [j for j in range(KV_HEADS) if j not in CORE_KV]
    n_kept = int(n_visual * budget + 0.999)
    kept = torch.cat([torch.linspace(0, n_visual - 1, n_kept).long(), torch.arange(n_visual, length)])
    every = torch.arange(length)
    buffers = [
        Buffer(list(CORE_KV), keys[:, list(CORE_KV)], values[:, list(CORE_KV)], torch.ones(1, length, dtype=torch.bool),
               every.expand(1, len(CORE_KV), -1)),
        Buffer(reduced, keys[:, reduced][:, :, kept], values[:, reduced][:, :, kept],
               torch.ones(1, len(kept), dtype=torch.bool), kept.expand(1, len(reduced), -1)),
    ]  # fmt: skip
    state = HybridState(KVPlan({}), HEADS // KV_HEADS, KV_HEADS, [IMAGE])
    mask, scale = CompactMask(None, 0, 0), HEAD_DIM**-0.5
    runs: dict[str, list[float]] = {"full": [], "hybrid": []}
    for _ in range(repeats):  # interleaved
        runs["full"].append(_median_time(lambda: sdpa(query, keys, values, mask, scale, 0.0), 1))
        runs["hybrid"].append(_median_time(lambda: state._attend_prefill(buffers, query, keys, values, mask, scale), 1))
    full_s, hybrid_s = statistics.median(runs["full"]), statistics.median(runs["hybrid"])
    causal_pairs = length * (length + 1) / 2  # query-key pairs a causal full attention computes
    hybrid_pairs = len(CORE_KV) / KV_HEADS * causal_pairs + len(reduced) / KV_HEADS * length * len(kept)
    return {
        "visual_tokens": n_visual,
        "prefill_attention_full_s": round(full_s, 3),
        "prefill_attention_hybrid_s": round(hybrid_s, 3),
        "speedup": round(full_s / hybrid_s, 2),
        "theoretical_speedup": round(causal_pairs / hybrid_pairs, 2),
    }


def _decoder(layers: int):  # type: ignore[no-untyped-def]
    from transformers import Qwen2Config, Qwen2ForCausalLM

    config = Qwen2Config(
        vocab_size=256,
        hidden_size=HIDDEN,
        intermediate_size=1024,
        num_hidden_layers=layers,
        num_attention_heads=HEADS,
        num_key_value_heads=KV_HEADS,
        head_dim=HEAD_DIM,
        attn_implementation="sdpa",
    )
    config.image_token_id = IMAGE
    torch.manual_seed(0)
    return Qwen2ForCausalLM(config).eval()


def end_to_end(n_visual: int, layers: int, budget: float, repeats: int, new_tokens: int = 8) -> dict[str, float]:
    """Prefill and decode of a `layers`-layer decoder, full vs hybrid, interleaved; medians."""
    from corehead.attention.hybrid import KVPlan, hybrid_plan
    from corehead.experiments.accelerate import forward_times

    model = _decoder(layers)
    ids = torch.cat([torch.full((1, n_visual), IMAGE), torch.randint(10, 256, (1, QUESTION))], dim=1)
    budgets = {(lay, j): budget for lay in range(layers) for j in range(KV_HEADS) if j not in CORE_KV}
    plans = {"hybrid": KVPlan(budgets), "hybrid_prefill": KVPlan(budgets, prefill=True)}
    attention_time: list[float] = []

    def timed_attention(module, args, kwargs, out):  # type: ignore[no-untyped-def]
        attention_time.append(time.perf_counter() - module._began)

    def start_attention(module, args, kwargs):  # type: ignore[no-untyped-def]
        module._began = time.perf_counter()

    hooks = []
    for layer in model.model.layers:
        hooks.append(layer.self_attn.register_forward_pre_hook(start_attention, with_kwargs=True))
        hooks.append(layer.self_attn.register_forward_hook(timed_attention, with_kwargs=True))
    methods = ("full", *plans)
    results: dict[str, dict[str, list[float]]] = {
        m: {"prefill": [], "decode": [], "attn": [], "attn_prefill": []} for m in methods
    }
    kv = {}
    for _ in range(repeats):
        for method in methods:
            attention_time.clear()
            with torch.no_grad(), forward_times(model) as forwards:
                if method in plans:
                    with hybrid_plan(model, plans[method]) as state:
                        model.generate(ids, max_new_tokens=new_tokens, do_sample=False, pad_token_id=0)
                    kv[method] = state.kv_bytes()
                else:
                    model.generate(ids, max_new_tokens=new_tokens, do_sample=False, pad_token_id=0)
            results[method]["prefill"].append(forwards[0])
            results[method]["decode"].append(statistics.mean(forwards[1:]))
            decode_attn = attention_time[layers:]  # the first `layers` calls are the prefill's
            results[method]["attn"].append(sum(decode_attn) / sum(forwards[1:]))
            results[method]["attn_prefill"].append(sum(attention_time[:layers]) / forwards[0])
    for hook in hooks:
        hook.remove()
    tokens = ids.shape[1] + new_tokens - 1
    kv["full"] = 2 * layers * KV_HEADS * HEAD_DIM * tokens * 4
    med = {m: {k: statistics.median(v) for k, v in r.items()} for m, r in results.items()}
    return {
        "visual_tokens": n_visual,
        "layers": layers,
        "prefill_full_s": round(med["full"]["prefill"], 3),
        "prefill_hybrid_s": round(med["hybrid"]["prefill"], 3),
        "prefill_hybrid_prefill_option_s": round(med["hybrid_prefill"]["prefill"], 3),
        "prefill_speedup": round(med["full"]["prefill"] / med["hybrid"]["prefill"], 2),
        "prefill_speedup_prefill_option": round(med["full"]["prefill"] / med["hybrid_prefill"]["prefill"], 2),
        "decode_full_ms": round(med["full"]["decode"] * 1e3, 2),
        "decode_hybrid_ms": round(med["hybrid"]["decode"] * 1e3, 2),
        "decode_speedup": round(med["full"]["decode"] / med["hybrid"]["decode"], 2),
        "attention_block_share_of_prefill_full": round(med["full"]["attn_prefill"], 2),
        "attention_block_share_of_decode_full": round(med["full"]["attn"], 2),
        "kv_bytes_ratio": round(kv["hybrid"] / kv["full"], 3),
    }


SETTINGS = {"decode": {}, "prefill": {"prefill": True}, "query-agnostic": {"query_agnostic": True}}


def builtin_methods(n: int, budgets: list[float], out: str, settings: list[str]) -> None:
    """Part 0: every method at every budget on the built-in model, per synthetic domain, in each setting:
    compression after the prefill (`decode`: the first answer token still sees everything), also in the
    prefill (`prefill`), and before the question is seen (`query-agnostic`)."""
    from pathlib import Path

    from corehead.data import synthetic
    from corehead.experiments.accelerate import accelerate, summarize
    from corehead.experiments.score import score_and_select
    from corehead.models import load_model

    adapter = load_model("builtin")
    for domain in synthetic.DOMAINS:
        scored = list(synthetic.generate(domain, n, seed=21))
        headset, _ = score_and_select(adapter, scored, Path(out) / f"score-{domain}", f"synthetic:{domain}")
        held_out = list(synthetic.generate(domain, n, seed=22))
        for setting in settings:
            for budget in budgets:
                folder = Path(out) / f"{domain}-{setting}-{budget:g}"
                rows = accelerate(adapter, held_out, headset, folder, budget, max_new_tokens=4, **SETTINGS[setting])
                for row in summarize(rows):
                    keep = ("method", "visual_kv_share", "accuracy", "accuracy_ci", "prefill_s_vs_full")
                    brief = {k: row[k] for k in keep} | {
                        "decode_vs_full": row["decode_s_per_token_vs_full"],
                        "kv_bytes_vs_full": row["kv_bytes_vs_full"],
                    }
                    head = {"kind": "builtin", "domain": domain, "setting": setting, "budget": budget}
                    print(json.dumps(head | brief), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--builtin-n", type=int, default=0, help="samples per domain for part 0 (0: skip it)")
    parser.add_argument("--budgets", type=float, nargs="+", default=[0.05, 0.1, 0.25])
    parser.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))
    parser.add_argument("--out", default="runs/bench-acceleration", help="folder for part 0's resumable rows")
    parser.add_argument("--sizes", type=int, nargs="*", default=[4096, 16384, 32768])
    parser.add_argument("--prefill-sizes", type=int, nargs="*", default=[4096, 16384])
    parser.add_argument("--e2e-sizes", type=int, nargs="*", default=[4096, 16384])
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--budget", type=float, default=0.1)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.builtin_n:
        builtin_methods(args.builtin_n, args.budgets, args.out, args.settings)
    for n in args.sizes:
        print(json.dumps({"kind": "decode_attention", **decode_attention(n, args.budget, args.repeats)}), flush=True)
    for n in args.prefill_sizes:
        row = prefill_attention(n, args.budget, max(1, args.repeats // 2))
        print(json.dumps({"kind": "prefill_attention", **row}), flush=True)
    for n in args.e2e_sizes:
        row = end_to_end(n, args.layers, args.budget, max(1, args.repeats // 2))
        print(json.dumps({"kind": "end_to_end", **row}), flush=True)


if __name__ == "__main__":
    main()
