"""The command line's own machinery: tables in a pipe, option groups, help and validation from the
registries, --quiet for one command only, and how `study` splits samples into scored and held-out ones."""

from __future__ import annotations

import inspect
import sys
from pathlib import Path

import pytest
from helpers import invoke
from typer.testing import CliRunner

from corehead.cli import app, console, evaluate, score, tables
from corehead.cli.options import DATA, MODEL, ModelOptions, options
from corehead.cli.study import StudyOptions, held_out
from corehead.data import synthetic


def sweep_rows() -> list[dict]:
    """An ablation summary of one k, as the studies write it (wide cells: a table over 80 columns)."""
    cut = {"accuracy": 0.5, "delta_accuracy": -0.5, "delta_accuracy_ci": [-0.75, -0.25]}
    top = {**cut, "condition": "top", "k": 5, "vs_random": -0.25, "vs_random_ci": [-0.5, 0.0]}
    return [
        {"condition": "none", "k": 0, "accuracy": 1.0},
        top,
        {**cut, "condition": "bottom", "k": 5},
        {**cut, "condition": "random", "k": 5, "draws": [{"seed": 0, "accuracy": 0.5}]},
    ]


def test_tables_keep_each_row_on_one_line_in_a_pipe(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("COLUMNS", raising=False)
    monkeypatch.setattr(tables, "out", console.Stdout())  # made the way the CLI's is, without COLUMNS
    tables.print_sweep({"scenes": sweep_rows(), "pages": sweep_rows()}, 40, 3)
    lines = capsys.readouterr().out.splitlines()
    assert max(len(line) for line in lines) > 80  # wider than the 80 columns rich falls back to
    rows = [line for line in lines if line.startswith("│")]
    assert len(rows) == 2 and all("0.50 (-0.50 [-0.75, -0.25])" in row for row in rows)
    assert len(lines) == 1 + 1 + 1 + 1 + 2 + 1  # title, top rule, header, rule, rows, bottom rule


def test_a_terminal_keeps_its_width() -> None:
    assert console.Stdout(force_terminal=True).width != console.PIPE_WIDTH
    assert console.Stdout(width=100).width == 100  # COLUMNS, or a width given, wins


def test_option_groups_are_declared_once_with_each_commands_defaults() -> None:
    params = inspect.signature(score.score).parameters
    assert {"model", "dtype", "data", "seed", "limit", "out", "batch_size", "num_processes", "as_json"} <= set(params)
    assert params["batch_size"].default == 4 and params["out"].default == Path("runs/score")
    params = inspect.signature(evaluate.eval_cmd).parameters
    assert params["batch_size"].default == 16 and params["out"].default is None
    seen = {}

    @options(model=MODEL, data=DATA)
    def probe(model: ModelOptions, data: object, top: int = 1) -> None:
        seen.update(model=model, data=data, top=top)

    probe(top=2, **{name: p.default for name, p in inspect.signature(probe).parameters.items() if name != "top"})
    assert seen["model"] == ModelOptions() and seen["data"].data == "synthetic:all" and seen["top"] == 2
    with pytest.raises(ValueError, match="declared twice"):
        options(model=MODEL)(lambda model, dtype="x": None)


def test_help_and_validation_read_the_registries() -> None:
    from corehead.experiments.ablate import MODES
    from corehead.experiments.accelerate import KV_METHODS

    runner = CliRunner()
    for command, names in (("ablate", MODES.names()), ("accelerate", KV_METHODS.names()), ("study", MODES.names())):
        shown = runner.invoke(app, [command, "--help"], env={"COLUMNS": "400"})
        assert shown.exit_code == 0 and all(name in shown.output for name in names), shown.output
    bad = runner.invoke(app, ["ablate", "--heads", "nowhere", "--mode", "bogus"])
    assert "unknown ablation mode 'bogus'; choose from zero, mean" in str(bad.exception)
    bad = runner.invoke(app, ["accelerate", "--heads", "nowhere", "--methods", "full,bogus"])
    assert "unknown KV method 'bogus'" in str(bad.exception)


def test_quiet_lasts_for_one_command() -> None:
    assert invoke("--quiet", "data", "show", "synthetic:scenes", "--limit", "1").stderr == ""
    assert not console.is_quiet()
    with console.quiet():
        assert console.is_quiet()
    assert not console.is_quiet()


def test_study_scores_the_first_samples_of_each_domain_and_tests_the_next() -> None:
    samples = [s for d in synthetic.DOMAINS for s in synthetic.generate(d, 5, seed=2)]
    scored, tested, evaluated = held_out(samples, StudyOptions(n_score=2, n_ablate=1, n_accelerate=2))
    assert list(scored) == list(tested) == list(synthetic.DOMAINS)
    assert evaluated == [s for d in synthetic.DOMAINS for s in tested[d]]
    for domain in synthetic.DOMAINS:
        mine = [s.id for s in samples if s.domain == domain]
        assert [s.id for s in scored[domain]] == mine[:2] and [s.id for s in tested[domain]] == mine[2:4]
    with pytest.raises(ValueError, match="'scenes' has 5 samples: none left to test after --n-score 5"):
        held_out(samples, StudyOptions(n_score=5))


def test_a_relaunch_exits_with_the_status_of_its_processes(monkeypatch: pytest.MonkeyPatch) -> None:
    from corehead import cli
    from corehead.cli import launch

    monkeypatch.setattr(sys, "argv", ["corehead", "score", "--num-processes", "2"])
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    monkeypatch.setattr(launch, "launch", lambda n: 3)  # the processes accelerate ran failed
    with pytest.raises(SystemExit) as info:
        cli.main()
    assert info.value.code == 3
