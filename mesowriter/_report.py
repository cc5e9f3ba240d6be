"""The per-stream report: what was asked, received, written and lost.

One typed record everywhere: the service's streams, a writer that outlived
its acquisition, and `recover` all write a `StreamReport` next to the data
(`<data file>_report.json`), so scripts read one shape whatever happened.
"""

from __future__ import annotations

import enum
from typing import Any

import msgspec

REPORT_VERSION = 2


class FinishReason(str, enum.Enum):
    """How a stream ended."""

    COMPLETED = "completed"  # every expected frame written
    INCOMPLETE = "incomplete"  # ended normally, but frames are missing
    CANCELED = "canceled"  # the acquisition was canceled
    INTERRUPTED = "interrupted"  # a signal or Ctrl-C stopped the producer
    ERROR = "error"  # the writer failed
    ACQUISITION_EXITED = "acquisition exited"  # the writer finished alone
    RECOVERED = "recovered"  # `mesowriter recover` finalised it

    def __str__(self) -> str:
        return self.value

    def __format__(self, spec: str) -> str:
        return format(self.value, spec)


class ProducerStats(msgspec.Struct, kw_only=True):
    """What only the acquisition side knows; sent to the worker at close."""

    received: int = 0
    drops: dict[str, list[int]] = msgspec.field(default_factory=dict)
    rejected: list[dict[str, Any]] = msgspec.field(default_factory=list)
    metadata_truncated: list[int] = msgspec.field(default_factory=list)
    metadata_fallbacks: int = 0
    metadata_frames_replaced: int = 0
    metadata_nonfinite: int = 0
    ring_high_water: int = 0
    blocked_seconds: float = 0.0
    blocked_events: int = 0
    seconds: float = 0.0  # first frame to close
    started_at: str = ""
    worker_restarts: int = 0


class StreamReport(msgspec.Struct, kw_only=True):
    """Machine-readable account of one stream, written next to its data.

    `frames_received == frames_written + frames_dropped` always holds:
    every frame handed to `write` is either in the file or listed, with its
    index, under `drops` (by reason: ring_full, rejected, stream_error,
    interrupted, not_written).
    """

    path: str
    kind: str
    position_key: str
    shape: list[int]
    dtype: str
    finish_reason: FinishReason
    frames_expected: int | None
    frames_received: int
    frames_written: int
    frames_dropped: int
    dropped_indices: list[int]
    drops: dict[str, list[int]]
    rejected: list[dict[str, Any]] = msgspec.field(default_factory=list)
    ring_slots: int = 0
    ring_bytes: int = 0
    ring_high_water: int = 0
    blocked_seconds: float = 0.0
    blocked_events: int = 0
    bytes_written: int = 0
    seconds: float = 0.0
    throughput_gbps: float = 0.0
    write_seconds: float = 0.0
    worker_restarts: int = 0
    metadata_fallbacks: int = 0
    metadata_frames_replaced: int = 0
    metadata_nonfinite: int = 0
    metadata_truncated: list[int] = msgspec.field(default_factory=list)
    # Frames kept whose metadata never became durable (after a power cut).
    metadata_missing: list[int] = msgspec.field(default_factory=list)
    sidecar: str | None = None
    sink: dict[str, Any] = msgspec.field(default_factory=dict)
    written_by: str = "writer"  # writer | orphaned writer | recover | service
    error: str | None = None
    error_traceback: str | None = None
    secondary_errors: list[str] = msgspec.field(default_factory=list)
    notes: list[str] = msgspec.field(default_factory=list)
    started_at: str = ""
    finished_at: str = ""
    version: int = REPORT_VERSION

    @property
    def ok(self) -> bool:
        """True when nothing was lost or failed (see `problems`)."""
        return not self.problems()

    def problems(self) -> list[str]:
        """What the user must hear about: an error, frames not written, a
        count that differs from what was expected (unless canceled), metadata
        not kept, anything else that went wrong on the way."""
        out = [self.error] if self.error else []
        if self.frames_received != self.frames_written + self.frames_dropped:
            out.append(
                f"{self.frames_received} frames received but {self.frames_written} "
                f"written and {self.frames_dropped} dropped"
            )
        if self.frames_dropped:
            out.append(
                f"{self.frames_dropped} frame(s) not written "
                f"(indices {self.dropped_indices[:20]})"
            )
        expected = self.frames_expected
        if (
            expected is not None
            and self.finish_reason != FinishReason.CANCELED
            and self.frames_written != expected
            and not self.frames_dropped
        ):
            out.append(f"{self.frames_written} frame(s) written, {expected} expected")
        if self.finish_reason in (FinishReason.INTERRUPTED, FinishReason.ERROR):
            if not self.error:
                out.append(f"the stream ended: {self.finish_reason.value}")
        if self.metadata_truncated:
            out.append(
                f"metadata of {len(self.metadata_truncated)} frame(s) too large "
                f"for a ring slot, not kept (indices {self.metadata_truncated[:20]})"
            )
        if self.metadata_missing:
            out.append(
                f"metadata of {len(self.metadata_missing)} frame(s) did not reach "
                f"the disk (indices {self.metadata_missing[:20]})"
            )
        if self.metadata_frames_replaced:
            out.append(
                f"metadata of {self.metadata_frames_replaced} frame(s) could not "
                "become JSON and was replaced by a marker"
            )
        out += self.secondary_errors
        return out

    def to_json(self) -> bytes:
        return msgspec.json.format(msgspec.json.encode(self), indent=2)

    @classmethod
    def from_json(cls, data: bytes) -> StreamReport:
        return msgspec.json.decode(data, type=cls)


def dropped_from(drops: dict[str, list[int]]) -> list[int]:
    return sorted({i for v in drops.values() for i in v})
