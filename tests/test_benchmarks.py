"""The benchmark scripts in tiny smoke configurations: they run, print every figure as a median with its
spread, refuse fewer than 3 repeats, and test the built-in model on samples its heads were not scored on."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import math
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def _script(name: str) -> ModuleType:
    """A benchmark script imported as a module (its folder on the path, for the shared timing module)."""
    if str(BENCHMARKS) not in sys.path:
        sys.path.insert(0, str(BENCHMARKS))
    spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCHMARKS / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def _main(name: str, args: list[str], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> str:
    monkeypatch.setattr(sys, "argv", [f"{name}.py", *args])
    _script(name).main()
    return capsys.readouterr().out


def _figures(value: Any) -> list[dict[str, float]]:
    """Every {"median", "min", "max"} figure inside a printed row."""
    if isinstance(value, dict):
        if set(value) == {"median", "min", "max"}:
            return [value]
        return [f for v in value.values() for f in _figures(v)]
    return []


def _rows(out: str) -> dict[str, list[dict[str, Any]]]:
    by_kind: dict[str, list[dict[str, Any]]] = {}
    for line in out.splitlines():
        if line.startswith("{"):
            row = json.loads(line)
            by_kind.setdefault(row["kind"], []).append(row)
    return by_kind


def test_acceleration_attention_and_end_to_end(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]):
    """Decode buffers come from the hybrid's own compression of a real prefill: their bytes are the kept
    tokens' (text + ceil(budget * visual) per reduced head, every token for the 2 CoRe KV heads)."""
    sizes = ["--prefill-sizes", "96", "--e2e-sizes", "32", "--layers", "1", "--calls", "2", "--allow-in-cache"]
    out = _main("acceleration", ["--sizes", "200", *sizes, "--repeats", "3"], monkeypatch, capsys)
    rows = _rows(out)
    assert "last_level_cache" in rows["machine"][0]
    decode, prefill, e2e = rows["decode_attention"][0], rows["prefill_attention"][0], rows["end_to_end"][0]
    length, kept = 200 + 40, 40 + math.ceil(0.1 * 200)
    assert decode["kv_bytes_ratio"] == pytest.approx((2 * length + 6 * kept) / (8 * length), abs=1e-4)
    assert decode["in_cache"] is True and decode["byte_bound_speedup"] == pytest.approx(
        8 * length / (2 * length + 6 * kept), abs=0.01
    )
    assert {"hybrid_s", "hybrid_prefill_option_s", "speedup_hybrid", "speedup_prefill_option"} <= set(prefill)
    causal, reduced = 136 * 137 / 2, 136 * (40 + math.ceil(0.1 * 96))  # query-key pairs of a full / reduced head
    assert prefill["theoretical_speedup_prefill_option"] == pytest.approx(
        causal / (causal / 4 + 0.75 * reduced), abs=0.01
    )
    theory = prefill["theoretical_speedup_prefill_option"]
    speedup = prefill["speedup_prefill_option"]["median"]  # rounded to 2 digits, the share to 3
    assert prefill["share_of_theory"]["median"] == pytest.approx(speedup / theory, abs=0.005 / theory + 0.0005)
    assert {"prefill_hybrid_s", "prefill_hybrid_prefill_option_s", "decode_hybrid_prefill_option_ms"} <= set(e2e)
    figures = [f for row in (decode, prefill, e2e) for f in _figures(row)]
    assert len(figures) >= 20 and all(f["min"] <= f["median"] <= f["max"] for f in figures)
    refused = {"fits in the L": ["--sizes", "200", "--repeats", "3"], "at least 3": ["--sizes", "--repeats", "2"]}
    for why, args in refused.items():
        monkeypatch.setattr(sys, "argv", ["acceleration.py", *args, "--prefill-sizes", "--e2e-sizes"])
        with pytest.raises(SystemExit):
            _script("acceleration").main()
        assert why in capsys.readouterr().err


def test_acceleration_on_the_builtin_model_tests_other_samples_than_it_scored(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    part0 = ["--builtin-n", "3", "--budgets", "0.1", "--settings", "decode", "--domains", "scenes", "--seeds", "2"]
    part0 += ["--methods", "full", "core", "random", "--sizes", "--prefill-sizes", "--e2e-sizes", "--repeats", "3"]
    rows = _rows(_main("acceleration", [*part0, "--out", str(tmp_path)], monkeypatch, capsys))["builtin"]
    by = {r["method"]: r for r in rows}
    assert list(by) == ["full", "core", "random"] and by["random"]["draws"] == 2
    assert set(by["core"]) >= {"minus_full", "prefill_vs_full", "decode_vs_full"} and "minus_core" not in by["core"]
    assert {"minus_full", "minus_core"} <= set(by["random"]) and all(r["n"] == 3 for r in rows)
    scored = json.loads((tmp_path / "score-scenes" / "heads.json").read_text())["scored"]
    assert scored["seed"] == 21 and scored["ids"] == [f"scenes-s21-0000{i}" for i in range(3)]
    run = tmp_path / "scenes-decode-0.1"
    assert {json.loads(line)["id"] for line in (run / "accelerate.jsonl").open()} == {
        f"scenes-s22-0000{i}" for i in range(3)
    }
    held = json.loads((run / "accelerate.json").read_text())["held_out"]
    digest = hashlib.sha256("\n".join(scored["ids"]).encode()).hexdigest()
    assert held == {"excluded": 0, "overlap": 0, "allow_overlap": False, "scored_digest": digest}
    monkeypatch.setattr(sys, "argv", ["acceleration.py", *part0, "--score-seed", "5", "--eval-seed", "5"])
    with pytest.raises(SystemExit):
        _script("acceleration").main()


def test_throughput_batches(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    args = ["--n", "2", "--repeats", "3", "--batch-sizes", "2", "--parts", "batches"]
    lines = [line for line in _main("throughput", args, monkeypatch, capsys).splitlines() if "samples/s" in line]
    assert len(lines) == 2  # score and ablate
    for line in lines:
        low, high = (float(x) for x in line.split("(")[1].split(")")[0].split("-"))
        assert low <= float(line.split(":")[1].split()[0]) <= high


def test_scoring_measures_every_method_in_turn(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]):
    """The script's measurement loop (the CPU runs of the script start a process per measurement, which takes
    a minute even this small): methods take turns, figures are medians with their spread, ratios are taken
    within each repeat; and one real forward of each method on 16 visual tokens."""
    scoring = _script("scoring")
    timed = {"plain": [1.0, 2.0, 4.0], "corehead": [2.0, 2.0, 6.0], "eager": [3.0, 3.0, 3.0]}  # per repeat
    runs: list[str] = []

    def stub(method: str, n: int) -> dict[str, float]:
        runs.append(method)
        return {"seconds": timed[method].pop(0), "peak_gib": 1.0}

    row = scoring.measure(stub, 16, 3, eager_limit_gb=1.0, bytes_per=4)
    assert runs == ["plain", "corehead", "eager", "corehead", "eager", "plain", "eager", "plain", "corehead"]
    assert row["overhead_vs_plain"] == {"median": 1.5, "min": 1.0, "max": 2.0}  # 2/1, 2/2, 6/4
    assert row["plain_seconds"] == {"median": 2.0, "min": 1.0, "max": 4.0} and len(_figures(row)) == 9
    assert scoring.measure(lambda m, n: {"seconds": 1.0, "peak_gib": 1.0}, 16, 3, 0.0, 4)["eager"].startswith("skip")
    for method in ("corehead", "eager"):
        assert scoring.run_one(method, 16)["seconds"] > 0
    monkeypatch.setattr(sys, "argv", ["scoring.py", "--repeats", "2"])
    with pytest.raises(SystemExit):
        scoring.main()
    assert "at least 3" in capsys.readouterr().err


def test_rankings_ranks_on_one_seed_and_tests_every_ranking_on_another(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["--n", "3", "--k", "2", "--seeds", "1", "--domains", "scenes", "--out", str(tmp_path)]
    printed = _main("rankings", [*args, "--score-seed", "5", "--test-seed", "6"], monkeypatch, capsys)
    report = json.loads((tmp_path / "rankings.json").read_text())["scenes"]
    rankings = {r["ranking"] for r in report if r["ranking"]}
    assert rankings == {"ram:question", "ram:prompt_end", "ram:answer", "ram:all", "ram_minus_distractor:all"}
    for ranking in rankings:  # every ranking with its own controls
        assert {r["condition"] for r in report if r["ranking"] == ranking} == {
            "top", "bottom", "random", "random-layer-matched"
        }  # fmt: skip
        assert f"{ranking:26s}" in printed
    heads = json.loads((tmp_path / "score-scenes" / "heads.json").read_text())
    tested = {json.loads(line)["id"] for line in (tmp_path / "ablate-scenes" / "ablation.jsonl").open()}
    assert heads["scored"]["seed"] == 5 and not set(heads["scored"]["ids"]) & tested  # held out
    with pytest.raises(SystemExit):
        _main("rankings", [*args, "--score-seed", "5", "--test-seed", "5"], monkeypatch, capsys)


@pytest.mark.slow
def test_causal_compares_atp_with_exact_and_ram_with_causal_on_held_out_samples(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["--n-score", "3", "--n-atp", "2", "--n-exact", "1", "--domains", "scenes", "--draws", "50"]
    printed = _main("causal", [*args, "--out", str(tmp_path)], monkeypatch, capsys)
    assert "atp vs exact, zero: n=1  Spearman" in printed and "atp vs exact, mask-region: n=1" in printed
    assert "ram:question" in printed and "ram_minus_distractor:all" in printed and "bottom 5 by RAM" in printed
    scored = json.loads((tmp_path / "score-scenes" / "heads.json").read_text())["scored"]["ids"]
    causal = json.loads((tmp_path / "attr-scenes-zero-exact" / "heads.json").read_text())["scored"]["ids"]
    assert len(causal) == 1 and not set(scored) & set(causal)  # ranked on other samples than RAM
