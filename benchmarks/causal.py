"""Which heads does the built-in model need, and does RAM find them? Causal rankings against RAM rankings.

    python benchmarks/causal.py --out runs/causal --n-score 60 --n-atp 40 --n-exact 16

Per synthetic domain: a RAM scoring run on --n-score samples of seed 1 (every query group recorded), and
causal rankings on samples of seed 2 (held out from the scoring samples): attribution patching on --n-atp
samples in modes zero and mask-region, and the exact single-head effects on the first --n-exact of them
(zero; mask-region on scenes and pages). Prints (1) how well atp predicts exact on the same samples
(Spearman over all heads, precision of atp's top 5%, the heads it misses and by how much), (2) how well each
RAM ranking predicts the exact causal ranking (compare_rankings: Spearman, top-5% precision, recall of the
needed heads, bootstrap CIs over each run's samples), (3) what the needed heads and the lowest-RAM heads do:
their layer, their zero and mask-region effects (does their attention to the evidence matter, or only their
output?). Every run is a folder under --out; a rerun resumes.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np

from corehead.data import synthetic
from corehead.experiments.attribute import attribute
from corehead.experiments.score import score_and_select
from corehead.heads import HeadSet, causal_grid, compare_rankings
from corehead.metrics.agreement import spearman, top_mask
from corehead.models import load_model

MODES = ("zero", "mask-region")


def runs(adapter: Any, domain: str, args: argparse.Namespace) -> dict[str, Path]:
    """The domain's scoring run and causal runs (method-mode -> folder), computed where missing."""
    out: dict[str, Path] = {"score": args.out / f"score-{domain}"}
    scored = list(synthetic.generate(domain, args.n_score, seed=1))
    score_and_select(adapter, scored, out["score"], f"synthetic:{domain}", query="question", seed=1)
    held = list(synthetic.generate(domain, args.n_atp, seed=2))
    for mode in MODES:
        for method, n in (("atp", args.n_atp), ("exact", args.n_exact)):
            if method == "exact" and mode == "mask-region" and domain == "clips":
                continue  # the costliest; scenes and pages answer the question
            out[f"{method}-{mode}"] = folder = args.out / f"attr-{domain}-{mode}-{method}"
            attribute(adapter, held[:n], folder, method, mode, f"synthetic:{domain}", batch_size=8, seed=2)
    return out


def mean_effects(run: Path, ids: list[str] | None = None) -> np.ndarray:
    """[L, H] mean effect over the run's samples (only `ids` when given)."""
    got, grid, _ = causal_grid(run)
    keep = [i for i, sid in enumerate(got) if ids is None or sid in ids]
    return grid[keep].mean(0)


def atp_vs_exact(found: dict[str, Path], mode: str) -> str:
    """Spearman and top-5% precision of atp against exact on the exact run's samples, and the worst misses."""
    ids, _, _ = causal_grid(found[f"exact-{mode}"])
    exact, atp = mean_effects(found[f"exact-{mode}"]), mean_effects(found[f"atp-{mode}"], ids)
    k = max(1, round(0.05 * exact.size))
    overlap = (top_mask(exact.ravel(), k) & top_mask(atp.ravel(), k)).sum() / k
    worst = np.argsort(-np.abs(atp - exact), axis=None)[:3]
    misses = ", ".join(
        f"{i // exact.shape[1]}-{i % exact.shape[1]} (exact {exact.flat[i]:+.4f}, atp {atp.flat[i]:+.4f})"
        for i in worst
    )
    rho = float(spearman(exact.ravel(), atp.ravel()))
    return f"n={len(ids)}  Spearman {rho:+.2f}  top-{k} precision {overlap:.2f}  largest gaps: {misses}"


def needed_heads(found: dict[str, Path], ram: HeadSet) -> list[str]:
    """The heads whose exact zero effect is clearly positive, and the lowest-RAM heads: layer, effects, RAM."""
    summary = json.loads((found["exact-zero"] / "attribute.json").read_text())
    zero = np.asarray(summary["effect"]["mean"])
    region = mean_effects(found["exact-mask-region"]) if "exact-mask-region" in found else None
    ram_mean = np.asarray(ram.scores["mean"])
    lines = []
    for label, heads in (("needed (zero CI > 0)", summary["needed"]), ("bottom 5 by RAM", ram.ranking[-5:])):
        for layer, head in heads:
            masked = f", mask-region {region[layer, head]:+.4f}" if region is not None else ""
            rank = ram.ranking.index((layer, head)) + 1
            lines.append(
                f"  {label}: {layer}-{head}  zero {zero[layer, head]:+.4f}{masked}  "
                f"RAM {ram_mean[layer, head]:.3f} (rank {rank} of {len(ram.ranking)})"
            )
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("runs/causal"))
    parser.add_argument("--n-score", type=int, default=60)
    parser.add_argument("--n-atp", type=int, default=40)
    parser.add_argument("--n-exact", type=int, default=16)
    parser.add_argument("--domains", default=",".join(synthetic.DOMAINS))
    parser.add_argument("--draws", type=int, default=1000)
    args = parser.parse_args()
    adapter = load_model("builtin")
    for domain in args.domains.split(","):
        found = runs(adapter, domain, args)
        print(f"\n== {domain}")
        for mode in MODES:
            if f"exact-{mode}" in found:
                print(f"atp vs exact, {mode}: {atp_vs_exact(found, mode)}")
        for mode in MODES:
            method = "exact" if f"exact-{mode}" in found else "atp"
            print(f"RAM rankings (seed 1) vs the {method} {mode} causal ranking (seed 2):")
            for row in compare_rankings(found["score"], found[f"{method}-{mode}"], draws=args.draws):
                print(
                    f"  {row['ranking']:<30} Spearman {row['spearman']:+.2f} [{row['spearman_low']:+.2f}, "
                    f"{row['spearman_high']:+.2f}]  top-{row['k']} precision {row['precision']:.2f} "
                    f"[{row['precision_low']:.2f}, {row['precision_high']:.2f}]  recall {row['recall']:.2f} "
                    f"of {row['needed']} needed  (n {row['n_ram']} / {row['n_causal']})"
                )
        print("\n".join(needed_heads(found, HeadSet.load(found["score"] / "heads.json"))))


if __name__ == "__main__":
    main()
