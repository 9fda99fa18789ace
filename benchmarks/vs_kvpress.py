"""corehead's hybrid KV cache side by side with NVIDIA's kvpress: KV bytes held, prefill time, decode time.

    bash benchmarks/kvpress_env.sh                  # once: the side environment .venv-kvpress/ (kvpress 0.5.5)
    .venv/bin/python benchmarks/vs_kvpress.py --sizes 4096 8192 --repeats 3
    .venv/bin/python benchmarks/vs_kvpress.py --device cuda --layers 4 --sizes 16384 32768   # GPU (bfloat16)

kvpress 0.5.5 pins transformers<5.3 and corehead needs >=5.24, so they run in two environments and two kinds of
processes: this script, run with corehead's Python, is the orchestrator; it starts every measurement as a fresh
worker process (this same file with `--worker`), the kvpress methods under `.venv-kvpress/bin/python` (which
imports only torch, transformers, safetensors and kvpress), corehead's under corehead's Python. Each (size,
repeat, method) is its own process, so its memory figures are its own; within each repeat the methods take
turns (timing.turns); every figure is the median of `--repeats` (at least 3) with its spread, and every ratio
is paired by repeat (timing.ratio). Process start, model load and a short warm-up run are not timed.

The model: a random-weight Qwen3 causal LM with Qwen3-VL-8B's text attention geometry (32 query / 8 KV heads
of 128, hidden `--hidden` 4096, `--layers` 2 and a small MLP `--intermediate` 1024 on CPU, vocabulary 256).
The orchestrator makes its weights once (seed 0) and saves them with safetensors, with the config's keyword
arguments as JSON and the input ids, in a work folder; each worker rebuilds the config with its own
transformers and loads the weights strictly. Input: n visual tokens (token id 7) then a 40-token question
(seed 1), n from `--sizes`. CPU: float32; `--device cuda`: bfloat16.

Methods (the same KV budget for all but `full`; all compress after the prefill, kvpress's way, which is
corehead's default `prefill=False`):
- `full_corehead_env`, `full_kvpress_env`: no compression, in each environment (they should time the same);
- `hybrid_snap_corehead`: corehead's hybrid, KV heads 0 and 1 of every layer whole, the other 6 keep every
  text token and `--budget` (0.1) of the visual tokens, chosen by the `snap` selector (window 16, pool 7),
  stored in physically smaller per-head buffers;
- `hybrid_recent_corehead`: the same split, the 6 reduced heads streaming (the `recent` selector: 4 sink
  visual tokens, then the most recent ones): corehead's DuoAttention-style plan;
- `snapkv_kvpress`: SnapKVPress(compression_ratio=1 - f, window_size=16, kernel_size=7), every head keeps the
  same count, physically pruned;
- `adakv_snapkv_kvpress`: AdaKVPress(SnapKVPress(compression_ratio=1 - f, ...)): per-head counts chosen
  across the heads, the pruned entries masked (fake keys at decode) in full-size tensors;
- `duo_kvpress`: DuoAttentionPress with corehead's head split (KV heads 0 and 1 retrieval, the other 6
  streaming, head_compression_ratio 0.75), sink 4 and recent K - 4 tokens, K being what a reduced corehead
  head keeps: the same tokens as `hybrid_recent_corehead`. Offline, its per-head pattern comes from a subclass
  whose `load_attention_pattern` returns (sink, recent, head scores 1 for heads 0-1 and 0 for the others)
  instead of fetching the DuoAttention repository's; kvpress turns that into its streaming mask itself.

The budget: f, the share of the prompt's (layer, KV head, token) entries the hybrid keeps, is exact from the
kept counts: f = (2 L + 6 K) / (8 L), L = n + 40 the prompt, K = 40 + ceil(budget * n). kvpress compresses the
whole prompt, question included; corehead compresses only the visual tokens (every text token stays).
kvpress's SnapKV keeps int(L * (1 - compression_ratio)) tokens a head: its ratio is 1 - f (nudged by an ulp
where floating point would drop a token), so it keeps floor(f L) tokens a head, within 8 entries of the
hybrid's total. Every row prints the share of prompt entries it really kept, read from the cache.

Measured per process: prefill seconds (the one forward over the prompt, press or hybrid active,
torch.no_grad), decode milliseconds per token (the mean of `--new-tokens` greedy one-token forwards with
explicit positions, kvpress's pipeline's way), and after decode:
- kv bytes held: the bytes of the distinct tensor storages (deduplicated by data pointer) holding keys and
  values that the cache object references; for corehead, `HybridState.kv_bytes()` must agree;
- kv bytes logical: held minus the entries kvpress masks (AdaKV, Duo: `module.masked_key_indices`), which
  is what kvpress counts as compressed; aux bytes: every other tensor storage reachable from the cache plus
  the masked-index tensors (corehead's kept positions and validity, kvpress's masked indices);
- peak RSS of the measured phase (the high-water mark is reset after load and warm-up through
  /proc/self/clear_refs where Linux allows it, else since process start, as printed) and the RSS growth from
  before the prefill to after the decode; on CUDA torch.cuda.memory_allocated's growth and peak instead;
- cores used: CPU seconds over wall seconds of the prefill and of the decode; well under `--threads` means
  something else shared the machine during that measurement.
Workers run with glibc's malloc thresholds fixed where its dynamic rule would converge: MALLOC_MMAP_THRESHOLD_
`--mmap-threshold` (32 MiB, glibc's ceiling) and MALLOC_TRIM_THRESHOLD_ twice that (0 leaves glibc's defaults).
Every decode step concatenates each layer's keys and values into new tensors; with the dynamic thresholds a
tensor of a few tens of MiB came from reused heap in some processes and from freshly faulted pages in others,
depending on the allocator's history, which split one method's decode times into two modes (4096 tokens).
Prints one JSON line per (size, method), then a Markdown table of medians with ratios vs the full run of the
same environment (paired by repeat); a worker's greedy tokens and logits are compared across environments.
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, ExitStack, nullcontext
from dataclasses import asdict, dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

from head_split import CORE_KV, split_plan
from timing import check_repeats, cpu_model, figure, ratio, turns

ROOT = Path(__file__).resolve().parents[1]
SIDE_PYTHON = ROOT / ".venv-kvpress" / "bin" / "python"
SETUP = "bash benchmarks/kvpress_env.sh"
HEAD_DIM, HEADS, KV_HEADS = 128, 32, 8
QUESTION, IMAGE, VOCAB = 40, 7, 256
SINK = 4  # corehead's KVPlan.sink: the streaming heads' first kept tokens
SNAP_WINDOW, SNAP_POOL = 16, 7  # corehead's KVPlan.window and .pool, given to kvpress's SnapKV too
WARM_VISUAL = 64  # visual tokens of the untimed warm-up run
METHODS: dict[str, str] = {  # method -> the environment it runs in
    "full_corehead_env": "corehead",
    "hybrid_snap_corehead": "corehead",
    "hybrid_recent_corehead": "corehead",
    "full_kvpress_env": "kvpress",
    "snapkv_kvpress": "kvpress",
    "adakv_snapkv_kvpress": "kvpress",
    "duo_kvpress": "kvpress",
}
FULL = {"corehead": "full_corehead_env", "kvpress": "full_kvpress_env"}


# ---------------------------------------------------------------- the shared budget


@dataclass(frozen=True)
class Budget:
    """One prompt's KV budget, matched between corehead's hybrid and kvpress's presses."""

    visual: int  # n visual tokens
    visual_budget: float  # share of the visual tokens a reduced corehead head keeps (--budget)
    length: int  # L = n + question
    reduced_kept: int  # K: tokens a reduced corehead head keeps (every text token + ceil(budget * n))
    kept_entries: int  # (KV head, token) entries the hybrid keeps per layer: 2 L + 6 K
    share: float  # f = kept_entries / (8 L), exact from the counts
    snap_ratio: float  # kvpress compression_ratio for SnapKV and AdaKV(SnapKV): 1 - f
    snap_kept: int  # tokens a head SnapKV keeps (AdaKV: on average): int(L * (1 - snap_ratio)) = floor(f L)
    duo_sink: int
    duo_recent: int  # sink + recent = K
    duo_head_ratio: float  # share of KV heads streaming: 6 / 8


def visual_kept(visual: int, budget: float) -> int:
    """Visual tokens a reduced head keeps, computed as corehead's hybrid does (float32 ceil)."""
    import torch

    return min(visual, int(torch.tensor([visual]).float().mul(budget).ceil().long()))


def budget_match(visual: int, budget: float, question: int = QUESTION) -> Budget:
    """The hybrid's exact kept share f and the kvpress settings that keep the same share."""
    length = visual + question
    kept = question + visual_kept(visual, budget)
    entries = len(CORE_KV) * length + (KV_HEADS - len(CORE_KV)) * kept
    share = Fraction(entries, KV_HEADS * length)
    target = math.floor(share * length)
    snap_ratio = float(1 - share)
    while snap_ratio > 0 and int(length * (1 - snap_ratio)) < target:  # kvpress's compute_n_kept floors
        snap_ratio = math.nextafter(snap_ratio, 0.0)
    if kept <= SINK:
        raise ValueError(f"a streaming head keeps {kept} tokens, not more than its {SINK} sinks: raise --budget")
    return Budget(
        visual=visual,
        visual_budget=budget,
        length=length,
        reduced_kept=kept,
        kept_entries=entries,
        share=float(share),
        snap_ratio=snap_ratio,
        snap_kept=int(length * (1 - snap_ratio)),
        duo_sink=SINK,
        duo_recent=kept - SINK,
        duo_head_ratio=(KV_HEADS - len(CORE_KV)) / KV_HEADS,
    )


def config_kwargs(layers: int, hidden: int, intermediate: int) -> dict[str, Any]:
    """Qwen3Config keyword arguments both environments' transformers accept: Qwen3-VL-8B's text attention."""
    return {
        "vocab_size": VOCAB,
        "hidden_size": hidden,
        "intermediate_size": intermediate,
        "num_hidden_layers": layers,
        "num_attention_heads": HEADS,
        "num_key_value_heads": KV_HEADS,
        "head_dim": HEAD_DIM,
        "max_position_embeddings": 262144,
        "rms_norm_eps": 1e-6,
        "rope_parameters": {"rope_type": "default", "rope_theta": 5e6},
        "tie_word_embeddings": False,
        "attn_implementation": "sdpa",
    }


def prompt_ids(visual: int) -> Any:
    """[1, n + 40]: n visual tokens, then a seeded 40-token question."""
    import torch

    generator = torch.Generator().manual_seed(1)
    question = torch.randint(10, VOCAB, (1, QUESTION), generator=generator)
    return torch.cat([torch.full((1, visual), IMAGE), question], dim=1)


def prepare(folder: Path, layers: int, hidden: int, intermediate: int, sizes: list[int], budget: float) -> None:
    """The work folder: seeded weights (safetensors), the config's kwargs (JSON), input ids and budgets."""
    import torch
    from safetensors.torch import save_file
    from transformers import Qwen3Config, Qwen3ForCausalLM

    kwargs = config_kwargs(layers, hidden, intermediate)
    torch.manual_seed(0)
    model = Qwen3ForCausalLM(Qwen3Config(**kwargs))
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(folder / "weights.safetensors"))
    (folder / "config.json").write_text(json.dumps(kwargs, indent=1))
    for n in sizes:
        save_file({"input_ids": prompt_ids(n)}, str(folder / f"ids-{n}.safetensors"))
        (folder / f"budget-{n}.json").write_text(json.dumps(asdict(budget_match(n, budget))))


# ---------------------------------------------------------------- the worker (either environment)


def _rss() -> int | None:
    """Resident bytes now (Linux), else None."""
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
    except (OSError, IndexError, ValueError):
        return None
    return pages * os.sysconf("SC_PAGE_SIZE")


def _reset_peak_rss() -> bool:
    """Reset the process's RSS high-water mark (Linux >= 4.0: clear_refs 5); False where not allowed."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def _load(folder: Path, device: str) -> Any:
    """The saved model, rebuilt with this environment's transformers, weights loaded strictly."""
    import torch
    from safetensors.torch import load_file
    from transformers import Qwen3Config, Qwen3ForCausalLM

    model: Any = Qwen3ForCausalLM(Qwen3Config(**json.loads((folder / "config.json").read_text())))
    model.load_state_dict(load_file(str(folder / "weights.safetensors")), strict=True)
    model.config.image_token_id = IMAGE  # corehead's hybrid reads the visual tokens' id from the config
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    return model.to(device=device, dtype=dtype).eval()


def storages(tensors: list[Any]) -> dict[int, int]:
    """Bytes of each distinct storage behind `tensors`, by data pointer (empty storages left out)."""
    seen: dict[int, int] = {}
    for t in tensors:
        storage = t.untyped_storage()
        if storage.nbytes():
            seen[storage.data_ptr()] = storage.nbytes()
    return seen


def _tensors_in(obj: Any, seen: set[int] | None = None) -> Iterator[Any]:
    """Every tensor reachable from `obj` through attributes, lists, tuples and dicts."""
    import torch

    seen = set() if seen is None else seen
    if id(obj) in seen or isinstance(obj, str | bytes | int | float | bool | type(None)):
        return
    seen.add(id(obj))
    if isinstance(obj, torch.Tensor):
        yield obj
    elif isinstance(obj, list | tuple | set):
        for item in obj:
            yield from _tensors_in(item, seen)
    elif isinstance(obj, dict):
        for item in obj.values():
            yield from _tensors_in(item, seen)
    elif isinstance(obj, torch.nn.Module):
        return  # a cache that points at a model: not its storage
    elif hasattr(obj, "__dict__"):
        for item in vars(obj).values():
            yield from _tensors_in(item, seen)


def kv_tensors(cache: Any) -> list[Any]:
    """The key and value tensors a cache holds: each layer's keys and values, and corehead's buffers'."""
    out = []
    for layer in cache.layers:
        out += [t for t in (getattr(layer, "keys", None), getattr(layer, "values", None)) if t is not None]
        for buf in getattr(layer, "buffers", None) or []:
            out += [buf.keys, buf.values]
    return out


def kept_prompt_entries(cache: Any, new_tokens: int) -> int:
    """(layer, KV head, prompt token) entries physically in the cache after `new_tokens` decode steps."""
    total = 0
    for layer in cache.layers:
        buffers = getattr(layer, "buffers", None) or []
        if buffers:
            total += sum(len(b.heads) * (b.keys.shape[2] - new_tokens) for b in buffers)
        else:
            total += layer.keys.shape[1] * (layer.keys.shape[2] - new_tokens)
    return total


@dataclass
class Method:
    """How a worker runs one method: around the whole run, around the prefill only, and what it adds after."""

    around: Callable[[Any, Budget], AbstractContextManager[Any]]
    prefill: Callable[[Any, Budget], AbstractContextManager[Any]]
    after: Callable[[Any, Any, Any, Budget], dict[str, Any]]


def _nothing(model: Any, budget: Budget) -> AbstractContextManager[Any]:
    return nullcontext()


def _no_extras(model: Any, cache: Any, state: Any, budget: Budget) -> dict[str, Any]:
    return {}


def _corehead(selector: str) -> Method:
    """corehead's hybrid: KV heads 0-1 whole, the other 6 keep the budget of the visual tokens."""

    def around(model: Any, budget: Budget) -> AbstractContextManager[Any]:
        from corehead.attention.hybrid import hybrid_plan

        layers, options = model.config.num_hidden_layers, {"sink": SINK, "window": SNAP_WINDOW, "pool": SNAP_POOL}
        return hybrid_plan(model, split_plan(layers, KV_HEADS, budget.visual_budget, selector, **options))

    def after(model: Any, cache: Any, state: Any, budget: Budget) -> dict[str, Any]:
        held = sum(storages(kv_tensors(cache)).values())
        if state.kv_bytes() != held:
            raise AssertionError(f"HybridState.kv_bytes() {state.kv_bytes()} != storages held {held}")
        return {"hybrid_state_kv_bytes": state.kv_bytes()}

    return Method(around, _nothing, after)


def _press(model: Any, budget: Budget, name: str) -> Any:
    """The kvpress press of method `name`, set to the shared budget."""
    from kvpress import AdaKVPress, DuoAttentionPress, SnapKVPress

    def snap() -> Any:
        return SnapKVPress(compression_ratio=budget.snap_ratio, window_size=SNAP_WINDOW, kernel_size=SNAP_POOL)

    if name == "snapkv_kvpress":
        return snap()
    if name == "adakv_snapkv_kvpress":
        return AdaKVPress(snap())
    import numpy as np

    scores = np.zeros((model.config.num_hidden_layers, KV_HEADS))
    scores[:, list(CORE_KV)] = 1.0  # retrieval heads score highest: the lowest 6 of 8 per layer stream

    class SplitDuoAttentionPress(DuoAttentionPress):
        """DuoAttentionPress with corehead's head split and the shared budget instead of the hub's pattern."""

        def load_attention_pattern(self, model: Any) -> tuple[int, int, Any]:
            return budget.duo_sink, budget.duo_recent, scores

    return SplitDuoAttentionPress(head_compression_ratio=budget.duo_head_ratio)


def _kvpress(name: str) -> Method:
    """A kvpress press, active during the prefill (kvpress's pipeline decodes outside the press)."""
    presses: dict[int, Any] = {}

    def prefill(model: Any, budget: Budget) -> AbstractContextManager[Any]:
        presses[0] = _press(model, budget, name)
        return presses[0](model)

    def after(model: Any, cache: Any, state: Any, budget: Budget) -> dict[str, Any]:
        masked, index = 0, []
        for layer in model.model.layers:
            found = getattr(layer.self_attn, "masked_key_indices", None)
            if found is not None:
                masked += int(found[0].numel())
                index += list(found)
        out: dict[str, Any] = {"masked_entries": masked, "masked_index_bytes": sum(storages(index).values())}
        press = presses[0]
        if name == "duo_kvpress":
            out["kvpress_compression_ratio"] = press.compression_ratio
            split = press.streaming_mask.cpu()
            if split.sum(1).tolist() != [KV_HEADS - len(CORE_KV)] * len(split) or split[:, list(CORE_KV)].any():
                raise AssertionError(f"the Duo streaming mask is not corehead's head split: {split.tolist()}")
        return out

    return Method(_nothing, prefill, after)


def method(name: str) -> Method:
    """The runner of a method of METHODS (in the side environment kvpress is imported even for `full`: its
    attention patch is global there, as for any kvpress user, and its imports count in the baseline RSS)."""
    if name == "full_kvpress_env":
        import kvpress  # noqa: F401
    if name.startswith("full_"):
        return Method(_nothing, _nothing, _no_extras)
    if name.endswith("_corehead"):
        return _corehead(name.split("_")[1])
    return _kvpress(name)


def _sync(device: str) -> None:
    import torch

    if device == "cuda":
        torch.cuda.synchronize()


def _run(model: Any, ids: Any, runner: Method, budget: Budget, new_tokens: int, device: str) -> dict[str, Any]:
    """Prefill then greedy decode under the method; times, tokens, logits and the cache with its state."""
    import inspect

    import torch
    from transformers import DynamicCache

    cache = DynamicCache(config=model.config)
    name = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
    length = ids.shape[1]
    decode: list[float] = []
    with torch.no_grad(), ExitStack() as stack:
        state = stack.enter_context(runner.around(model, budget))
        with runner.prefill(model, budget):
            _sync(device)
            start, cpu = time.perf_counter(), time.process_time()
            out = model(input_ids=ids, use_cache=True, logits_to_keep=1, **{name: cache})
            _sync(device)
            prefill = time.perf_counter() - start
            prefill_cores = (time.process_time() - cpu) / prefill
        logits = [out.logits[0, -1].float().cpu()]
        token = out.logits[:, -1].argmax(-1, keepdim=True)
        tokens = [int(token)]
        cpu = time.process_time()
        for step in range(new_tokens):
            position = torch.tensor([[length + step]], device=ids.device)
            _sync(device)
            start = time.perf_counter()
            out = model(input_ids=token, position_ids=position, use_cache=True, **{name: cache})
            _sync(device)
            decode.append(time.perf_counter() - start)
            logits.append(out.logits[0, -1].float().cpu())
            token = out.logits[:, -1].argmax(-1, keepdim=True)
            tokens.append(int(token))
        decode_cores = (time.process_time() - cpu) / sum(decode) if decode else 0.0
    cores = {"prefill_cores_used": prefill_cores, "decode_cores_used": decode_cores}
    got = {"prefill": prefill, "decode": decode, "tokens": tokens, "logits": logits, "cache": cache, "state": state}
    return got | cores


def worker(args: argparse.Namespace) -> dict[str, Any]:
    """One measurement in this process: load, warm up (untimed), run the method once, measure what is held."""
    import torch
    import transformers

    torch.set_num_threads(args.threads)
    folder = Path(args.folder)
    budget = Budget(**json.loads((folder / f"budget-{args.size}.json").read_text()))
    warm_budget = budget_match(WARM_VISUAL, budget.visual_budget)
    runner = method(args.method)
    model = _load(folder, args.device)
    from safetensors.torch import load_file

    ids = load_file(str(folder / f"ids-{args.size}.safetensors"))["input_ids"].to(args.device)
    warm_ids = torch.cat([torch.full((1, WARM_VISUAL), IMAGE, device=args.device), ids[:, -QUESTION:]], dim=1)
    _run(model, warm_ids, runner, warm_budget, 2, args.device)
    gc.collect()
    if args.device == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        allocated = torch.cuda.memory_allocated()
    peak_reset = _reset_peak_rss()
    rss_before = _rss()
    got = _run(model, ids, runner, budget, args.new_tokens, args.device)
    rss_after = _rss()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    cache = got["cache"]
    kv = storages(kv_tensors(cache))
    every = storages(list(_tensors_in(cache)))
    extras = runner.after(model, cache, got["state"], budget)
    element = next(model.parameters()).element_size()
    masked = extras.get("masked_entries", 0)
    row: dict[str, Any] = {
        "method": args.method,
        "visual_tokens": args.size,
        "repeat": args.repeat,
        "prefill_s": got["prefill"],
        "decode_s_per_token": sum(got["decode"]) / len(got["decode"]),
        "decode_s_steps": got["decode"],
        "prefill_cores_used": got["prefill_cores_used"],  # CPU seconds / wall seconds: < --threads if contended
        "decode_cores_used": got["decode_cores_used"],
        "kv_bytes_held": sum(kv.values()),
        "kv_bytes_logical": sum(kv.values()) - 2 * masked * HEAD_DIM * element,
        "aux_bytes": sum(b for p, b in every.items() if p not in kv) + extras.get("masked_index_bytes", 0),
        "prompt_kv_share": (kept_prompt_entries(cache, args.new_tokens) - masked)
        / (model.config.num_hidden_layers * KV_HEADS * budget.length),
        "tokens": got["tokens"],
        "peak_rss_bytes": peak,
        "peak_rss_since": "prefill" if peak_reset else "process start",
        "rss_growth_bytes": rss_after - rss_before if rss_before is not None and rss_after is not None else None,
        "peak_rss_growth_bytes": peak - rss_before if rss_before is not None and peak_reset else None,
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__},
        **extras,
    }
    if METHODS[args.method] == "kvpress":
        import importlib.metadata

        row["versions"]["kvpress"] = importlib.metadata.version("kvpress")
    if args.device == "cuda":
        row["cuda_allocated_growth_bytes"] = torch.cuda.memory_allocated() - allocated
        row["cuda_peak_growth_bytes"] = torch.cuda.max_memory_allocated() - allocated
    if args.logits:
        from safetensors.torch import save_file

        save_file({"logits": torch.stack(got["logits"])}, args.logits)
    return row


# ---------------------------------------------------------------- the orchestrator (corehead's environment)


def side_python(path: Path) -> Path:
    """The side environment's Python, checked: it exists and imports kvpress with transformers < 5.3."""
    if not path.exists():
        raise FileNotFoundError(f"the kvpress side environment is missing ({path}); create it with: {SETUP}")
    check = "import kvpress, transformers; print(transformers.__version__)"
    done = subprocess.run([str(path), "-c", check], capture_output=True, text=True, env=_side_env(1))
    if done.returncode:
        tail = done.stderr.strip().splitlines()[-1:] or ["no output"]
        raise RuntimeError(f"{path} cannot import kvpress ({tail[0]}); recreate it with: {SETUP}")
    return path


def _side_env(threads: int, mmap_threshold: int = 0) -> dict[str, str]:
    """The environment of a worker: no PYTHONPATH or PYTHONHOME leaking corehead's packages into the side env,
    `threads` OpenMP threads, and glibc's mmap threshold fixed where `mmap_threshold` is set."""
    malloc = {"MALLOC_MMAP_THRESHOLD_": str(mmap_threshold), "MALLOC_TRIM_THRESHOLD_": str(2 * mmap_threshold)}
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", *malloc)}
    env |= {"OMP_NUM_THREADS": str(threads), "PYTHONWARNINGS": "ignore", "TOKENIZERS_PARALLELISM": "false"}
    return env | (malloc if mmap_threshold else {})


def cpu() -> str:
    """The CPU's model name and the cores this process may use."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return f"{cpu_model()}, {cores} cores"


def launch(python: Path, args: argparse.Namespace, name: str, size: int, repeat: int, folder: Path) -> dict[str, Any]:
    """One worker process; its result row (it writes JSON to a file), or an error with its stderr's tail."""
    result = folder / f"result-{size}-{name}-{repeat}.json"
    command = [str(python), str(Path(__file__).resolve()), "--worker", "--method", name, "--size", str(size)]
    command += ["--folder", str(folder), "--repeat", str(repeat), "--device", args.device, "--result", str(result)]
    command += ["--threads", str(args.threads), "--new-tokens", str(args.new_tokens)]
    if repeat == 0:
        command += ["--logits", str(folder / f"logits-{size}-{name}.safetensors")]
    start = time.perf_counter()
    env = _side_env(args.threads, args.mmap_threshold)
    done = subprocess.run(command, capture_output=True, text=True, env=env, cwd=ROOT)
    took = time.perf_counter() - start
    print(f"n={size} repeat {repeat} {name}: {took:.0f} s", file=sys.stderr, flush=True)
    if done.returncode or not result.exists():
        tail = "\n".join(done.stderr.strip().splitlines()[-25:])
        raise RuntimeError(f"worker {name} (n={size}, repeat {repeat}) under {python} failed:\n{tail}")
    return json.loads(result.read_text())


def _mib(values: list[float]) -> dict[str, float]:
    return figure(values, 1 / 2**20, 2)


def summarize(size: int, rows: dict[str, list[dict[str, Any]]], budget: Budget) -> list[dict[str, Any]]:
    """One printed line per method: medians with spread, ratios vs the same environment's full (by repeat)."""
    out = []
    for name, got in rows.items():
        full = rows.get(FULL[METHODS[name]])

        def values(key: str, of: list[dict[str, Any]]) -> list[float]:
            return [r[key] for r in of]

        line: dict[str, Any] = {
            "kind": "vs_kvpress",
            "visual_tokens": size,
            "method": name,
            "env": METHODS[name],
            "versions": got[0]["versions"],
            "kv_share_target": round(budget.share, 6) if not name.startswith("full_") else 1.0,
            "prompt_kv_share": round(got[0]["prompt_kv_share"], 6),
            "kv_held_mib": _mib(values("kv_bytes_held", got)),
            "kv_logical_mib": _mib(values("kv_bytes_logical", got)),
            "aux_mib": _mib(values("aux_bytes", got)),
            "prefill_s": figure(values("prefill_s", got)),
            "decode_ms": figure(values("decode_s_per_token", got), 1e3, 2),
            "peak_rss_mib": _mib(values("peak_rss_bytes", got)),
            "peak_rss_since": got[0]["peak_rss_since"],
            "tokens": got[0]["tokens"],
            "prefill_cores_used": figure(values("prefill_cores_used", got), digits=2),
            "decode_cores_used": figure(values("decode_cores_used", got), digits=2),
        }
        for key in ("rss_growth_bytes", "peak_rss_growth_bytes"):
            if all(r[key] is not None for r in got):
                line[key.replace("_bytes", "_mib")] = _mib(values(key, got))
        for key in ("cuda_allocated_growth_bytes", "cuda_peak_growth_bytes"):
            if key in got[0]:
                line[key.replace("_bytes", "_mib")] = _mib(values(key, got))
        for key in ("kvpress_compression_ratio", "masked_entries"):
            if key in got[0]:
                line[key] = got[0][key]
        if full is not None:
            line["kv_held_vs_full"] = ratio(values("kv_bytes_held", got), values("kv_bytes_held", full), 4)
            line["kv_logical_vs_full"] = ratio(values("kv_bytes_logical", got), values("kv_bytes_logical", full), 4)
            line["prefill_vs_full"] = ratio(values("prefill_s", got), values("prefill_s", full), 3)
            line["decode_vs_full"] = ratio(values("decode_s_per_token", got), values("decode_s_per_token", full), 3)
        out.append(line)
    return out


def compare(size: int, rows: dict[str, list[dict[str, Any]]], folder: Path) -> list[dict[str, Any]]:
    """Greedy tokens and logits of pairs that should agree: the two fulls, corehead's and kvpress's Duo."""
    import torch
    from safetensors.torch import load_file

    out = []
    pairs = [("full_corehead_env", "full_kvpress_env"), ("hybrid_recent_corehead", "duo_kvpress")]
    pairs += [(FULL[METHODS[m]], m) for m in rows if not m.startswith("full_")]
    for a, b in pairs:
        if a in rows and b in rows:
            la, lb = (load_file(str(folder / f"logits-{size}-{m}.safetensors"))["logits"] for m in (a, b))
            line = {"kind": "agreement", "visual_tokens": size, "a": a, "b": b}
            line["same_tokens"] = rows[a][0]["tokens"] == rows[b][0]["tokens"]
            line["logits_max_abs_diff"] = float((la - lb).abs().max())
            line["logits_scale"] = float(torch.maximum(la.abs().max(), lb.abs().max()))
            if METHODS[a] != METHODS[b]:  # the same work in the two environments: b / a, paired by repeat
                for key, short in (("prefill_s", "prefill"), ("decode_s_per_token", "decode")):
                    line[f"{short}_b_over_a"] = ratio([r[key] for r in rows[b]], [r[key] for r in rows[a]], 3)
            out.append(line)
    return out


def _cell(value: dict[str, float] | None, digits: int = 3) -> str:
    if value is None:
        return "-"
    return f"{value['median']:.{digits}g} ({value['min']:.{digits}g}-{value['max']:.{digits}g})"


def table(lines: list[dict[str, Any]]) -> str:
    """The Markdown table of the summary lines."""
    head = (
        "| visual tokens | method | env | prompt KV kept | KV held MiB | held / full | logical / full | "
        "prefill s | prefill / full | decode ms/token | decode / full | peak RSS MiB |"
    )
    rows = [head, "|" + "---|" * 12]
    for x in lines:
        rows.append(
            f"| {x['visual_tokens']} | {x['method']} | {x['env']} | {x['prompt_kv_share']:.4f} | "
            f"{x['kv_held_mib']['median']:.1f} | {_cell(x.get('kv_held_vs_full'))} | "
            f"{_cell(x.get('kv_logical_vs_full'))} | {_cell(x['prefill_s'])} | {_cell(x.get('prefill_vs_full'))} | "
            f"{_cell(x['decode_ms'])} | {_cell(x.get('decode_vs_full'))} | {x['peak_rss_mib']['median']:.0f} |"
        )
    return "\n".join(rows)


def orchestrate(args: argparse.Namespace, parser: argparse.ArgumentParser) -> None:
    """Every (size, repeat, method) as its own worker process, methods taking turns; the lines and table."""
    names = list(args.methods)
    pythons = {"corehead": Path(sys.executable)}
    if any(METHODS[m] == "kvpress" for m in names):
        try:
            pythons["kvpress"] = side_python(Path(args.kvpress_python))
        except (FileNotFoundError, RuntimeError) as error:
            parser.error(str(error))
    with ExitStack() as stack:
        if args.work:
            folder = Path(args.work)
            folder.mkdir(parents=True, exist_ok=True)
        else:
            folder = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="vs-kvpress-")))
        prepare(folder, args.layers, args.hidden, args.intermediate, args.sizes, args.budget)
        head = {"kind": "setup", "device": args.device, "cpu": cpu(), "threads": args.threads, "layers": args.layers}
        head |= {"hidden": args.hidden, "intermediate": args.intermediate, "budget": args.budget}
        head |= {"malloc_mmap_threshold": args.mmap_threshold or "glibc default"}
        head |= {
            "new_tokens": args.new_tokens,
            "repeats": args.repeats,
            "python": {k: str(v) for k, v in pythons.items()},
        }
        print(json.dumps(head), flush=True)
        lines = []
        for size in args.sizes:
            budget = Budget(**json.loads((folder / f"budget-{size}.json").read_text()))
            print(json.dumps({"kind": "budget", **asdict(budget)}), flush=True)
            rows: dict[str, list[dict[str, Any]]] = {m: [] for m in names}
            for repeat in range(args.repeats):
                for name in turns(names, repeat):
                    rows[name].append(launch(pythons[METHODS[name]], args, name, size, repeat, folder))
            for line in summarize(size, rows, budget) + compare(size, rows, folder):
                print(json.dumps(line), flush=True)
                if line["kind"] == "vs_kvpress":
                    lines.append(line)
    print(table(lines), flush=True)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[4096, 8192], help="visual tokens of the prompts")
    parser.add_argument("--repeats", type=int, default=3, help="processes per (size, method), at least 3")
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS), help="methods run")
    parser.add_argument("--budget", type=float, default=0.1, help="share of visual tokens a reduced head keeps")
    parser.add_argument("--layers", type=int, default=2, help="decoder layers")
    parser.add_argument("--hidden", type=int, default=4096, help="hidden size (Qwen3-VL-8B: 4096)")
    parser.add_argument("--intermediate", type=int, default=1024, help="MLP size (Qwen3-VL-8B: 12288)")
    parser.add_argument("--new-tokens", type=int, default=8, help="greedy decode steps timed")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"], help="cuda runs in bfloat16")
    parser.add_argument("--threads", type=int, default=2, help="torch threads per worker")
    parser.add_argument(
        "--mmap-threshold",
        type=int,
        default=32 << 20,
        help="workers' MALLOC_MMAP_THRESHOLD_ (trim: twice), bytes; 0: glibc's",
    )
    parser.add_argument("--kvpress-python", default=str(SIDE_PYTHON), help=f"the side env's Python ({SETUP})")
    parser.add_argument("--work", default="", help="folder for weights, ids and results (default: a temp dir)")
    worker_args = parser.add_argument_group("worker (started by the orchestrator)")
    worker_args.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    worker_args.add_argument("--method", choices=list(METHODS), help=argparse.SUPPRESS)
    worker_args.add_argument("--size", type=int, help=argparse.SUPPRESS)
    worker_args.add_argument("--folder", help=argparse.SUPPRESS)
    worker_args.add_argument("--repeat", type=int, default=0, help=argparse.SUPPRESS)
    worker_args.add_argument("--result", help=argparse.SUPPRESS)
    worker_args.add_argument("--logits", default="", help=argparse.SUPPRESS)
    return parser


def main() -> None:
    parser = _parser()
    args = parser.parse_args()
    if args.worker:
        row = worker(args)
        Path(args.result).write_text(json.dumps(row))
        return
    check_repeats(parser, args.repeats)
    orchestrate(args, parser)


if __name__ == "__main__":
    main()
