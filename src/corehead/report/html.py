"""One self-contained HTML study of scoring, ablation and acceleration runs (`corehead report`).

Everything the page needs is inside it: plots and pictures as base64 data URIs, CSS and JavaScript inline,
and the numbers behind the interactive parts as JSON in a <script type="application/json"> block (escaped so
that no text from a dataset can close it). All text from runs and datasets is HTML-escaped. Next to the
page, `<name>_files/` holds every plot as PNG and SVG (for papers) and `summary.json` (the numbers shown).
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.compute as pc
import pyarrow.parquet as pq
from matplotlib import colormaps
from PIL import Image
from safetensors import safe_open

from corehead.attention.recorder import ROW_GROUPS
from corehead.experiments.score import load_maps
from corehead.heads import HeadSet, overlap
from corehead import plots

HEAD_STATS = ("ram", "visual_mass", "region_share", "lift", "entropy", "top_in_region")  # shown per head
MAX_UNITS = 8  # pictures (pages, frames) shown per sample
TEMPLATE = Path(__file__).with_name("template.html")


@dataclass
class Runs:
    """Run folders found under the folders given, each with a label (its path below the folder given)."""

    scores: list[tuple[str, Path]]
    ablations: list[tuple[str, Path]]
    accelerations: list[tuple[str, Path]]
    questions: dict[str, str]  # sample id -> question, from answers.jsonl / predictions*.jsonl files


def find_runs(folders: list[Path]) -> Runs:
    """Search each folder recursively for heads.json, ablation.json(l) and accelerate.json(l)."""
    for folder in folders:
        if not folder.is_dir():
            raise ValueError(f"{folder} is not a folder")

    def found(*names: str) -> list[tuple[str, Path]]:
        runs: dict[Path, str] = {}
        for folder in folders:
            for name in names:
                for path in sorted(folder.rglob(name)):
                    below = path.parent.relative_to(folder)
                    runs.setdefault(path.parent, folder.name if below == Path() else str(below))
        return [(label, path) for path, label in runs.items()]

    runs = Runs(
        found("heads.json"),
        found("ablation.json", "ablation.jsonl"),
        found("accelerate.json", "accelerate.jsonl"),
        _questions(folders),
    )
    if not (runs.scores or runs.ablations or runs.accelerations):
        names = ", ".join(str(f) for f in folders)
        raise ValueError(f"no runs in {names}: expected heads.json, ablation.json or accelerate.json below it")
    return runs


def _questions(folders: list[Path]) -> dict[str, str]:
    questions: dict[str, str] = {}
    for folder in folders:
        for path in sorted(folder.rglob("*.jsonl")):
            if path.name != "answers.jsonl" and not path.name.startswith("predictions"):
                continue
            for line in path.read_text(encoding="utf-8").splitlines():
                try:
                    row = json.loads(line)
                except json.JSONDecodeError:
                    continue
                if isinstance(row, dict) and "id" in row and "question" in row:
                    questions.setdefault(str(row["id"]), str(row["question"]))
    return questions


def write_report(folders: list[Path], out: Path, samples: int = 3) -> Path:
    """Write the study of every run under `folders` to `out` (HTML), its plots and summary.json beside it."""
    from corehead import __version__

    runs = find_runs(folders)
    files = out.parent / f"{out.stem}_files"
    files.mkdir(parents=True, exist_ok=True)
    page = Page(files)
    summary: dict[str, Any] = {"corehead": __version__, "scoring": [], "ablation": [], "acceleration": []}
    headsets = [(label, HeadSet.load(run / "heads.json")) for label, run in runs.scores]
    if headsets:
        page.add("Runs", _runs_table(runs.scores, headsets))
    for i, ((label, run), (_, headset)) in enumerate(zip(runs.scores, headsets, strict=True)):
        summary["scoring"].append(_scoring(page, i, label, run, headset, runs.questions, samples))
    if len(headsets) > 1:
        summary["overlap"] = _overlaps(page, headsets)
    for i, (label, run) in enumerate(runs.ablations):
        summary["ablation"].append(_ablation(page, i, label, run))
    for i, (label, run) in enumerate(runs.accelerations):
        summary["acceleration"].append(_acceleration(page, i, label, run))
    title = "corehead report: " + ", ".join(label for label, _ in runs.scores + runs.ablations + runs.accelerations)
    out.write_text(page.render(title, __version__), encoding="utf-8")
    (files / "summary.json").write_text(json.dumps(_finite(summary), indent=1, allow_nan=False))
    return out


class Page:
    """The sections of the report, the data its JavaScript reads and the folder its plot files go to."""

    def __init__(self, files: Path) -> None:
        self.files = files
        self.sections: list[str] = []
        self.data: dict[str, Any] = {"runs": []}

    def add(self, title: str, body: str, anchor: str = "") -> None:
        ident = f' id="{esc(anchor)}"' if anchor else ""
        self.sections.append(f"<section{ident}><h2>{esc(title)}</h2>\n{body}\n</section>")

    def plot(self, draw: Callable[[Path], Path], name: str, alt: str, svg: bool = True) -> str:
        """Draw a figure into the files folder (PNG, and SVG) and return an <img> with the PNG inlined."""
        png = draw(self.files / f"{name}.png")
        if svg:
            draw(self.files / f"{name}.svg")
        return f'<img class="plot" alt="{esc(alt)}" src="{png_uri(png.read_bytes())}">'

    def render(self, title: str, version: str) -> str:
        values = {
            "title": esc(title),
            "version": esc(version),
            "sections": "\n".join(self.sections),
            "data": script_json(self.data),
        }  # one pass, so text put in is never read as a placeholder
        return re.sub(r"\{\{(\w+)\}\}", lambda m: values[m.group(1)], TEMPLATE.read_text(encoding="utf-8"))


def esc(value: Any) -> str:
    """Text for HTML (element content or a quoted attribute)."""
    return html.escape(str(value), quote=True)


def script_json(obj: Any) -> str:
    """JSON that is safe inside <script>: '<', '>' and '&' are written as \\u escapes, so data cannot close it."""
    text = json.dumps(_finite(obj), allow_nan=False, separators=(",", ":"))
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def _finite(obj: Any) -> Any:
    """NaN and infinities as null (JSON has no NaN), recursively."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_finite(v) for v in obj]
    return obj


def png_uri(data: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(data).decode("ascii")


def _picture_uri(picture: np.ndarray) -> str:
    buffer = io.BytesIO()
    Image.fromarray(picture).save(buffer, format="PNG")
    return png_uri(buffer.getvalue())


def _table(header: list[str], rows: list[list[str]], cls: str = "") -> str:
    """An HTML table; header and cells are already escaped HTML."""
    head = "".join(f"<th>{h}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows)
    return f'<table class="{cls}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def _num(value: float | None, fmt: str = ".3f") -> str:
    return "n/a" if value is None or not math.isfinite(value) else format(value, fmt)


def _ci(bounds: tuple[float, float] | list[float], fmt: str = ".3f") -> str:
    return f"[{_num(bounds[0], fmt)}, {_num(bounds[1], fmt)}]"


def _manifest(run: Path) -> dict[str, Any]:
    return json.loads((run / "manifest.json").read_text()) if (run / "manifest.json").exists() else {}


def _wall(manifest: dict[str, Any]) -> str:
    """A run's wall time (summed over its launches) and how many processes the last launch used."""
    if "wall_s" not in manifest:
        return "n/a"
    minutes, seconds = divmod(round(manifest["wall_s"]), 60)
    text = f"{minutes}m{seconds:02d}s" if minutes else f"{seconds}s"
    procs = manifest.get("processes", 1)
    return (
        text + (f" on {procs} processes" if procs > 1 else "") + ("" if manifest.get("complete") else " (unfinished)")
    )


def _runs_table(scores: list[tuple[str, Path]], headsets: list[tuple[str, HeadSet]]) -> str:
    rows = []
    for (label, run), (_, hs) in zip(scores, headsets, strict=True):
        manifest = _manifest(run)
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
                f"<code>{esc(json.dumps(manifest.get('options', hs.options)))}</code>",
                esc(manifest.get("corehead", "?")),
                esc(_wall(manifest)),
            ]
        )
    header = ["run", "model", "family", "revision", "dataset", "samples", "ranked by", "selection", "CoRe heads"]
    return _table([*header, "options", "corehead", "wall time"], rows, "runs")


def _head_stats(run: Path, query: str, shape: tuple[int, int]) -> dict[str, np.ndarray]:
    """Per-head means [layers, heads] of HEAD_STATS over the run's samples, on `query` rows (NaN left out)."""
    columns = ["layer", "head", "query", *HEAD_STATS]
    table = pq.read_table(run / "results", columns=columns)
    rows = table.filter(pc.equal(table.column("query"), query if query in ROW_GROUPS else "all"))
    index = (rows.column("layer").to_numpy().astype(int), rows.column("head").to_numpy().astype(int))
    out = {}
    for name in HEAD_STATS:
        values = rows.column(name).to_numpy().astype(float)
        total, count = np.zeros(shape), np.zeros(shape)
        np.add.at(total, index, np.nan_to_num(values))
        np.add.at(count, index, np.isfinite(values))
        out[name] = np.where(count > 0, total / np.maximum(count, 1), np.nan)
    return out


@dataclass
class SampleMaps:
    """One sample's maps from a run, its token boxes moved into the kept pictures' pixels."""

    id: str
    question: str | None
    pictures: list[np.ndarray]
    attention: np.ndarray  # [layers, heads, N] on the chosen query group
    units: np.ndarray  # [N] first unit of each token
    spans: np.ndarray  # [N] units each token covers
    boxes: np.ndarray  # [N, 4] picture pixels
    region: np.ndarray  # [N] bool

    @property
    def shown(self) -> list[int]:
        """The units drawn: all, or MAX_UNITS evenly spaced."""
        n = len(self.pictures)
        return list(range(n)) if n <= MAX_UNITS else sorted({round(float(v)) for v in np.linspace(0, n - 1, MAX_UNITS)})

    def unit_mass(self, values: np.ndarray) -> np.ndarray:
        """Attention mass on each unit: each token's mass split evenly over the units it covers."""
        mass = np.zeros(len(self.pictures))
        for i, (u, span) in enumerate(zip(self.units, self.spans, strict=True)):
            end = min(int(u + span), len(mass))
            mass[int(u) : end] += values[i] / max(1, end - int(u))
        return mass

    def heat(self, values: np.ndarray, unit: int) -> np.ndarray:
        """A map at the picture's resolution: each token's mass (split over its units) painted on its box."""
        picture = self.pictures[unit]
        heat = np.zeros(picture.shape[:2])
        for i, (u, span) in enumerate(zip(self.units, self.spans, strict=True)):
            if u <= unit < u + span:
                x0, y0, x1, y1 = (round(float(v)) for v in self.boxes[i])
                heat[max(0, y0) : y1, max(0, x0) : x1] += values[i] / span
        return heat

    def region_box(self, unit: int) -> tuple[float, float, float, float] | None:
        """The bounding box of the region's tokens on `unit`, in picture pixels (None: none there)."""
        on = self.region & (self.units <= unit) & (unit < self.units + self.spans)
        if not on.any():
            return None
        b = self.boxes[on]
        return float(b[:, 0].min()), float(b[:, 1].min()), float(b[:, 2].max()), float(b[:, 3].max())


def mapped_ids(run: Path) -> list[str]:
    """Ids of the samples whose maps the run kept, in the order they were scored."""
    kept: set[str] = set()
    for path in sorted((run / "maps").glob("part-*.safetensors")):
        with safe_open(str(path), framework="numpy") as f:
            kept.update(k.rsplit("/", 1)[0] for k in f.keys())  # noqa: SIM118 (not a dict)
    if not kept:
        return []
    scored = pq.read_table(run / "results", columns=["sample_id"]).column(0).to_pylist()
    return [sid for sid in dict.fromkeys(scored) if sid in kept]


def load_sample(run: Path, sample_id: str, query: str, questions: dict[str, str]) -> SampleMaps:
    m = load_maps(run, sample_id)
    pictures = [m[f"image{k}"] for k in range(len(m["sizes"]))]
    units = m["units"].astype(int)
    scale = np.array([[p.shape[1] / w, p.shape[0] / h] for p, (w, h) in zip(pictures, m["sizes"], strict=True)])
    boxes = m["cells"].astype(float) * np.tile(scale[units], 2)
    group = ROW_GROUPS.index(query) if query in ROW_GROUPS else 0
    attention = m["attention"][:, :, group, :].astype(np.float32)
    return SampleMaps(
        sample_id, questions.get(sample_id), pictures, attention, units, m["spans"].astype(int), boxes, m["region"]
    )


def _sample_data(s: SampleMaps) -> dict[str, Any]:
    """What the head explorer draws: pictures, token boxes, and every head's map (uint8 of its max, base64)."""
    n_layers, n_heads, n = s.attention.shape
    flat = s.attention.reshape(n_layers * n_heads, n).astype(np.float64)
    top = flat.max(axis=1)
    levels = np.round(255 * flat / np.maximum(top, 1e-12)[:, None]).astype(np.uint8)
    return {
        "id": s.id,
        "question": s.question,
        "units": s.shown,
        "pictures": [_picture_uri(p) for p in s.pictures],
        "boxes": [s.region_box(u) for u in range(len(s.pictures))],
        "tokens": [
            [int(u), int(sp), *(round(float(v), 1) for v in b)]
            for u, sp, b in zip(s.units, s.spans, s.boxes, strict=True)
        ],
        "maps": base64.b64encode(levels.tobytes()).decode("ascii"),
        "region_mass": np.round(flat[:, s.region].sum(axis=1), 4).tolist(),
        "visual_mass": np.round(flat.sum(axis=1), 4).tolist(),
    }


def _color(value: float, low: float, high: float) -> str:
    r, g, b, _ = colormaps["viridis"]((value - low) / (high - low) if high > low else 0.5)
    return f"#{round(r * 255):02x}{round(g * 255):02x}{round(b * 255):02x}"


def _heat_grid(index: int, hs: HeadSet) -> str:
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
            tip = f"layer {layer} head {h}: {mean[layer, h]:.4f} {_ci((low[layer, h], high[layer, h]), '.4f')}"
            cls = ' class="core"' if (layer, h) in chosen else ""
            cells.append(
                f'<td{cls} data-run="{index}" data-l="{layer}" data-h="{h}" title="{esc(tip)}, rank {rank[layer, h]}"'
                f' style="background:{_color(mean[layer, h], lo, hi)}"></td>'
            )
        rows.append(f"<tr><th>{layer}</th>{''.join(cells)}</tr>")
    legend = f'<p class="note">colour: {esc(hs.metric)} from {lo:.3f} (dark) to {hi:.3f} (yellow); outlined: CoRe heads. Click a head.</p>'
    return f'<table class="heat" id="heat-{index}"><thead><tr>{head}</tr></thead><tbody>{"".join(rows)}</tbody></table>{legend}'


def _scoring(
    page: Page, index: int, label: str, run: Path, hs: HeadSet, questions: dict[str, str], n_samples: int
) -> dict[str, Any]:
    """The section of one scoring run; returns its numbers for summary.json."""
    slug = f"score{index}"
    shape = (hs.n_layers, hs.n_heads)
    stats = _head_stats(run, hs.query, shape) if (run / "results").is_dir() else {}
    mean, low, high = (np.asarray(hs.scores[k], dtype=float) for k in ("mean", "low", "high"))
    explorer = (
        f'<div class="explorer" id="explorer-{index}"><h3 class="ex-title">head explorer</h3>'
        '<p class="ex-stats"></p><div class="ex-samples"></div></div>'
    )
    parts = [f'<div class="pair"><div>{_heat_grid(index, hs)}</div>{explorer}</div>']
    title = f"{hs.metric} per layer ({hs.query} rows)"
    parts.append(
        page.plot(lambda p: plots.layer_profile(hs.layer_profile(), hs.selected, title, p), f"{slug}-layers", title)
    )
    heat_png = page.plot(
        lambda p: plots.head_map(mean, hs.selected, f"{hs.metric} per head ({label})", p), f"{slug}-heads", "heat map"
    )
    parts.append(f"<details><summary>heat map as a figure</summary>{heat_png}</details>")
    top_rows, summary_top = [], []
    chosen = set(hs.selected)
    for rank, (layer, head) in enumerate(hs.ranking[: max(10, len(hs.selected))], start=1):
        values = {name: float(stats[name][layer, head]) for name in stats}
        summary_top.append({"rank": rank, "layer": layer, "head": head, "mean": mean[layer, head], **values})
        top_rows.append(
            [str(rank), str(layer), str(head), str(head // hs.groups), _num(mean[layer, head]),
             _ci((low[layer, head], high[layer, head])), *(_num(values.get(n)) for n in HEAD_STATS[1:]),
             "yes" if (layer, head) in chosen else ""]
        )  # fmt: skip
    header = ["rank", "layer", "head", "KV head", f"{esc(hs.metric)} mean", "95% CI"]
    parts.append("<h3>Top heads</h3>" + _table([*header, *HEAD_STATS[1:], "CoRe"], top_rows, "num"))
    parts.append(f'<p class="note">statistics are means over the run\'s samples on {esc(hs.query)} rows.</p>')
    kv_max, kv_sum = hs.kv_scores("max"), hs.kv_scores("sum")
    kv_rows = [[str(layer), *(f"{a:.3f} / {b:.3f}" for a, b in zip(kv_max[layer], kv_sum[layer], strict=True))]
               for layer in range(hs.n_layers)]  # fmt: skip
    kv_head = ["layer", *(f"KV {k}" for k in range(hs.n_kv_heads))]
    parts.append(f"<h3>GQA view: per KV head, max / sum over its {hs.groups} query heads</h3>")
    parts.append(_table(kv_head, kv_rows, "num"))
    samples = [load_sample(run, sid, hs.query, questions) for sid in mapped_ids(run)[:n_samples]]
    if samples:
        parts.append(_overlays(page, slug, hs, samples))
    else:
        parts.append('<p class="note">no attention maps in this run (score with --maps N to see overlays).</p>')
    page.add(f"Scoring run {label}", "\n".join(parts), slug)
    first = hs.selected[0] if hs.selected else hs.ranking[0]
    page.data["runs"].append(
        {
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
            "samples": [_sample_data(s) for s in samples],
            "initial": list(first),
        }
    )
    return {
        "label": label,
        "path": str(run),
        "wall_s": _manifest(run).get("wall_s"),
        "heads": hs.to_json(),
        "top_heads": summary_top,
        "samples_with_maps": [s.id for s in samples],
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
        figure = page.plot(
            draw,
            f"{slug}-sample{k}",
            f"attention overlays on {s.id}",
            svg=False,
        )
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


def _overlaps(page: Page, headsets: list[tuple[str, HeadSet]]) -> dict[str, Any]:
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
        rows = [[esc(labels[i]), *(_num(v, ".2f") for v in row)] for i, row in enumerate(matrix)]
        body.append(f"<div><h3>{name}</h3>{_table(['', *(esc(x) for x in labels)], rows, 'num')}</div>")
    note = '<p class="note">n/a: runs of different architectures.</p>'
    page.add("Across scoring runs", f'<div class="pair">{"".join(body)}</div>{note}', "overlap")
    return {"runs": labels, "jaccard": jaccard, "spearman": spearman}


def _load_result(run: Path, name: str, summarize: Callable[[list[dict[str, Any]]], list[dict[str, Any]]]) -> Any:
    """RUN/name.json, or when only the per-sample RUN/name.jsonl is there, its summary."""
    if (run / f"{name}.json").exists():
        return json.loads((run / f"{name}.json").read_text())
    rows = [json.loads(line) for line in (run / f"{name}.jsonl").read_text().splitlines() if line.strip()]
    return {"rows": rows, "table": summarize(rows)}


def _ablation(page: Page, index: int, label: str, run: Path) -> dict[str, Any]:
    from corehead.experiments.ablate import summarize

    result = _load_result(run, "ablation", summarize)
    if "rows" in result:
        result = {
            "heads": None,
            "mode": result["rows"][0]["mode"] if result["rows"] else "?",
            "conditions": result["table"],
        }
    table = result["conditions"]
    n = max((r["n"] for r in table), default=0)
    slug = f"ablation{index}"
    title = f"{result['mode']} ablation ({label}, {n} samples)"
    figure = page.plot(lambda p: plots.ablation_sweep(table, title, p), slug, title)
    rows = []
    for r in table:
        vs = ""
        if "vs_random" in r:
            vs = f"{r['vs_random']:+.3f} {_ci(r['vs_random_ci'], fmt='+.3f')}"
        rows.append(
            [esc(r["ranking"]), esc(r["condition"]), str(r["k"]), str(r["n"]), f"{r['accuracy']:.3f}",
             f"{r['delta_accuracy']:+.3f} {_ci(r['delta_accuracy_ci'], fmt='+.3f')}", _num(r["p_value"], ".3g"),
             f"{r['delta_logprob']:+.2f} {_ci(r['delta_logprob_ci'], fmt='+.2f')}", vs]
        )  # fmt: skip
    header = [
        "ranking",
        "condition",
        "k",
        "n",
        "accuracy",
        "Δ accuracy [95% CI]",
        "p",
        "Δ answer log-prob",
        "top − random",
    ]
    heads = f"heads: <code>{esc(result['heads'])}</code>; " if result.get("heads") else ""
    manifest = _manifest(run)
    about = f"<p>{heads}wall time {esc(_wall(manifest))}</p>"
    page.add(f"Ablation {label}", f"{about}{figure}{_table(header, rows, 'num ablation')}", slug)
    return {"label": label, "path": str(run), "wall_s": manifest.get("wall_s"), **result}


def _acceleration(page: Page, index: int, label: str, run: Path) -> dict[str, Any]:
    from corehead.experiments.accelerate import summarize

    result = _load_result(run, "accelerate", summarize)
    if "rows" in result:
        first = result["rows"][0] if result["rows"] else {}
        setting = {k: first.get(k) for k in ("budget", "prefill", "query_agnostic")}
        result = {**setting, "methods": result["table"]}
    table = result["methods"]
    slug = f"acceleration{index}"
    title = f"{label}: budget {result['budget']}"
    kv = page.plot(lambda p: plots.kv_tradeoff(table, f"accuracy vs KV kept ({title})", p), f"{slug}-kv", "KV")
    speed = page.plot(
        lambda p: plots.decode_tradeoff(table, f"accuracy vs decode time ({title})", p), f"{slug}-decode", "decode"
    )

    def with_ratio(row: dict[str, Any], key: str, unit: str, scale: float) -> str:
        if row.get(key) is None:
            return "n/a (CPU)" if key == "peak_memory_bytes" else "n/a"
        ratio = row.get(f"{key}_vs_full")
        return f"{row[key] * scale:.3g} {unit}" + (f" ({ratio:.2f}x)" if ratio is not None else "")

    rows = [
        [esc(r["method"]), str(r["n"]), f"{r['visual_kv_share']:.0%}",
         f"{r['accuracy']:.3f} {_ci(r['accuracy_ci'])}", with_ratio(r, "prefill_s", "ms", 1e3),
         with_ratio(r, "decode_s_per_token", "ms", 1e3), with_ratio(r, "kv_bytes", "KiB", 2**-10),
         with_ratio(r, "peak_memory_bytes", "MiB", 2**-20)]
        for r in table
    ]  # fmt: skip
    header = [
        "method",
        "n",
        "visual KV kept",
        "accuracy [95% CI]",
        "prefill",
        "decode / token",
        "KV bytes",
        "peak memory",
    ]
    about = f"budget {result['budget']}; prefill {result['prefill']}; query-agnostic {result['query_agnostic']}"
    manifest = _manifest(run)
    about += f"; wall time {_wall(manifest)}"
    body = f'<p>{esc(about)}</p><div class="pair">{kv}{speed}</div>{_table(header, rows, "num acceleration")}'
    page.add(f"Acceleration {label}", body, slug)
    return {"label": label, "path": str(run), "wall_s": manifest.get("wall_s"), **result}
