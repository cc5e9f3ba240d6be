"""The writer worker process: drains rings into sinks, in order, one batch at a time.

::

    user's process (acquisition)               writer worker (spawned)
    ----------------------------               -----------------------
    Stream.write(frame, meta)
      copy pixels -> ring slot  ===shm===>     StreamRunner.step()
      meta JSON   -> ring meta  ===shm===>       SlotFrames (views, no copy)
      write_cursor += 1                          sink.write(batch)  -> data file
      Doorbell ----------------pipe------->      journal.append()   -> journal
        (only to a sleeping worker, once         read_cursor += n   (slot free)
         a few frames wait; a worker with        (asleep: wait on the pipe, at
         streams also wakes itself)               most NAP_SECONDS at a time)
      (full ring) WantSpace ---pipe------->      ... Space once a slot is free
      Monitor thread <---------pipe--------      StreamOpened / Failed / Closed
      Monitor thread <-- process sentinel --     (worker death)

A worker never calls MMCore and never sees a pickled pixel. It exits when
told to, or finishes what the ring holds and exits when its parent dies.
"""

from __future__ import annotations

import os
import signal
import time
from contextlib import suppress
from multiprocessing import connection, parent_process
from typing import Any

import msgspec

from mesowriter import _messages as m
from mesowriter._errors import remote_error
from mesowriter._faults import Faults
from mesowriter._journal import Journal, atomic_write, iter_records, write_sidecar
from mesowriter._ring import STORES_IN_ORDER, FrameRing, RingLayout
from mesowriter._spec import StreamSpec, journal_path, report_path, sidecar_path
from mesowriter.sinks import FrameBatch, SlotFrame, sink_class

MAX_BATCH_BYTES = 64 * 1024 * 1024
# A worker with open streams wakes itself this often to look at the rings, so
# that producers need not wake it for every frame (see Stream.write).
NAP_SECONDS = 0.01


class StreamRunner:
    """One stream inside a worker: ring -> sink -> journal -> read cursor."""

    def __init__(self, spec: StreamSpec, layout: RingLayout, resume: bool) -> None:
        self.spec = spec
        self.faults = Faults.parse(spec.fault, resumed=resume)
        self.sink = sink_class(spec.kind)(spec)
        self.error: m.RemoteError | None = None
        self.secondary_errors: list[str] = []
        self.report: dict[str, Any] | None = None
        self.write_seconds = 0.0
        self.ring = FrameRing.attach(layout)
        jpath = journal_path(spec.path)
        self.resumed_from = 0
        if resume and os.path.exists(jpath):
            self.journal = Journal.reopen(jpath)
            self.resumed_from = self.journal.records
            if self.resumed_from:
                self.sink.open(resume_from=self.resumed_from)
            else:
                self._reopen_fresh()
        elif resume:  # the first worker died before its journal existed
            self._reopen_fresh()
            self.journal = Journal.create(jpath, spec)
        else:
            self._open_new(jpath)
        self.next = self.journal.records
        self.ring.read_cursor = self.next
        # Where stores may be seen out of order, only frames a pipe message
        # announced are safe to read; on x86-64 the write cursor says it all.
        self.announced: int | None = None if STORES_IN_ORDER else self.next
        # After a failed batch its frames are tried again one at a time.
        self.by_frame_until = 0

    def _open_new(self, jpath: str) -> None:
        """Create file and journal; on failure leave neither a half-made file
        (one this call created) nor an open descriptor or ring mapping."""
        existed = os.path.exists(self.spec.path)
        try:
            self.sink.open(0)
            self.journal = Journal.create(jpath, self.spec)
        except BaseException:
            abort = getattr(self.sink, "abort", None)
            if abort is not None:
                with suppress(Exception):
                    abort()
            if not existed:
                with suppress(OSError):
                    os.unlink(self.spec.path)
            self.ring.close()
            raise

    def _reopen_fresh(self) -> None:
        """A worker died before its first frame: start the file again."""
        self.sink = sink_class(self.spec.kind)(
            msgspec.structs.replace(self.spec, overwrite=True)
        )
        self.sink.open(0)

    @property
    def failed(self) -> bool:
        return self.error is not None

    def published(self) -> int:
        """Frames the producer has published that this worker may read."""
        cursor = self.ring.write_cursor
        return cursor if self.announced is None else min(cursor, self.announced)

    def announce(self, published: int) -> None:
        if self.announced is not None:
            self.announced = max(self.announced, published)

    def pending(self) -> bool:
        return not self.failed and self.report is None and self.published() > self.next

    def step(self) -> int:
        """Write the next run of published frames; return how many."""
        ring = self.ring
        stop = self.published()
        if self.next >= stop:
            return 0
        max_bytes = 1 if self.next < self.by_frame_until else MAX_BATCH_BYTES
        first, count = next(ring.runs(self.next, stop, max_bytes))
        frames = []
        for seq in range(first, first + count):
            index, meta = ring.get_metadata(seq)
            frames.append(SlotFrame(index, ring.pixels(seq), meta))
        batch = FrameBatch(
            frames=frames,
            span=ring.span(first, count),
            prefixes=[ring.prefix(s) for s in range(first, first + count)],
            slot_stride=ring.stride,
        )
        t0 = time.perf_counter()
        try:
            self.faults.before_write(self.next, count)
            nbytes = self.sink.write(batch)
        except OSError:
            if count == 1 or not self.sink.retry_by_frame:
                raise
            self.by_frame_until = first + count  # keep every frame that still fits
            return 0
        finally:
            self.write_seconds += time.perf_counter() - t0
        self.faults.after_write(self.next, self.next + count)
        self.journal.append(
            [(f.index, first + j, f.metadata) for j, f in enumerate(frames)]
        )
        before = self.next
        self.next += count
        ring.bytes_written = ring.bytes_written + nbytes
        ring.read_cursor = self.next
        self.faults.after_commit(before, self.next)
        return count

    def idle(self) -> None:
        """Nothing to write right now: let readers see what is on disk.

        A failure here loses no frame (the final OME-XML is written at close)
        but is kept for the report, once.
        """
        try:
            self.sink.flush(force=True)
        except Exception as exc:
            note = f"updating the provisional OME-XML: {exc!r}"
            if note not in self.secondary_errors:
                self.secondary_errors.append(note)

    def fail(self, exc: BaseException) -> None:
        """Stop writing; finalise what made it to disk."""
        self.error = remote_error(exc)
        self.close("error")

    def close(
        self,
        reason: str,
        extra: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """Finalise file and sidecar (each step guarded); build the report.

        `extra` (sent with CloseStream) is merged over the spec's
        `extra_metadata` into the sidecar's top level. A step that fails
        becomes the stream's error (or, after another error, a secondary
        one), and the journal is kept for `mesowriter recover`.
        """
        if self.report is not None:  # finalised when the stream failed
            if extra:
                self._merge_into_sidecar(extra)
            return self.report
        # The journal is streamed, twice (file, then sidecar), never loaded:
        # finalising costs the same memory at 1 000 or 100 000 frames.
        jpath = self.journal.path
        self.journal.close()
        sink_summary: dict[str, Any] = {}
        finalised = True
        try:
            sink_summary = self.sink.close(reason, iter_records(jpath))
        except Exception as exc:
            finalised = False
            self._step_failed("finalising the file", exc)
            abort = getattr(self.sink, "abort", None)
            if abort is not None:
                with suppress(Exception):
                    abort()
        sidecar = sidecar_path(self.spec.path)
        written = self.journal.records
        try:
            written = write_sidecar(
                sidecar,
                {self.spec.position_key: (meta for _, meta in iter_records(jpath))},
                extra={**(self.spec.extra_metadata or {}), **(extra or {})},
            )
            if finalised:
                self.journal.remove()
        except Exception as exc:
            self._step_failed("writing the sidecar", exc)
        self.report = {
            "frames_written": written,
            "bytes_written": self.ring.bytes_written,
            "write_seconds": self.write_seconds,
            "sidecar": sidecar,
            "sink": sink_summary,
            "resumed_from": self.resumed_from,
            "error": msgspec.to_builtins(self.error) if self.error else None,
            "secondary_errors": self.secondary_errors,
        }
        return self.report

    def _merge_into_sidecar(self, extra: dict[str, Any]) -> None:
        """Metadata known only at the end (CV2Writer.finish) still reaches the
        sidecar of a stream that failed and was finalised earlier."""
        import json

        path = sidecar_path(self.spec.path)
        try:
            with open(path, "rb") as fh:
                data = json.load(fh)
            data.update(extra)
            atomic_write(path, msgspec.json.encode(data))
        except Exception as exc:
            self.secondary_errors.append(
                f"adding extra metadata to the sidecar: {exc!r}"
            )

    def _step_failed(self, step: str, exc: BaseException) -> None:
        """A finalisation step failed: the stream's error unless it has one."""
        if self.error is None:
            self.error = msgspec.structs.replace(
                remote_error(exc), message=f"{step}: {exc}"
            )
        else:
            self.secondary_errors.append(f"{step}: {exc!r}")

    def release(self) -> None:
        """Unmap the ring (after the parent has its report: unmapping is slow)."""
        self.ring.close()


class Worker:
    """The message loop of one writer process."""

    def __init__(self, inbound: Any, outbound: Any) -> None:
        self.inbound = inbound
        self.outbound = outbound
        self.streams: dict[int, StreamRunner] = {}
        self.wants: dict[int, int] = {}
        self.closing: dict[int, m.CloseStream] = {}
        parent = parent_process()
        self.parent_sentinel = parent.sentinel if parent is not None else None

    def send(self, msg: m.ToParent) -> None:
        with suppress(OSError):  # the parent is gone: nobody to tell
            self.outbound.send_bytes(m.encoder.encode(msg))

    def run(self) -> None:
        while True:
            if not self._busy():
                ready = self._sleep()
                if ready and self.inbound not in ready:
                    self._orphaned()
                    return
            while self.inbound.poll():
                try:
                    raw = self.inbound.recv_bytes()
                except EOFError:
                    self._orphaned()
                    return
                msg = m.to_worker_decoder.decode(raw)
                if isinstance(msg, m.Shutdown):
                    self._close_all("canceled")
                    return
                self._handle(msg)
            self._work()

    def _sleep(self) -> list[Any]:
        """Wait for a message, the parent's death or (with streams open) a nap.

        Each ring's `worker_asleep` flag tells its producer to ring the
        doorbell; the rings are looked at again after setting it, so a frame
        published meanwhile is not left waiting for the nap to end.
        """
        waitables: list[Any] = [self.inbound]
        if self.parent_sentinel is not None:
            waitables.append(self.parent_sentinel)
        rings = [r.ring for r in self.streams.values() if r.report is None]
        for ring in rings:
            ring.worker_asleep = True
        try:
            if self._busy():
                return [self.inbound]
            nap = NAP_SECONDS if rings and STORES_IN_ORDER else None
            return list(connection.wait(waitables, timeout=nap))
        finally:
            for ring in rings:
                ring.worker_asleep = False

    def _busy(self) -> bool:
        if any(r.pending() for r in self.streams.values()):
            return True
        return any(self._close_ready(sid) for sid in self.closing)

    def _handle(self, msg: m.ToWorker) -> None:
        if isinstance(msg, m.Doorbell):
            runner = self.streams.get(msg.stream_id)
            if runner is not None:
                runner.announce(msg.published)
            return
        if isinstance(msg, m.WantSpace):
            self.wants[msg.stream_id] = msg.seq
            self._answer_want(msg.stream_id)
        elif isinstance(msg, m.OpenStream):
            self._open(msg)
        elif isinstance(msg, m.CloseStream):
            self.closing[msg.stream_id] = msg
            runner = self.streams.get(msg.stream_id)
            if runner is not None:
                runner.announce(msg.published)

    def _open(self, msg: m.OpenStream) -> None:
        sid = msg.spec.stream_id
        try:
            runner = StreamRunner(msg.spec, msg.ring, msg.resume)
        except Exception as exc:
            self.send(m.StreamOpened(sid, error=remote_error(exc)))
            return
        self.streams[sid] = runner
        self.send(m.StreamOpened(sid, resumed_from=runner.resumed_from))

    def _answer_want(self, sid: int) -> None:
        seq = self.wants.get(sid)
        runner = self.streams.get(sid)
        if seq is None:
            return
        if (
            runner is None
            or runner.failed
            or runner.report is not None
            or (seq - runner.ring.read_cursor < runner.ring.n_slots)
        ):
            del self.wants[sid]
            self.send(m.Space(sid))

    def _work(self) -> None:
        for sid, runner in list(self.streams.items()):
            if runner.pending():
                try:
                    runner.step()
                except Exception as exc:
                    runner.fail(exc)
                    assert runner.error is not None
                    self.send(m.StreamFailed(sid, runner.error))
                if not runner.pending():
                    runner.idle()
            self._answer_want(sid)
        for sid in [s for s in self.closing if self._close_ready(s)]:
            close = self.closing.pop(sid)
            closing = self.streams.pop(sid, None)
            if closing is None:  # never opened here (a resume that failed)
                continue
            report = closing.close(close.reason, close.extra_metadata)
            self.send(m.StreamClosed(sid, report))
            closing.release()

    def _close_ready(self, sid: int) -> bool:
        runner = self.streams.get(sid)
        close = self.closing[sid]
        return runner is None or runner.failed or runner.next >= close.published

    def _close_all(self, reason: str) -> None:
        for sid, runner in list(self.streams.items()):
            with suppress(Exception):
                self.send(m.StreamClosed(sid, runner.close(reason)))
                runner.release()
        self.streams.clear()

    def _orphaned(self) -> None:
        """The user's process died: write what the rings hold, then finalise.

        The producer is gone, so each ring's write cursor is final; those
        frames reached us and are written. The report notes the cause, since
        no parent is left to write it.
        """
        for runner in self.streams.values():
            runner.announced = None  # the producer is gone: its stores are seen
            while runner.pending():
                try:
                    runner.step()
                except Exception as exc:
                    runner.fail(exc)
            report = runner.close("acquisition process exited")
            with suppress(Exception):
                atomic_write(
                    report_path(runner.spec.path),
                    msgspec.json.format(
                        msgspec.json.encode(
                            {
                                "path": runner.spec.path,
                                "finish_reason": "acquisition process exited",
                                "worker": report,
                            }
                        )
                    ),
                )
        self.streams.clear()


def worker_main(inbound: Any, outbound: Any) -> None:
    """Entry point of a spawned writer process."""
    # Ctrl-C goes to the whole process group; the parent decides how to stop.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    Worker(inbound, outbound).run()
