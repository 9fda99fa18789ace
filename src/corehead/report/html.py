"""One self-contained HTML study of scoring, causal, ablation and acceleration runs and of the scale benchmark
(`corehead report`).

Everything the page needs is inside it: plots and pictures as base64 data URIs, CSS and JavaScript inline,
and the numbers behind the interactive parts as JSON in a <script type="application/json"> block (escaped so
that no text from a dataset can close it). All text from runs and datasets is HTML-escaped. Next to the
page, `<name>_files/` holds every plot as PNG and SVG (for papers) and `summary.json` (the numbers shown).

The report reads run folders only (corehead.runfolder): what the studies wrote, never a model.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from corehead.heads import HeadSet
from corehead.report.causal import causal_section, partner
from corehead.report.page import Page, finite, script_json
from corehead.report.results import ablation, acceleration
from corehead.report.runs import find_runs
from corehead.report.scale import SCALE, read_scale, scale_section
from corehead.report.scoring import overlaps, runs_table, scoring
from corehead.runfolder import RunFolder

__all__ = ["script_json", "write_report"]


def write_report(folders: list[Path], out: Path, samples: int = 3) -> Path:
    """Write the study of every run under `folders` to `out` (HTML), its plots and summary.json beside it."""
    from corehead import __version__

    runs = find_runs(folders)
    scales = [(label, run, read_scale(run / SCALE)) for label, run in runs.scales]  # checked before writing
    files = out.parent / f"{out.stem}_files"
    files.mkdir(parents=True, exist_ok=True)
    page = Page(files)
    summary: dict[str, Any] = {
        "corehead": __version__,
        "scoring": [],
        "causal": [],
        "ablation": [],
        "acceleration": [],
        "scale": [],
    }
    headsets = [(label, HeadSet.load(RunFolder(run).heads)) for label, run in runs.scores]
    if headsets:
        page.add("Runs", runs_table(runs.scores, headsets))
    for i, ((label, run), (_, headset)) in enumerate(zip(runs.scores, headsets, strict=True)):
        summary["scoring"].append(scoring(page, i, label, run, headset, runs.questions, samples))
    if len(headsets) > 1:
        summary["overlap"] = overlaps(page, headsets)
    scored = [(label, run, hs) for (label, run), (_, hs) in zip(runs.scores, headsets, strict=True)]
    for i, (label, run) in enumerate(runs.causal):
        compared = partner(run, HeadSet.load(RunFolder(run).heads), scored)
        summary["causal"].append(causal_section(page, i, label, run, compared))
    for i, (label, run) in enumerate(runs.ablations):
        summary["ablation"].append(ablation(page, i, label, run))
    for i, (label, run) in enumerate(runs.accelerations):
        summary["acceleration"].append(acceleration(page, i, label, run))
    for i, (label, run, result) in enumerate(scales):
        summary["scale"].append(scale_section(page, i, label, run, result))
    out.write_text(page.render("corehead report: " + ", ".join(runs.labels), __version__), encoding="utf-8")
    (files / "summary.json").write_text(json.dumps(finite(summary), indent=1, allow_nan=False))
    return out
