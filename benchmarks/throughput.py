"""Throughput of scoring and ablation on the built-in model: batch sizes, and 1 vs 2 processes.

    python benchmarks/throughput.py --n 48 --repeats 3

Part 1, batch size: `score` (every head's RAM) and `ablate` (3 conditions: none, top-1, bottom-1) over the
same held-out synthetic samples of all three domains, in this process, at each batch size, interleaved
over repeats, each into a fresh run folder; prints median samples per second and the ratio to batch 1.

Part 2, processes: the same `corehead score` command with `--num-processes 1` and `2` (accelerate, gloo
on CPU), interleaved; samples per second from the run's own wall time in its manifest (start to merged
results, after the model is loaded) and from the whole command (process start-up included). On a machine
with C cores one process uses C threads and each of two uses one (accelerate's launcher sets
OMP_NUM_THREADS=1), so two processes gain where one cannot keep the cores busy.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def part_batches(n: int, repeats: int, sizes: list[int]) -> None:
    import torch

    from corehead.data.synthetic import generate
    from corehead.experiments.ablate import ablate
    from corehead.experiments.score import ScoreOptions, score_and_select
    from corehead.models import load_model

    adapter = load_model("builtin")
    samples = list(generate("all", n, seed=7))
    print(f"part 1: {n} samples (all domains), torch threads {torch.get_num_threads()}, repeats {repeats}")
    times: dict[tuple[str, int], list[float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        heads, _ = score_and_select(adapter, samples[:8], Path(tmp) / "heads", "synthetic:all")
        for r in range(repeats):
            for size in sizes:
                start = time.perf_counter()
                options = ScoreOptions(batch_size=size)
                score_and_select(adapter, samples, Path(tmp) / f"s{size}-{r}", "synthetic:all", options=options)
                times.setdefault(("score", size), []).append(time.perf_counter() - start)
                start = time.perf_counter()
                folder = Path(tmp) / f"a{size}-{r}"
                ablate(
                    adapter,
                    samples,
                    heads,
                    folder,
                    [1],
                    seeds=0,
                    controls=("bottom",),
                    batch_size=size,
                    max_new_tokens=4,
                )
                times.setdefault(("ablate", size), []).append(time.perf_counter() - start)
    for task in ("score", "ablate"):
        base = statistics.median(times[(task, sizes[0])])
        for size in sizes:
            t = statistics.median(times[(task, size)])
            print(f"  {task:6s} batch {size:3d}: {n / t:7.2f} samples/s   x{base / t:.2f} vs batch {sizes[0]}")


def part_processes(n: int, repeats: int, batch_size: int, processes: list[int]) -> None:
    print(f"part 2: corehead score on {n} samples, batch {batch_size}, repeats {repeats}")
    run_s: dict[int, list[float]] = {}
    total_s: dict[int, list[float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(repeats):
            for procs in processes:
                out = Path(tmp) / f"p{procs}-{r}"
                command = [sys.executable, "-m", "corehead", "--quiet", "score", "--data", "synthetic:all"]
                command += ["--limit", str(n), "--batch-size", str(batch_size), "--out", str(out)]
                command += ["--num-processes", str(procs)]
                start = time.perf_counter()
                subprocess.run(command, check=True, capture_output=True)
                total_s.setdefault(procs, []).append(time.perf_counter() - start)
                run_s.setdefault(procs, []).append(json.loads((out / "manifest.json").read_text())["wall_s"])
    base_run, base_total = statistics.median(run_s[processes[0]]), statistics.median(total_s[processes[0]])
    for procs in processes:
        t, total = statistics.median(run_s[procs]), statistics.median(total_s[procs])
        print(
            f"  {procs} process(es): {n / t:7.2f} samples/s in the run (x{base_run / t:.2f}), "
            f"{n / total:6.2f} samples/s with start-up (x{base_total / total:.2f})"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=48, help="samples per measurement")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--processes", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--process-batch-size", type=int, default=4, help="batch size in part 2")
    parser.add_argument("--parts", nargs="+", default=["batches", "processes"])
    args = parser.parse_args()
    if "batches" in args.parts:
        part_batches(args.n, args.repeats, args.batch_sizes)
    if "processes" in args.parts:
        part_processes(args.n, args.repeats, args.process_batch_size, args.processes)


if __name__ == "__main__":
    main()
