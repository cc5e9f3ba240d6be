"""The planned run the doctor checks a rig against.

Every figure the checks compare with (bytes on disk, data rate, ring
memory) is derived here from what the user plans, with the writer's own
rules (`TiffSink.check`, `TiffSink.space_needed`, `RingLayout.plan`), so the
doctor refuses what `open_stream` would refuse and counts the same headers.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from mesowriter._ring import DEFAULT_METADATA_BYTES, RingLayout
from mesowriter._service import DEFAULT_RING_BYTES
from mesowriter._spec import StreamSpec
from mesowriter.sinks import sink_class

DEFAULT_SHAPE = (2048, 2048)
# Per frame beside the pixels: the journal line while the run lasts, then the
# sidecar entry and the OME-XML plane with its metadata annotation (bench g:
# 28 MB of OME-XML for 100 000 frames). pymmcore-plus metadata keeps each
# part under about 700 bytes; 2 KiB is the upper estimate.
METADATA_BYTES_PER_FRAME = 2048


class PlanError(ValueError):
    """A plan the doctor cannot check; its message is one line for the CLI."""


def parse_shape(text: str) -> tuple[int, int]:
    """`"2048x2048"` -> (2048, 2048): height x width, as numpy orders them."""
    parts = text.strip().lower().replace("\u00d7", "x").split("x")
    try:
        height, width = (int(p) for p in parts)
    except ValueError:
        raise PlanError(
            f"--shape must be HEIGHTxWIDTH in pixels, e.g. 2048x2048; got {text!r}"
        ) from None
    if height <= 0 or width <= 0:
        raise PlanError(f"--shape must be positive, got {text!r}")
    return height, width


@dataclass(frozen=True)
class Plan:
    """One run: `streams` TIFF cameras of one shape, plus video cameras.

    Video streams count only for cores, codecs and ring memory: their frame
    size and rate are not part of the plan (they are small beside the TIFF
    streams on every rig we know).
    """

    shape: tuple[int, int] = DEFAULT_SHAPE
    dtype: str = "uint16"
    fps: float = 100.0
    minutes: float = 60.0
    streams: int = 1
    video_streams: int = 0
    ring_bytes: int = DEFAULT_RING_BYTES

    def __post_init__(self) -> None:
        for name in ("fps", "minutes"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                raise PlanError(f"--{name} must be a positive number, got {value}")
        if self.streams < 1:
            raise PlanError(f"--streams must be at least 1, got {self.streams}")
        if self.video_streams < 0:
            raise PlanError(f"--video-streams must be >= 0, got {self.video_streams}")
        if self.ring_bytes <= 0:
            raise PlanError("--ring-gib must be positive")
        try:
            np.dtype(self.dtype)
        except TypeError:
            raise PlanError(f"--dtype {self.dtype!r} is not a numpy dtype") from None
        try:
            sink_class("ome-tiff").check(self.spec())
        except ValueError as exc:
            raise PlanError(str(exc)) from None

    def spec(self, frames: int | None = None) -> StreamSpec:
        """The stream `open_stream` would build for one camera of the plan."""
        return StreamSpec(
            stream_id=0,
            path="plan.ome.tiff",
            kind="ome-tiff",
            shape=self.shape,
            dtype=np.dtype(self.dtype).newbyteorder("<").str,
            frames=frames,
        )

    @property
    def frame_bytes(self) -> int:
        return self.spec().frame_nbytes

    @property
    def frames(self) -> int:
        """Frames each stream writes in the planned time."""
        return math.ceil(self.fps * self.minutes * 60)

    @property
    def rate(self) -> float:
        """Bytes a second to the disk, all TIFF streams together."""
        return self.streams * self.frame_bytes * self.fps

    @property
    def stream_bytes(self) -> int:
        """One stream's files: data with its headers and IFDs, plus metadata."""
        spec = self.spec(self.frames)
        data = sink_class("ome-tiff").space_needed(spec)
        return data + METADATA_BYTES_PER_FRAME * self.frames

    @property
    def run_bytes(self) -> int:
        return self.streams * self.stream_bytes

    def ring_region_bytes(self) -> int:
        """Shared memory one TIFF stream's ring takes (ValueError if the ring
        cannot hold two frames, as `open_stream` would raise)."""
        layout = RingLayout.plan(
            ring_bytes=self.ring_bytes,
            shape=self.shape,
            dtype=np.dtype(self.dtype),
            metadata_bytes=DEFAULT_METADATA_BYTES,
        )
        return layout.region_bytes

    def describe(self) -> str:
        h, w = self.shape
        cams = f"{self.streams} stream{'s' if self.streams > 1 else ''}"
        text = (
            f"{cams} of {h}x{w} {np.dtype(self.dtype).name} at {self.fps:g} fps "
            f"for {self.minutes:g} min"
        )
        if self.video_streams:
            text += f", plus {self.video_streams} video stream(s)"
        return text

    def figures(self) -> dict[str, Any]:
        return {
            "shape": list(self.shape),
            "dtype": np.dtype(self.dtype).name,
            "fps": self.fps,
            "minutes": self.minutes,
            "streams": self.streams,
            "video_streams": self.video_streams,
            "ring_bytes": self.ring_bytes,
            "frame_bytes": self.frame_bytes,
            "frames_per_stream": self.frames,
            "rate_bytes_per_second": self.rate,
            "run_bytes": self.run_bytes,
        }
