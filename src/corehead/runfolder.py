"""The files of a run folder, named in one place: what the studies write and what the report reads.

| command | rows (written as produced) | summary | figure |
|---|---|---|---|
| score | results/part-*.parquet (+ maps/part-*.safetensors) | heads.json (+ heads-correct.json) | heads.png |
| ablate | ablation.jsonl | ablation.json | ablation.png |
| accelerate | accelerate.jsonl | accelerate.json | accelerate.png |
| attribute | attribute.jsonl | attribute.json (+ heads.json, the causal ranking) | heads.png |

Every run folder also has manifest.json (settings, progress, wall time). A folder of folders (a study,
`corehead demo` or `corehead study`) adds summary.json and its per-study folders `score-D/`, `attribute-D/`,
`ablate-D/`, `accelerate-D/`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from safetensors import safe_open

ROWS = {
    "score": "results",
    "ablate": "ablation.jsonl",
    "accelerate": "accelerate.jsonl",
    "attribute": "attribute.jsonl",
}
SUMMARY = {
    "score": "heads.json",
    "ablate": "ablation.json",
    "accelerate": "accelerate.json",
    "attribute": "attribute.json",
}
FIGURE = {"score": "heads.png", "ablate": "ablation.png", "accelerate": "accelerate.png", "attribute": "heads.png"}


@dataclass(frozen=True)
class RunFolder:
    """Paths of one run folder; `command` is read from its manifest when not given."""

    path: Path

    @property
    def manifest_path(self) -> Path:
        return self.path / "manifest.json"

    @property
    def results(self) -> Path:
        return self.path / "results"

    @property
    def maps(self) -> Path:
        return self.path / "maps"

    @property
    def heads(self) -> Path:
        return self.path / "heads.json"

    @property
    def heads_correct(self) -> Path:
        return self.path / "heads-correct.json"

    @property
    def study_summary(self) -> Path:
        """The numbers of a whole study (`corehead study` or `demo`), beside its run folders."""
        return self.path / "summary.json"

    def stage(self, command: str, domain: str) -> RunFolder:
        """The run folder of one stage of a study: `score-D/`, `ablate-D/` or `accelerate-D/` for domain D."""
        return RunFolder(self.path / f"{command}-{domain}")

    def predictions(self, seed: int) -> Path:
        """A study's answers to its evaluation samples."""
        return self.path / f"predictions-seed{seed}.jsonl"

    @property
    def answers(self) -> Path:
        """The model's answers to the scored samples (scoring with --correct-only)."""
        return self.path / "answers.jsonl"

    def manifest(self) -> dict[str, Any]:
        """The manifest's content ({} when the folder has none)."""
        return json.loads(self.manifest_path.read_text()) if self.manifest_path.exists() else {}

    @property
    def command(self) -> str | None:
        return self.manifest().get("command")

    def rows(self, command: str) -> Path:
        return self.path / ROWS[command]

    def summary(self, command: str) -> Path:
        return self.path / SUMMARY[command]

    def figure(self, command: str) -> Path:
        return self.path / FIGURE[command]

    def read_summary(self, command: str) -> dict[str, Any]:
        """The summary a finished run wrote (ablation.json, accelerate.json, heads.json)."""
        path = self.summary(command)
        if not path.exists():
            raise FileNotFoundError(f"{self.path} has no {path.name}: the {command} run has not finished")
        return json.loads(path.read_text())

    def write_summary(self, command: str, summary: dict[str, Any]) -> Path:
        """Write a run's summary atomically (temp file, then rename)."""
        path = self.summary(command)
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text(json.dumps(summary, indent=2))
        tmp.replace(path)
        return path

    def load_maps(self, sample_id: str) -> dict[str, np.ndarray]:
        """One sample's maps from a run scored with `maps`: `attention` [layers, heads, groups, N] (mass on
        each visual token per query group), `cells` [N, 4] (pixels in its unit), `units` and `spans` [N]
        (first unit covered, how many), `region` and `distractors` [N] bool, `sizes` [units, 2] (width,
        height of each unit) and `image0`, `image1`, ... (each unit's picture, uint8 [h, w, 3])."""
        for path in sorted(self.maps.glob("part-*.safetensors")):
            with safe_open(str(path), framework="numpy") as f:
                keys = [k for k in f.keys() if k.rsplit("/", 1)[0] == sample_id]  # noqa: SIM118 (not a dict)
                if keys:
                    return {k.rsplit("/", 1)[1]: f.get_tensor(k) for k in keys}
        raise KeyError(f"no maps for sample {sample_id!r} in {self.maps} (score with --maps N)")
