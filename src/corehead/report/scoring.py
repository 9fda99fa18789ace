"""The report's scoring sections: the runs table, each run's heads (heat map, top heads, GQA view, attention
overlays, the explorer's data) and the overlap of the runs' head sets."""

from __future__ import annotations

import json
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.compute as pc
import pyarrow.parquet as pq
from matplotlib import colormaps

from corehead import plots
from corehead.heads import HeadSet, overlap
from corehead.report.maps import SampleMaps, load_sample, mapped_ids, query_groups, sample_data
from corehead.report.page import Page, ci, esc, num, table, wall
from corehead.runfolder import RunFolder

HEAD_STATS = ("ram", "visual_mass", "region_share", "lift", "entropy", "top_in_region")  # shown per head


def runs_table(scores: list[tuple[str, Path]], headsets: list[tuple[str, HeadSet]]) -> str:
    """One row per scoring run: model, data, ranking, selection, options, versions, wall time."""
    rows = []
    for (label, run), (_, hs) in zip(scores, headsets, strict=True):
        manifest = RunFolder(run).manifest()
        rows.append(
            [
                esc(label),
                esc(hs.model),
                esc(manifest.get("family", "?")),
                esc(hs.revision or "n/a"),
                esc(hs.dataset),
                str(hs.n_samples),
                esc(f"{hs.metric} on {hs.query} rows"),
                esc(json.dumps(hs.selection)),
                f"{len(hs.selected)} of {hs.n_layers * hs.n_heads}",
                esc(_fallbacks(hs)),
                f"<code>{esc(json.dumps(manifest.get('options', hs.options)))}</code>",
                esc(manifest.get("corehead", "?")),
                esc(wall(manifest)),
            ]
        )
    header = ["run", "model", "family", "revision", "dataset", "samples", "ranked by", "selection", "CoRe heads"]
    return table([*header, "regions fallen back", "options", "corehead", "wall time"], rows, "runs")


def _fallbacks(hs: HeadSet) -> str:
    """'2 of 12 (17%)': evidence regions mapped to their best-overlapping cells ('n/a' when not recorded)."""
    if not hs.regions:
        return "n/a"
    return f"{hs.fallbacks} of {hs.regions} ({hs.fallback_rate:.0%})"


def mapping_note(hs: HeadSet) -> str:
    """How the run's regions became tokens: the weighting, the overlap rule and how often it fell back."""
    weighting = hs.options.get("region_weighting", "binary")
    if weighting == "fractional":
        return '<p class="note">regions: each visual token weighted by the share of its cell inside the box.</p>'
    if not hs.regions:
        return '<p class="note">regions: this head set does not record how its regions were mapped.</p>'
    rule = hs.options.get("min_overlap", 0.5)
    dist = (
        f"; distractor regions: {hs.distractor_fallbacks} of {hs.distractor_regions}" if hs.distractor_regions else ""
    )
    return (
        f'<p class="note">regions: a token counts when {rule:g} of its cell lies inside the box; '
        f"{_fallbacks(hs)} evidence regions had no such cell and fell back to their best-overlapping cells{dist}.</p>"
    )


def head_stats(run: Path, query: str, shape: tuple[int, int]) -> dict[str, np.ndarray]:
    """Per-head means [layers, heads] of HEAD_STATS over the run's samples, on `query` rows (NaN left out)."""
    columns = ["layer", "head", "query", *HEAD_STATS]
    rows_table = pq.read_table(RunFolder(run).results, columns=columns)
    rows = rows_table.filter(pc.equal(rows_table.column("query"), query if query in query_groups(run) else "all"))
    index = (rows.column("layer").to_numpy().astype(int), rows.column("head").to_numpy().astype(int))
    out = {}
    for name in HEAD_STATS:
        values = rows.column(name).to_numpy().astype(float)
        total, count = np.zeros(shape), np.zeros(shape)
        np.add.at(total, index, np.nan_to_num(values))
        np.add.at(count, index, np.isfinite(values))
        out[name] = np.where(count > 0, total / np.maximum(count, 1), np.nan)
    return out


def _color(value: float, low: float, high: float) -> str:
    r, g, b, _ = colormaps["viridis"]((value - low) / (high - low) if high > low else 0.5)
    return f"#{round(r * 255):02x}{round(g * 255):02x}{round(b * 255):02x}"


def heat_grid(index: int, hs: HeadSet) -> str:
    """The RAM heat map as an HTML table; a click on a cell opens that head in the explorer."""
    mean, low, high = (np.asarray(hs.scores[k], dtype=float) for k in ("mean", "low", "high"))
    lo, hi = float(np.nanmin(mean)), float(np.nanmax(mean))
    chosen = set(hs.selected)
    rank = {p: r for r, p in enumerate(hs.ranking, start=1)}
    head = "<th>layer \\ head</th>" + "".join(f"<th>{h}</th>" for h in range(hs.n_heads))
    rows = []
    for layer in range(hs.n_layers):
        cells = []
        for h in range(hs.n_heads):
            tip = f"layer {layer} head {h}: {mean[layer, h]:.4f} {ci((low[layer, h], high[layer, h]), '.4f')}"
            cls = ' class="core"' if (layer, h) in chosen else ""
            cells.append(
                f'<td{cls} data-run="{index}" data-l="{layer}" data-h="{h}" title="{esc(tip)}, rank {rank[layer, h]}"'
                f' style="background:{_color(mean[layer, h], lo, hi)}"></td>'
            )
        rows.append(f"<tr><th>{layer}</th>{''.join(cells)}</tr>")
    legend = f'<p class="note">colour: {esc(hs.metric)} from {lo:.3f} (dark) to {hi:.3f} (yellow); outlined: CoRe heads. Click a head.</p>'
    return f'<table class="heat" id="heat-{index}"><thead><tr>{head}</tr></thead><tbody>{"".join(rows)}</tbody></table>{legend}'


def scoring(
    page: Page, index: int, label: str, run: Path, hs: HeadSet, questions: dict[str, str], n_samples: int
) -> dict[str, Any]:
    """The section of one scoring run; returns its numbers for summary.json."""
    slug = f"score{index}"
    stats = head_stats(run, hs.query, (hs.n_layers, hs.n_heads)) if RunFolder(run).results.is_dir() else {}
    parts = [_heads_figures(page, slug, index, label, hs)]
    top_table, summary_top = _top_heads(hs, stats)
    parts += [mapping_note(hs), top_table, _gqa_view(hs)]
    samples = [load_sample(run, sid, hs.query, questions) for sid in mapped_ids(run)[:n_samples]]
    if samples:
        parts.append(_overlays(page, slug, hs, samples))
    else:
        parts.append('<p class="note">no attention maps in this run (score with --maps N to see overlays).</p>')
    page.add(f"Scoring run {label}", "\n".join(parts), slug)
    page.data["runs"].append(_explorer_data(label, hs, stats, samples))
    return {
        "label": label,
        "path": str(run),
        "wall_s": RunFolder(run).manifest().get("wall_s"),
        "heads": hs.to_json(),
        "top_heads": summary_top,
        "samples_with_maps": [s.id for s in samples],
    }


def _heads_figures(page: Page, slug: str, index: int, label: str, hs: HeadSet) -> str:
    """The clickable heat map beside the head explorer, the layer profile, and the heat map as a figure."""
    explorer = (
        f'<div class="explorer" id="explorer-{index}"><h3 class="ex-title">head explorer</h3>'
        '<p class="ex-stats"></p><div class="ex-samples"></div></div>'
    )
    parts = [f'<div class="pair"><div>{heat_grid(index, hs)}</div>{explorer}</div>']
    title = f"{hs.metric} per layer ({hs.query} rows)"
    parts.append(
        page.plot(lambda p: plots.layer_profile(hs.layer_profile(), hs.selected, title, p), f"{slug}-layers", title)
    )
    mean = np.asarray(hs.scores["mean"], dtype=float)
    heat_png = page.plot(
        lambda p: plots.head_map(mean, hs.selected, f"{hs.metric} per head ({label})", p), f"{slug}-heads", "heat map"
    )
    parts.append(f"<details><summary>heat map as a figure</summary>{heat_png}</details>")
    return "\n".join(parts)


def _top_heads(hs: HeadSet, stats: dict[str, np.ndarray]) -> tuple[str, list[dict[str, Any]]]:
    """The top heads (at least the CoRe heads) with their statistics, as HTML and for summary.json."""
    mean, low, high = (np.asarray(hs.scores[k], dtype=float) for k in ("mean", "low", "high"))
    top_rows, summary_top = [], []
    chosen = set(hs.selected)
    for rank, (layer, head) in enumerate(hs.ranking[: max(10, len(hs.selected))], start=1):
        values = {name: float(stats[name][layer, head]) for name in stats}
        summary_top.append({"rank": rank, "layer": layer, "head": head, "mean": mean[layer, head], **values})
        top_rows.append(
            [str(rank), str(layer), str(head), str(head // hs.groups), num(mean[layer, head]),
             ci((low[layer, head], high[layer, head])), *(num(values.get(n)) for n in HEAD_STATS[1:]),
             "yes" if (layer, head) in chosen else ""]
        )  # fmt: skip
    header = ["rank", "layer", "head", "KV head", f"{esc(hs.metric)} mean", "95% CI"]
    html = "<h3>Top heads</h3>" + table([*header, *HEAD_STATS[1:], "CoRe"], top_rows, "num")
    html += f'\n<p class="note">statistics are means over the run\'s samples on {esc(hs.query)} rows.</p>'
    return html, summary_top


def _gqa_view(hs: HeadSet) -> str:
    """Per layer and KV head: max / sum of the scores of the query heads that read it."""
    kv_max, kv_sum = hs.kv_scores("max"), hs.kv_scores("sum")
    kv_rows = [[str(layer), *(f"{a:.3f} / {b:.3f}" for a, b in zip(kv_max[layer], kv_sum[layer], strict=True))]
               for layer in range(hs.n_layers)]  # fmt: skip
    kv_head = ["layer", *(f"KV {k}" for k in range(hs.n_kv_heads))]
    title = f"<h3>GQA view: per KV head, max / sum over its {hs.groups} query heads</h3>"
    return f"{title}\n{table(kv_head, kv_rows, 'num')}"


def _explorer_data(label: str, hs: HeadSet, stats: dict[str, np.ndarray], samples: list[SampleMaps]) -> dict[str, Any]:
    """What the page's head explorer reads for one run: scores, ranks, selection, statistics, samples."""
    first = hs.selected[0] if hs.selected else hs.ranking[0]
    return {
        "label": label,
        "metric": hs.metric,
        "n_layers": hs.n_layers,
        "n_heads": hs.n_heads,
        "groups": hs.groups,
        "mean": hs.scores["mean"],
        "low": hs.scores["low"],
        "high": hs.scores["high"],
        "rank": [[hs.ranking.index((layer, h)) + 1 for h in range(hs.n_heads)] for layer in range(hs.n_layers)],
        "selected": [list(p) for p in hs.selected],
        "stats": {name: values.tolist() for name, values in stats.items()},
        "samples": [sample_data(s) for s in samples],
        "initial": list(first),
    }


def _overlays(page: Page, slug: str, hs: HeadSet, samples: list[SampleMaps]) -> str:
    """Static figures: the top CoRe heads next to the median-ranked head on each sample with maps."""
    heads = [*(hs.selected or hs.ranking)[:2], hs.ranking[len(hs.ranking) // 2]]
    names = [f"CoRe #{i + 1}" for i in range(len(heads) - 1)] + ["median head"]
    parts = ["<h3>Attention on samples: dedicated extractors vs a typical head</h3>"]
    for k, s in enumerate(samples):
        values = [s.attention[layer, head] for layer, head in heads]
        labels = [
            f"{name}: L{layer} H{head}\nregion {v[s.region].sum():.2f} of {v.sum():.2f}"
            for name, (layer, head), v in zip(names, heads, values, strict=True)
        ]
        shown = s.shown
        draw = partial(
            plots.attention_overlay,
            [s.pictures[u] for u in shown],
            [[s.heat(v, u) for u in shown] for v in values],
            [s.region_box(u) for u in shown],
            labels,
            "green: the evidence region",
        )
        figure = page.plot(draw, f"{slug}-sample{k}", f"attention overlays on {s.id}", svg=False)
        question = f"<q>{esc(s.question)}</q>" if s.question is not None else ""
        parts.append(f'<figure class="sample"><figcaption><b>{esc(s.id)}</b> {question}</figcaption>{figure}')
        if len(s.pictures) > 1:
            masses = {label.split("\n")[0]: s.unit_mass(v) for label, v in zip(labels, values, strict=True)}
            parts.append(
                page.plot(
                    partial(plots.unit_mass, masses, "page / frame", f"attention mass per page / frame ({s.id})"),
                    f"{slug}-sample{k}-units",
                    f"mass per unit on {s.id}",
                )
            )
        parts.append("</figure>")
    return "\n".join(parts)


def overlaps(page: Page, headsets: list[tuple[str, HeadSet]]) -> dict[str, Any]:
    """Jaccard of the CoRe head sets and Spearman correlation of the rankings, for every pair of runs."""
    labels = [label for label, _ in headsets]
    n = len(headsets)
    jaccard: list[list[float | None]] = [[None] * n for _ in range(n)]
    spearman: list[list[float | None]] = [[None] * n for _ in range(n)]
    for i, (_, a) in enumerate(headsets):
        for j, (_, b) in enumerate(headsets):
            if (a.n_layers, a.n_heads) == (b.n_layers, b.n_heads):
                both = overlap(a, b)
                jaccard[i][j], spearman[i][j] = both["jaccard"], both["spearman"]
    body = []
    for name, matrix in (("Jaccard of the CoRe head sets", jaccard), ("Spearman correlation of rankings", spearman)):
        rows = [[esc(labels[i]), *(num(v, ".2f") for v in row)] for i, row in enumerate(matrix)]
        body.append(f"<div><h3>{name}</h3>{table(['', *(esc(x) for x in labels)], rows, 'num')}</div>")
    note = '<p class="note">n/a: runs of different architectures.</p>'
    page.add("Across scoring runs", f'<div class="pair">{"".join(body)}</div>{note}', "overlap")
    return {"runs": labels, "jaccard": jaccard, "spearman": spearman}
