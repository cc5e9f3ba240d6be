"""A stream as the acquisition side sees it: one copy into the ring per frame.

`Stream.write` is the hot path. It checks the frame, encodes its metadata
once, copies the pixels into the next ring slot, publishes the slot by
advancing the ring's write cursor and, only for a sleeping worker, rings its
doorbell (a few bytes down a pipe). No disk I/O, no pickled pixels, no
sleeps: when the ring is full it either blocks on an event the worker
answers (policy "block", time recorded) or records the frame as dropped
(policy "drop"). Every frame handed to `write` is counted in the ring
(`received`), so even a worker that outlives this process can account for it.

A Stream knows nothing of the service: it is given its worker, its ring and
a callback for when it is done (see `mesowriter._service` for the picture).
"""

from __future__ import annotations

import bisect
import datetime as _dt
import threading
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, NoReturn

import msgspec
import numpy as np

from mesowriter import _messages as m
from mesowriter._errors import FrameRejected, WriterError, error_from_remote
from mesowriter._metadata import MetadataEncoder
from mesowriter._platform import atomic_write
from mesowriter._report import (
    FinishReason,
    ProducerStats,
    StreamReport,
    dropped_from,
)
from mesowriter._ring import (
    FREED_WORD,
    RECEIVED_WORD,
    STORES_IN_ORDER,
    WAKE_AT_WORD,
    WRITE_WORD,
    FrameRing,
)
from mesowriter._spec import StreamSpec, report_path

if TYPE_CHECKING:
    from mesowriter._workers import WorkerHandle

POLICIES = ("block", "drop")
_MAX_INDEX = 1 << 63


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat()


def check_policy(policy: str) -> str:
    """Return `policy` if it is a full-ring policy; ValueError otherwise."""
    if policy not in POLICIES:
        raise ValueError(f"policy must be one of {POLICIES}, not {policy!r}")
    return policy


class Stream:
    """One output file fed from this process. Not shared between threads."""

    def __init__(
        self,
        spec: StreamSpec,
        ring: FrameRing,
        worker: WorkerHandle,
        policy: str,
        on_done: Callable[[Stream], None],
    ) -> None:
        self.spec = spec
        self.policy = check_policy(policy)
        self._ring = ring
        self.worker = worker
        self._on_done = on_done
        self._shape = tuple(spec.shape)
        self._dtype = np.dtype(spec.dtype)
        self._encoder = MetadataEncoder()
        self._doorbell = m.encoder.encode(m.Doorbell(spec.stream_id))
        self._rang_at = 0  # the worker's `wake_at` the doorbell was rung for
        self._lock = threading.Lock()
        self._space = threading.Event()
        self.opened = threading.Event()
        self._closed = threading.Event()
        self.open_error: WriterError | None = None
        self._error: WriterError | None = None
        self._remote: m.RemoteError | None = None
        self._closing = False
        self._abandoned = False
        self._close_msg: m.CloseStream | None = None
        self._worker_report: StreamReport | None = None
        self._report: StreamReport | None = None
        self._received = 0
        self._published = 0
        # (first frame published after a drop, its stream index): enough to
        # name every published frame's index (`_index_of`), in memory that
        # grows with the drops, not with the frames of a long run.
        self._index_runs: list[tuple[int, int]] = [(0, 0)]
        self._drops: dict[str, list[int]] = {
            "ring_full": [],
            "rejected": [],
            "stream_error": [],
            "interrupted": [],
        }
        self._rejected: list[dict[str, Any]] = []
        self._truncated: list[int] = []
        self._high_water = 0
        self._blocked = 0.0
        self._blocked_events = 0
        self._t_open = time.perf_counter()
        self._t_first: float | None = None
        self._started_at = _now()
        self.restarts = 0

    # -- the hot path -----------------------------------------------------------
    def write(
        self, frame: np.ndarray, metadata: Mapping[str, Any] | None = None
    ) -> bool:
        """Queue one frame; True if it went into the ring, False if dropped.

        Raises FrameRejected for a frame of the wrong shape or dtype, or not
        an array at all (the stream stays open), and WriterError once the
        stream has failed. A KeyboardInterrupt (or any exception) before the
        frame is published, while waiting for a slot or not, records the
        frame as dropped before it propagates.
        """
        with self._lock:
            if self._closing:
                raise WriterError(f"{self.spec.path}: stream is closed")
            index = self._received
            ring = self._ring
            words = ring.words
            self._received = words[RECEIVED_WORD] = index + 1
            seq = self._published
            try:
                if self._error is not None:
                    self._drop("stream_error", index)
                    raise self._failure()
                arr = (
                    frame
                    if isinstance(frame, np.ndarray)
                    else self._array(frame, index)
                )
                if arr.shape != self._shape or (
                    arr.dtype != self._dtype
                    and not np.can_cast(arr.dtype, self._dtype, "equiv")
                ):
                    self._reject(
                        index,
                        f"frame {index} has shape {arr.shape} and dtype "
                        f"{arr.dtype}; this stream takes shape {self._shape} "
                        f"and dtype {self._dtype}",
                    )
                meta = self._encoder.encode(metadata)
                freed = words[FREED_WORD]
                if seq - freed >= ring.n_slots:
                    if self.policy == "drop":
                        self._drop("ring_full", index)
                        return False
                    self._wait_for_space(seq)
                    freed = words[FREED_WORD]
                np.copyto(ring.pixels(seq), arr, casting="equiv")
                if not ring.put_metadata(seq, index, meta):
                    self._truncated.append(index)
                    ring.put_metadata(seq, index, _truncated_note(len(meta)))
                self._published = words[WRITE_WORD] = seq + 1
            except BaseException as exc:
                # Not published: the frame is dropped, under the reason
                # already recorded, else the stream's failure or an
                # interruption (Ctrl-C, SIGTERM) at any point in between.
                if self._published == seq and not self._dropped(index):
                    failed = isinstance(exc, WriterError) and self._error is not None
                    self._drop("stream_error" if failed else "interrupted", index)
                raise
            if seq + 1 - freed > self._high_water:
                self._high_water = seq + 1 - freed
            if self._t_first is None:
                self._t_first = time.perf_counter()
            if not STORES_IN_ORDER:  # the pipe orders the stores: every frame
                self.worker.send(m.Doorbell(self.spec.stream_id, seq + 1))
            elif (wake := words[WAKE_AT_WORD]) and seq + 1 >= wake != self._rang_at:
                # Waking the worker costs this thread more than the pipe write
                # (a cross-CPU wake-up, on a VM an IPI): only when it sleeps,
                # once enough frames wait to be written (not merely to be
                # committed), and once per sleep.
                self._rang_at = wake
                self.worker.send_raw(self._doorbell)
            return True

    def _drop(self, reason: str, index: int) -> None:
        """Record frame `index` as dropped. Frames published from now on
        carry stream indices shifted past it (see `_index_of`)."""
        run = (self._published, index + 1)
        if self._index_runs[-1][0] == self._published:  # no frame since the last
            self._index_runs[-1] = run  # (idempotent: a second call for `index`)
        else:
            self._index_runs.append(run)
        self._drops[reason].append(index)  # last: from here on it is counted

    def _dropped(self, index: int) -> bool:
        """Whether `index` is recorded as dropped (drops come in index order,
        so it is the last of its list)."""
        return any(v and v[-1] == index for v in self._drops.values())

    def _array(self, frame: Any, index: int) -> np.ndarray:
        """A frame that is not an ndarray, as one (rejected if it cannot be)."""
        try:
            return np.asarray(frame)
        except Exception as exc:
            self._reject(index, f"frame {index} is not an array: {exc!r}")

    def _reject(self, index: int, reason: str) -> NoReturn:
        self._drop("rejected", index)
        self._rejected.append({"index": index, "reason": reason})
        raise FrameRejected(reason)

    def _index_of(self, seq: int) -> int:
        """The stream index of published frame `seq`: frames are published
        in index order, skipping only the indices dropped before them."""
        k = bisect.bisect_right(self._index_runs, (seq, _MAX_INDEX)) - 1
        first_seq, first_index = self._index_runs[k]
        return first_index + seq - first_seq

    def _failure(self) -> WriterError:
        """A new exception for each raise: re-raising one instance would grow
        its traceback, and keep every caller's frame alive, call after call."""
        assert self._error is not None
        exc = WriterError(str(self._error))
        exc.__cause__ = self._error.__cause__
        return exc

    def _wait_for_space(self, seq: int) -> None:
        """Block until the worker frees a slot; the time is recorded."""
        ring = self._ring
        t0 = time.perf_counter()
        self._blocked_events += 1
        try:
            while seq - ring.freed_cursor >= ring.n_slots:
                if self._error is not None:
                    raise self._failure()
                self._space.clear()
                if seq - ring.freed_cursor < ring.n_slots:
                    break
                self.worker.send(m.WantSpace(self.spec.stream_id, seq))
                self._space.wait()
        finally:
            self._blocked += time.perf_counter() - t0

    # -- live figures -------------------------------------------------------------
    @property
    def frames_received(self) -> int:
        return self._received

    @property
    def frames_written(self) -> int:
        """Frames committed so far (read live from the ring)."""
        if self._report is not None:
            return self._report.frames_written
        return self._ring.read_cursor

    @property
    def ring_fill(self) -> float:
        """Fraction of ring slots holding frames not yet written."""
        if self._closed.is_set():
            return 0.0
        return (self._published - self._ring.freed_cursor) / self._ring.n_slots

    @property
    def frames_dropped(self) -> int:
        return sum(len(v) for v in self._drops.values())

    @property
    def bytes_written(self) -> int:
        if self._report is not None:
            return self._report.bytes_written
        return self._ring.bytes_written

    @property
    def error(self) -> WriterError | None:
        return self._error

    @property
    def ring(self) -> FrameRing:
        return self._ring

    # -- called by the service's monitor thread ------------------------------------
    def on_opened(self, msg: m.StreamOpened) -> None:
        if msg.error is not None:
            self.open_error = error_from_remote(msg.error, f"opening {self.spec.path}")
        self.opened.set()

    def on_failed(self, err: m.RemoteError) -> None:
        self._remote = err
        self._error = error_from_remote(err, f"writing {self.spec.path}")
        self._space.set()

    def on_closed(self, report: bytes | None) -> None:
        if report is not None:
            self._worker_report = StreamReport.from_json(report)
        self._closed.set()
        self._space.set()
        if self._abandoned:  # nobody waits in close(): release here
            self._on_done(self)

    def on_worker_lost(self, message: str) -> None:
        """The worker died and no replacement can take over."""
        err = m.RemoteError("WorkerDied", message, message)
        self.on_failed(err)
        if self.open_error is None and not self.opened.is_set():
            self.open_error = error_from_remote(err, f"opening {self.spec.path}")
            self.opened.set()
        self.on_closed(None)

    def on_worker_replaced(self, worker: WorkerHandle) -> None:
        """A replacement worker resumes the stream from the ring."""
        self.worker = worker
        self.restarts += 1
        # A worker that died before it opened the file leaves nothing to resume.
        opened = self.opened.is_set()
        worker.send(
            m.OpenStream(self.spec, self._ring.layout, resume=opened, reopen=not opened)
        )
        worker.send(m.Doorbell(self.spec.stream_id, self._published))
        if self._close_msg is not None:
            msg = self._close_msg
            producer = msgspec.structs.replace(
                msg.producer, worker_restarts=self.restarts
            )
            worker.send(msgspec.structs.replace(msg, producer=producer))
        self._space.set()  # a blocked producer asks the new worker again

    # -- the end ----------------------------------------------------------------
    def producer_stats(self) -> ProducerStats:
        enc = self._encoder
        t_first = self._t_first or self._t_open
        return ProducerStats(
            received=self._received,
            drops={k: list(v) for k, v in self._drops.items() if v},
            rejected=list(self._rejected),
            metadata_truncated=list(self._truncated),
            metadata_fallbacks=enc.fallbacks,
            metadata_frames_replaced=getattr(enc, "frames_replaced", 0),
            metadata_nonfinite=getattr(enc, "nonfinite", 0),
            ring_high_water=self._high_water,
            blocked_seconds=self._blocked,
            blocked_events=self._blocked_events,
            seconds=time.perf_counter() - t_first,
            started_at=self._started_at,
            worker_restarts=self.restarts,
        )

    def close(
        self,
        reason: str = "completed",
        *,
        check: bool = True,
        extra_metadata: dict[str, Any] | None = None,
    ) -> StreamReport:
        """Finish the file: wait for every published frame, finalise, report.

        Returns the report, which the writer process also wrote next to the
        data. With `check`, a stream that failed raises WriterError after
        finalising; the report is then on the exception as `.report`.
        `extra_metadata` (JSON) is merged into the sidecar's top level.
        """
        with self._lock:
            if self._report is None:
                if not self._closing:
                    self._closing = True
                    self._close_msg = m.CloseStream(
                        self.spec.stream_id,
                        self._published,
                        reason,
                        self.producer_stats(),
                        extra_metadata,
                    )
                    self.worker.send(self._close_msg)
                self._closed.wait()
                self._report = self._worker_report or self._own_report(reason)
                self._on_done(self)
        if check and self._report.error is not None:
            failure = WriterError(f"{self.spec.path}: {self._report.error}")
            failure.__cause__ = self._error.__cause__ if self._error else None
            failure.report = self._report  # type: ignore[attr-defined]
            raise failure
        return self._report

    def abandon(self) -> None:
        """The open was interrupted: have the worker close what it opened;
        the ring is released when it answers, never before (it may be
        reading the ring)."""
        with self._lock:
            self._abandoned = self._closing = True
            self._close_msg = m.CloseStream(
                self.spec.stream_id, 0, "canceled", self.producer_stats()
            )
            self.worker.send(self._close_msg)
        if self._closed.is_set():
            self._on_done(self)

    def abort(self) -> None:
        """Give up waiting for a worker (the service is going down)."""
        self._closed.set()
        self._space.set()

    def _own_report(self, reason: str) -> StreamReport:
        """The worker died for good: what this side and the ring know.

        Frames are committed in the order published, so the first
        `read_cursor` published frames are on disk and the rest are not.
        """
        ring = self._ring
        written = ring.read_cursor
        drops = {k: list(v) for k, v in self._drops.items() if v}
        unwritten = [self._index_of(seq) for seq in range(written, self._published)]
        if unwritten:
            drops["stream_error"] = sorted(
                set(drops.get("stream_error", [])) | set(unwritten)
            )
        dropped = dropped_from(drops)
        err = self._remote
        stats = self.producer_stats()
        report = StreamReport(
            path=self.spec.path,
            kind=self.spec.kind,
            position_key=self.spec.position_key,
            shape=list(self.spec.shape),
            dtype=self.spec.dtype,
            finish_reason=FinishReason.ERROR if err else _reason(reason),
            frames_expected=self.spec.frames,
            frames_received=self._received,
            frames_written=written,
            frames_dropped=len(dropped),
            dropped_indices=dropped,
            drops=drops,
            rejected=stats.rejected,
            ring_slots=ring.n_slots,
            ring_bytes=ring.layout.region_bytes,
            ring_high_water=stats.ring_high_water,
            blocked_seconds=stats.blocked_seconds,
            blocked_events=stats.blocked_events,
            bytes_written=ring.bytes_written,
            seconds=stats.seconds,
            worker_restarts=self.restarts,
            metadata_fallbacks=stats.metadata_fallbacks,
            metadata_truncated=stats.metadata_truncated,
            written_by="service",
            error=f"{err.type}: {err.message}" if err else None,
            error_traceback=err.traceback if err else None,
            secondary_errors=[
                "the file was not finalised; `mesowriter recover "
                f"{self.spec.path}` declares the frames on disk"
            ],
            started_at=self._started_at,
            finished_at=_now(),
        )
        try:
            atomic_write(report_path(self.spec.path), report.to_json())
        except OSError as exc:
            report.secondary_errors.append(f"writing the report: {exc!r}")
        return report


def _reason(reason: str) -> FinishReason:
    try:
        return FinishReason(reason)
    except ValueError:
        return FinishReason.INCOMPLETE


def _truncated_note(nbytes: int) -> bytes:
    return msgspec.json.encode(
        {"mesowriter_error": f"metadata of {nbytes} bytes exceeded the slot; not kept"}
    )
