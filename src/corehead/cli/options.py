"""Options shared by commands, declared once: the model, the data and the run, each a small dataclass.

`@options(model=MODEL, data=DATA, run=RUN.but(...))` puts a group's options into a command's signature
(typer reads `inspect.signature`) and calls the command with one dataclass per group. A command may
change a group's defaults and help texts (`Group.but`) or leave an option out (its field keeps its default).
"""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import typing
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape
from typer.core import TyperCommand, TyperOption

from corehead.cli.console import is_quiet, log
from corehead.cli.launch import placement

DTYPES = ("float32", "bfloat16", "float16", "auto")
REGISTRIES = {  # placeholder in help texts -> (module, registry of methods picked by name)
    "modes": ("corehead.experiments.ablate", "MODES"),
    "kv_methods": ("corehead.experiments.accelerate", "KV_METHODS"),
}


@dataclass(frozen=True)
class ModelOptions:
    """Which model, and how it is loaded."""

    model: str = "builtin"
    trust_remote_code: bool = False
    max_pixels: int | None = None
    max_frames: int | None = None
    device_map: str | None = None
    dtype: str = "float32"
    system_prompt: str | None = None
    no_system_prompt: bool = False

    def load(self) -> Any:
        """The model on this process's GPU when there is one (or spread with --device-map auto), else the CPU."""
        from transformers.utils import logging as hf_logging

        from corehead.models import load_model

        if self.dtype not in DTYPES:
            raise ValueError(f"--dtype must be one of {', '.join(DTYPES)}; got {self.dtype!r}")
        if is_quiet():
            hf_logging.disable_progress_bar()
        where = placement(self.device_map)
        log(f"loading model {self.model} ...")
        return load_model(
            self.model,
            dtype=self.dtype,
            device_map=where,
            trust_remote_code=self.trust_remote_code,
            max_pixels=self.max_pixels,
            max_frames=self.max_frames,
            system_prompt=self.system_prompt,
            no_system_prompt=self.no_system_prompt,
        )


@dataclass(frozen=True)
class DataOptions:
    """Which samples: a dataset spec, the seed of synthetic data, how many, and whether bad ones are skipped."""

    data: str = "synthetic:all"
    seed: int = 0
    skip_invalid: bool = False
    limit: int | None = None  # None: all of a dataset, or load_dataset's default for synthetic data

    def load(self) -> list[Any]:
        """The samples (skipped invalid ones are listed on stderr)."""
        return load_samples(self.data, self.limit, self.seed, self.skip_invalid)


@dataclass(frozen=True)
class RunOptions:
    """Where results go, in what batches, on how many processes, and whether to print JSON."""

    out: Path | None = None
    batch_size: int = 1
    num_processes: int = 1
    as_json: bool = False

    @property
    def folder(self) -> Path:
        """--out of a command that writes a run folder (its default is a path)."""
        if self.out is None:
            raise ValueError("--out: a run folder is needed")
        return self.out


@dataclass(frozen=True)
class Opt:
    """How one field of a group appears on the command line; `default` (when given) replaces the field's."""

    flags: tuple[str, ...]
    help: str
    default: Any = ...

    def option(self) -> Any:
        """The typer declaration (flags and help) that goes into an `Annotated` parameter."""
        return typer.Option(*self.flags, help=self.help)


SEED = Opt(("--seed",), "Seed of synthetic data (different seeds, different samples).")
SKIP = Opt(("--skip-invalid",), "Skip malformed samples (counted) instead of failing.")
JSON = Opt(("--json",), "Print one JSON object instead of a table.")
JsonOpt = Annotated[bool, JSON.option()]
SeedOpt = Annotated[int, SEED.option()]
SkipOpt = Annotated[bool, SKIP.option()]


@dataclass(frozen=True)
class Group:
    """A dataclass of options and, per field shown on the command line, its flags and help."""

    cls: type
    options: dict[str, Opt]

    def but(self, **changes: Opt | None) -> Group:
        """This group with some options declared otherwise (None: left out, the field keeps its default)."""
        unknown = set(changes) - set(self.options)
        if unknown:
            raise ValueError(f"{self.cls.__name__} has no option {', '.join(sorted(unknown))}")
        options = {**self.options, **changes}
        return Group(self.cls, {name: opt for name, opt in options.items() if opt is not None})

    def parameters(self) -> list[inspect.Parameter]:
        """The options as keyword parameters with typer annotations, for a command's signature."""
        types = typing.get_type_hints(self.cls)
        defaults = {f.name: f.default for f in dataclasses.fields(self.cls)}
        return [
            inspect.Parameter(
                name,
                inspect.Parameter.KEYWORD_ONLY,
                default=defaults[name] if opt.default is ... else opt.default,
                annotation=Annotated[types[name], opt.option()],
            )
            for name, opt in self.options.items()
        ]

    def build(self, values: dict[str, Any]) -> Any:
        """The dataclass from a command's arguments (taking out the group's own)."""
        return self.cls(**{name: values.pop(name) for name in self.options})


MODEL = Group(
    ModelOptions,
    {
        "model": Opt(("--model", "-m"), "'builtin', a local model folder or a hub id."),
        "trust_remote_code": Opt(("--trust-remote-code",), "Allow a checkpoint's own Python code to run."),
        "max_pixels": Opt(("--max-pixels",), "Cap the pixels fed per image or page."),
        "max_frames": Opt(("--max-frames",), "Keep at most this many frames per video."),
        "system_prompt": Opt(
            ("--system-prompt",), "A system prompt of your own (default: what the checkpoint's chat template writes)."
        ),
        "no_system_prompt": Opt(
            ("--no-system-prompt",), "No system turn, not even the template's default (e.g. Qwen2-VL's)."
        ),
        "device_map": Opt(
            ("--device-map",), "'auto' spreads a model too large for one GPU over all (default: one device)."
        ),
        "dtype": Opt(("--dtype",), "Weights dtype: float32, bfloat16, float16 or auto."),
    },
)
DATA = Group(
    DataOptions,
    {
        "data": Opt(("--data", "-d"), "synthetic:scenes|pages|clips|all, a samples.jsonl or its folder."),
        "seed": SEED,
        "skip_invalid": SKIP,
        "limit": Opt(("--limit",), "At most this many samples."),
    },
)
RUN = Group(
    RunOptions,
    {
        "out": Opt(("--out",), "Run folder."),
        "batch_size": Opt(("--batch-size",), "Samples per batch."),
        "num_processes": Opt(("--num-processes",), "Shard the samples over N processes (launched with accelerate)."),
        "as_json": JSON,
    },
)


def run_options(out: Path | None, about: str, batch_size: int | None, batch_help: str = "Samples per batch.") -> Group:
    """RUN with a command's --out (default and help) and --batch-size default (None: no --batch-size)."""
    batch = None if batch_size is None else Opt(("--batch-size",), batch_help, batch_size)
    return RUN.but(out=Opt(("--out",), about, out), batch_size=batch)


def options(**groups: Group) -> Callable[[Callable[..., None]], Callable[..., None]]:
    """Decorator: the command's parameters named like the keywords receive one dataclass per group; typer sees
    the command's own options followed by every group's."""

    def decorate(command: Callable[..., None]) -> Callable[..., None]:
        own = inspect.signature(command, eval_str=True)
        kept = [p.replace(kind=inspect.Parameter.KEYWORD_ONLY) for p in own.parameters.values() if p.name not in groups]
        params = [*kept, *(p for group in groups.values() for p in group.parameters())]
        names = [p.name for p in params]
        if len(set(names)) < len(names):
            raise ValueError(f"{command.__name__}: an option is declared twice in {names}")

        def run(**values: Any) -> None:
            built = {key: group.build(values) for key, group in groups.items()}  # takes the groups' options out
            command(**values, **built)

        run.__signature__ = own.replace(parameters=params)  # type: ignore[attr-defined]
        run.__annotations__ = {p.name: p.annotation for p in params}
        run.__name__, run.__qualname__ = command.__name__, command.__qualname__
        run.__doc__, run.__module__ = command.__doc__, command.__module__
        return run

    return decorate


def load_samples(spec: str, n: int | None, seed: int, skip_invalid: bool) -> list[Any]:
    """Samples of a dataset spec; skipped invalid samples are listed (first 20) on stderr."""
    from corehead.data import LoadReport, load_dataset

    report = LoadReport()
    samples = load_dataset(spec, n=n, seed=seed, skip_invalid=skip_invalid, report=report)
    if report.skipped:
        log(f"[yellow]skipped {len(report.skipped)} invalid sample(s):[/yellow]")
        for reason in report.skipped[:20]:
            log(f"  {escape(reason)}")
    if not samples:
        raise ValueError(f"no samples in {spec!r}")
    return samples


def registry(key: str) -> Any:
    """The registry of REGISTRIES[key] (imports its module: torch and the model code)."""
    module, name = REGISTRIES[key]
    return getattr(importlib.import_module(module), name)


class RegistryHelp(TyperCommand):
    """A command whose help texts name the methods of a registry ("{modes}", "{kv_methods}"): filled in when
    the command parses its arguments or shows its help, so that other commands start without importing torch."""

    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:
        for param in self.params:
            if isinstance(param, TyperOption) and param.help:
                names = {key: registry(key).help() for key in REGISTRIES if "{" + key + "}" in param.help}
                param.help = param.help.format_map(names) if names else param.help
        return super().parse_args(ctx, args)
