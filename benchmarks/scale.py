"""The hybrid KV cache's cost at real scale: Qwen3-VL-8B's text decoder, random weights, full vs hybrid.

    python benchmarks/scale.py --out runs/bench-scale                   # a GPU: 36 layers, bf16
    python benchmarks/scale.py --device cpu --layers 2 --sizes 2048 --batches 1 2 --score-sizes 2048
    python benchmarks/scale.py --smoke --out /tmp/scale                 # the CPU, tiny, well under 2 minutes

Random weights give no accuracy: this script measures cost. The decoder is transformers' Qwen3ForCausalLM
with the text geometry of Qwen3-VL-8B (36 layers, hidden 4096, 32 query / 8 KV heads of 128, intermediate
12288, RMS qk-norm, rope_theta 5e6). Qwen3-VL's text decoder is that Qwen3 decoder with interleaved MRoPE
(and DeepStack's additions of visual features to the first layers' hidden states); for cost, a 1-D RoPE of
the same theta is identical (the same rotations of the same tensors, only other angles) and DeepStack's
additions are three element-wise sums. The vocabulary is 1024 tokens unless `--real-vocab` (151936), so
that the lm head does not dominate; prefills keep only the last position's logits (`logits_to_keep=1`).
`config.image_token_id` names the token that stands for a visual token, so the hybrid recognises them.

Inputs: n visual tokens followed by a 40-token question (row r of a batch seeded r: a batch of B holds B
different rows, no padding). Head split, as in benchmarks/acceleration.py: KV heads 0 and 1 of every layer
keep every token (the CoRe KV heads), the other 6 keep `--budget` (0.1) of the visual tokens (snap).

Part 1, per (visual tokens, batch), the four methods taking turns in every repeat (the first turn passing
from method to method), each a prefill then `--new-tokens` greedy tokens (a manual loop: the prefill gives
the first token, then new_tokens - 1 decode forwards, so the cache ends with n + 40 + new_tokens - 1
tokens a row):
- `full`: the model as is (SDPA, a plain dynamic cache);
- `hybrid`: the whole prompt prefilled with exact attention, each layer's cache compressed after it;
- `hybrid_prefill`: the same with KVPlan(prefill=True): reduced heads attend only to their kept tokens;
- `query_agnostic`: the visual block prefilled and compressed on its own (snap's window is then the last
  visual rows), then the question as a second forward over the compressed cache, then the decode.
Measured: prefill seconds (the first forward; for query_agnostic both forwards), decode ms per token (the
decode loop's wall time / its forwards), KV bytes (full: the dense cache's keys and values, which is
2 x layers x KV heads x head_dim x tokens x itemsize x batch; hybrid: HybridState.kv_bytes() after the
run), peak memory (CUDA: torch.cuda.max_memory_allocated after a reset, weights included; CPU: None), and
speed-ups full / method paired by repeat. On CUDA every timing is synchronised and every method runs once,
untimed, per size before the repeats; a method that runs out of GPU memory is dropped from that size (a
{"kind": "skipped"} line says so). Largest batch that fits in `--memory-gb` GiB (2**30 bytes), computed,
not searched: weights + per-request bytes x batch <= budget, the weights being the parameters' bytes and
the per-request bytes (peak at the measured batch - weights) / batch on CUDA ("cuda peak": activations and
KV), the KV bytes / batch on the CPU ("kv bytes only").

Part 2, scoring (`--score-sizes`, batch 1, a decoder of `--score-layers` layers of the same geometry):
corehead's recorder (the 40 question rows' attention reduced to head statistics, as benchmarks/scoring.py
does it) vs eager `output_attentions=True` (the maps of every layer, then reduced the common way) vs a
plain SDPA forward, taking turns; eager is skipped where its [layers, heads, L, L] maps alone would exceed
`--eager-limit-gb`. Ratios per repeat: eager / corehead (on the eager row), corehead / forward (on the
corehead row).

Every figure is the median of `--repeats` (at least 3) repeats with its spread {"median", "min", "max"}.
Prints one JSON line per measurement ({"kind": "hybrid", ...}, {"kind": "scoring", ...}) and a table at the
end; with `--out DIR`, DIR/scale.json (rewritten after every finished size and batch):
    {"benchmark": "scale", "command", "device", "dtype", "geometry": {"layers", "hidden", "heads", "kv_heads",
     "head_dim", "intermediate", "vocab"}, "budget", "core_kv_heads", "repeats", "new_tokens", "memory_gb",
     "hybrid": [{"visual_tokens", "batch", "method", "prefill_s", "decode_ms", "prefill_speedup",
                 "decode_speedup", "kv_bytes", "kv_vs_full", "peak_memory_bytes", "max_batch",
                 "max_batch_basis"}],
     "scoring": [{"visual_tokens", "layers", "method", "seconds", "peak_memory_bytes", "skipped",
                  "eager_over_corehead", "corehead_over_forward"}]}
Defaults on CUDA: bfloat16, 36 layers, --sizes 16384 32768 65536, --batches 1 8, --score-sizes 16384 32768,
--memory-gb 80, --eager-limit-gb 64. On the CPU: float32, 2 layers, explicit --sizes (--score-sizes the
same), --memory-gb the machine's memory, --eager-limit-gb a quarter of it. A decode step reads the weights
and the KV cache; where the weights outweigh the cache (a 2-layer decoder, small sizes) the decode speed-up
stays near 1 whatever the cache kept, so decode figures are the GPU's, at 36 layers and 16k tokens and up.
`--smoke`: the CPU, 2 layers, hidden 512 (intermediate 1536) with the real heads (32 / 8 of 128), 256
visual tokens at batch 1 and 2, scoring at 256 tokens, 3 repeats, 2 new tokens, 1 thread: every code path
in seconds.
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import shlex
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import torch
from head_split import CORE_KV, split_plan
from timing import check_repeats, cpu_model, figure, ratio, text, turns

QUESTION = 40  # question tokens after the visual block
IMAGE = 7  # the token id that stands for a visual token (question tokens are drawn from 10 up)
ROPE_THETA = 5e6
SMALL_VOCAB = 1024
METHODS = ("full", "hybrid", "hybrid_prefill", "query_agnostic")
SCORING = ("forward", "corehead", "eager")
GIB = 2**30


@dataclass(frozen=True)
class Geometry:
    """The decoder's shape."""

    layers: int
    hidden: int
    heads: int
    kv_heads: int
    head_dim: int
    intermediate: int
    vocab: int

    def kv_bytes(self, tokens: int, batch: int, itemsize: int) -> int:
        """Bytes of a dense cache holding `tokens` tokens in each of `batch` rows."""
        return 2 * self.layers * self.kv_heads * self.head_dim * tokens * itemsize * batch


QWEN3_VL_8B = Geometry(layers=36, hidden=4096, heads=32, kv_heads=8, head_dim=128, intermediate=12288, vocab=151936)
SMOKE: dict[str, Any] = {  # --smoke: the real heads, a narrow stream, small sizes
    "layers": 2,
    "hidden": 512,
    "intermediate": 1536,
    "sizes": [256],
    "batches": [1, 2],
    "score_sizes": [256],
    "new_tokens": 2,
    "threads": 1,  # tiny shapes: a second thread costs more than it gives
}


def decoder(geometry: Geometry, device: torch.device, dtype: torch.dtype) -> Any:
    """Qwen3ForCausalLM of this geometry with random weights, built on `device` in `dtype`, eval mode."""
    from transformers import Qwen3Config, Qwen3ForCausalLM

    config = Qwen3Config(
        vocab_size=geometry.vocab,
        hidden_size=geometry.hidden,
        intermediate_size=geometry.intermediate,
        num_hidden_layers=geometry.layers,
        num_attention_heads=geometry.heads,
        num_key_value_heads=geometry.kv_heads,
        head_dim=geometry.head_dim,
        rms_norm_eps=1e-6,
        max_position_embeddings=262144,
        rope_parameters={"rope_type": "default", "rope_theta": ROPE_THETA},
        tie_word_embeddings=False,
    )
    config.image_token_id = IMAGE
    torch.manual_seed(0)
    with device:
        model = Qwen3ForCausalLM._from_config(config, dtype=dtype, attn_implementation="sdpa")
    return model.eval()


def weight_bytes(model: Any) -> int:
    """Bytes of the model's parameters."""
    return sum(p.nbytes for p in model.parameters())


def prompts(n_visual: int, batch: int, vocab: int) -> torch.Tensor:
    """[batch, n_visual + QUESTION] ids: the visual block, then a question; row r's question seeded r."""
    rows = []
    for row in range(batch):
        generator = torch.Generator().manual_seed(row)
        question = torch.randint(10, vocab, (QUESTION,), generator=generator)
        rows.append(torch.cat([torch.full((n_visual,), IMAGE), question]))
    return torch.stack(rows)


def kv_plan(geometry: Geometry, budget: float, prefill: bool) -> Any:
    """Every KV head but the CoRe ones keeps `budget` of the visual tokens (snap)."""
    return split_plan(geometry.layers, geometry.kv_heads, budget, prefill=prefill)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _start_peak(device: torch.device) -> None:
    """Reset the allocator's peak (CUDA), the garbage of earlier runs collected first."""
    if device.type == "cuda":
        gc.collect()
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)


def _peak(device: torch.device) -> int | None:
    return int(torch.cuda.max_memory_allocated(device)) if device.type == "cuda" else None


@dataclass(frozen=True)
class Run:
    """One prefill and decode: seconds, seconds per decode token, KV bytes stored, peak bytes (CUDA)."""

    prefill_s: float
    decode_s: float
    kv_bytes: int
    peak: int | None


def generate(model: Any, ids: torch.Tensor, n_visual: int, method: str, plan: Any, new_tokens: int) -> Run:
    """Prefill `ids` under `method` (plan None for full), then new_tokens - 1 greedy decode forwards."""
    from transformers import DynamicCache

    from corehead.attention.hybrid import hybrid_plan

    device = ids.device
    _start_peak(device)
    cache = DynamicCache(config=model.config)
    context = hybrid_plan(model, plan) if plan is not None else nullcontext(None)
    with torch.no_grad(), context as state:
        _sync(device)
        start = time.perf_counter()
        if method == "query_agnostic":  # the visual block alone (compressed), then the question over its cache
            model(input_ids=ids[:, :n_visual], cache=cache, use_cache=True, logits_to_keep=1)
            logits = model(input_ids=ids[:, n_visual:], cache=cache, use_cache=True, logits_to_keep=1).logits
        else:
            logits = model(input_ids=ids, cache=cache, use_cache=True, logits_to_keep=1).logits
        _sync(device)
        prefill = time.perf_counter() - start
        token = logits[:, -1].argmax(-1, keepdim=True)
        _sync(device)
        start = time.perf_counter()
        for _ in range(new_tokens - 1):
            logits = model(input_ids=token, cache=cache, use_cache=True, logits_to_keep=1).logits
            token = logits[:, -1].argmax(-1, keepdim=True)
        _sync(device)
        decode = (time.perf_counter() - start) / (new_tokens - 1)
        kv = state.kv_bytes() if state is not None else _dense_kv_bytes(cache)
    return Run(prefill, decode, kv, _peak(device))


def _dense_kv_bytes(cache: Any) -> int:
    """Bytes of the keys and values a plain dynamic cache holds."""
    return sum(int(layer.keys.nbytes) + int(layer.values.nbytes) for layer in cache.layers)


def max_batch(budget_bytes: int, weights: int, batch: int, used: int) -> int:
    """The largest batch with weights + batch x (used / measured batch) <= budget (integer arithmetic)."""
    return max(0, (budget_bytes - weights) * batch // max(1, used))


def _free(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


@dataclass
class Setup:
    """What every measurement shares."""

    geometry: Geometry
    device: torch.device
    dtype: torch.dtype
    budget: float
    repeats: int
    new_tokens: int
    memory_bytes: int
    eager_limit_bytes: int
    score_layers: int

    @property
    def cuda(self) -> bool:
        return self.device.type == "cuda"

    @property
    def itemsize(self) -> int:
        return torch.empty((), dtype=self.dtype).element_size()


def measure_hybrid(model: Any, setup: Setup, n_visual: int, batch: int) -> tuple[list[dict[str, Any]], list[str]]:
    """Part 1 at one (visual tokens, batch): a row per method that ran, and lines for those out of memory."""
    geometry = setup.geometry
    ids = prompts(n_visual, batch, geometry.vocab).to(setup.device)
    plans = {
        "full": None,
        "hybrid": kv_plan(geometry, setup.budget, prefill=False),
        "hybrid_prefill": kv_plan(geometry, setup.budget, prefill=True),
        "query_agnostic": kv_plan(geometry, setup.budget, prefill=False),
    }

    def run(method: str) -> Run:
        return generate(model, ids, n_visual, method, plans[method], setup.new_tokens)

    got: dict[str, list[Run]] = {m: [] for m in METHODS}
    failed: dict[str, str] = {}

    def attempt(method: str, keep: bool) -> None:
        try:
            done = run(method)
        except torch.OutOfMemoryError as error:
            failed[method] = f"out of memory: {str(error).splitlines()[0]}"
            got[method].clear()
        else:
            if keep:
                got[method].append(done)
            return
        _free(setup.device)  # outside the handler: the error's frames no longer hold the run's tensors

    if setup.cuda:  # kernels chosen and the allocator warmed outside the timing
        for method in METHODS:
            attempt(method, keep=False)
    for repeat in range(setup.repeats):
        for method in turns(list(METHODS), repeat):
            if method not in failed:
                attempt(method, keep=True)
    full_kv = geometry.kv_bytes(n_visual + QUESTION + setup.new_tokens - 1, batch, setup.itemsize)
    weights = weight_bytes(model)
    full = got["full"] if "full" not in failed else None
    rows = []
    for method in METHODS:
        if method in failed:
            continue
        runs = got[method]
        prefill, decode = [r.prefill_s for r in runs], [r.decode_s for r in runs]
        kv = max(r.kv_bytes for r in runs)
        peaks = [r.peak for r in runs if r.peak is not None]
        peak = max(peaks) if peaks else None
        used, basis = (peak - weights, "cuda peak") if peak is not None else (kv, "kv bytes only")
        compared = method != "full"
        rows.append(
            {
                "visual_tokens": n_visual,
                "batch": batch,
                "method": method,
                "prefill_s": figure(prefill, digits=4),
                "decode_ms": figure(decode, 1e3, 3),
                "prefill_speedup": ratio([r.prefill_s for r in full], prefill) if full and compared else None,
                "decode_speedup": ratio([r.decode_s for r in full], decode) if full and compared else None,
                "kv_bytes": kv,
                "kv_vs_full": round(kv / full_kv, 6),
                "peak_memory_bytes": peak,
                "max_batch": max_batch(setup.memory_bytes, weights, batch, used),
                "max_batch_basis": basis,
            }
        )
    skipped = [f"{m}: {why}" for m, why in failed.items()]
    return rows, skipped


@contextmanager
def _implementation(model: Any, name: str) -> Iterator[None]:
    """The model's attention implementation set to `name` inside."""
    before = model.config._attn_implementation
    model.set_attn_implementation(name)
    try:
        yield
    finally:
        model.set_attn_implementation(before)


def score_once(base: Any, ids: torch.Tensor, n_visual: int, method: str) -> tuple[float, int | None]:
    """One scoring forward of the decoder stack `base` (no lm head, no cache): seconds and peak bytes."""
    from corehead.attention.recorder import ROW_GROUPS, RowPlan, decoder_attention, record

    device = ids.device
    region = max(1, n_visual // 50)  # the evidence region: the first 2% of the visual tokens
    weights = torch.zeros(1, n_visual, device=device)
    weights[0, :region] = 1.0
    plan = RowPlan(
        rows=torch.arange(n_visual, n_visual + QUESTION, device=device)[None],
        row_groups=torch.full((1, QUESTION, len(ROW_GROUPS)), 1.0 / QUESTION, device=device),
        visual=torch.arange(n_visual, device=device)[None],
        valid=torch.ones(1, n_visual, dtype=torch.bool, device=device),
        region=weights,
        distractors=torch.zeros(1, n_visual, device=device),
        unit_weights=torch.ones(1, n_visual, 1, device=device),
    )
    _start_peak(device)
    with torch.no_grad():
        _sync(device)
        start = time.perf_counter()
        if method == "forward":
            base(input_ids=ids, use_cache=False)
        elif method == "eager":
            with _implementation(base, "eager"):
                out = base(input_ids=ids, use_cache=False, output_attentions=True)
            for maps in out.attentions:  # the common approach: every map, then reduce the question rows
                maps[0, :, n_visual:, :region].float().sum(-1).mean(-1)
            del out
        else:
            with decoder_attention(base), record(plan):
                base(input_ids=ids, use_cache=False)
        _sync(device)
        seconds = time.perf_counter() - start
    return seconds, _peak(device)


def eager_bytes(geometry: Geometry, layers: int, n_visual: int, itemsize: int) -> int:
    """Bytes of eager's [layers, heads, L, L] attention maps at batch 1."""
    length = n_visual + QUESTION
    return layers * geometry.heads * length * length * itemsize


def measure_scoring(base: Any, setup: Setup, n_visual: int) -> list[dict[str, Any]]:
    """Part 2 at one size: a row per method (eager skipped, with the reason, past the limit)."""
    ids = prompts(n_visual, 1, setup.geometry.vocab).to(setup.device)
    need = eager_bytes(setup.geometry, setup.score_layers, n_visual, setup.itemsize)
    methods = [m for m in SCORING if m != "eager" or need <= setup.eager_limit_bytes]
    if setup.cuda:
        for method in methods:
            score_once(base, ids, n_visual, method)
    seconds: dict[str, list[float]] = {m: [] for m in methods}
    peaks: dict[str, list[int]] = {m: [] for m in methods}
    for repeat in range(setup.repeats):
        for method in turns(methods, repeat):
            took, peak = score_once(base, ids, n_visual, method)
            seconds[method].append(took)
            if peak is not None:
                peaks[method].append(peak)
    rows = []
    for method in SCORING:
        row: dict[str, Any] = {
            "visual_tokens": n_visual,
            "layers": setup.score_layers,
            "method": method,
            "seconds": None,
            "peak_memory_bytes": None,
            "skipped": None,
            "eager_over_corehead": None,
            "corehead_over_forward": None,
        }
        if method not in seconds:
            limit = setup.eager_limit_bytes / GIB
            row["skipped"] = f"its [layers, heads, L, L] attention maps alone need {need / GIB:.1f} GiB (> {limit:g})"
        else:
            row["seconds"] = figure(seconds[method], digits=4)
            row["peak_memory_bytes"] = max(peaks[method]) if peaks[method] else None
            if method == "eager":
                row["eager_over_corehead"] = ratio(seconds["eager"], seconds["corehead"])
            if method == "corehead":
                row["corehead_over_forward"] = ratio(seconds["corehead"], seconds["forward"])
        rows.append(row)
    return rows


def device_name(device: torch.device) -> str:
    """'cuda: NVIDIA H200' or 'cpu: <model name>, N threads'."""
    if device.type == "cuda":
        return f"cuda: {torch.cuda.get_device_name(device)}"
    return f"cpu: {cpu_model()}, {torch.get_num_threads()} threads"


def ram_gib() -> float:
    """The machine's memory in GiB, rounded down to a tenth."""
    return math.floor(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / GIB * 10) / 10


class Report:
    """scale.json's content, written after every finished measurement."""

    def __init__(self, out: Path | None, head: dict[str, Any]) -> None:
        self.out = out
        self.data: dict[str, Any] = {**head, "hybrid": [], "scoring": []}
        self.write()

    def add(self, part: str, rows: list[dict[str, Any]]) -> None:
        self.data[part].extend(rows)
        for row in rows:
            print(json.dumps({"kind": part, **row}), flush=True)
        self.write()

    def write(self) -> None:
        """scale.json as it stands (through a partial file, so a reader never sees half of it)."""
        if self.out is not None:
            self.out.mkdir(parents=True, exist_ok=True)
            partial = self.out / "scale.json.partial"
            partial.write_text(json.dumps(self.data, indent=1) + "\n")
            partial.replace(self.out / "scale.json")


def _gib(value: int | None) -> str:
    return "-" if value is None else f"{value / GIB:.3g}"


def table(data: dict[str, Any]) -> str:
    """The measurements as a readable table."""
    lines = [f"{data['device']}, {data['dtype']}, geometry {data['geometry']}, budget {data['budget']:g}"]
    head = f"{'tokens':>7} {'batch':>5} {'method':<15} {'prefill s':<27} {'decode ms':<27} {'prefill x':<18} "
    lines.append(head + f"{'decode x':<18} {'KV GiB':>8} {'KV/full':>8} {'peak GiB':>8} {'max batch':>9}")
    for r in data["hybrid"]:
        speed = [text(r[k]) if r[k] else "-" for k in ("prefill_speedup", "decode_speedup")]
        lines.append(
            f"{r['visual_tokens']:>7} {r['batch']:>5} {r['method']:<15} {text(r['prefill_s']):<27} "
            f"{text(r['decode_ms']):<27} {speed[0]:<18} {speed[1]:<18} {_gib(r['kv_bytes']):>8} "
            f"{r['kv_vs_full']:>8.4f} {_gib(r['peak_memory_bytes']):>8} {r['max_batch']:>9}"
        )
    if data["scoring"]:
        lines.append(f"\n{'tokens':>7} {'layers':>6} {'method':<9} {'seconds':<26} {'peak GiB':>8}  ratio")
    for r in data["scoring"]:
        if r["skipped"]:
            lines.append(f"{r['visual_tokens']:>7} {r['layers']:>6} {r['method']:<9} skipped: {r['skipped']}")
            continue
        mine = r["eager_over_corehead"] or r["corehead_over_forward"]
        what = "eager / corehead" if r["eager_over_corehead"] else "corehead / forward"
        note = f"{what} {text(mine)}" if mine else ""
        lines.append(
            f"{r['visual_tokens']:>7} {r['layers']:>6} {r['method']:<9} {text(r['seconds']):<26} "
            f"{_gib(r['peak_memory_bytes']):>8}  {note}"
        )
    return "\n".join(lines)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", choices=["cuda", "cpu"], help="default: cuda when there is one")
    parser.add_argument("--smoke", action="store_true", help="the CPU, tiny sizes: every code path in seconds")
    parser.add_argument("--layers", type=int, help="decoder layers (default 36 on CUDA, 2 on the CPU)")
    parser.add_argument("--hidden", type=int, help=f"hidden size (default {QWEN3_VL_8B.hidden}; smoke 512)")
    parser.add_argument("--intermediate", type=int, help=f"MLP size (default {QWEN3_VL_8B.intermediate}; smoke 1536)")
    parser.add_argument("--real-vocab", action="store_true", help=f"{QWEN3_VL_8B.vocab} tokens, not {SMALL_VOCAB}")
    parser.add_argument("--dtype", choices=["bfloat16", "float32"], help="default bfloat16 on CUDA, float32 on CPU")
    parser.add_argument("--sizes", type=int, nargs="*", help="visual tokens (default on CUDA 16384 32768 65536)")
    parser.add_argument("--batches", type=int, nargs="+", help="batch sizes (default 1 8)")
    parser.add_argument("--score-sizes", type=int, nargs="*", help="scoring: visual tokens (CUDA 16384 32768)")
    parser.add_argument("--score-layers", type=int, default=2, help="scoring: decoder layers")
    parser.add_argument("--budget", type=float, default=0.1, help="share of visual tokens the reduced heads keep")
    parser.add_argument("--repeats", type=int, default=3, help="interleaved repeats per figure (at least 3)")
    parser.add_argument("--new-tokens", type=int, help="greedy tokens per run, the prefill's included (default 8)")
    parser.add_argument("--memory-gb", type=float, help="GiB for the largest batch (CUDA 80; CPU the machine's)")
    parser.add_argument("--eager-limit-gb", type=float, help="skip eager past this many GiB of maps (CUDA 64)")
    parser.add_argument("--threads", type=int, help="torch threads on the CPU (default: torch's)")
    parser.add_argument("--out", type=Path, help="folder for scale.json")
    return parser


def _settle(parser: argparse.ArgumentParser, args: argparse.Namespace) -> argparse.Namespace:
    """Fill the defaults that depend on the device and on --smoke; refuse what cannot run."""
    check_repeats(parser, args.repeats)
    if args.smoke:
        if args.device == "cuda":
            parser.error("--smoke runs on the CPU")
        args.device = "cpu"
        for name, value in SMOKE.items():
            if getattr(args, name) is None:
                setattr(args, name, value)
    if args.device is None:
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device here")
    cuda = args.device == "cuda"
    if not cuda and args.sizes is None:
        parser.error("--device cpu needs explicit (small) --sizes, e.g. --sizes 2048 --batches 1 2")
    defaults = {
        "layers": QWEN3_VL_8B.layers if cuda else 2,
        "hidden": QWEN3_VL_8B.hidden,
        "intermediate": QWEN3_VL_8B.intermediate,
        "dtype": "bfloat16" if cuda else "float32",
        "sizes": [16384, 32768, 65536],
        "batches": [1, 8],
        "score_sizes": [16384, 32768] if cuda else args.sizes,
        "new_tokens": 8,
        "memory_gb": 80.0 if cuda else ram_gib(),
        "eager_limit_gb": 64.0 if cuda else ram_gib() / 4,
    }
    for name, value in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    if args.new_tokens < 2:
        parser.error("--new-tokens must be at least 2 (the prefill's token, then at least one decode step)")
    if not 0.0 <= args.budget <= 1.0:
        parser.error(f"--budget is a share of the visual tokens, between 0 and 1; got {args.budget}")
    if min([*args.sizes, *args.score_sizes], default=QUESTION) < 16 or min(args.batches) < 1:
        parser.error("sizes must be at least 16 visual tokens (snap's window) and batches at least 1")
    if min(args.layers, args.score_layers) < 1:
        parser.error("--layers and --score-layers must be at least 1")
    return args


def main() -> None:
    parser = _parser()
    args = _settle(parser, parser.parse_args())
    if args.threads and args.device == "cpu":
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    vocab = QWEN3_VL_8B.vocab if args.real_vocab else SMALL_VOCAB
    geometry = replace(QWEN3_VL_8B, layers=args.layers, hidden=args.hidden, intermediate=args.intermediate, vocab=vocab)
    setup = Setup(
        geometry=geometry,
        device=device,
        dtype=getattr(torch, args.dtype),
        budget=args.budget,
        repeats=args.repeats,
        new_tokens=args.new_tokens,
        memory_bytes=int(args.memory_gb * GIB),
        eager_limit_bytes=int(args.eager_limit_gb * GIB),
        score_layers=args.score_layers,
    )
    head = {
        "benchmark": "scale",
        "command": shlex.join(["python", "benchmarks/scale.py", *sys.argv[1:]]),
        "device": device_name(device),
        "dtype": args.dtype,
        "geometry": asdict(geometry),
        "budget": args.budget,
        "core_kv_heads": list(CORE_KV),
        "repeats": args.repeats,
        "new_tokens": args.new_tokens,
        "memory_gb": args.memory_gb,
    }
    print(json.dumps({"kind": "setup", **head}), flush=True)
    report = Report(args.out, head)
    model = None
    if args.sizes:
        model = decoder(geometry, device, setup.dtype)
        for n_visual in args.sizes:
            for batch in args.batches:
                rows, skipped = measure_hybrid(model, setup, n_visual, batch)
                for why in skipped:
                    line = {"kind": "skipped", "part": "hybrid", "visual_tokens": n_visual, "batch": batch}
                    print(json.dumps({**line, "reason": why}), flush=True)
                report.add("hybrid", rows)
        if args.score_layers != args.layers:
            model = None
            _free(device)
    if args.score_sizes:
        scored = replace(geometry, layers=args.score_layers)
        base = (model if model is not None and scored == geometry else decoder(scored, device, setup.dtype)).model
        for n_visual in args.score_sizes:
            report.add("scoring", measure_scoring(base, setup, n_visual))
    print(table(report.data), flush=True)


if __name__ == "__main__":
    main()
