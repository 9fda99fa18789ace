"""The study runner's pieces: registries of ablation modes and KV methods, and the whole pipeline, whose
folders are the single commands' folders."""

from __future__ import annotations

import json
from contextlib import contextmanager
from pathlib import Path

from corehead.data.synthetic import generate
from corehead.experiments.ablate import MODES
from corehead.experiments.accelerate import KV_METHODS
from corehead.experiments.pipeline import PipelineOptions, run_pipeline
from corehead.models.qwen_vl import QwenVLAdapter
from corehead.runfolder import RunFolder


def test_registries_list_every_mode_and_method_in_order() -> None:
    assert MODES.names() == ("zero", "mean", "query-zero", "mask-visual", "mask-region", "patch")
    assert KV_METHODS.names() == ("full", "core", "uniform", "fastv", "random", "bottom", "duo", "sparsemm")
    assert MODES.get("patch").paired and not MODES.get("zero").paired


def test_pipeline_writes_the_single_commands_folders_and_a_summary(tiny_builtin: QwenVLAdapter, tmp_path: Path) -> None:
    by_domain = {d: list(generate(d, 3, seed=4)) for d in ("scenes", "pages")}
    tests = {d: list(generate(d, 2, seed=5)) for d in by_domain}  # held out: never scored on
    seen: list[tuple[str, int, int]] = []

    @contextmanager
    def progress(description: str, total: int):
        done = [0]

        def advance(n: int = 1) -> None:
            done[0] += n

        yield advance
        seen.append((description, total, done[0]))

    options = PipelineOptions(model="tiny", n_ablate=2, n_accelerate=1, seeds=1, methods=("full", "core"), maps=1)
    eval_samples = [s for group in by_domain.values() for s in group]
    summary = run_pipeline(tiny_builtin, by_domain, tests, eval_samples, tmp_path, options, progress)
    assert json.loads((tmp_path / "summary.json").read_text()) == json.loads(json.dumps(summary))
    assert list(summary) == [
        "model",
        "data",
        "seed",
        "n",
        "accuracy",
        "by_domain",
        "core_heads",
        "causal_heads",
        "agreement",
        "ablation",
        "acceleration",
    ]
    assert summary["n"] == 6 and set(summary["core_heads"]) == set(summary["causal_heads"]) == {"scenes", "pages"}
    assert all(total == done for _, total, done in seen) and len(seen) == 1 + 4 * 2
    for domain in by_domain:
        score, ab, acc = (RunFolder(tmp_path / f"{c}-{domain}") for c in ("score", "ablate", "accelerate"))
        assert sorted(p.name for p in score.path.iterdir()) == [
            "heads.json",
            "heads.png",
            "manifest.json",
            "maps",
            "results",
        ]
        assert ab.read_summary("ablate")["conditions"] == summary["ablation"][domain]
        assert ab.read_summary("ablate")["heads"] == str(score.heads)
        assert acc.read_summary("accelerate")["methods"] == summary["acceleration"][domain]
        assert ab.figure("ablate").read_bytes()[:4] == acc.figure("accelerate").read_bytes()[:4] == b"\x89PNG"
        assert ab.manifest()["dataset"] == acc.manifest()["dataset"] == f"synthetic:{domain}"
        # the causal ranking (on the scoring samples) is cut beside RAM's, and compared with every RAM ranking
        causal = RunFolder(tmp_path / f"attribute-{domain}")
        assert causal.manifest()["method"] == "atp" and (causal.heads).exists()
        rankings = {r["ranking"] for r in summary["ablation"][domain]} - {""}  # "" is the full model
        assert rankings == {"ram:question", "causal:zero:logprob"}
        agreement = {row["ranking"] for row in summary["agreement"][domain]}
        assert {"ram:question", "ram:all", "ram_minus_distractor:question"} <= agreement
    again = run_pipeline(tiny_builtin, by_domain, tests, eval_samples, tmp_path, options, progress)
    assert again == summary  # resumed: every row read back (timings included), nothing redone
