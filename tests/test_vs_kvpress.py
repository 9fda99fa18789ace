"""benchmarks/vs_kvpress.py: the budget kvpress's presses get matches corehead's hybrid (checked against an
independent computation), the corehead-side worker measures the bytes its cache really holds, a missing side
environment names the command that creates it, and (only where .venv-kvpress exists) the whole orchestrator."""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import sys
from fractions import Fraction
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
BENCHMARKS = ROOT / "benchmarks"
SIDE = ROOT / ".venv-kvpress" / "bin" / "python"


def _module() -> ModuleType:
    if str(BENCHMARKS) not in sys.path:
        sys.path.insert(0, str(BENCHMARKS))
    spec = importlib.util.spec_from_file_location("bench_vs_kvpress", BENCHMARKS / "vs_kvpress.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


vs = _module()


def _kvpress_n_kept(k_len: int, compression_ratio: float) -> int:
    """kvpress 0.5.5's kvpress.utils.compute_n_kept, restated."""
    return 0 if compression_ratio >= 1.0 else max(1, int(k_len * (1 - compression_ratio)))


@pytest.mark.parametrize("visual", [100, 200, 1000, 4096, 8192, 16384])
def test_budget_matches_the_hybrid(visual: int):
    """f from the hybrid's kept counts; SnapKV/AdaKV keep floor(f L) tokens a head (kvpress's rounding);
    Duo's streaming heads keep what a reduced corehead head keeps, so kvpress's own ratio is 1 - f."""
    length = visual + 40
    kept = 40 + math.ceil(Fraction(visual, 10))  # every question token + ceil(0.1 n) visual tokens
    f = Fraction(2 * length + 6 * kept, 8 * length)  # KV heads 0, 1 whole; 6 of 8 reduced
    b = vs.budget_match(visual, 0.1)
    assert (b.length, b.reduced_kept, b.kept_entries) == (length, kept, 2 * length + 6 * kept)
    assert b.share == float(f)
    assert b.snap_ratio == pytest.approx(float(1 - f), abs=1e-12)
    assert _kvpress_n_kept(length, b.snap_ratio) == b.snap_kept == math.floor(f * length)
    assert 0 <= (2 * length + 6 * kept) - 8 * b.snap_kept < 8  # within one token per head of the hybrid
    assert (b.duo_sink, b.duo_sink + b.duo_recent, b.duo_head_ratio) == (4, kept, 0.75)
    duo_ratio = 0.75 * (1 - (b.duo_sink + b.duo_recent) / length)  # DuoAttentionPress.compression_ratio_
    assert duo_ratio == pytest.approx(float(1 - f), abs=1e-12)


def test_storages_are_deduplicated():
    base = torch.zeros(2, 3, 4)
    held = vs.storages([base, base[:, :1], base.clone(), torch.tensor([])])
    assert sorted(held.values()) == [base.nbytes, base.nbytes]


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny model (1 layer, hidden 256, the real 32/8 heads of 128) and a 200-visual-token prompt."""
    out = tmp_path_factory.mktemp("vs-kvpress")
    vs.prepare(out, 1, 256, 64, [200], 0.1)
    return out


def _work(folder: Path, name: str, new_tokens: int = 3) -> dict[str, Any]:
    threads = torch.get_num_threads()
    args = argparse.Namespace(
        method=name, size=200, folder=str(folder), repeat=0, device="cpu", threads=threads, new_tokens=new_tokens
    )
    args.logits = str(folder / f"logits-{name}.safetensors")
    try:
        return vs.worker(args)
    finally:
        torch.set_num_threads(threads)


def test_saved_model_rebuilds_the_same(folder: Path):
    config = json.loads((folder / "config.json").read_text())
    assert (config["num_attention_heads"], config["num_key_value_heads"], config["head_dim"]) == (32, 8, 128)
    model = vs._load(folder, "cpu")
    torch.manual_seed(0)
    from transformers import Qwen3Config, Qwen3ForCausalLM

    fresh = Qwen3ForCausalLM(Qwen3Config(**config))
    assert all(torch.equal(a, fresh.state_dict()[k]) for k, a in model.state_dict().items())


def test_corehead_worker_bytes(folder: Path):
    """Bytes held after 3 decode steps, from the storages: full = every token of 8 KV heads; hybrid = 2 whole
    heads + 6 heads of 40 + ceil(0.1 * 200) tokens, each grown by the 3 new tokens; HybridState agrees."""
    length, kept, new, per_token = 240, 60, 3, 2 * 128 * 4  # keys and values, float32
    full = _work(folder, "full_corehead_env", new)
    assert full["kv_bytes_held"] == full["kv_bytes_logical"] == 8 * (length + new) * per_token
    assert full["prompt_kv_share"] == 1.0 and full["aux_bytes"] == 0
    expected = (2 * (length + new) + 6 * (kept + new)) * per_token
    for name in ("hybrid_snap_corehead", "hybrid_recent_corehead"):
        row = _work(folder, name, new)
        assert row["kv_bytes_held"] == row["hybrid_state_kv_bytes"] == row["kv_bytes_logical"] == expected
        assert row["prompt_kv_share"] == pytest.approx(vs.budget_match(200, 0.1).share)
        assert 0 < row["aux_bytes"] < row["kv_bytes_held"] / 10  # kept positions and validity
        assert row["prefill_s"] > 0 and row["decode_s_per_token"] > 0 and len(row["tokens"]) == new + 1
        assert row["peak_rss_bytes"] > 0 and row["versions"]["transformers"] >= "5.24"
        assert (folder / f"logits-{name}.safetensors").exists()


def test_missing_side_env_names_its_command(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]):
    monkeypatch.setattr(sys, "argv", ["vs_kvpress.py", "--kvpress-python", "/nonexistent/python", "--repeats", "3"])
    with pytest.raises(SystemExit):
        vs.main()
    assert "bash benchmarks/kvpress_env.sh" in capsys.readouterr().err
    monkeypatch.setattr(sys, "argv", ["vs_kvpress.py", "--repeats", "2"])
    with pytest.raises(SystemExit):
        vs.main()
    assert "at least 3" in capsys.readouterr().err


@pytest.mark.slow
@pytest.mark.skipif(not SIDE.exists(), reason=f"no kvpress side environment ({SIDE}): bash benchmarks/kvpress_env.sh")
def test_orchestrator_end_to_end(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]):
    """Every method in its own process, both environments: the compressed methods keep the same share; the
    masking presses hold full-size tensors; kvpress's Duo and corehead's recent plan agree on the logits."""
    tiny = ["--sizes", "100", "--layers", "1", "--hidden", "256", "--intermediate", "64", "--new-tokens", "2"]
    monkeypatch.setattr(sys, "argv", ["vs_kvpress.py", *tiny, "--repeats", "3", "--threads", "1"])
    vs.main()
    out = capsys.readouterr().out
    lines = [json.loads(x) for x in out.splitlines() if x.startswith("{")]
    rows = {x["method"]: x for x in lines if x["kind"] == "vs_kvpress"}
    assert set(rows) == set(vs.METHODS)
    share = vs.budget_match(100, 0.1).share
    for name in ("hybrid_snap_corehead", "hybrid_recent_corehead", "duo_kvpress"):
        assert rows[name]["prompt_kv_share"] == pytest.approx(share), name
    for name in ("snapkv_kvpress", "adakv_snapkv_kvpress"):  # floor(f L) tokens a head (on average)
        assert rows[name]["prompt_kv_share"] == pytest.approx(vs.budget_match(100, 0.1).snap_kept / 140), name
    for name in ("adakv_snapkv_kvpress", "duo_kvpress"):
        assert rows[name]["kv_held_vs_full"]["median"] == 1.0
        assert rows[name]["kv_logical_mib"] == rows["hybrid_recent_corehead"]["kv_held_mib"]
    assert rows["hybrid_snap_corehead"]["kv_held_vs_full"]["median"] < 0.6
    assert rows["duo_kvpress"]["kvpress_compression_ratio"] == pytest.approx(1 - share)
    agree = {(x["a"], x["b"]): x for x in lines if x["kind"] == "agreement"}
    for pair in (("full_corehead_env", "full_kvpress_env"), ("hybrid_recent_corehead", "duo_kvpress")):
        assert agree[pair]["logits_max_abs_diff"] <= 1e-4 * max(1.0, agree[pair]["logits_scale"]), pair
    assert "| 100 | duo_kvpress | kvpress |" in out
