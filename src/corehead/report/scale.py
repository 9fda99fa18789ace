"""The report's section on cost at scale, from the scale.json that `benchmarks/scale.py` writes: prefill and
decode time, KV bytes, peak memory and the largest batch in a memory budget per method and picture size, and
what scoring costs (corehead's recorder against eager attention and a plain forward).

Every measured figure is the median of the benchmark's repeats with their spread, shown as "median (min–max)".
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from corehead import plots
from corehead.report.page import Page, esc, table

SCALE = "scale.json"
FIGURE = ("median", "min", "max")
# What each field of scale.json holds: "int", "number", "text", "list", "figure" ({median, min, max}),
# "geometry" (an object), "rows" (a list of objects); a trailing "?" allows null.
TOP = {"benchmark": "text", "command": "text", "device": "text", "dtype": "text", "geometry": "geometry",
       "budget": "number", "core_kv_heads": "list", "repeats": "int", "new_tokens": "int", "memory_gb": "number",
       "hybrid": "rows", "scoring": "rows"}  # fmt: skip
GEOMETRY = {name: "int" for name in ("layers", "hidden", "heads", "kv_heads", "head_dim", "intermediate", "vocab")}
HYBRID = {"visual_tokens": "int", "batch": "int", "method": "text", "prefill_s": "figure", "decode_ms": "figure",
          "prefill_speedup": "figure?", "decode_speedup": "figure?", "kv_bytes": "int", "kv_vs_full": "number",
          "peak_memory_bytes": "int?", "max_batch": "int", "max_batch_basis": "text"}  # fmt: skip
SCORING = {"visual_tokens": "int", "layers": "int", "method": "text", "seconds": "figure?",
           "peak_memory_bytes": "int?", "skipped": "text?", "eager_over_corehead": "figure?",
           "corehead_over_forward": "figure?"}  # fmt: skip
METHODS = ("full", "hybrid", "hybrid_prefill", "query_agnostic")  # the hybrid table's order within a size
MIB = 2**-20


def is_scale(path: Path) -> bool:
    """Whether a scale.json is the scale benchmark's (its "benchmark" is "scale"); other files of that name are
    not the report's to read."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise ValueError(f"{path} is not JSON: {err}") from err
    return isinstance(data, dict) and data.get("benchmark") == "scale"


def read_scale(path: Path) -> dict[str, Any]:
    """A scale.json, checked field by field, so that a file of another version fails naming the file and the
    field rather than somewhere in the page."""
    data = json.loads(path.read_text(encoding="utf-8"))
    _check(data, TOP, path, "")
    _check(data["geometry"], GEOMETRY, path, "geometry.")
    for key, fields in (("hybrid", HYBRID), ("scoring", SCORING)):
        for i, row in enumerate(data[key]):
            if not isinstance(row, dict):
                raise ValueError(f"{path}: {key}[{i}] is not an object")
            _check(row, fields, path, f"{key}[{i}].")
    return data


def _check(obj: dict[str, Any], fields: dict[str, str], path: Path, where: str) -> None:
    """A clear error for the first field of `fields` missing from `obj` or not of its kind."""
    for name, kind in fields.items():
        if name not in obj:
            raise ValueError(f"{path}: missing field '{where}{name}'")
        value = obj[name]
        if value is None and kind.endswith("?"):
            continue
        kind = kind.rstrip("?")
        number = isinstance(value, int | float) and not isinstance(value, bool)
        ok = {
            "int": isinstance(value, int) and not isinstance(value, bool),
            "number": number,
            "text": isinstance(value, str),
            "list": isinstance(value, list),
            "rows": isinstance(value, list),
            "geometry": isinstance(value, dict),
            "figure": isinstance(value, dict) and all(isinstance(value.get(k), int | float) for k in FIGURE),
        }[kind]
        if not ok:
            expected = "{median, min, max}" if kind == "figure" else kind
            raise ValueError(f"{path}: field '{where}{name}' should be {expected}, not {value!r}")


def spread(figure: dict[str, float], fmt: str = ".3g", unit: str = "") -> str:
    """A measured figure as "median (min–max)", each number in `fmt` followed by `unit`."""
    low, mid, high = (format(figure[k], fmt) + unit for k in ("min", "median", "max"))
    return f"{mid} ({low}–{high})"


def _timed(row: dict[str, Any], key: str, speedup: str) -> str:
    """A time with its speed-up over full attention when the row has one (full's is null)."""
    text = spread(row[key])
    return text if row[speedup] is None else f"{text}; {spread(row[speedup], '.2f', 'x')}"


def _memory(value: int | None, cpu: bool) -> str:
    return f"{value * MIB:.1f} MiB" if value is not None else "n/a (CPU)" if cpu else "n/a"


def _about(result: dict[str, Any], label: str) -> str:
    """What was measured, where and how: the paragraph above the tables."""
    g = result["geometry"]
    geometry = (
        f"{g['layers']} layers, hidden {g['hidden']}, {g['heads']} heads ({g['kv_heads']} KV heads of "
        f"{g['head_dim']}), intermediate {g['intermediate']}, vocabulary {g['vocab']}"
    )
    facts = (
        f"{label}: device {result['device']}; dtype {result['dtype']}; geometry {geometry}; budget "
        f"{result['budget']}; core KV heads {result['core_kv_heads']}; {result['repeats']} repeats; "
        f"{result['new_tokens']} new tokens; memory budget {result['memory_gb']} GB"
    )
    return f"<p>{esc(facts)}</p><p>command: <code>{esc(result['command'])}</code></p>"


def _hybrid_table(rows: list[dict[str, Any]], cpu: bool) -> str:
    """Every (size, batch, method): times with speed-ups over full, KV bytes, peak memory, largest batch."""
    order = {m: i for i, m in enumerate(METHODS)}
    ordered = sorted(rows, key=lambda r: (r["visual_tokens"], r["batch"], order.get(r["method"], len(order))))
    cells = [
        [str(r["visual_tokens"]), str(r["batch"]), esc(r["method"]), _timed(r, "prefill_s", "prefill_speedup"),
         _timed(r, "decode_ms", "decode_speedup"), f"{r['kv_bytes'] * MIB:.1f} MiB ({r['kv_vs_full']:.1%} of full)",
         _memory(r["peak_memory_bytes"], cpu), f"{r['max_batch']} ({esc(r['max_batch_basis'])})"]
        for r in ordered
    ]  # fmt: skip
    header = ["visual tokens", "batch", "method", "prefill s (speed-up vs full)", "decode ms / token (speed-up)",
              "KV bytes (share of full)", "peak memory", "largest batch in the memory budget (basis)"]  # fmt: skip
    return table(header, cells, "num scale-hybrid")


def _scoring_table(rows: list[dict[str, Any]], cpu: bool) -> str:
    """Seconds to score per (size, layers, method), the ratios between methods and why a method was skipped."""

    def ratio(value: dict[str, float] | None) -> str:
        return "" if value is None else spread(value, ".2f", "x")

    cells = [
        [str(r["visual_tokens"]), str(r["layers"]), esc(r["method"]),
         "n/a" if r["seconds"] is None else spread(r["seconds"]), _memory(r["peak_memory_bytes"], cpu),
         ratio(r["eager_over_corehead"]), ratio(r["corehead_over_forward"]), esc(r["skipped"] or "")]
        for r in rows
    ]  # fmt: skip
    header = ["visual tokens", "layers", "method", "seconds", "peak memory", "eager / corehead",
              "corehead / forward", "skipped"]  # fmt: skip
    return table(header, cells, "num scale-scoring")


def scale_section(page: Page, index: int, label: str, run: Path, result: dict[str, Any]) -> dict[str, Any]:
    """The section of one scale benchmark (`result`, read by read_scale from `run`): its settings, the costs
    of each method, a figure of how decode time and KV grow with the picture, and the cost of scoring."""
    slug = f"scale{index}"
    cpu = result["device"].lower().startswith("cpu")
    rows = result["hybrid"]
    body = _about(result, label)
    if rows:
        batch = 1 if any(r["batch"] == 1 for r in rows) else min(r["batch"] for r in rows)
        title = f"decode time and KV cache against visual tokens (batch {batch}, {result['device']})"
        body += page.plot(lambda p: plots.scale_costs(rows, batch, title, p), slug, title)
        body += "<h3>Prefill, decode and memory per method</h3>" + _hybrid_table(rows, cpu)
    if result["scoring"]:
        body += "<h3>Scoring: corehead against eager attention and a plain forward</h3>"
        body += _scoring_table(result["scoring"], cpu)
    page.add(f"Cost at scale: {result['device']}", body, slug)
    return {"label": label, "path": str(run / SCALE), **result}
