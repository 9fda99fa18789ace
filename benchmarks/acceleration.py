"""Hybrid KV cache vs full attention and baselines: the built-in model, then long visual contexts.

    python benchmarks/acceleration.py --builtin-n 100 --budgets 0.05 0.1 0.25 --sizes 16384 32768 \
        --prefill-sizes 4096 16384 --e2e-sizes 4096 --repeats 5

Every timing is the median of `--repeats` (at least 3) repeats run side by side (interleaved), printed with
its spread {"median", "min", "max"}; a speed-up is full / hybrid within each repeat, summed up the same way.

0. Built-in model on each synthetic domain (`--domains`): CoRe heads scored on `--builtin-n` samples of
   `--score-seed` (question rows), then every method of `corehead accelerate` (`--methods`; `random` drawn
   `--seeds` times outside the CoRe KV heads) at each budget on `--builtin-n` held-out samples of
   `--eval-seed`, in each of `--settings`: decode (compressed after the prefill), prefill (`--prefill`),
   query-agnostic (`--query-agnostic`). Per method: accuracy with its 95% CI, its paired difference to full
   and to core (95% CI, p), KV bytes vs full, and prefill and decode time vs full per sample (the samples
   are the interleaved repeats: median and spread over samples).

A real model's attention geometry (head_dim 128, 32 query / 8 KV heads, hidden 4096), random weights. CoRe
heads on 2 of 8 KV heads per layer (25%); the others keep `--budget` (10%) of the visual tokens (snap).

1. Attention alone, one layer, on the query, keys and values of a real prefill of n visual tokens plus a
   40-token question, whose cache the hybrid compressed through its own path (hybrid_plan, snap selector).
   Decode (`--sizes`): one query row over the dense keys and values (one SDPA) vs over the hybrid's
   buffers, each timed call after a flush of the last-level cache (read from sysfs or lscpu and printed);
   sizes whose dense KV fits in that cache are refused (`--allow-in-cache` runs them, marked). Printed
   beside the speed-up: the bound of a memory-bound decode (dense KV bytes / hybrid KV bytes).
   Prefill (`--prefill-sizes`): one causal SDPA vs the hybrid without the prefill option (the same SDPA,
   then selection and compression: more work than full) vs with it (CoRe KV heads causal over everything,
   the others over their kept tokens), with the theoretical speed-up (query-key pairs computed) and the
   share of it reached (the goal: at least 0.85 at 16k).
2. End to end (`--e2e-sizes`): a decoder of `--layers` layers (Qwen2, hidden 4096, a small MLP) on n visual
   tokens plus the question: prefill time, decode time per token (8 new tokens), share of the time spent
   in the attention blocks (projections included), KV bytes; full, hybrid and hybrid with the prefill
   option, interleaved.
Prints the last-level cache, then one JSON line per measurement.
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

import torch
from head_split import CORE_KV, split_plan
from timing import CacheFlush, check_repeats, figure, interleaved, last_level_cache, ratio, turns
from torch.nn import functional as F

HEAD_DIM, HEADS, KV_HEADS, HIDDEN = 128, 32, 8, 4096
QUESTION = 40
IMAGE = 7  # the token id standing for a visual token
NEW_TOKENS = 8


@functools.cache
def _decoder(layers: int) -> Any:
    """A decoder of the real geometry with random weights (built once per number of layers)."""
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


def _plan(layers: int, budget: float, prefill: bool) -> Any:
    return split_plan(layers, KV_HEADS, budget, prefill=prefill)


def _ids(n_visual: int) -> torch.Tensor:
    torch.manual_seed(1)
    return torch.cat([torch.full((1, n_visual), IMAGE), torch.randint(10, 256, (1, QUESTION))], dim=1)


@dataclass
class LayerInputs:
    """One decoder layer's prefill as its attention received it, and the hybrid state that compressed it."""

    ids: torch.Tensor
    query: torch.Tensor  # [1, HEADS, L, HEAD_DIM]
    key: torch.Tensor  # [1, KV_HEADS, L, HEAD_DIM]
    value: torch.Tensor
    mask: Any
    scale: float
    state: Any  # HybridState, its only layer compressed


def layer_inputs(n_visual: int, budget: float) -> LayerInputs:
    """A real prefill of a one-layer decoder under the hybrid plan (with the prefill option, which is cheaper
    and, in a single layer, selects the same tokens): the layer's query, keys and values as its attention got
    them, and the state whose cache layer the hybrid's own compression path filled."""
    from transformers import DynamicCache

    from corehead.attention.hybrid import hybrid_plan
    from corehead.attention.recorder import LAYER_ATTENTION, scoped

    model, ids = _decoder(1), _ids(n_visual)
    seen: dict[str, Any] = {}
    with torch.no_grad(), hybrid_plan(model, _plan(1, budget, prefill=True)) as state:

        def capture(module: Any, query: Any, key: Any, value: Any, mask: Any, scale: float) -> Any:
            seen.update(query=query, key=key, value=value, mask=mask, scale=scale)
            return state.attend(module, query, key, value, mask, scale)

        with scoped(LAYER_ATTENTION, capture):
            model(input_ids=ids, cache=DynamicCache(config=model.config), use_cache=True, logits_to_keep=1)
    return LayerInputs(ids, seen["query"], seen["key"], seen["value"], seen["mask"], seen["scale"], state)


def decode_attention(inputs: LayerInputs, budget: float, repeats: int, calls: int, llc: int) -> dict[str, Any]:
    """One decode row's attention over one layer's cache: dense keys and values vs the hybrid's buffers; each
    repeat is the mean of `calls` calls of each, every call after a flush of the last-level cache."""
    torch.manual_seed(2)
    query, key, value, state = torch.randn(1, HEADS, 1, HEAD_DIM), inputs.key, inputs.value, inputs.state
    layer, module, scale = state.layers[0], SimpleNamespace(layer_idx=0), inputs.scale
    runs = {
        "full": lambda: F.scaled_dot_product_attention(query, key, value, scale=scale, enable_gqa=True),
        "hybrid": lambda: state.attend(module, query, key, value, inputs.mask, scale),
    }
    with torch.no_grad():
        times = interleaved(runs, repeats * calls, between=CacheFlush(llc))
    per_repeat = {m: [sum(t[i * calls : (i + 1) * calls]) / calls for i in range(repeats)] for m, t in times.items()}
    dense, kept = key.nbytes + value.nbytes, layer.kv_bytes()
    n_visual, length = int((inputs.ids == IMAGE).sum()), key.shape[2]
    reduced = KV_HEADS - len(CORE_KV)
    theory = (len(CORE_KV) * length + reduced * (length - n_visual + math.ceil(n_visual * budget))) / (
        KV_HEADS * length
    )
    return {
        "visual_tokens": n_visual,
        "kv_bytes_full_mib": round(dense / 2**20, 1),
        "kv_over_llc": round(dense / llc, 2),
        "full_ms": figure(per_repeat["full"], 1e3),
        "hybrid_ms": figure(per_repeat["hybrid"], 1e3),
        "speedup": ratio(per_repeat["full"], per_repeat["hybrid"]),
        "byte_bound_speedup": round(dense / kept, 2),
        "kv_bytes_ratio": round(kept / dense, 4),
        "theoretical_kv_ratio": round(theory, 4),
    }


def prefill_attention(inputs: LayerInputs, budget: float, repeats: int) -> dict[str, Any]:
    """One layer's prefill attention: one causal SDPA vs the hybrid's own attention without the prefill
    option (the same SDPA, then selection and compression) and with it (reduced heads over kept tokens)."""
    from corehead.attention.hybrid import HybridState
    from corehead.attention.recorder import sdpa

    q, k, v, mask, scale = inputs.query, inputs.key, inputs.value, inputs.mask, inputs.scale
    module = SimpleNamespace(layer_idx=0)

    def hybrid(prefill: bool) -> Any:
        state = HybridState(_plan(1, budget, prefill), HEADS // KV_HEADS, KV_HEADS, [IMAGE])

        def run() -> None:
            state.start(inputs.ids, None, SimpleNamespace(), 1)  # a fresh cache layer to compress
            state.attend(module, q, k, v, mask, scale)

        return run

    runs = {"full": lambda: sdpa(q, k, v, mask, scale, 0.0), "hybrid": hybrid(False), "hybrid_prefill": hybrid(True)}
    with torch.no_grad():
        times = interleaved(runs, repeats)
    length, n_visual = k.shape[2], int((inputs.ids == IMAGE).sum())
    kept = length - n_visual + math.ceil(n_visual * budget)
    causal = length * (length + 1) / 2  # query-key pairs a causal full attention computes
    reduced = len(CORE_KV) / KV_HEADS * causal + (KV_HEADS - len(CORE_KV)) / KV_HEADS * length * kept
    theory = causal / reduced
    return {
        "visual_tokens": n_visual,
        "full_s": figure(times["full"]),
        "hybrid_s": figure(times["hybrid"]),
        "hybrid_prefill_option_s": figure(times["hybrid_prefill"]),
        "speedup_hybrid": ratio(times["full"], times["hybrid"]),
        "speedup_prefill_option": ratio(times["full"], times["hybrid_prefill"]),
        "theoretical_speedup_prefill_option": round(theory, 2),
        "share_of_theory": ratio(times["full"], times["hybrid_prefill"], 3, scale=1 / theory),
    }


@contextmanager
def _attention_time(model: Any) -> Iterator[list[float]]:
    """Seconds spent in each decoder layer's attention block (projections included), call by call."""
    spent: list[float] = []
    began: list[float] = []
    hooks = []
    for layer in model.model.layers:
        hooks.append(layer.self_attn.register_forward_pre_hook(lambda *a: began.append(time.perf_counter())))
        hooks.append(layer.self_attn.register_forward_hook(lambda *a: spent.append(time.perf_counter() - began.pop())))
    try:
        yield spent
    finally:
        for hook in hooks:
            hook.remove()


def _generate(model: Any, ids: torch.Tensor, plan: Any) -> tuple[list[float], list[float], int | None]:
    """Forward times, attention block times and KV bytes (None for full attention) of one generate."""
    from corehead.attention.hybrid import hybrid_plan
    from corehead.experiments.accelerate import forward_times

    with torch.no_grad(), _attention_time(model) as attention, forward_times(model) as forwards:
        if plan is None:
            model.generate(ids, max_new_tokens=NEW_TOKENS, do_sample=False, pad_token_id=0)
            return list(forwards), list(attention), None
        with hybrid_plan(model, plan) as state:
            model.generate(ids, max_new_tokens=NEW_TOKENS, do_sample=False, pad_token_id=0)
        return list(forwards), list(attention), state.kv_bytes()


def end_to_end(n_visual: int, layers: int, budget: float, repeats: int) -> dict[str, Any]:
    """Prefill and decode of a `layers`-layer decoder: full, hybrid, hybrid with the prefill option, taking
    turns in every repeat."""
    model, ids = _decoder(layers), _ids(n_visual)
    plans = {"full": None, "hybrid": _plan(layers, budget, False), "hybrid_prefill": _plan(layers, budget, True)}
    got: dict[str, dict[str, list[float]]] = {m: {"prefill": [], "decode": [], "attn": [], "attn0": []} for m in plans}
    kv: dict[str, int | None] = {}
    for repeat in range(repeats):
        for method in turns(list(plans), repeat):
            forwards, attention, kv[method] = _generate(model, ids, plans[method])
            got[method]["prefill"].append(forwards[0])
            got[method]["decode"].append(sum(forwards[1:]) / len(forwards[1:]))
            got[method]["attn"].append(sum(attention[layers:]) / sum(forwards[1:]))
            got[method]["attn0"].append(sum(attention[:layers]) / forwards[0])  # the first `layers` are the prefill's
    full_kv = 2 * layers * KV_HEADS * HEAD_DIM * (ids.shape[1] + NEW_TOKENS - 1) * 4
    full, hybrid, option = got["full"], got["hybrid"], got["hybrid_prefill"]
    return {
        "visual_tokens": n_visual,
        "layers": layers,
        "prefill_full_s": figure(full["prefill"]),
        "prefill_hybrid_s": figure(hybrid["prefill"]),
        "prefill_hybrid_prefill_option_s": figure(option["prefill"]),
        "prefill_speedup_hybrid": ratio(full["prefill"], hybrid["prefill"]),
        "prefill_speedup_prefill_option": ratio(full["prefill"], option["prefill"]),
        "decode_full_ms": figure(full["decode"], 1e3, 2),
        "decode_hybrid_ms": figure(hybrid["decode"], 1e3, 2),
        "decode_hybrid_prefill_option_ms": figure(option["decode"], 1e3, 2),
        "decode_speedup_hybrid": ratio(full["decode"], hybrid["decode"]),
        "decode_speedup_prefill_option": ratio(full["decode"], option["decode"]),
        "attention_block_share_of_prefill_full": figure(full["attn0"], digits=2),
        "attention_block_share_of_decode_full": figure(full["attn"], digits=2),
        "kv_bytes_ratio": round((kv["hybrid"] or 0) / full_kv, 3),
    }


SETTINGS = {"decode": {}, "prefill": {"prefill": True}, "query-agnostic": {"query_agnostic": True}}


def builtin_methods(args: argparse.Namespace) -> None:
    """Part 0: every method at every budget on the built-in model, per synthetic domain, in each setting,
    on samples of another seed than the heads were scored on."""
    from pathlib import Path

    from corehead.data import synthetic
    from corehead.experiments.accelerate import accelerate, summarize
    from corehead.experiments.score import score_and_select
    from corehead.models import load_model

    adapter = load_model("builtin")
    for domain in args.domains:
        scored = list(synthetic.generate(domain, args.builtin_n, seed=args.score_seed))
        out, spec = Path(args.out), f"synthetic:{domain}"
        headset, _ = score_and_select(adapter, scored, out / f"score-{domain}", spec, "question", seed=args.score_seed)
        held_out = list(synthetic.generate(domain, args.builtin_n, seed=args.eval_seed))
        for setting in args.settings:
            for budget in args.budgets:
                folder = out / f"{domain}-{setting}-{budget:g}"
                run = (adapter, held_out, headset, folder, budget, args.methods)
                rows = accelerate(*run, max_new_tokens=4, seeds=args.seeds, **SETTINGS[setting])
                head = {"kind": "builtin", "domain": domain, "setting": setting, "budget": budget}
                for row in summarize(rows):
                    print(json.dumps(head | _builtin_row(row, rows)), flush=True)


def _builtin_row(row: dict[str, Any], rows: list[dict[str, Any]]) -> dict[str, Any]:
    """One method's line of part 0: accuracy, paired differences, KV bytes and per-sample time ratios."""
    full = {r["id"]: r for r in rows if r["method"] == "full"}
    mine = [r for r in rows if r["method"] == row["method"] and r["id"] in full]
    decode = [r for r in mine if r["decode_s_per_token"] and full[r["id"]]["decode_s_per_token"]]
    paired = {
        f"minus_{ref}": {"delta": round(d["delta"], 3), "ci": [round(x, 3) for x in d["ci"]], "p": round(d["p"], 4)}
        for ref, d in row["paired"].items()
    }
    return {
        "method": row["method"],
        **({"draws": len(row["draws"])} if "draws" in row else {}),
        "n": row["n"],
        "visual_kv_share": round(row["visual_kv_share"], 4),
        "accuracy": round(row["accuracy"], 3),
        "accuracy_ci": [round(x, 3) for x in row["accuracy_ci"]],
        **paired,
        "kv_bytes_vs_full": round(row["kv_bytes_vs_full"], 3),
        "prefill_vs_full": ratio([r["prefill_s"] for r in mine], [full[r["id"]]["prefill_s"] for r in mine], 3),
        "decode_vs_full": ratio(
            [r["decode_s_per_token"] for r in decode], [full[r["id"]]["decode_s_per_token"] for r in decode], 3
        )
        if decode
        else None,
    }


def _parser() -> argparse.ArgumentParser:
    from corehead.data import synthetic
    from corehead.experiments.accelerate import KV_METHODS

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    part0 = parser.add_argument_group("part 0, the built-in model")
    part0.add_argument("--builtin-n", type=int, default=0, help="samples per domain for part 0 (0: skip it)")
    part0.add_argument("--budgets", type=float, nargs="+", default=[0.05, 0.1, 0.25], help="KV budgets (part 0)")
    part0.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=list(SETTINGS), help="when to compress")
    part0.add_argument("--domains", nargs="+", default=list(synthetic.DOMAINS), choices=list(synthetic.DOMAINS))
    part0.add_argument("--methods", nargs="+", default=list(KV_METHODS.names()), choices=list(KV_METHODS.names()))
    part0.add_argument("--seeds", type=int, default=3, help="draws of the random method")
    part0.add_argument("--score-seed", type=int, default=21, help="seed of the samples the heads are scored on")
    part0.add_argument("--eval-seed", type=int, default=22, help="seed of the held-out samples tested")
    part0.add_argument("--out", default="runs/bench-acceleration", help="folder for part 0's resumable runs")
    parts = parser.add_argument_group("parts 1 and 2, a real geometry with random weights")
    parts.add_argument("--sizes", type=int, nargs="*", default=[16384, 32768], help="visual tokens, decode")
    parts.add_argument("--prefill-sizes", type=int, nargs="*", default=[4096, 16384], help="visual tokens, prefill")
    parts.add_argument("--e2e-sizes", type=int, nargs="*", default=[4096, 16384], help="visual tokens, end to end")
    parts.add_argument("--allow-in-cache", action="store_true", help="run decode sizes whose KV fits in the LLC")
    parts.add_argument("--calls", type=int, default=10, help="decode calls (each after a cache flush) per repeat")
    parts.add_argument("--layers", type=int, default=2, help="decoder layers, end to end")
    parts.add_argument("--budget", type=float, default=0.1, help="share of visual tokens the reduced heads keep")
    parser.add_argument("--repeats", type=int, default=5, help="interleaved repeats per figure (at least 3)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads")
    return parser


def main() -> None:
    parser = _parser()
    args = parser.parse_args()
    check_repeats(parser, args.repeats)
    if args.builtin_n and args.score_seed == args.eval_seed:
        parser.error("--score-seed and --eval-seed must differ: heads are tested on samples they were not scored on")
    torch.set_num_threads(args.threads)
    llc, where = last_level_cache()
    print(json.dumps({"kind": "machine", "last_level_cache": where, "threads": args.threads}), flush=True)
    dense = {n: 2 * KV_HEADS * HEAD_DIM * (n + QUESTION) * 4 for n in args.sizes}
    small = [n for n, size in dense.items() if size <= llc]
    if small and not args.allow_in_cache:
        parser.error(f"--sizes {small}: one layer's KV fits in the {where} last-level cache; use larger sizes")
    if args.builtin_n:
        builtin_methods(args)
    for n in args.sizes:
        row = decode_attention(layer_inputs(n, args.budget), args.budget, args.repeats, args.calls, llc)
        print(json.dumps({"kind": "decode_attention", "in_cache": dense[n] <= llc, **row}), flush=True)
    for n in args.prefill_sizes:
        row = prefill_attention(layer_inputs(n, args.budget), args.budget, args.repeats)
        print(json.dumps({"kind": "prefill_attention", **row}), flush=True)
    for n in args.e2e_sizes:
        row = end_to_end(n, args.layers, args.budget, args.repeats)
        print(json.dumps({"kind": "end_to_end", **row}), flush=True)


if __name__ == "__main__":
    main()
