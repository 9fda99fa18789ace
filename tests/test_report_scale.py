"""The report's cost-at-scale section: a scale.json of benchmarks/scale.py (written here by hand, with known
numbers) shows its settings, every method's times, speed-ups, KV bytes, memory and largest batch, a figure and
the scoring costs; alone or beside an acceleration run; a file missing a field fails naming file and field."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
from helpers import runner
from test_report import table_rows
from test_report_causal import report

from corehead.cli import app
from corehead.data import synthetic
from corehead.experiments import accelerate
from corehead.experiments.score import score_and_select
from corehead.models.qwen_vl import QwenVLAdapter

MIB = 2**20
GEOMETRY = {"layers": 4, "hidden": 256, "heads": 8, "kv_heads": 2, "head_dim": 64, "intermediate": 512, "vocab": 1000}
BYTES_PER_TOKEN = 2 * GEOMETRY["layers"] * GEOMETRY["kv_heads"] * GEOMETRY["head_dim"] * 2  # K and V, bfloat16
SIZES = (256, 1024)
BATCHES = (1, 8)
# per method: decode time per token and KV as shares of full attention's, and the largest batch in 80 GB
SHARES = {"full": (1.0, 1.0, 40), "hybrid": (0.5, 0.25, 120), "hybrid_prefill": (0.4, 0.25, 125),
          "query_agnostic": (0.625, 0.125, 200)}  # fmt: skip
SKIPPED = "eager attention needs > 80 GB & was not run"
COMMAND = "python benchmarks/scale.py --sizes 256,1024 --batches 1,8 --out <bench>"


def figure(median: float, low: float, high: float) -> dict[str, float]:
    return {"median": median, "min": low, "max": high}


def hybrid_rows(gpu: bool) -> list[dict[str, Any]]:
    """Every (size, batch, method): full's decode takes size/64 ms per token at batch 1 (twice that at batch 8),
    prefill size/1000 s per sample; the others are full's times scaled by their share."""
    rows = []
    for tokens in SIZES:
        for batch in BATCHES:
            decode = tokens / 64 * (1 if batch == 1 else 2)
            prefill = tokens / 1000 * batch
            kv = BYTES_PER_TOKEN * tokens * batch
            for method, (time_share, kv_share, largest) in SHARES.items():
                d, p = decode * time_share, prefill * (1.0 if method == "full" else 0.8)
                full = method == "full"
                rows.append({"visual_tokens": tokens, "batch": batch, "method": method,
                             "prefill_s": figure(p, p * 0.9, p * 1.1), "decode_ms": figure(d, d * 0.9, d * 1.2),
                             "prefill_speedup": None if full else figure(1.25, 1.2, 1.3),
                             "decode_speedup": None if full else figure(1 / time_share, 1.5, 2.75),
                             "kv_bytes": int(kv * kv_share), "kv_vs_full": kv_share,
                             "peak_memory_bytes": (3 * 1024 + tokens * batch) * MIB if gpu else None,
                             "max_batch": largest, "max_batch_basis": "measured peak per sample"})  # fmt: skip
    return rows


def scoring_rows() -> list[dict[str, Any]]:
    """corehead, eager (skipped at 1024 tokens) and a plain forward at both sizes."""
    rows = []
    for tokens in SIZES:
        base = tokens / 512
        rows += [
            {"visual_tokens": tokens, "layers": 4, "method": "corehead", "seconds": figure(base, base, base * 1.1),
             "peak_memory_bytes": 2048 * MIB, "skipped": None,
             "eager_over_corehead": None if tokens == 1024 else figure(3.0, 2.5, 3.5),
             "corehead_over_forward": figure(1.5, 1.25, 1.75)},
            {"visual_tokens": tokens, "layers": 4, "method": "eager",
             "seconds": None if tokens == 1024 else figure(3 * base, 3 * base, 3 * base),
             "peak_memory_bytes": None if tokens == 1024 else 4096 * MIB,
             "skipped": SKIPPED if tokens == 1024 else None, "eager_over_corehead": None,
             "corehead_over_forward": None},
            {"visual_tokens": tokens, "layers": 4, "method": "forward", "seconds": figure(base / 1.5, base / 2, base),
             "peak_memory_bytes": 1024 * MIB, "skipped": None, "eager_over_corehead": None,
             "corehead_over_forward": None},
        ]  # fmt: skip
    return rows


def scale_json(folder: Path, device: str = "cuda: NVIDIA H200", **changes: Any) -> Path:
    """A scale.json as benchmarks/scale.py writes it, into `folder`; `changes` replace (None: drop) fields."""
    data: dict[str, Any] = {
        "benchmark": "scale", "command": COMMAND, "device": device, "dtype": "bfloat16", "geometry": GEOMETRY,
        "budget": 0.1, "core_kv_heads": [0, 1], "repeats": 3, "new_tokens": 8, "memory_gb": 80,
        "hybrid": hybrid_rows(device.startswith("cuda")), "scoring": scoring_rows(),
    }  # fmt: skip
    for key, value in changes.items():
        if value is None:
            del data[key]
        else:
            data[key] = value
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "scale.json").write_text(json.dumps(data, indent=1))
    return folder / "scale.json"


def section(page: str, title: str) -> str:
    """The HTML of the section with heading `title`."""
    found = re.search(rf"<section[^>]*><h2>{re.escape(title)}</h2>(.*?)</section>", page, re.S)
    assert found is not None, title
    return found.group(1)


def test_a_lone_scale_benchmark_shows_every_method_and_the_scoring_costs(tmp_path: Path) -> None:
    gpu = scale_json(tmp_path / "study" / "bench-gpu")
    scale_json(tmp_path / "study" / "bench-cpu", device="cpu: AMD EPYC 9454, 16 threads")
    page, summary = report(tmp_path / "study", out=tmp_path / "report.html")
    body = section(page, "Cost at scale: cuda: NVIDIA H200")
    assert (
        "device cuda: NVIDIA H200; dtype bfloat16" in body
        and "4 layers, hidden 256, 8 heads (2 KV heads of 64)" in body
    )
    assert "budget 0.1; core KV heads [0, 1]; 3 repeats" in body
    assert f"<code>{COMMAND.replace('<', '&lt;').replace('>', '&gt;')}</code>" in body
    rows = table_rows(body, "scale-hybrid")
    assert len(rows) == len(SIZES) * len(BATCHES) * len(SHARES)
    assert [tuple(r[:3]) for r in rows[:4]] == [("256", "1", m) for m in SHARES]  # full first in each group
    by = {(int(r[0]), int(r[1]), r[2]): r for r in rows}
    # full at 1024 tokens, batch 8: decode 1024/64*2 = 32 ms; prefill 1024/1000*8 = 8.192 s; KV 2048 B * 8192 = 16 MiB
    full = by[1024, 8, "full"]
    assert full[3] == "8.19 (7.37–9.01)" and full[4] == "32 (28.8–38.4)"
    assert full[5] == "16.0 MiB (100.0% of full)"
    assert full[6] == f"{3 * 1024 + 8192:.1f} MiB" and full[7] == "40 (measured peak per sample)"
    hybrid = by[1024, 8, "hybrid"]  # half full's decode time: speed-up 2, a quarter of its KV
    assert hybrid[4] == "16 (14.4–19.2); 2.00x (1.50x–2.75x)" and hybrid[3].endswith("; 1.25x (1.20x–1.30x)")
    assert hybrid[5] == "4.0 MiB (25.0% of full)" and hybrid[7].startswith("120 ")
    agnostic = by[256, 1, "query_agnostic"]  # 256/64 = 4 ms * 0.625; KV 2048 B * 256 / 8 = 64 KiB
    assert agnostic[4].startswith("2.5 (2.25–3); 1.60x") and agnostic[5] == "0.1 MiB (12.5% of full)"
    scoring = table_rows(body, "scale-scoring")
    eager = next(r for r in scoring if r[:3] == ["1024", "4", "eager"])
    assert eager[3] == "n/a" and eager[4] == "n/a" and eager[7] == "eager attention needs &gt; 80 GB &amp; was not run"
    corehead = next(r for r in scoring if r[:3] == ["256", "4", "corehead"])
    assert corehead[3] == "0.5 (0.5–0.55)" and corehead[4] == "2048.0 MiB"
    assert corehead[5] == "3.00x (2.50x–3.50x)" and corehead[6] == "1.50x (1.25x–1.75x)"
    cpu = section(page, "Cost at scale: cpu: AMD EPYC 9454, 16 threads")
    assert {r[6] for r in table_rows(cpu, "scale-hybrid")} == {"n/a (CPU)"}
    files = tmp_path / "report_files"
    for name in ("scale0", "scale1"):
        assert (files / f"{name}.png").read_bytes()[:4] == b"\x89PNG"
        assert "<svg" in (files / f"{name}.svg").read_text()[:2000]
    assert summary["acceleration"] == [] and summary["scoring"] == []
    shown = {s["device"]: s for s in summary["scale"]}
    assert shown["cuda: NVIDIA H200"]["hybrid"] == json.loads(gpu.read_text())["hybrid"]
    assert shown["cuda: NVIDIA H200"]["label"] == "bench-gpu" and shown["cuda: NVIDIA H200"]["path"] == str(gpu)


def test_the_figure_draws_batch_one_per_method(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from matplotlib.figure import Figure

    from corehead import plots

    drawn: list[Figure] = []
    save = Figure.savefig
    monkeypatch.setattr(Figure, "savefig", lambda fig, *a, **k: (drawn.append(fig), save(fig, *a, **k)))
    plots.scale_costs(hybrid_rows(gpu=True), 1, "costs", tmp_path / "costs.png")
    decode, kv = drawn[0].axes
    assert [line.get_label() for line in kv.get_lines()] == list(SHARES)
    assert kv.get_xscale() == "log" and decode.get_xscale() == "log"
    full = kv.get_lines()[0]
    assert list(full.get_xdata()) == list(SIZES)
    assert list(full.get_ydata()) == [BYTES_PER_TOKEN * n / 2**30 for n in SIZES]  # batch 1 only


def test_a_scale_json_missing_a_field_names_the_file_and_the_field(tmp_path: Path) -> None:
    path = scale_json(tmp_path / "a", hybrid=None)
    bad = runner.invoke(app, ["report", str(tmp_path / "a"), "--out", str(tmp_path / "a.html")])
    assert bad.exit_code != 0 and str(bad.exception) == f"{path}: missing field 'hybrid'"
    assert not (tmp_path / "a.html").exists() and not (tmp_path / "a_files").exists()
    rows = hybrid_rows(gpu=True)
    del rows[1]["decode_ms"]
    path = scale_json(tmp_path / "b", hybrid=rows)
    bad = runner.invoke(app, ["report", str(tmp_path / "b"), "--out", str(tmp_path / "b.html")])
    assert bad.exit_code != 0 and str(bad.exception) == f"{path}: missing field 'hybrid[1].decode_ms'"
    path = scale_json(tmp_path / "c", geometry={**GEOMETRY, "vocab": "big"})
    bad = runner.invoke(app, ["report", str(tmp_path / "c"), "--out", str(tmp_path / "c.html")])
    assert bad.exit_code != 0 and str(bad.exception).startswith(f"{path}: field 'geometry.vocab' should be int")
    scale_json(tmp_path / "d", benchmark="throughput")  # not the scale benchmark's: passed over
    bad = runner.invoke(app, ["report", str(tmp_path / "d"), "--out", str(tmp_path / "d.html")])
    assert bad.exit_code != 0 and "no runs in" in str(bad.exception) and "scale.json" in str(bad.exception)


def test_an_acceleration_run_and_a_scale_benchmark_side_by_side(tmp_path: Path, tiny_builtin: QwenVLAdapter) -> None:
    samples = list(synthetic.generate("scenes", 3, seed=1))
    headset, _ = score_and_select(tiny_builtin, samples, tmp_path / "run", "synthetic:scenes")
    tested = list(synthetic.generate("scenes", 2, seed=2))
    accelerate.accelerate(tiny_builtin, tested, headset, tmp_path / "acc", 0.1, ["full", "core"], 2)
    scale_json(tmp_path / "bench")
    page, summary = report(tmp_path, out=tmp_path / "report.html")
    assert page.index("<h2>Acceleration acc</h2>") < page.index("<h2>Cost at scale: cuda: NVIDIA H200</h2>")
    assert [r[0] for r in table_rows(page, "acceleration")] == ["full", "core"]
    assert len(table_rows(page, "scale-hybrid")) == 16
    assert [s["label"] for s in summary["acceleration"]] == ["acc"]
    assert [s["label"] for s in summary["scale"]] == ["bench"]
