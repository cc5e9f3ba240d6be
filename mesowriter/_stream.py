"""A stream as the acquisition side sees it: one copy into the ring per frame.

`Stream.write` is the hot path. It checks the frame, encodes its metadata
once, copies the pixels into the next ring slot, publishes the slot by
advancing the ring's write cursor and rings the worker's doorbell (a few
bytes down a pipe). No disk I/O, no pickled pixels, no sleeps: when the ring
is full it either blocks on an event the worker answers (policy "block",
time recorded) or records the frame as dropped (policy "drop").
"""

from __future__ import annotations

import datetime as _dt
import threading
import time
from array import array
from typing import TYPE_CHECKING, Any

import msgspec
import numpy as np

from mesowriter import _messages as m
from mesowriter._errors import FrameRejected, WriterError, error_from_remote
from mesowriter._journal import atomic_write
from mesowriter._metadata import MetadataEncoder
from mesowriter._report import StreamReport
from mesowriter._ring import STORES_IN_ORDER, FrameRing
from mesowriter._spec import StreamSpec, report_path

if TYPE_CHECKING:
    from collections.abc import Mapping

    from mesowriter._service import WorkerHandle, WriterService

POLICIES = ("block", "drop")
# A sleeping worker is woken once this much waits in the ring (it also wakes
# itself every _worker.NAP_SECONDS), so a fast camera pays one wake-up for
# several frames, not one each.
WAKE_BYTES = 32 * 1024 * 1024


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
        service: WriterService,
        spec: StreamSpec,
        ring: FrameRing,
        worker: WorkerHandle,
        policy: str,
    ) -> None:
        self.spec = spec
        self.policy = check_policy(policy)
        self._service = service
        self._ring = ring
        self.worker = worker
        self._shape = tuple(spec.shape)
        self._dtype = np.dtype(spec.dtype)
        self._encoder = MetadataEncoder()
        self._doorbell = m.encoder.encode(m.Doorbell(spec.stream_id))
        self._bell_frames = max(
            1, min(ring.n_slots // 4, WAKE_BYTES // ring.layout.frame_nbytes)
        )
        self._lock = threading.Lock()
        self._space = threading.Event()
        self.opened = threading.Event()
        self._closed = threading.Event()
        self.open_error: WriterError | None = None
        self._error: WriterError | None = None
        self._remote: m.RemoteError | None = None
        self._closing = False
        self._close_msg: m.CloseStream | None = None
        self._worker_report: dict[str, Any] | None = None
        self._report: StreamReport | None = None
        self._received = 0
        self._published = 0
        self._published_index = array("q")  # stream index of each published frame
        self._drops: dict[str, list[int]] = {
            "ring_full": [],
            "rejected": [],
            "stream_error": [],
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

        Raises FrameRejected for a frame of the wrong shape or dtype (the
        stream stays open) and WriterError once the stream has failed.
        """
        with self._lock:
            if self._closing:
                raise WriterError(f"{self.spec.path}: stream is closed")
            index = self._received
            self._received += 1
            if self._error is not None:
                self._drops["stream_error"].append(index)
                raise self._failure()
            arr = frame if isinstance(frame, np.ndarray) else np.asarray(frame)
            if arr.shape != self._shape or not np.can_cast(
                arr.dtype, self._dtype, "equiv"
            ):
                reason = (
                    f"frame {index} has shape {arr.shape} and dtype {arr.dtype}; "
                    f"this stream takes shape {self._shape} and dtype {self._dtype}"
                )
                self._drops["rejected"].append(index)
                self._rejected.append({"index": index, "reason": reason})
                raise FrameRejected(reason)
            meta = self._encoder.encode(metadata)
            ring = self._ring
            seq = self._published
            if seq - ring.read_cursor >= ring.n_slots:
                if self.policy == "drop":
                    self._drops["ring_full"].append(index)
                    return False
                try:
                    self._wait_for_space(seq)
                except WriterError:  # the stream failed while this frame waited
                    self._drops["stream_error"].append(index)
                    raise
            np.copyto(ring.pixels(seq), arr, casting="equiv")
            if not ring.put_metadata(seq, index, meta):
                self._truncated.append(index)
                ring.put_metadata(seq, index, _truncated_note(len(meta)))
            ring.write_cursor = seq + 1
            self._published = seq + 1
            self._published_index.append(index)
            fill = seq + 1 - ring.read_cursor
            if fill > self._high_water:
                self._high_water = fill
            if self._t_first is None:
                self._t_first = time.perf_counter()
            if not STORES_IN_ORDER:  # the pipe orders the stores: every frame
                self.worker.send(m.Doorbell(self.spec.stream_id, seq + 1))
            elif fill >= self._bell_frames and ring.worker_asleep:
                # Waking the worker costs this thread more than the pipe write
                # (a cross-CPU wake-up, on a VM an IPI): only when it sleeps
                # and enough frames wait.
                self.worker.send_raw(self._doorbell)
            return True

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
            while seq - ring.read_cursor >= ring.n_slots:
                if self._error is not None:
                    raise self._failure()
                self._space.clear()
                if seq - ring.read_cursor < ring.n_slots:
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
        """Frames durably written so far (read live from the ring)."""
        if self._worker_report is not None:
            return int(self._worker_report["frames_written"])
        return self._ring.read_cursor if not self._closed.is_set() else 0

    @property
    def ring_fill(self) -> float:
        """Fraction of ring slots holding frames not yet written."""
        if self._closed.is_set():
            return 0.0
        return (self._published - self._ring.read_cursor) / self._ring.n_slots

    @property
    def frames_dropped(self) -> int:
        return sum(len(v) for v in self._drops.values())

    @property
    def bytes_written(self) -> int:
        if self._worker_report is not None:
            return int(self._worker_report["bytes_written"])
        return self._ring.bytes_written if not self._closed.is_set() else 0

    @property
    def error(self) -> WriterError | None:
        return self._error

    # -- called by the service's monitor thread ------------------------------------
    def on_opened(self, msg: m.StreamOpened) -> None:
        if msg.error is not None:
            self.open_error = error_from_remote(msg.error, f"opening {self.spec.path}")
        self.opened.set()

    def on_failed(self, err: m.RemoteError) -> None:
        self._remote = err
        self._error = error_from_remote(err, f"writing {self.spec.path}")
        self._space.set()

    def on_closed(self, report: dict[str, Any] | None) -> None:
        self._worker_report = report
        self._closed.set()
        self._space.set()

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
        worker.send(m.OpenStream(self.spec, self._ring.layout, resume=True))
        worker.send(m.Doorbell(self.spec.stream_id, self._published))
        if self._close_msg is not None:
            worker.send(self._close_msg)
        self._space.set()  # a blocked producer asks the new worker again

    # -- the end ----------------------------------------------------------------
    def close(
        self,
        reason: str = "completed",
        *,
        check: bool = True,
        extra_metadata: dict[str, Any] | None = None,
    ) -> StreamReport:
        """Finish the file: wait for every published frame, finalise, report.

        Returns the report (also written next to the data). With `check`,
        a stream that failed raises WriterError after finalising; the report
        is then on the exception as `.report`. `extra_metadata` (JSON) is
        merged into the sidecar's top level by the worker.
        """
        with self._lock:
            if self._report is None:
                if not self._closing:
                    self._closing = True
                    self._close_msg = m.CloseStream(
                        self.spec.stream_id, self._published, reason, extra_metadata
                    )
                    self.worker.send(self._close_msg)
                self._closed.wait()
                self._report = self._build_report(reason)
                self._service._forget(self)
                self._service._release_ring(self._ring)
                try:
                    atomic_write(report_path(self.spec.path), self._report.to_json())
                except OSError as exc:
                    self._report.secondary_errors.append(f"writing the report: {exc!r}")
        if check and self._report.error is not None:
            failure = WriterError(f"{self.spec.path}: {self._report.error}")
            failure.__cause__ = self._error.__cause__ if self._error else None
            failure.report = self._report  # type: ignore[attr-defined]
            raise failure
        return self._report

    def abort(self) -> None:
        """Release the ring without a worker (the service is going down)."""
        self._closed.set()
        self._ring.destroy()

    def _build_report(self, reason: str) -> StreamReport:
        wr = self._worker_report
        if wr is None:  # the worker died for good: its ring says what is on disk
            wr = {
                "frames_written": self._ring.read_cursor,
                "bytes_written": self._ring.bytes_written,
                "secondary_errors": [
                    "the file was not finalised; `mesowriter recover "
                    f"{self.spec.path}` declares the frames on disk"
                ],
            }
        drops = {k: list(v) for k, v in self._drops.items()}
        written = int(wr.get("frames_written", 0))
        # Frames are written in the order published: the rest never made it.
        unwritten = self._published_index[written:]
        drops["stream_error"] = sorted(set(drops["stream_error"]) | set(unwritten))
        dropped = sorted({i for v in drops.values() for i in v})
        err = self._remote
        if err is None and wr.get("error"):
            err = msgspec.convert(wr["error"], m.RemoteError)
        expected = self.spec.frames
        if err is not None:
            finish = "error"
        elif reason != "completed":
            finish = reason
        elif dropped or (expected is not None and written != expected):
            finish = "incomplete"
        else:
            finish = "completed"
        elapsed = time.perf_counter() - (self._t_first or self._t_open)
        nbytes = int(wr.get("bytes_written", 0))
        return StreamReport(
            path=self.spec.path,
            kind=self.spec.kind,
            position_key=self.spec.position_key,
            shape=list(self.spec.shape),
            dtype=self.spec.dtype,
            finish_reason=finish,
            frames_expected=expected,
            frames_received=self._received,
            frames_written=written,
            frames_dropped=len(dropped),
            dropped_indices=dropped,
            drops=drops,
            rejected=self._rejected,
            ring_slots=self._ring.n_slots,
            ring_bytes=self._ring.layout.total_bytes,
            ring_high_water=self._high_water,
            blocked_seconds=self._blocked,
            blocked_events=self._blocked_events,
            bytes_written=nbytes,
            seconds=elapsed,
            throughput_gbps=nbytes / elapsed / 1e9 if elapsed > 0 else 0.0,
            write_seconds=float(wr.get("write_seconds", 0.0)),
            worker_restarts=self.restarts,
            metadata_fallbacks=self._encoder.fallbacks,
            metadata_truncated=self._truncated,
            sidecar=wr.get("sidecar"),
            sink=wr.get("sink", {}),
            error=f"{err.type}: {err.message}" if err else None,
            error_traceback=err.traceback if err else None,
            secondary_errors=list(wr.get("secondary_errors", [])),
            started_at=self._started_at,
            finished_at=_now(),
        )


def _truncated_note(nbytes: int) -> bytes:
    return msgspec.json.encode(
        {"mesowriter_error": f"metadata of {nbytes} bytes exceeded the slot; not kept"}
    )
