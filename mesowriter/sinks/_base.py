"""The sink interface: a format, and how a worker turns frames into it.

A sink class is the one authority on its format: the suffixes it writes,
whether its output is a file or a folder, what it checks before a camera
starts, how much disk its first frames need, how to abort, and what
`inspect` and `recover` do with its files. Handlers and path code ask the
registry (`mesowriter.sinks`), never a sink module.

A sink object lives inside a writer worker. The worker hands it batches of
consecutive frames still sitting in the shared-memory ring (no copy has been
made), in order; writes may stay in flight after `submit` returns. A sink
that says which frames are *written* (`written_uncommitted`: the write
returned, the slot is never read again) has their slots freed at once. A
frame is *committed* once it is durable and visible in the file; the worker
then journals it (and frees its slot, if that waited). `close` comes once,
after `drain`.
"""

from __future__ import annotations

import abc
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

from mesowriter._spec import StreamSpec

# A commit (sync, then journal) is due every COMMIT_BYTES or COMMIT_SECONDS,
# whichever comes first: often enough that a power cut loses little, rarely
# enough that syncs cost nothing measurable (see README, Durability).
COMMIT_BYTES = 64 * 1024 * 1024
COMMIT_SECONDS = 0.1


@dataclass(frozen=True)
class SlotFrame:
    """One frame as it sits in its ring slot."""

    index: int  # the stream's frame index (order of receipt, 0-based)
    pixels: np.ndarray  # view into the ring, shape/dtype of the spec
    metadata: bytes  # the frame's metadata, JSON, as encoded by the producer


@dataclass(frozen=True)
class FrameBatch:
    """Consecutive frames whose slots are also consecutive in shared memory.

    `span` covers the frames' slots end to end; when `slot_stride` equals
    the frame size it is exactly the frames' pixels, back to back: one
    buffer a sink can hand to a single write. None when the batch wraps
    around the ring (only for a sink whose `batch_unit` is above 1).
    """

    frames: list[SlotFrame]
    span: memoryview | None
    slot_stride: int  # bytes from one frame's slot to the next one's


@dataclass(frozen=True)
class ResumeState:
    """What a replacement worker knows of a stream it takes over."""

    committed: int  # frames committed (durable), acquisition order
    positions: list[int] = field(default_factory=list)  # their file positions
    # Frames after those, written by the worker that died (the writes
    # returned) but not committed: their file positions, in order. Their
    # slots may hold later frames: the sink adopts them, never rewrites.
    written: list[int] = field(default_factory=list)


class SinkFinalised(RuntimeError):
    """A replacement worker found the file already finalised (or finalising)."""

    def __init__(self, message: str, frames: int) -> None:
        super().__init__(message)
        self.frames = frames


class BatchFailed(OSError):
    """A write failed. `committed` holds the positions committed before it;
    the failed batch had `failed` frames; `discarded` frames in all (it and
    the ones after it) were dropped from flight, to be submitted again."""

    def __init__(
        self, committed: list[int], failed: int, discarded: int, cause: OSError
    ) -> None:
        super().__init__(cause.errno, cause.strerror or str(cause))
        self.committed = committed
        self.failed = failed
        self.discarded = discarded
        self.cause = cause


class Sink(abc.ABC):
    """One output fed by a worker process."""

    kind: ClassVar[str]
    suffixes: ClassVar[tuple[str, ...]] = ()
    output_is_folder: ClassVar[bool] = False
    # False: the sink keeps nothing on disk, so no companions either (no
    # journal, sidecar or report file; the report still reaches the caller).
    keeps_files: ClassVar[bool] = True
    # True: writing costs a core (encoding), so each stream wants a writer
    # process of its own; False: I/O-bound streams share a process.
    cpu_bound: ClassVar[bool] = False
    # True if a failed write leaves the file as it was, so that the batch can
    # be tried again frame by frame (a full disk keeps every frame that fits).
    retry_by_frame: ClassVar[bool] = False

    def __init__(self, spec: StreamSpec) -> None:
        self.spec = spec

    # -- the format, asked in the user's process ------------------------------------
    @classmethod
    def matches(cls, path: str) -> bool:
        lower = path.lower()
        return any(lower.endswith(s) for s in cls.suffixes)

    @classmethod  # noqa: B027 - an optional hook, not an abstract one
    def check(cls, spec: StreamSpec) -> None:
        """Raise ValueError with a clear message if `spec` cannot be written."""

    @classmethod
    def prepare(cls, spec: StreamSpec) -> StreamSpec:
        """Settle choices the worker must not make alone (runs after `check`,
        in the user's process, so warnings reach the user)."""
        return spec

    @classmethod
    def space_needed(cls, spec: StreamSpec) -> int:
        """Bytes of disk the stream needs before its first frame lands."""
        return 0

    @classmethod
    def never_started(cls, path: str) -> bool:
        """Whether `path` holds only what a writer that died while opening
        it left (no frame, no data): then a replacement may start it over.
        A format that cannot tell says no, and the file is left alone."""
        return False

    @classmethod
    def inspect(cls, path: str) -> dict[str, Any]:
        raise ValueError(f"{path}: {cls.kind} files cannot be inspected")

    @classmethod
    def recover(cls, path: str, **options: Any) -> Any:
        raise ValueError(f"{path}: {cls.kind} files cannot be recovered")

    # -- writing, in the worker --------------------------------------------------------
    @abc.abstractmethod
    def open(self, resume: ResumeState | None = None) -> None:
        """Create the output, or reopen it holding `resume.committed` frames."""

    def settle(self) -> None:  # noqa: B027 - optional hook
        """Make what a new output's `open` wrote durable. Called once the
        open was answered and before any frame is written, so that the
        user's open never waits on a sync (which queues behind other
        programs' dirty data on a busy disk)."""

    commit_bytes: int = COMMIT_BYTES  # the worker lowers it for small rings

    def ready(self) -> bool:
        """May another batch be submitted now?"""
        return True

    def batch_unit(self) -> int:
        """Frames whose multiples it wants batches to end on (1: any). A
        sink that asks for more copies each batch's pixels (so a batch may
        also wrap around the ring: its slots need not be consecutive)."""
        return 1

    @abc.abstractmethod
    def submit(self, batch: FrameBatch) -> list[int]:
        """Start writing `batch`; return positions committed meanwhile."""

    @abc.abstractmethod
    def collect(self, *, force: bool = False, idle: bool = False) -> list[int]:
        """Positions of the frames newly committed (acquisition order).

        A commit is due every `commit_bytes` or `COMMIT_SECONDS`; `idle`
        (frames stopped arriving) makes what was written due now; `force`
        waits for every write and commits it.
        """

    def drain(self) -> list[int]:
        """Wait for every write and commit it."""
        return self.collect(force=True)

    def in_flight(self) -> bool:
        return False

    def written_uncommitted(self) -> list[int]:
        """File positions of the frames after the committed ones whose
        writes returned, in order: their pixels are in the file and their
        slots will not be read again, even if a later write fails (the
        caller must not change the list). A sink that keeps reading slots
        until commit says none (the default)."""
        return []

    def wait_for_writes(self, timeout: float | None) -> None:  # noqa: B027
        """Block until a write in flight finishes (or `timeout`)."""

    def next_commit_in(self) -> float | None:
        """Seconds until finished writes are due a commit; None if none."""
        return None

    def on_io(self, callback: Callable[[Any], None]) -> None:  # noqa: B027
        """Have `callback` called whenever a write finishes."""

    @abc.abstractmethod
    def close(
        self, reason: str, records: Iterator[tuple[int, bytes]] | None = None
    ) -> dict[str, Any]:
        """Finalise; return the sink's part of the stream report.

        `records` iterates over (frame index, metadata JSON) of every frame
        committed, in acquisition order, for sinks that embed metadata.
        """

    def abort(self) -> None:  # noqa: B027 - optional hook
        """Give up the output without finalising (close descriptors)."""


class SynchronousSink(Sink):
    """A sink whose `submit` does all the work before returning (encoders)."""

    def __init__(self, spec: StreamSpec) -> None:
        super().__init__(spec)
        self._done: list[int] = []
        self._count = 0
        self._since = 0.0

    def submit(self, batch: FrameBatch) -> list[int]:
        self.write(batch)
        n = len(batch.frames)
        if not self._done:
            self._since = time.monotonic()
        self._done.extend(range(self._count, self._count + n))
        self._count += n
        return []

    @abc.abstractmethod
    def write(self, batch: FrameBatch) -> None:
        """Write the batch now, in order."""

    def collect(self, *, force: bool = False, idle: bool = False) -> list[int]:
        """Frames written, at the commit pace of the other sinks."""
        frame = max(1, self.spec.frame_nbytes)
        due = (
            force
            or idle
            or len(self._done) * frame >= self.commit_bytes
            or time.monotonic() - self._since >= COMMIT_SECONDS
        )
        if not self._done or not due:
            return []
        out, self._done = self._done, []
        return out

    def in_flight(self) -> bool:
        return bool(self._done)

    def next_commit_in(self) -> float | None:
        if not self._done:
            return None
        return max(0.0, self._since + COMMIT_SECONDS - time.monotonic())
