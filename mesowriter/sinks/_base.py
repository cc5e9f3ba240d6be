"""The sink interface: how a worker process turns a stream's frames into a file.

A sink lives entirely inside a writer worker. The worker hands it batches of
consecutive frames that are still sitting in the shared-memory ring (no copy
has been made), in order, and calls `close` exactly once at the end.
"""

from __future__ import annotations

import abc
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from mesowriter._spec import StreamSpec


@dataclass(frozen=True)
class SlotFrame:
    """One frame as it sits in its ring slot."""

    index: int  # the stream's frame index (order of receipt, 0-based)
    pixels: np.ndarray  # read-only view into the ring, shape/dtype of the spec
    metadata: bytes  # the frame's metadata, JSON, as encoded by the producer


@dataclass(frozen=True)
class FrameBatch:
    """Consecutive frames whose slots are also consecutive in shared memory.

    `span` covers, for every frame, the sink's `slot_prefix` bytes followed by
    the pixels padded to a multiple of 4096 bytes: one page-aligned buffer a
    sink can hand to a single direct-I/O write. `prefixes[i]` is the writable
    prefix of frame i inside that span.
    """

    frames: list[SlotFrame]
    span: memoryview
    prefixes: list[memoryview]
    slot_stride: int  # bytes from one frame's prefix to the next one's


class Sink(abc.ABC):
    """One output file fed by a worker process."""

    kind: ClassVar[str]
    # Bytes a sink may fill in front of each frame's pixels in its ring slot
    # (the TIFF sink puts each frame's IFD there). Must be a multiple of 4096.
    slot_prefix: ClassVar[int] = 0
    # True if a write() that raises leaves the file as it was, so that the
    # batch can be tried again frame by frame (a full disk keeps every frame
    # that still fits).
    retry_by_frame: ClassVar[bool] = False

    def __init__(self, spec: StreamSpec) -> None:
        self.spec = spec

    @classmethod  # noqa: B027 - an optional hook, not an abstract one
    def check(cls, spec: StreamSpec) -> None:
        """Raise ValueError with a clear message if `spec` cannot be written.

        Runs in the user's process before any worker or camera starts.
        """

    @classmethod
    def prepare(cls, spec: StreamSpec) -> StreamSpec:
        """Settle choices the worker must not make alone; runs after `check`.

        Runs in the user's process, so warnings reach the user; returns the
        spec the worker gets (the video sink pins the codec it resolved).
        """
        return spec

    @abc.abstractmethod
    def open(self, resume_from: int = 0) -> None:
        """Create the file (or reopen it holding `resume_from` frames)."""

    @abc.abstractmethod
    def write(self, batch: FrameBatch) -> int:
        """Write the batch in order; return the bytes written to disk."""

    def flush(self, force: bool = False) -> None:  # noqa: B027 - optional hook
        """Make everything written so far readable by other programs.

        Called after batches (a sink may rate-limit itself unless `force`)
        and with `force=True` whenever the worker has caught up.
        """

    @abc.abstractmethod
    def close(
        self, reason: str, records: Iterator[tuple[int, bytes]] | None = None
    ) -> dict[str, Any]:
        """Finalise the file; return the sink's part of the stream report.

        `records` iterates over (frame index, metadata JSON) of every frame
        written, in order, for sinks that embed metadata in the file.
        """
