"""Video frames for the public video datasets (VidSTG, MLVU): which frames to sample, decoded with PyAV.

Frames are sampled at `fps` per second of video, capped at `max_frames` evenly spaced ones, and optionally
shrunk so their longer side is at most `max_side` px. Each becomes a `VisualUnit` of kind "frame" holding its
0-based index in the video, its presentation time in seconds and its pixels, decoded when the sample is made.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import numpy as np
from av.container import InputContainer
from av.video.stream import VideoStream

from corehead.data.sample import SampleError, VisualUnit

OPTIONS: dict[str, str] = {
    "fps": "frames sampled per second of video (default 1.0)",
    "max_frames": "most frames per sample, evenly spaced when more would be sampled (default 32)",
    "max_side": "shrink frames so their longer side is at most this many px, boxes with them (default: no resize)",
}

# Seek (to the keyframe before the next wanted frame) rather than decode through a gap longer than this.
SEEK_AFTER_S = 5.0


@dataclass(frozen=True)
class Sampling:
    """How frames are taken from a video: rate, cap and optional resize."""

    fps: float = 1.0
    max_frames: int = 32
    max_side: int | None = None

    @classmethod
    def parse(cls, name: str, options: dict[str, str]) -> Sampling:
        """The sampling options of a dataset spec, refused (ValueError) when not positive numbers."""

        def number(key: str, cast: type, default: Any) -> Any:
            raw = options.get(key)
            if raw is None:
                return default
            try:
                value = cast(raw)
            except ValueError:
                value = None
            if value is None or not value > 0 or not np.isfinite(value):
                raise ValueError(f"{name}: option {key} must be a positive {cast.__name__}, got {raw!r}")
            return value

        return cls(number("fps", float, 1.0), number("max_frames", int, 32), number("max_side", int, None))


def frame_indices(begin: int, end: int, video_fps: float, sampling: Sampling) -> list[int]:
    """Frames begin..end (inclusive) taken every 1/fps seconds of a video at `video_fps` (every frame when
    fps is higher), then at most `max_frames` of them, evenly spaced."""
    step = max(video_fps / sampling.fps, 1.0)
    indices = [begin + round(k * step) for k in range(int((end - begin) / step) + 1)]
    if len(indices) > sampling.max_frames:
        keep = np.linspace(0, len(indices) - 1, sampling.max_frames).round().astype(int)
        indices = [indices[int(k)] for k in keep]
    return indices


def read_json(path: Path, sample_id: str, field_name: str) -> Any:
    """A JSON file's content; malformed JSON or an unreadable file is a SampleError naming the file."""
    try:
        with path.open(encoding="utf-8") as handle:
            return json.load(handle)
    except json.JSONDecodeError as exc:
        raise SampleError(sample_id, field_name, f"invalid JSON ({exc.msg}, line {exc.lineno})", str(path)) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise SampleError(sample_id, field_name, f"unreadable file ({exc})", str(path)) from None


def frames(
    path: Path,
    sampling: Sampling,
    sample_id: str,
    field_name: str,
    where: str = "",
    segment: tuple[int, int] | None = None,
) -> list[VisualUnit]:
    """The frames sampled from the video at `path` over `segment` (first and last frame index, inclusive;
    default the whole video), decoded. An unreadable video, or one shorter than the segment, is a SampleError
    naming the sample and `field_name`."""

    def fail(problem: str) -> SampleError:
        return SampleError(sample_id, field_name, f"{problem} ({path})", where)

    try:
        with av.open(str(path), mode="r") as container:
            if not container.streams.video:
                raise fail("no video stream")
            stream = container.streams.video[0]
            rate = stream.average_rate or stream.guessed_rate
            if not rate:
                raise fail("cannot tell the video's frame rate")
            count = stream.frames or int(Fraction(container.duration or 0, av.time_base) * rate)
            if count < 1:
                raise fail("cannot tell the video's length")
            begin, end = segment or (0, count - 1)
            end = min(end, count - 1)
            if not 0 <= begin <= end:
                raise fail(f"frame {begin} is not in the video, which has {count} frames")
            wanted = frame_indices(begin, end, float(rate), sampling)
            decoded = _decode(container, stream, Fraction(rate), wanted, fail)
            units = [_unit(path, index, time, frame, sampling) for index, time, frame in decoded]
    except av.FFmpegError as exc:
        raise fail(f"unreadable video: {exc}") from None
    if not units or units[-1].frame is None or units[-1].frame < wanted[-1]:
        raise fail(f"the video ends before frame {wanted[-1]}")
    return units


def _decode(
    container: InputContainer,
    stream: VideoStream,
    rate: Fraction,
    wanted: list[int],
    fail: Callable[[str], SampleError],
) -> Iterator[tuple[int, float, Any]]:
    """(index, seconds, frame) for the first frame at or after each wanted index, in order; stops at the end.
    The index is the frame's presentation time times the frame rate, so it survives seeking."""
    start, base = stream.start_time or 0, stream.time_base
    if base is None:
        raise fail("the video stream has no time base")
    decoded: Iterator[Any] | None = None
    index = -1
    for target in wanted:
        if index >= target:
            continue
        if decoded is None or target - index > SEEK_AFTER_S * rate:
            container.seek(start + int(target / rate / base), stream=stream)
            decoded = container.decode(stream)
        for frame in decoded:
            if frame.pts is None:
                raise fail("a frame has no timestamp")
            time = (frame.pts - start) * base
            index = round(time * rate)
            if index >= target:
                yield index, float(time), frame
                break
        else:
            return


def _unit(path: Path, index: int, time: float, frame: Any, sampling: Sampling) -> VisualUnit:
    width, height = frame.width, frame.height
    if sampling.max_side is not None and max(width, height) > sampling.max_side:
        scale = sampling.max_side / max(width, height)
        width, height = max(1, round(width * scale)), max(1, round(height * scale))
    image = frame.to_image(width=width, height=height, interpolation="BILINEAR")
    return VisualUnit("frame", f"{path}#frame={index}", width, height, frame=index, timestamp=time, image=image)
