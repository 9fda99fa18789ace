"""What the benchmark scripts share: interleaved repeats, every figure as the median of its repeats with their
spread (min-max), the CPU's model name, its last-level cache and a flush of it between timed calls."""

from __future__ import annotations

import re
import statistics
import subprocess
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

MIN_REPEATS = 3
CACHES = Path("/sys/devices/system/cpu/cpu0/cache")


def check_repeats(parser: Any, repeats: int) -> None:
    """A parser error unless every figure gets at least MIN_REPEATS repeats."""
    if repeats < MIN_REPEATS:
        parser.error(f"--repeats must be at least {MIN_REPEATS} (a median and its spread); got {repeats}")


def interleaved(
    runs: dict[str, Callable[[], Any]], repeats: int, between: Callable[[], Any] | None = None
) -> dict[str, list[float]]:
    """Seconds of each run in every repeat, the runs taking turns within each repeat so that they share the
    machine's state, the first turn passing from run to run (no run always goes first, after the others or
    cold); `between` runs, untimed, before every timed call (a cache flush)."""
    times: dict[str, list[float]] = {name: [] for name in runs}
    for repeat in range(repeats):
        for name in turns(list(runs), repeat):
            run = runs[name]
            if between is not None:
                between()
            start = time.perf_counter()
            run()
            times[name].append(time.perf_counter() - start)
    return times


def turns(names: list[str], repeat: int) -> list[str]:
    """The order in which `names` take turns in repeat `repeat`: rotated by one each repeat."""
    shift = repeat % len(names) if names else 0
    return names[shift:] + names[:shift]


def figure(values: Sequence[float], scale: float = 1.0, digits: int = 3) -> dict[str, float]:
    """A measured figure: the median of its repeats and their spread (min, max), times `scale`."""
    if len(values) == 0:
        raise ValueError("a figure needs at least one measurement")
    return {
        "median": round(statistics.median(values) * scale, digits),
        "min": round(min(values) * scale, digits),
        "max": round(max(values) * scale, digits),
    }


def ratio(
    numerator: Sequence[float], denominator: Sequence[float], digits: int = 2, scale: float = 1.0
) -> dict[str, float]:
    """numerator / denominator in each repeat (paired: they ran side by side), as a figure (times `scale`)."""
    if len(numerator) != len(denominator):
        raise ValueError(f"ratios pair repeats: {len(numerator)} vs {len(denominator)} measurements")
    return figure([a / b for a, b in zip(numerator, denominator, strict=True)], scale, digits)


def text(value: dict[str, float], unit: str = "") -> str:
    """A figure as 'median (min-max)'."""
    return f"{value['median']:g}{unit} ({value['min']:g}-{value['max']:g})"


def _size_bytes(text: str) -> int:
    """'32768K', '32 MiB', '1M' -> bytes."""
    match = re.fullmatch(r"\s*([\d.]+)\s*([KMG]?)(i?B)?\s*", text, flags=re.IGNORECASE)
    if match is None:
        raise ValueError(f"cannot read a cache size from {text!r}")
    return int(float(match.group(1)) * 1024 ** " KMG".index(match.group(2).upper() or " "))


def cpu_model() -> str:
    """The CPU's model name as /proc/cpuinfo gives it ("unknown CPU" where it cannot be read)."""
    try:
        found = re.search(r"^model name\s*:\s*(.+)$", Path("/proc/cpuinfo").read_text(), flags=re.MULTILINE)
    except OSError:
        return "unknown CPU"
    return found.group(1).strip() if found else "unknown CPU"


def last_level_cache() -> tuple[int, str]:
    """Bytes of the CPU's last-level cache, and where they were read: cpu0's caches in sysfs, else lscpu."""
    levels = []
    for index in sorted(CACHES.glob("index*")):
        if (index / "type").read_text().strip() != "Instruction":
            levels.append((int((index / "level").read_text()), _size_bytes((index / "size").read_text())))
    if levels:
        level, size = max(levels)
        return size, f"L{level} {size >> 20} MiB (sysfs, cpu0)"
    listing = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
    found = re.findall(r"^L(\d) cache:\s*([\d.]+\s*[KMG]i?B)", listing, flags=re.MULTILINE)
    if not found:
        raise RuntimeError("cannot read the CPU's last-level cache size from sysfs or lscpu")
    level, size = max((int(lv), _size_bytes(sz)) for lv, sz in found)
    return size, f"L{level} {size >> 20} MiB (lscpu)"


class CacheFlush:
    """Writes a buffer of twice the last-level cache, evicting whatever a timed call left there."""

    def __init__(self, llc_bytes: int) -> None:
        import torch

        self.scratch = torch.zeros(2 * llc_bytes // 4)

    def __call__(self) -> None:
        self.scratch.add_(1.0)
