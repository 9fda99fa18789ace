"""Small helpers shared by the data and command-line tests."""

from __future__ import annotations

from collections.abc import Iterable

from click.testing import Result
from typer.testing import CliRunner

from corehead.cli import app
from corehead.data.sample import Sample

runner = CliRunner()


def invoke(*args: str) -> Result:
    """Run `corehead ARGS` in-process and check it succeeded (the output and exception name a failure)."""
    result = runner.invoke(app, list(args))
    assert result.exit_code == 0, (result.output, result.exception)
    return result


def by_id(samples: Iterable[Sample]) -> dict[str, Sample]:
    """Samples keyed by their id, in order."""
    return {s.id: s for s in samples}
