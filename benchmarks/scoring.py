"""RAM scoring cost: corehead's recorder vs eager `output_attentions=True` vs a plain SDPA forward.

    python benchmarks/scoring.py --sizes 1024 4096 16384 --repeats 3

One decoder sized like a real layer (hidden 2048, 16 query heads / 4 KV heads of 128, Qwen2-VL text
model, random weights), fed `n` visual tokens plus a 40-token question. Each (method, size, repeat) runs
in a fresh process, interleaved, so peak memory (max RSS) is its own. Prints medians and the ratios
eager / corehead and corehead / plain. Eager runs are skipped where their [heads, L, L] weights alone
would exceed --eager-limit-gb.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time

QUESTION = 40
LAYERS, HIDDEN, HEADS, KV_HEADS = 2, 2048, 16, 4


def _model(method: str):  # type: ignore[no-untyped-def]
    import torch
    from transformers import Qwen2VLTextConfig, Qwen2VLTextModel

    config = Qwen2VLTextConfig(
        vocab_size=1000,
        hidden_size=HIDDEN,
        intermediate_size=4 * HIDDEN,
        num_hidden_layers=LAYERS,
        num_attention_heads=HEADS,
        num_key_value_heads=KV_HEADS,
        rope_parameters={"rope_type": "default", "rope_theta": 1e6, "mrope_section": [16, 24, 24]},
        attn_implementation="eager" if method == "eager" else "sdpa",
    )
    torch.manual_seed(0)
    return Qwen2VLTextModel(config).eval()


def run_one(method: str, n_visual: int) -> dict[str, float]:
    """One forward of `method` in this process; returns seconds and peak RSS in GiB."""
    import torch

    from corehead.attention.recorder import ROW_GROUPS, RowPlan, decoder_attention, record

    torch.manual_seed(1)
    model = _model(method)
    length = n_visual + QUESTION
    embeds = torch.randn(1, length, HIDDEN) * 0.02
    rows = torch.arange(n_visual, length)[None]
    region = torch.zeros(1, n_visual, dtype=torch.bool)
    region[0, : n_visual // 50] = True
    with torch.no_grad():
        start = time.perf_counter()
        if method == "plain":
            model(inputs_embeds=embeds)
        elif method == "eager":
            out = model(inputs_embeds=embeds, output_attentions=True)
            for attn in out.attentions:  # the common approach: full maps, then reduce
                attn[0][:, rows[0]][..., :n_visual][..., region[0]].sum(-1).mean(-1)
        else:
            plan = RowPlan(
                rows=rows,
                row_groups=torch.full((1, QUESTION, len(ROW_GROUPS)), 1.0 / QUESTION),
                visual=torch.arange(n_visual)[None],
                valid=torch.ones(1, n_visual, dtype=torch.bool),
                region=region,
                distractors=torch.zeros(1, n_visual, dtype=torch.bool),
                n_distractors=torch.zeros(1, dtype=torch.long),
                unit_weights=torch.ones(1, n_visual, 1),
            )

            with decoder_attention(model), record(plan):
                model(inputs_embeds=embeds)
        seconds = time.perf_counter() - start
    return {"seconds": seconds, "peak_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1024, 4096, 16384])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--eager-limit-gb", type=float, default=12.0)
    parser.add_argument("--one", nargs=2, metavar=("METHOD", "N"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(run_one(args.one[0], int(args.one[1]))))
        return
    report = []
    for n in args.sizes:
        length = n + QUESTION
        methods = ["plain", "corehead"]
        if LAYERS * HEADS * length * length * 4 / 2**30 <= args.eager_limit_gb:
            methods.append("eager")
        runs: dict[str, list[dict[str, float]]] = {m: [] for m in methods}
        for _ in range(args.repeats):
            for method in methods:  # interleaved
                done = subprocess.run(
                    [sys.executable, __file__, "--one", method, str(n)], capture_output=True, text=True, check=True
                )
                runs[method].append(json.loads(done.stdout.strip().splitlines()[-1]))
        med = {m: {k: statistics.median(r[k] for r in rs) for k in ("seconds", "peak_gib")} for m, rs in runs.items()}
        row = {"visual_tokens": n, **{f"{m}_{k}": round(v, 3) for m, d in med.items() for k, v in d.items()}}
        row["overhead_vs_plain"] = round(med["corehead"]["seconds"] / med["plain"]["seconds"], 2)
        if "eager" in med:
            row["eager_over_corehead_time"] = round(med["eager"]["seconds"] / med["corehead"]["seconds"], 2)
            row["eager_over_corehead_memory"] = round(med["eager"]["peak_gib"] / med["corehead"]["peak_gib"], 2)
        else:  # a lower bound: the [layers, heads, L, L] float32 weights eager must hold at once
            need = LAYERS * HEADS * length * length * 4 / 2**30
            row["eager"] = f"skipped: its attention weights alone need {need:.1f} GiB (> {args.eager_limit_gb})"
            row["eager_over_corehead_memory_at_least"] = round(need / med["corehead"]["peak_gib"], 1)
        print(json.dumps(row), flush=True)
        report.append(row)


if __name__ == "__main__":
    main()
