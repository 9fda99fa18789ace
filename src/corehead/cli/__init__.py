"""The `corehead` command line: a thin typer app. Each command (one module each) parses its options, calls
the experiments and prints what they return or wrote; the option groups it shares are in options.py."""

from __future__ import annotations

import sys
from typing import Annotated

import click
import typer
from rich.markup import escape

from corehead.cli import (
    ablate,
    accelerate,
    attribute,
    data,
    demo,
    evaluate,
    heads,
    report,
    score,
    study,
    train_builtin,
)
from corehead.cli.console import err, quiet
from corehead.cli.options import RegistryHelp

app = typer.Typer(
    help="Find, prove and exploit Context-aware Retrieval (CoRe) heads in multimodal LLMs.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
app.add_typer(data.app, name="data")
app.add_typer(heads.app, name="heads")
app.command("eval")(evaluate.eval_cmd)
app.command("score")(score.score)
app.command("attribute")(attribute.attribute)
app.command("ablate", cls=RegistryHelp)(ablate.ablate)
app.command("accelerate", cls=RegistryHelp)(accelerate.accelerate)
app.command("demo")(demo.demo)
app.command("study", cls=RegistryHelp)(study.study)
app.command("report")(report.report)
app.command("train-builtin")(train_builtin.train_builtin)


@app.callback()
def _global(
    ctx: typer.Context,
    quiet_: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars or logs.")] = False,
    debug: Annotated[bool, typer.Option("--debug", help="Show full tracebacks on errors (read by main).")] = False,
) -> None:
    ctx.with_resource(quiet(quiet_))  # for this command only


def main() -> None:
    """Console entry point: errors are one clear line (exit 1) unless --debug."""
    debug = "--debug" in sys.argv
    try:
        code = app(standalone_mode=False)  # an exit code when the command exits early (--help, a relaunch)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except click.exceptions.Abort:
        err.print("aborted")
        sys.exit(130)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except Exception as exc:
        if debug:
            raise
        err.print(f"[red]error:[/red] {escape(str(exc))}", highlight=False, soft_wrap=True)
        sys.exit(1)
    if isinstance(code, int) and code:
        sys.exit(code)
