"""RAM scoring cost: corehead's recorder vs eager `output_attentions=True` vs a plain SDPA forward.

    python benchmarks/scoring.py --sizes 1024 4096 16384 --repeats 3
    python benchmarks/scoring.py --device cuda --dtype bfloat16 --sizes 1024 4096 16384 --repeats 5

One decoder sized like a real layer (hidden 2048, 16 query heads / 4 KV heads of 128, Qwen2-VL text
model, random weights), fed `n` visual tokens plus a 40-token question; the methods take turns in every
repeat (the first turn passing from method to method), and every figure is the median of `--repeats` (at
least 3) repeats printed with its spread {"median", "min", "max"}; a ratio is taken within each repeat. On
the CPU each (method, size, repeat) runs in a fresh process, so peak memory (max RSS) is its own; on a GPU
all run in one process after a warm-up, timed with synchronisation, and peak memory is the allocator's
peak during the forward (weights included). Prints the ratios eager / corehead and corehead / plain.
Eager runs are skipped where their [layers, heads, L, L] weights alone would exceed --eager-limit-gb.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

from timing import check_repeats, figure, ratio, turns

QUESTION = 40
LAYERS, HIDDEN, HEADS, KV_HEADS = 2, 2048, 16, 4


def _model(method: str, device: str = "cpu", dtype: str = "float32"):  # type: ignore[no-untyped-def]
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
    return Qwen2VLTextModel(config).eval().to(device, getattr(torch, dtype))


def run_one(method: str, n_visual: int, model=None) -> dict[str, float]:  # type: ignore[no-untyped-def]
    """One forward of `method` (a fresh CPU model unless `model` is given); seconds and peak GiB."""
    import torch

    from corehead.attention.recorder import ROW_GROUPS, RowPlan, decoder_attention, record

    torch.manual_seed(1)
    model = model if model is not None else _model(method)
    device = model.device
    cuda = device.type == "cuda"
    length = n_visual + QUESTION
    embeds = (torch.randn(1, length, HIDDEN) * 0.02).to(device, model.dtype)
    rows = torch.arange(n_visual, length)[None]
    region = torch.zeros(1, n_visual)
    region[0, : max(1, n_visual // 50)] = 1.0
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    with torch.no_grad():
        start = time.perf_counter()
        if method == "plain":
            model(inputs_embeds=embeds)
        elif method == "eager":
            out = model(inputs_embeds=embeds, output_attentions=True)
            for attn in out.attentions:  # the common approach: full maps, then reduce
                attn[0][:, rows[0]][..., :n_visual][..., region[0] > 0].sum(-1).mean(-1)
        else:
            plan = RowPlan(
                rows=rows,
                row_groups=torch.full((1, QUESTION, len(ROW_GROUPS)), 1.0 / QUESTION),
                visual=torch.arange(n_visual)[None],
                valid=torch.ones(1, n_visual, dtype=torch.bool),
                region=region,
                distractors=torch.zeros(1, n_visual),
                unit_weights=torch.ones(1, n_visual, 1),
            )

            with decoder_attention(model), record(plan):
                model(inputs_embeds=embeds)
        if cuda:
            torch.cuda.synchronize()
        seconds = time.perf_counter() - start
    if cuda:
        return {"seconds": seconds, "peak_gib": torch.cuda.max_memory_allocated() / 2**30}
    return {"seconds": seconds, "peak_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20}


def _runner(device: str, dtype: str):  # type: ignore[no-untyped-def]
    """(method, n) -> one measurement: a fresh process per run on the CPU, one warm model per method on a GPU."""
    if device == "cpu":

        def fresh(method: str, n: int) -> dict[str, float]:
            command = [sys.executable, __file__, "--one", method, str(n)]
            done = subprocess.run(command, capture_output=True, text=True, check=True)
            return json.loads(done.stdout.strip().splitlines()[-1])

        return fresh
    models = {m: _model(m, device, dtype) for m in ("plain", "corehead", "eager")}
    warm: set[tuple[str, int]] = set()

    def run(method: str, n: int) -> dict[str, float]:
        if (method, n) not in warm:  # kernels chosen and caches allocated outside the timing
            run_one(method, n, models[method])
            warm.add((method, n))
        return run_one(method, n, models[method])

    return run


def measure(run, n: int, repeats: int, eager_limit_gb: float, bytes_per: int) -> dict:  # type: ignore[no-untyped-def]
    """Every method on n visual tokens, taking turns over repeats: seconds and peak GiB with their spread,
    and the ratios within each repeat."""
    length = n + QUESTION
    need = LAYERS * HEADS * length * length * bytes_per / 2**30  # eager's [layers, heads, L, L] weights
    methods = ["plain", "corehead", *(["eager"] if need <= eager_limit_gb else [])]
    runs: dict[str, list[dict[str, float]]] = {m: [] for m in methods}
    for r in range(repeats):
        for method in turns(methods, r):
            runs[method].append(run(method, n))
    got = {m: {k: [x[k] for x in rs] for k in ("seconds", "peak_gib")} for m, rs in runs.items()}
    row: dict = {"visual_tokens": n, **{f"{m}_{k}": figure(v) for m, d in got.items() for k, v in d.items()}}
    row["overhead_vs_plain"] = ratio(got["corehead"]["seconds"], got["plain"]["seconds"])
    if "eager" in got:
        row["eager_over_corehead_time"] = ratio(got["eager"]["seconds"], got["corehead"]["seconds"])
        row["eager_over_corehead_memory"] = ratio(got["eager"]["peak_gib"], got["corehead"]["peak_gib"])
    else:  # a lower bound: the weights eager must hold at once
        row["eager"] = f"skipped: its attention weights alone need {need:.1f} GiB (> {eager_limit_gb})"
        row["eager_over_corehead_memory_at_least"] = round(need / max(got["corehead"]["peak_gib"]), 1)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[1024, 4096, 16384])
    parser.add_argument("--repeats", type=int, default=3, help="interleaved repeats per figure (at least 3)")
    parser.add_argument("--eager-limit-gb", type=float, default=12.0)
    parser.add_argument("--device", default="cpu", help="cpu, or cuda: every run in one process on the GPU")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"], help="weights and inputs")
    parser.add_argument("--one", nargs=2, metavar=("METHOD", "N"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(run_one(args.one[0], int(args.one[1]))))
        return
    check_repeats(parser, args.repeats)
    if args.device == "cpu" and args.dtype != "float32":
        parser.error("--dtype applies to --device cuda; CPU runs are float32")
    run = _runner(args.device, args.dtype)
    if args.device != "cpu":
        import torch

        print(json.dumps({"device": torch.cuda.get_device_name(), "dtype": args.dtype}), flush=True)
    bytes_per = 4 if args.dtype == "float32" else 2
    for n in args.sizes:
        print(json.dumps(measure(run, n, args.repeats, args.eager_limit_gb, bytes_per)), flush=True)


if __name__ == "__main__":
    main()
