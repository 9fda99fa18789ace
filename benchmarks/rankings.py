"""Which RAM ranking finds the heads the built-in model needs? Held out: ranked on one seed, tested on another.

    python benchmarks/rankings.py --n 100 --score-seed 1 --test-seed 2 --k 5 --seeds 3 --out runs/rankings

Per synthetic domain: score every head on n samples of --score-seed (every query group is recorded), rank
the heads by RAM on each query group and by RAM minus distractor mass, then zero the top k of each ranking
on n samples of --test-seed, against the same-size controls of each ranking (bottom k, random k outside its
top, random k with the top set's heads per layer; --seeds draws each). Prints the paired drop in accuracy
with 95% intervals (over samples, and over draws for random controls) and Holm-adjusted p-values. Every
stage is a run folder under --out (score-D/, ablate-D/), so a rerun resumes.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

from corehead.data import synthetic
from corehead.experiments.ablate import ablate
from corehead.experiments.score import run_rankings, score_and_select
from corehead.models import load_model
from corehead.runfolder import RunFolder

RANKINGS = ["question", "prompt-end", "answer", "all", "ram_minus_distractor:all"]


def interval(row: dict[str, Any], key: str) -> str:
    """`key` of a summary row with its 95% interval, or '' when the row has none."""
    if key not in row:
        return ""
    lo, hi = row[f"{key}_ci"]
    return f"{row[key]:+.2f} [{lo:+.2f}, {hi:+.2f}]"


def domain_study(adapter: Any, domain: str, args: argparse.Namespace) -> list[dict[str, Any]]:
    """Score on --score-seed, ablate every ranking's top k on --test-seed; the ablation summary's rows."""
    folder = RunFolder(args.out)
    scored = list(synthetic.generate(domain, args.n, seed=args.score_seed))
    score_run = folder.stage("score", domain).path
    score_and_select(adapter, scored, score_run, f"synthetic:{domain}", query="question", seed=args.score_seed)
    rankings = run_rankings(score_run, RANKINGS)
    tested = list(synthetic.generate(domain, args.n, seed=args.test_seed))
    ablate_run = folder.stage("ablate", domain).path
    ablate(adapter, tested, rankings, ablate_run, [args.k], seeds=args.seeds, batch_size=32, max_new_tokens=4,
           dataset=f"synthetic:{domain}", heads=str(RunFolder(score_run).heads))  # fmt: skip
    return RunFolder(ablate_run).read_summary("ablate")["conditions"]


def print_domain(domain: str, rows: list[dict[str, Any]]) -> None:
    """One line per ranking: Δ accuracy of its top k and of each control, top minus controls, p (Holm)."""
    none = next(r for r in rows if r["condition"] == "none")
    print(f"\n{domain}: accuracy {none['accuracy']:.2f} with every head (n = {none['n']})")
    print(f"{'ranking':26s} {'top':>22s} {'bottom':>22s} {'random':>22s} {'layer-matched':>22s} "
          f"{'top - random':>22s} {'p (Holm)':>9s}")  # fmt: skip
    for ranking in dict.fromkeys(r["ranking"] for r in rows if r["ranking"]):
        at = {r["condition"]: r for r in rows if r["ranking"] == ranking}
        cells = [interval(at[c], "delta_accuracy") if c in at else "" for c in
                 ("top", "bottom", "random", "random-layer-matched")]  # fmt: skip
        top = at["top"]
        print(f"{ranking:26s} " + " ".join(f"{c:>22s}" for c in cells) +
              f" {interval(top, 'vs_random'):>22s} {top.get('vs_random_p_holm', float('nan')):9.3g}")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=100, help="samples per domain for scoring, and for testing")
    parser.add_argument("--score-seed", type=int, default=1)
    parser.add_argument("--test-seed", type=int, default=2)
    parser.add_argument("--k", type=int, default=5, help="heads cut per ranking (of 96)")
    parser.add_argument("--seeds", type=int, default=3, help="draws of each random control")
    parser.add_argument("--domains", nargs="+", default=list(synthetic.DOMAINS))
    parser.add_argument("--out", type=Path, default=Path("runs/rankings"))
    args = parser.parse_args()
    if args.score_seed == args.test_seed:
        parser.error("rank on other samples than those tested: --score-seed and --test-seed must differ")
    adapter = load_model("builtin")
    began = time.time()
    report = {}
    for domain in args.domains:
        report[domain] = domain_study(adapter, domain, args)
        print_domain(domain, report[domain])
    (args.out / "rankings.json").write_text(json.dumps(report, indent=1))
    print(f"\n{args.out}/rankings.json ({time.time() - began:.0f} s)")


if __name__ == "__main__":
    main()
