"""Throughput of scoring and ablation on the built-in model: batch sizes, and 1 vs 2 processes.

    python benchmarks/throughput.py --n 48 --repeats 3

Every figure is the median of `--repeats` (at least 3) interleaved repeats, printed with its spread as
'median (min-max)'; a ratio is taken within each repeat and summed up the same way.

Part 1, batch size: `score` (every head's RAM) and `ablate` (3 conditions: none, top-1, bottom-1, the
heads scored on as many samples of another seed than the measured ones, so that none is left out) over the
same synthetic samples of all three domains, in this process, at each batch size, taking turns in every
repeat, each into a fresh run folder; prints samples per second and the ratio to the first batch size.

Part 2, processes: the same `corehead score` command with `--num-processes 1` and `2` (accelerate, gloo
on CPU), interleaved; samples per second from the run's own wall time in its manifest (start to merged
results, after the model is loaded) and from the whole command (process start-up included). On a machine
with C cores one process uses C threads and each of two uses one (accelerate's launcher sets
OMP_NUM_THREADS=1), so two processes gain where one cannot keep the cores busy.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from timing import check_repeats, figure, ratio, text, turns


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
        other = list(generate("all", n, seed=8))  # heads ranked on other samples than the measured ones
        heads, _ = score_and_select(adapter, other, Path(tmp) / "heads", "synthetic:all", "question", seed=8)
        for r in range(repeats):
            for size in turns(sizes, r):
                start = time.perf_counter()
                options = ScoreOptions(batch_size=size)
                score_and_select(adapter, samples, Path(tmp) / f"s{size}-{r}", "synthetic:all", options=options)
                times.setdefault(("score", size), []).append(time.perf_counter() - start)
                start = time.perf_counter()
                folder = Path(tmp) / f"a{size}-{r}"
                ablate(adapter, samples, heads, folder, [1], 0, controls=("bottom",), batch_size=size, max_new_tokens=4)
                times.setdefault(("ablate", size), []).append(time.perf_counter() - start)
    for task in ("score", "ablate"):
        base = times[(task, sizes[0])]
        for size in sizes:
            t = times[(task, size)]
            speed = text(figure([n / x for x in t], digits=2))
            print(f"  {task:6s} batch {size:3d}: {speed} samples/s   x{text(ratio(base, t))} vs batch {sizes[0]}")


def part_processes(n: int, repeats: int, batch_size: int, processes: list[int]) -> None:
    print(f"part 2: corehead score on {n} samples, batch {batch_size}, repeats {repeats}")
    run_s: dict[int, list[float]] = {}
    total_s: dict[int, list[float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(repeats):
            for procs in turns(processes, r):
                out = Path(tmp) / f"p{procs}-{r}"
                command = [sys.executable, "-m", "corehead", "--quiet", "score", "--data", "synthetic:all"]
                command += ["--limit", str(n), "--batch-size", str(batch_size), "--out", str(out)]
                command += ["--num-processes", str(procs)]
                start = time.perf_counter()
                subprocess.run(command, check=True, capture_output=True)
                total_s.setdefault(procs, []).append(time.perf_counter() - start)
                run_s.setdefault(procs, []).append(json.loads((out / "manifest.json").read_text())["wall_s"])
    base_run, base_total = run_s[processes[0]], total_s[processes[0]]
    for procs in processes:
        t, total = run_s[procs], total_s[procs]
        in_run, with_start = figure([n / x for x in t], digits=2), figure([n / x for x in total], digits=2)
        print(
            f"  {procs} process(es): {text(in_run)} samples/s in the run (x{text(ratio(base_run, t))}), "
            f"{text(with_start)} samples/s with start-up (x{text(ratio(base_total, total))})"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=48, help="samples per measurement")
    parser.add_argument("--repeats", type=int, default=3, help="interleaved repeats per figure (at least 3)")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 4, 16], help="batch sizes in part 1")
    parser.add_argument("--processes", type=int, nargs="+", default=[1, 2], help="process counts in part 2")
    parser.add_argument("--process-batch-size", type=int, default=4, help="batch size in part 2")
    parser.add_argument("--parts", nargs="+", default=["batches", "processes"], choices=["batches", "processes"])
    args = parser.parse_args()
    check_repeats(parser, args.repeats)
    if "batches" in args.parts:
        part_batches(args.n, args.repeats, args.batch_sizes)
    if "processes" in args.parts:
        part_processes(args.n, args.repeats, args.process_batch_size, args.processes)


if __name__ == "__main__":
    main()
