"""Held-out accuracy of the built-in model per synthetic domain, with 95% Wilson intervals.

    python benchmarks/builtin_accuracy.py --n 300 --seeds 11 12

Samples come from the evaluation stream (never seen in training); each seed gives different samples.
"""

from __future__ import annotations

import argparse
import json
import math
import time

from corehead.data import synthetic
from corehead.experiments.evaluate import evaluate
from corehead.models import load_model


def wilson(hits: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """95% Wilson score interval of a proportion."""
    p = hits / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return centre - half, centre + half


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="builtin")
    parser.add_argument("--n", type=int, default=300, help="samples per domain and seed")
    parser.add_argument("--seeds", type=int, nargs="+", default=[11, 12])
    args = parser.parse_args()
    adapter = load_model(args.model)
    report = {}
    began = time.time()
    for domain in synthetic.DOMAINS:
        samples = [s for seed in args.seeds for s in synthetic.generate(domain, args.n, seed=seed)]
        result = evaluate(adapter, samples, batch_size=32, max_new_tokens=4)
        hits = sum(r["correct"] for r in result.rows)
        lo, hi = wilson(hits, result.n)
        report[domain] = {"accuracy": round(hits / result.n, 4), "n": result.n, "ci95": [round(lo, 4), round(hi, 4)]}
        print(f"{domain:7s} accuracy {hits / result.n:.3f}  (95% CI {lo:.3f}-{hi:.3f}, n={result.n})", flush=True)
    print(json.dumps({"model": args.model, "seeds": args.seeds, "seconds": round(time.time() - began), **report}))


if __name__ == "__main__":
    main()
