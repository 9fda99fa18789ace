"""benchmarks/scale.py in its smoke configuration: every method and part runs, scale.json keeps its contract,
and the figures it reports agree with what the geometry says (KV bytes, the kept share, the largest batch)."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import Any

import pytest
from test_benchmarks import _figures, _main, _rows, _script

QUESTION = 40
METHODS = ["full", "hybrid", "hybrid_prefill", "query_agnostic"]
TOP = {"benchmark", "command", "device", "dtype", "geometry", "budget", "core_kv_heads", "repeats", "new_tokens"}
TOP |= {"memory_gb", "hybrid", "scoring"}
GEOMETRY = {"layers", "hidden", "heads", "kv_heads", "head_dim", "intermediate", "vocab"}
HYBRID = {"visual_tokens", "batch", "method", "prefill_s", "decode_ms", "prefill_speedup", "decode_speedup"}
HYBRID |= {"kv_bytes", "kv_vs_full", "peak_memory_bytes", "max_batch", "max_batch_basis"}
SCORING = {"visual_tokens", "layers", "method", "seconds", "peak_memory_bytes", "skipped", "eager_over_corehead"}
SCORING |= {"corehead_over_forward"}
ITEMSIZE = {"float32": 4, "bfloat16": 2}


def _weights(g: dict[str, int], itemsize: int) -> int:
    """Parameter bytes of a Qwen3 causal LM of this geometry (untied embeddings, qk-norm, two norms a layer)."""
    attention = g["hidden"] * g["head_dim"] * (2 * g["heads"] + 2 * g["kv_heads"]) + 2 * g["head_dim"]
    layer = attention + 3 * g["hidden"] * g["intermediate"] + 2 * g["hidden"]
    return (g["layers"] * layer + 2 * g["vocab"] * g["hidden"] + g["hidden"]) * itemsize


def _smoke(
    args: list[str], out: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> tuple[dict[str, Any], str]:
    printed = _main("scale", ["--smoke", *args, "--out", str(out)], monkeypatch, capsys)
    return json.loads((out / "scale.json").read_text()), printed


def test_smoke_reports_what_the_geometry_says(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    report, printed = _smoke([], tmp_path, monkeypatch, capsys)
    assert set(report) == TOP and set(report["geometry"]) == GEOMETRY
    assert report["benchmark"] == "scale" and report["command"].startswith("python benchmarks/scale.py --smoke")
    assert report["device"].startswith("cpu: ") and report["device"].endswith(" threads")
    assert report["dtype"] == "float32" and report["core_kv_heads"] == [0, 1] and report["repeats"] == 3
    g, budget, new = report["geometry"], report["budget"], report["new_tokens"]
    assert (g["heads"], g["kv_heads"], g["head_dim"], g["layers"]) == (32, 8, 128, 2)
    itemsize = ITEMSIZE[report["dtype"]]
    weights, memory = _weights(g, itemsize), int(report["memory_gb"] * 2**30)

    rows = report["hybrid"]
    assert [(r["batch"], r["method"]) for r in rows] == [(b, m) for b in (1, 2) for m in METHODS]
    lines = {kind: [{k: v for k, v in r.items() if k != "kind"} for r in rs] for kind, rs in _rows(printed).items()}
    assert lines["hybrid"] == rows and lines["scoring"] == report["scoring"]  # every row also printed
    assert lines["setup"] == [{k: v for k, v in report.items() if k not in ("hybrid", "scoring")}]
    assert "max batch" in printed and "corehead / forward" in printed  # the table
    for row in rows:
        assert set(row) == HYBRID
        n, batch = row["visual_tokens"], row["batch"]
        tokens = n + QUESTION + new - 1  # the last generated token is never fed back
        full = 2 * g["layers"] * g["kv_heads"] * g["head_dim"] * tokens * itemsize * batch
        kept = tokens - n + math.ceil(budget * n)  # a reduced head: the text, the decoded tokens, its visual share
        heads_tokens = 2 * tokens + (g["kv_heads"] - 2) * kept  # 2 CoRe KV heads hold every token
        share = heads_tokens / (g["kv_heads"] * tokens)
        if row["method"] == "full":
            assert row["kv_bytes"] == full and row["kv_vs_full"] == 1.0
            assert row["prefill_speedup"] is None and row["decode_speedup"] is None
        else:
            assert row["kv_bytes"] == 2 * g["layers"] * g["head_dim"] * heads_tokens * itemsize * batch
            assert row["kv_vs_full"] == pytest.approx(share, abs=1e-6)
            assert row["prefill_speedup"]["median"] > 0 and row["decode_speedup"]["median"] > 0
        assert row["peak_memory_bytes"] is None and row["max_batch_basis"] == "kv bytes only"
        per_request, fits = row["kv_bytes"] / batch, row["max_batch"]
        assert fits > 0 and weights + per_request * fits <= memory < weights + per_request * (fits + 1)
    by = {(r["batch"], r["method"]): r["max_batch"] for r in rows}
    assert all(by[(1, m)] == by[(2, m)] for m in METHODS)  # KV per request does not depend on the batch
    assert by[(1, "hybrid")] > 2 * by[(1, "full")]

    scoring = report["scoring"]
    assert [r["method"] for r in scoring] == ["forward", "corehead", "eager"]
    for row in scoring:
        assert set(row) == SCORING and row["skipped"] is None and row["layers"] == 2 and row["seconds"]["min"] > 0
        assert (row["eager_over_corehead"] is not None) == (row["method"] == "eager")
        assert (row["corehead_over_forward"] is not None) == (row["method"] == "corehead")
    figures = [f for row in rows + scoring for f in _figures(row)]
    per_batch = 2 + 3 * 4  # full: prefill and decode; the others also their two speed-ups
    assert len(figures) == 2 * per_batch + 3 + 2  # scoring: every method's seconds and two ratios
    assert all(f["min"] <= f["median"] <= f["max"] for f in figures)


def test_eager_is_skipped_past_its_limit_and_sizes_can_be_set(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["--sizes", "32", "--batches", "1", "--score-sizes", "32", "--eager-limit-gb", "0", "--memory-gb", "1"]
    report, _ = _smoke(args, tmp_path, monkeypatch, capsys)
    assert report["memory_gb"] == 1 and [r["visual_tokens"] for r in report["hybrid"]] == [32] * 4
    eager = report["scoring"][-1]
    assert eager["method"] == "eager" and eager["seconds"] is None and eager["eager_over_corehead"] is None
    assert eager["skipped"].startswith("its [layers, heads, L, L] attention maps alone need")


@pytest.mark.parametrize(
    ("args", "why"),
    [
        (["--smoke", "--repeats", "2"], "at least 3"),
        (["--device", "cpu"], "explicit (small) --sizes"),
        (["--smoke", "--new-tokens", "1"], "at least 2"),
    ],
)
def test_refused(args: list[str], why: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]):
    monkeypatch.setattr(sys, "argv", ["scale.py", *args])
    with pytest.raises(SystemExit):
        _script("scale").main()
    assert why in capsys.readouterr().err


def test_methods_take_turns_and_one_out_of_memory_is_dropped(monkeypatch: pytest.MonkeyPatch) -> None:
    """The per-size loop with a stubbed run: turns rotate, speed-ups pair repeats, and a method that runs out
    of memory (the full cache, at sizes where only the hybrid fits) leaves the others measured, unpaired."""
    import torch

    scale = _script("scale")
    order: list[str] = []
    seconds = {"full": 2.0, "hybrid": 1.0, "hybrid_prefill": 0.5, "query_agnostic": 1.0}

    def run(model: Any, ids: Any, n: int, method: str, plan: Any, new_tokens: int) -> Any:
        order.append(method)
        if method == "full" and fail:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 9 GiB")
        return scale.Run(seconds[method], seconds[method] / 10, 1000 if method == "full" else 250, None)

    monkeypatch.setattr(scale, "generate", run)
    geometry = scale.Geometry(layers=1, hidden=8, heads=4, kv_heads=4, head_dim=2, intermediate=8, vocab=32)
    setup = scale.Setup(geometry, torch.device("cpu"), torch.float32, 0.1, 3, 2, 2**20, 0, 1)
    model = torch.nn.Linear(4, 4, bias=False)  # 64 bytes of weights
    fail = False
    rows, skipped = scale.measure_hybrid(model, setup, 16, 2)
    assert order == [*METHODS, *METHODS[1:], METHODS[0], *METHODS[2:], *METHODS[:2]]  # rotated by one a repeat
    assert not skipped and [r["method"] for r in rows] == list(scale.METHODS)
    assert rows[2]["prefill_speedup"] == {"median": 4.0, "min": 4.0, "max": 4.0}
    assert rows[1]["max_batch"] == (2**20 - 64) * 2 // 250
    order.clear()
    fail = True
    rows, skipped = scale.measure_hybrid(model, setup, 16, 2)
    assert order.count("full") == 1 and len(order) == 1 + 3 * 3  # tried once, then left out
    assert [r["method"] for r in rows] == ["hybrid", "hybrid_prefill", "query_agnostic"]
    assert all(r["prefill_speedup"] is None and r["decode_speedup"] is None for r in rows)
    assert skipped == ["full: out of memory: CUDA out of memory. Tried to allocate 9 GiB"]
