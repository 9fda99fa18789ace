"""The run folders a report shows: found below the folders given, by the summaries their runs wrote."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from corehead.report.scale import SCALE, is_scale
from corehead.runfolder import SUMMARY, RunFolder


@dataclass
class Runs:
    """Run folders found under the folders given, each with a label (its path below the folder given)."""

    scores: list[tuple[str, Path]]
    ablations: list[tuple[str, Path]]
    accelerations: list[tuple[str, Path]]
    causal: list[tuple[str, Path]]  # `corehead attribute` runs
    scales: list[tuple[str, Path]]  # folders with a scale.json of benchmarks/scale.py
    questions: dict[str, str]  # sample id -> question, from answers.jsonl / predictions*.jsonl files

    @property
    def labels(self) -> list[str]:
        return [label for label, _ in self.scores + self.causal + self.ablations + self.accelerations + self.scales]


def find_runs(folders: list[Path]) -> Runs:
    """Search each folder recursively for heads.json, ablation.json, accelerate.json and attribute.json (a
    causal run, which writes a heads.json too: it is not counted as a scoring run), and for the scale.json of
    the scale benchmark (one whose "benchmark" is not "scale" is not the benchmark's, and is passed over)."""
    for folder in folders:
        if not folder.is_dir():
            raise ValueError(f"{folder} is not a folder")

    def found(name: str) -> list[tuple[str, Path]]:
        runs: dict[Path, str] = {}
        for folder in folders:
            for path in sorted(folder.rglob(name)):
                below = path.parent.relative_to(folder)
                runs.setdefault(path.parent, folder.name if below == Path() else str(below))
        return [(label, path) for path, label in runs.items()]

    causal = found(SUMMARY["attribute"])
    attributed = {path for _, path in causal}
    scores = [(label, path) for label, path in found(SUMMARY["score"]) if path not in attributed]
    scales = [(label, path) for label, path in found(SCALE) if is_scale(path / SCALE)]
    questions = _questions(folders)
    runs = Runs(scores, found(SUMMARY["ablate"]), found(SUMMARY["accelerate"]), causal, scales, questions)
    if not runs.labels:
        names = ", ".join(str(f) for f in folders)
        raise ValueError(
            f"no runs in {names}: expected heads.json, ablation.json, accelerate.json, attribute.json or scale.json"
            ' (benchmark "scale") below it'
        )
    return runs


def _questions(folders: list[Path]) -> dict[str, str]:
    """Each sample's question, from the answers the runs kept (answers.jsonl, predictions*.jsonl)."""
    questions: dict[str, str] = {}
    for folder in folders:
        for path in sorted(folder.rglob("*.jsonl")):
            if path != RunFolder(path.parent).answers and not path.name.startswith("predictions"):
                continue
            for line in path.read_text(encoding="utf-8").splitlines():
                try:
                    row = json.loads(line)
                except json.JSONDecodeError:
                    continue
                if isinstance(row, dict) and "id" in row and "question" in row:
                    questions.setdefault(str(row["id"]), str(row["question"]))
    return questions
