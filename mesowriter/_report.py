"""The per-stream report: what was asked, received, written and lost."""

from __future__ import annotations

from typing import Any

import msgspec

REPORT_VERSION = 1


class StreamReport(msgspec.Struct, kw_only=True):
    """Machine-readable account of one stream, written next to its data.

    `frames_received == frames_written + frames_dropped` always holds:
    every frame handed to `write` is either in the file or listed, with its
    index, under `drops` (by reason: ring_full, rejected, stream_error).
    """

    path: str
    kind: str
    position_key: str
    shape: list[int]
    dtype: str
    finish_reason: str  # completed | incomplete | canceled | error
    frames_expected: int | None
    frames_received: int
    frames_written: int
    frames_dropped: int
    dropped_indices: list[int]
    drops: dict[str, list[int]]
    rejected: list[dict[str, Any]]
    ring_slots: int
    ring_bytes: int
    ring_high_water: int
    blocked_seconds: float
    blocked_events: int
    bytes_written: int
    seconds: float
    throughput_gbps: float
    write_seconds: float
    worker_restarts: int
    metadata_fallbacks: int
    metadata_truncated: list[int]
    sidecar: str | None
    sink: dict[str, Any]
    error: str | None = None
    error_traceback: str | None = None
    secondary_errors: list[str] = msgspec.field(default_factory=list)
    started_at: str = ""
    finished_at: str = ""
    version: int = REPORT_VERSION

    @property
    def ok(self) -> bool:
        """True when every frame received was written and nothing failed."""
        return not self.problems()

    def problems(self) -> list[str]:
        """What the user must hear about: an error, frames not written,
        metadata not kept, anything else that went wrong on the way."""
        out = [self.error] if self.error else []
        if self.frames_dropped:
            out.append(
                f"{self.frames_dropped} frame(s) not written "
                f"(indices {self.dropped_indices[:20]})"
            )
        if self.metadata_truncated:
            out.append(
                f"metadata of {len(self.metadata_truncated)} frame(s) too large "
                f"for a ring slot, not kept (indices {self.metadata_truncated[:20]})"
            )
        out += self.secondary_errors
        return out

    def to_json(self) -> bytes:
        return msgspec.json.format(msgspec.json.encode(self), indent=2)

    @classmethod
    def from_json(cls, data: bytes) -> StreamReport:
        return msgspec.json.decode(data, type=cls)
