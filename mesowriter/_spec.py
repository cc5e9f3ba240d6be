"""What a stream is: the settings the parent validates and sends to a worker.

A `StreamSpec` is decided once, in the user's process, before the camera
starts, then travels to the worker process as msgpack. Everything a worker
needs to open, resume and finalise the stream's files is in it, so a
replacement worker can take over a stream from the spec and the ring alone.
"""

from __future__ import annotations

from typing import Any

import msgspec

SPEC_VERSION = 2
DEFAULT_WRITE_DEPTH = 4


class VideoOptions(msgspec.Struct, frozen=True, kw_only=True):
    """How a video stream is encoded (see `mesowriter.video`)."""

    fps: float = 30.0
    fourcc: str | None = None
    is_color: bool = False
    # Fixed 16->8 bit mapping for the whole file: [low, high] -> [0, 255].
    # None means "from the camera's bit depth" (0 .. 2**bit_depth - 1).
    display_range: tuple[float, float] | None = None
    bit_depth: int | None = None
    per_frame_normalize: bool = False
    lossless: bool = False
    # Channel order of (h, w, 3) frames: "RGB" as pymmcore-plus delivers them,
    # "BGR" as OpenCV cameras do (then passed to the encoder unchanged).
    color_order: str = "RGB"
    # Set when the user's process resolved `fourcc` from another request
    # (fallback): what was asked for and why it could not be had.
    requested_fourcc: str | None = None
    fallback_reason: str | None = None


class SidecarSpec(msgspec.Struct, frozen=True, kw_only=True):
    """The one legacy sidecar a run writes, and which streams feed it.

    A run of several files (positions, cameras) still writes ONE
    `<filename>_frame_metadata.json`, keyed by each member's key. Each
    stream journals its own frames; whoever finishes the group (the
    user's process, or `recover`) joins the journals into the sidecar.
    """

    path: str
    # "positions": {key: [meta, ...], **extra} (handlers, the service);
    # "frame_metadatas": {"frame_metadatas": {key: [...]}, **extra}, what the
    # legacy CV2Writer.finish() wrote in direct mode.
    layout: str = "positions"
    members: tuple[tuple[str, str], ...] = ()  # (key, data path), in order
    # The caller joins the journals itself once every member closed (the
    # handlers: a run may add members after the first file opened), so a
    # worker never writes this sidecar or removes its journal, unless the
    # caller is gone (an orphaned worker, the only member).
    by_caller: bool = False


class StreamSpec(msgspec.Struct, frozen=True, kw_only=True):
    """One output file and how to write it."""

    stream_id: int
    path: str
    kind: str  # "ome-tiff" or "video"
    shape: tuple[int, ...]  # (height, width) or (height, width, samples)
    dtype: str  # numpy dtype string, e.g. "<u2"
    frames: int | None = None  # expected frame count, when known
    overwrite: bool = False
    position_key: str = "p0"
    position_index: int | None = None  # the sequence's p index, if any
    direct_io: bool = True
    # Plain JSON of the useq.MDASequence that produced the frames, if any.
    sequence: dict[str, Any] | None = None
    # Summary metadata delivered with sequenceStarted, reduced to JSON types.
    summary: dict[str, Any] | None = None
    video: VideoOptions | None = None
    # Extra JSON merged into the sidecar at the end (video direct mode).
    extra_metadata: dict[str, Any] | None = None
    fault: str | None = None  # test-only fault injection, see mesowriter._faults
    write_depth: int = DEFAULT_WRITE_DEPTH  # pixel writes in flight
    notes: tuple[str, ...] = ()  # said once in the report (e.g. values left out)
    sidecar: SidecarSpec | None = None  # None: a sidecar of its own
    version: int = SPEC_VERSION

    @property
    def sidecar_spec(self) -> SidecarSpec:
        """The sidecar this stream feeds (its own, unless in a group)."""
        if self.sidecar is not None:
            return self.sidecar
        return SidecarSpec(
            path=sidecar_path(self.path), members=((self.position_key, self.path),)
        )

    @property
    def solo(self) -> bool:
        """The only member of its sidecar: its worker writes the sidecar."""
        return len(self.sidecar_spec.members) <= 1

    def writes_sidecar(self, orphaned: bool = False) -> bool:
        """Whether this stream's worker writes the sidecar at close."""
        return self.solo and (orphaned or not self.sidecar_spec.by_caller)

    @property
    def frame_nbytes(self) -> int:
        n = 1
        for s in self.shape:
            n *= s
        return n * _itemsize(self.dtype)


def _itemsize(dtype: str) -> int:
    import numpy as np

    return int(np.dtype(dtype).itemsize)


def sidecar_path(data_path: str) -> str:
    """The legacy sidecar name: the full data file name + `_frame_metadata.json`."""
    return f"{data_path}_frame_metadata.json"


def report_path(data_path: str) -> str:
    """Where a stream's machine-readable report lands, next to the data."""
    return f"{data_path}_report.json"


def journal_path(data_path: str) -> str:
    """The append-only metadata journal kept while a stream is open."""
    return f"{data_path}_journal.ndjson"


def companion_paths(path: str) -> tuple[str, str, str]:
    """The files a stream writes next to its data file: report, sidecar, journal."""
    return report_path(path), sidecar_path(path), journal_path(path)
