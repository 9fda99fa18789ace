"""The ablation tables the commands print show the summary's conditions: top, bottom, random and
random-layer-matched (the mean over their draws, with the interval that includes the draw), p and p (Holm)."""

from __future__ import annotations

import pytest

from corehead.cli import console, tables
from corehead.experiments.ablation_summary import summarize


def _rows() -> list[dict]:
    """Rows of one ranking at k=2 on 4 samples: top wrong on two, each random control with two draws."""

    def row(name: str, i: int, correct: bool, draw: int | None = None, k: int = 2) -> dict:
        ranking = "" if name == "none" else "ram:question"
        return {"ranking": ranking, "condition": name, "k": k, "draw": draw, "id": f"s{i}", "correct": correct,
                "answer_logprob": -float(i), "heads": [[0, 0]]}  # fmt: skip

    rows = [row("none", i, True, k=0) for i in range(4)] + [row("top", i, i < 2) for i in range(4)]
    rows += [row("bottom", i, True) for i in range(4)]
    for name in ("random", "random-layer-matched"):
        rows += [row(name, i, i != d, d) for d in (0, 1) for i in range(4)]
    return rows


@pytest.fixture
def printed(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]):
    monkeypatch.delenv("COLUMNS", raising=False)
    monkeypatch.setattr(tables, "out", console.Stdout())

    def lines() -> list[str]:
        return [line for line in capsys.readouterr().out.splitlines() if line.startswith("│")]

    return lines


def test_print_ablation_shows_every_condition_with_its_draws_and_holm(printed) -> None:
    summary = summarize(_rows())
    tables.print_ablation(summary, "t")
    shown = printed()
    assert [line.split("│")[2].strip() for line in shown] == [
        "none", "top", "bottom", "random (2 draws)", "random-layer-matched (2 draws)"
    ]  # fmt: skip
    top = next(r for r in summary if r["condition"] == "top")
    lo, hi = top["vs_random_ci"]
    assert f"{top['vs_random']:+.3f} [{lo:+.3f}, {hi:+.3f}] p={top['vs_random_p_holm']:.2g}" in shown[1]
    random = next(r for r in summary if r["condition"] == "random")
    lo, hi = random["delta_accuracy_ci"]  # the random control's interval is the one over samples and draws
    assert f"{random['accuracy']:.3f} │ {random['delta_accuracy']:+.3f} [{lo:+.3f}, {hi:+.3f}]" in shown[3]


def test_print_sweep_has_one_line_per_ranking_and_k_with_the_random_means(printed) -> None:
    summary = summarize(_rows())
    tables.print_sweep({"scenes": summary}, 4, 2)
    (line,) = printed()
    by = {r["condition"]: r for r in summary}
    for name in ("top", "bottom", "random", "random-layer-matched"):
        lo, hi = by[name]["delta_accuracy_ci"]
        assert f"{by[name]['accuracy']:.2f} ({by[name]['delta_accuracy']:+.2f} [{lo:+.2f}, {hi:+.2f}])" in line
    assert f"p={by['top']['vs_random_layer_matched_p_holm']:.2g}" in line
