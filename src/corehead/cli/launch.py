"""Running a command on N processes: relaunch under accelerate, the shard of this process, its device."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import typer

from corehead.cli.console import log, quiet


@contextmanager
def processes(num_processes: int) -> Iterator[Any]:
    """This process's Shard of an N-process run, for the length of the command. With N > 1 outside a
    distributed launch, relaunches the command on N processes with accelerate and exits with its status;
    workers other than the main one run quietly."""
    from corehead.experiments.runs import current_shard

    if num_processes < 1:
        raise ValueError(f"--num-processes must be at least 1, got {num_processes}")
    if num_processes > 1 and int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        raise typer.Exit(launch(num_processes))
    shard = current_shard()
    with quiet(not shard.main):
        yield shard


def launch(n: int) -> int:
    """`accelerate launch --num_processes n -m corehead <this command without --num-processes>`."""
    args, skip = [], False
    for arg in sys.argv[1:]:
        if skip or arg.startswith("--num-processes="):
            skip = False
            continue
        if arg == "--num-processes":
            skip = True
            continue
        args.append(arg)
    with socket.socket() as sock:  # a free port for the process group's rendezvous
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    command = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", str(n)]
    command += ["--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]
    command += ["--main_process_port", str(port), "-m", "corehead", *args]
    log(f"running on {n} processes: accelerate launch --num_processes {n} -m corehead {' '.join(args)}")
    return subprocess.call(command)


def placement(device_map: str | None) -> str | dict[str, Any] | None:
    """Where the model goes: spread as --device-map says, else this process's GPU when there is one, else
    the CPU (None)."""
    import torch

    if device_map is None and torch.cuda.is_available():
        return {"": f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"}
    return device_map
