"""Held-out accuracy of the built-in model per synthetic domain, with 95% Wilson intervals.

    python benchmarks/builtin_accuracy.py --n 300 --seeds 11 12

Samples come from the evaluation stream (never seen in training); each seed gives different samples.
For clips, the wrong answers are also sorted by where the named colour is found in the clip: on another
object in the asked time segment, on the asked object in another segment, both, or neither (a model that
intersects "colours of the segment" with "colours of the object" instead of retrieving the one object in
the one segment makes "both" errors).
"""

from __future__ import annotations

import argparse
import json
import math
import time
from collections import Counter

from corehead.data import synthetic
from corehead.experiments.evaluate import evaluate
from corehead.models import load_model


def wilson(hits: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """95% Wilson score interval of a proportion."""
    p = hits / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return centre - half, centre + half


def clip_errors(rows: list[dict], seeds: list[int], n: int) -> dict[str, int]:
    """Counts of wrong clips answers by where the predicted colour occurs in the clip (see above)."""
    by_id = {r["id"]: r for r in rows}
    counts = {"other object, same segment": 0, "same object, other segment": 0, "both": 0, "neither": 0}
    for seed in seeds:
        for index in range(n):
            sample = synthetic.make_sample("clips", seed, index)
            row = by_id[sample.id]
            if row["correct"]:
                continue
            scene = synthetic.make_scene("clips", seed, index)
            shape = sample.meta["target"].split()[0]
            segment = sample.regions[0].unit // synthetic.SEGMENT_FRAMES
            said = row["prediction"].strip().lower()
            on_others = {
                t.value for t in scene.things if t.shape != shape and t.unit // synthetic.SEGMENT_FRAMES == segment
            }
            on_it = {
                t.value for t in scene.things if t.shape == shape and t.unit // synthetic.SEGMENT_FRAMES != segment
            }
            key = {(True, False): "other object, same segment", (False, True): "same object, other segment",
                   (True, True): "both", (False, False): "neither"}[(said in on_others, said in on_it)]  # fmt: skip
            counts[key] += 1
    return counts


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
        if domain == "clips":
            report[domain]["errors"] = clip_errors(result.rows, args.seeds, args.n)
            print(f"        wrong answers by where that colour is: {report[domain]['errors']}", flush=True)
        if domain == "pages":
            said = Counter(f"{r['answer']}->{r['prediction'].strip()}" for r in result.rows if not r["correct"])
            report[domain]["errors"] = dict(said.most_common(8))
            print(f"        wrong answers, true->said: {report[domain]['errors']}", flush=True)
    print(json.dumps({"model": args.model, "seeds": args.seeds, "seconds": round(time.time() - began), **report}))


if __name__ == "__main__":
    main()
