"""The report's causal sections: for each causal run (`corehead attribute`), whether the RAM ranking of the
scoring run beside it finds the heads the model needs. RAM against each head's causal effect, the agreement
of the rankings (heads.compare_rankings) and both per-layer profiles; a causal run without a scoring run to
compare with shows its own effects only."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from corehead import plots
from corehead.heads import HeadSet, compare_rankings
from corehead.report.page import Page, ci, esc, num, table, wall
from corehead.runfolder import RunFolder

TITLE = "Does RAM find the heads the model needs?"
DRAWS = 300  # bootstrap draws of the agreement table: a 95% interval, in about a second per run
Scoring = tuple[str, Path, HeadSet]  # a scoring run: its label, folder and head set


def partner(run: Path, causal: HeadSet, scored: list[Scoring]) -> Scoring | None:
    """The scoring run to compare a causal run with, among those of the same model and shape: the study's
    `score-D/` beside `attribute-D/`, else the only one on the same dataset, else the only one (None if
    there is no single choice)."""

    def kind(hs: HeadSet) -> tuple[str, int, int]:
        return hs.model, hs.n_layers, hs.n_heads

    alike = [s for s in scored if kind(s[2]) == kind(causal)]
    if run.name.startswith("attribute-"):
        sibling = RunFolder(run.parent).stage("score", run.name.removeprefix("attribute-")).path.resolve()
        beside = [s for s in alike if s[1].resolve() == sibling]
        if beside:
            return beside[0]
    same_data = [s for s in alike if s[2].dataset == causal.dataset] or alike
    return same_data[0] if len(same_data) == 1 else None


def causal_section(page: Page, index: int, label: str, run: Path, scoring: Scoring | None) -> dict[str, Any]:
    """The section of one causal run, compared with `scoring` when given; returns its numbers for summary.json."""
    folder = RunFolder(run)
    result = folder.read_summary("attribute")
    causal = HeadSet.load(folder.heads)
    slug = f"causal{index}"
    effect = np.asarray(causal.scores["mean"], dtype=float)
    ram = scoring[2] if scoring is not None else None
    profile = effect.mean(axis=1)  # per layer
    title = f"causal effect per head ({label})"
    causal_map = page.plot(lambda p: plots.head_map(effect, causal.selected, title, p), f"{slug}-heads", title)
    layers = _layers(page, slug, profile, ram)
    about = (
        f"{result['method']} estimate of each head's effect in {result['mode']} ablation: the drop in the gold "
        f"answer's log-prob when that head alone is cut, over {result['n']} samples of {causal.dataset} "
        f"(teacher-forced accuracy {num(result.get('clean_correct'), '.2f')}); {len(result['needed'])} heads "
        f"needed (95% CI above 0); wall time {wall(folder.manifest())}."
    )
    parts = [f"<p>{esc(about)}</p>"]
    rows: list[dict[str, Any]] | None = None
    if scoring is None:
        note = "no scoring run of this model beside it: give its scoring run with it to compare the rankings."
        parts += [f'<p class="note">{esc(note)}</p>', f'<div class="pair">{causal_map}{layers}</div>']
    else:
        score_label, score_run, ram = scoring
        compared = f"{ram.metric} on {ram.query} rows, {ram.n_samples} samples"
        parts.append(f"<p>compared with scoring run <b>{esc(score_label)}</b> ({esc(compared)}).</p>")
        parts.append(f'<div class="pair">{_scatter(page, slug, label, scoring, causal)}{layers}</div>')
        rows = compare_rankings(score_run, run, draws=DRAWS) if RunFolder(score_run).results.is_dir() else []
        parts += [
            _agreement(rows),
            f"<details><summary>causal effect per head as a figure</summary>{causal_map}</details>",
        ]
    page.add(f"{TITLE} ({label})", "\n".join(parts), slug)
    return {
        "label": label,
        "path": str(run),
        "wall_s": folder.manifest().get("wall_s"),
        "scoring_run": scoring[0] if scoring is not None else None,
        "agreement": rows,
        "layer_profile": {"causal": profile.tolist(), "ram": ram.layer_profile().tolist() if ram else None},
        **result,
    }


def _scatter(page: Page, slug: str, label: str, scoring: Scoring, causal: HeadSet) -> str:
    """Each head's RAM against its causal effect, CoRe heads and the causal top heads marked."""
    score_label, _, ram = scoring
    scores = {k: np.asarray(causal.scores[k], dtype=float) for k in ("mean", "low", "high")}
    title = f"RAM against causal effect per head ({label})"
    return page.plot(
        lambda p: plots.ram_vs_causal(
            np.asarray(ram.scores["mean"], dtype=float),
            scores["mean"],
            (scores["low"], scores["high"]),
            ram.selected,
            causal.selected,
            f"{ram.metric} ({ram.query} rows, {score_label})",
            title,
            p,
        ),
        f"{slug}-scatter",
        title,
    )


def _layers(page: Page, slug: str, causal: np.ndarray, ram: HeadSet | None) -> str:
    """The mean causal effect per layer, beside the RAM profile of the scoring run when there is one."""
    title = "mean per layer: causal effect" + (f" and {ram.metric}" if ram is not None else "")
    return page.plot(
        lambda p: plots.causal_layer_profile(
            causal, ram.layer_profile() if ram is not None else None, ram.metric if ram is not None else "", title, p
        ),
        f"{slug}-layers",
        title,
    )


def _agreement(rows: list[dict[str, Any]]) -> str:
    """compare_rankings' rows as a table, with what precision and recall mean."""
    if not rows:
        return '<p class="note">the scoring run has no per-sample results (results/): no agreement table.</p>'
    shared = "overlap" in rows[0]
    body = [
        [esc(r["ranking"]), f"{num(r['spearman'], '.2f')} {ci((r['spearman_low'], r['spearman_high']), '.2f')}",
         f"{num(r['precision'], '.2f')} {ci((r['precision_low'], r['precision_high']), '.2f')}",
         f"{num(r['recall'], '.2f')} {ci((r['recall_low'], r['recall_high']), '.2f')}",
         f"{r['n_ram']} / {r['n_causal']}", *([str(r["overlap"])] if shared else [])]
        for r in rows
    ]  # fmt: skip
    k, needed = rows[0]["k"], rows[0]["needed"]
    header = ["ranking", "Spearman [95% CI]", f"precision@{k} [95% CI]", f"recall of {needed} needed [95% CI]"]
    header += ["samples (RAM / causal)", *(["shared samples"] if shared else [])]
    note = (
        f"precision: the share of RAM's top {k} heads that are in the causal top {k}; recall: the share of the "
        f"heads whose causal effect CI lies above 0 (here {needed}) that are in RAM's top {k}. Intervals: 95% "
        f"bootstrap over each run's samples ({DRAWS} draws). Shared samples: both rankings were made from them "
        "(a study ranks both on its scoring samples), so their agreement shares those samples' noise; neither "
        "ranking shares samples with the ablation that tests it."
    )
    return f'<h3>Agreement of the rankings</h3>{table(header, body, "num agreement")}<p class="note">{esc(note)}</p>'
