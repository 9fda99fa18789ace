"""`corehead eval`: task accuracy of a model on a dataset."""

from __future__ import annotations

from typing import Any

from corehead.cli.console import emit_json, out, progress
from corehead.cli.launch import processes
from corehead.cli.options import DATA, MODEL, DataOptions, ModelOptions, Opt, RunOptions, options, run_options
from corehead.cli.tables import accuracy_table

RUN = run_options(None, "Write predictions here (JSONL); a rerun resumes it.", 16, "Samples per generate call.")


@options(model=MODEL, data=DATA.but(limit=Opt(("--n",), "Number of samples (synthetic default: 100).")), run=RUN)
def eval_cmd(model: ModelOptions, data: DataOptions, run: RunOptions) -> None:
    """Task accuracy (exact match of the generated answer) of a model on a dataset."""
    from corehead.experiments.evaluate import evaluate
    from corehead.experiments.study import share

    with processes(run.num_processes) as shard:
        samples = data.load()
        adapter = model.load()
        mine = len(samples) if run.out is None else share(samples, run.batch_size, shard)
        with progress("answering", mine) as advance:
            result = evaluate(
                adapter, samples, out=run.out, batch_size=run.batch_size, on_progress=advance, shard=shard
            )
        if not shard.main:
            return
    by_domain = result.by_domain()
    summary: dict[str, Any] = {"model": model.model, "data": data.data, "seed": data.seed, "n": result.n}
    summary |= {"accuracy": result.accuracy, "by_domain": by_domain}
    if run.as_json:
        emit_json(summary)
    else:
        out.print(accuracy_table(f"{model.model} on {data.data}", by_domain, summary))
