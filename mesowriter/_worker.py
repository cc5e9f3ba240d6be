"""The writer worker process: drains rings into sinks, commits, journals.

::

    user's process (acquisition)               writer worker (spawned)
    ----------------------------               -----------------------
    Stream.write(frame, meta)
      copy pixels -> ring slot  ===shm===>     StreamRunner.pump()
      meta JSON   -> ring meta  ===shm===>       sink.submit(batch)  several
      write_cursor += 1                            writes in flight (threads)
      Doorbell ----------------pipe------->      sink.collect(): writes that
        (only to a sleeping worker, once           returned: freed_cursor += n
         a wake-up's worth waits to be             (slot free), then a commit
         written; a worker with streams            (sync, link, header block)
         also wakes itself)                        on the committer thread
                                                 its journal lines written;
                                                 their sync on the journal's
                                                 thread (_journal_sync), then
                                                 read_cursor += n (metadata)
      (full ring) WantSpace ---pipe------->      ... Space once a slot is free
      CloseStream(+ producer figures) ---->      drain, finalise, sidecar,
                                                 report, journal removed
      Monitor thread <---------pipe--------      StreamOpened/Failed/Closed
      Monitor thread <-- process sentinel --     (worker death)

Durable order per commit: pixels and IFDs synced, then links, header block
and description (the sink), then the journal lines and their sync (on a
thread of its own, so the main thread goes on submitting writes), then the
ring's read cursor. A slot is freed earlier, once its write returned (a
process that dies no longer matters to those bytes; a power cut takes the
ring too): a replacement adopts the frames between the two cursors. At
close: the file is finalised and that made durable, then the sidecar, then
the report, and only then is the journal removed; a replacement worker that
finds the file finalised reports what is there.

A worker never calls MMCore and never sees a pickled pixel. It exits when
told to, or finishes what the rings hold and exits when its parent dies.
"""

from __future__ import annotations

import datetime as _dt
import os
import signal
import time
from collections.abc import Callable
from contextlib import suppress
from multiprocessing import Pipe, connection, parent_process
from typing import Any

import msgspec

from mesowriter import _messages as m
from mesowriter._errors import remote_error
from mesowriter._faults import Faults
from mesowriter._journal import (
    Journal,
    MemoryJournal,
    iter_records,
    scan,
    write_group_sidecar,
)
from mesowriter._journal_sync import InlineSync, JournalSync
from mesowriter._platform import atomic_write, os_path, unlink
from mesowriter._report import FinishReason, ProducerStats, StreamReport, dropped_from
from mesowriter._ring import STORES_IN_ORDER, FrameRing, RingLayout, SharedBlock
from mesowriter._spec import StreamSpec, journal_path, report_path
from mesowriter.sinks import (
    BatchFailed,
    FrameBatch,
    ResumeState,
    SinkFinalised,
    SlotFrame,
    sink_class,
)
from mesowriter.sinks import (
    preload as preload_sinks,
)

BATCH_BYTES = 64 * 1024 * 1024
# A worker with open streams wakes itself this often to look at the rings, so
# that producers need not wake it for every frame (see Stream.write).
NAP_SECONDS = 0.01
# Frames stopped arriving (none for this long, and for three of the recent
# gaps between frames): what was written is committed now, not at the next
# COMMIT_SECONDS, so the end of a burst, or of a run before its close, is
# durable and its slots free sooner. A steady camera never looks idle.
IDLE_SECONDS = NAP_SECONDS
IDLE_GAPS = 3
ORPHANED = "orphaned writer"  # a report's written_by when the parent died


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat()


class StreamRunner:
    """One stream inside a worker: ring -> sink -> journal -> read cursor."""

    def __init__(
        self,
        spec: StreamSpec,
        layout: RingLayout,
        block: SharedBlock,
        resume: bool,
        wake: Callable[[Any], None],
        reopen: bool = False,
    ) -> None:
        if reopen:
            spec = _spec_for_reopen(spec)
        self.spec = spec
        self.faults = Faults.parse(spec.fault, resumed=resume or reopen)
        self.sink = sink_class(spec.kind)(spec)
        self.sink.on_io(wake)
        self.error: m.RemoteError | None = None
        self.secondary_errors: list[str] = []
        self.notes: list[str] = list(spec.notes)
        self.report: StreamReport | None = None
        self.final_frames: int | None = None  # already finalised on resume
        self.write_seconds = 0.0
        self.ring = FrameRing.attach(layout, block)
        self.journal: Journal | MemoryJournal | None = None
        self.resumed_from = 0
        try:
            if not self.sink.keeps_files:
                self.sink.open(None)
                self.journal = MemoryJournal()
            elif resume:
                self._resume()
            else:
                self._open_new()
                self.faults.after_open()
        except BaseException:
            self.ring.close()
            raise
        if self.faults.powercut is not None and self.journal is not None:
            from mesowriter._faults import PowerCutJournal

            self.journal = PowerCutJournal(self.journal)  # type: ignore[assignment]
        # `appended`: frames the sink committed whose journal lines are
        # written; `committed`: those lines are durable too (= read cursor).
        self.committed = self.appended = self.ring.read_cursor
        self._unsynced: list[int] = []  # file positions, appended .. committed
        journal = self.journal
        self._journal_sync: JournalSync = (
            JournalSync(
                self.faults.journal_sync(lambda: journal.sync()), wake, self.committed
            )
            if journal is not None and self.sink.keeps_files
            else InlineSync(lambda: None, wake, self.committed)
        )
        # Frames up to freed_cursor are in the file already (adopted on a
        # resume): the slots may hold later frames, so they are never read.
        self.next = max(self.committed, self.ring.freed_cursor)
        # Batches and commits sized to the ring: several batches in flight
        # and a commit due well before the ring fills, whatever its size.
        data = self.ring.n_slots * self.ring.stride
        self.batch_bytes = max(1, min(BATCH_BYTES, data // (spec.write_depth + 2)))
        self.sink.commit_bytes = max(1, min(self.sink.commit_bytes, data // 4))
        # Where stores may be seen out of order, only frames a pipe message
        # announced are safe to read; on x86-64 the write cursor says it all.
        self.announced: int | None = None if STORES_IN_ORDER else self.next
        # After a failed write its frames are tried again one at a time.
        self.by_frame_until = 0
        # Batches of at least ring.wake_frames, unless the frames waited a
        # nap or `flush` (closing, orphaned): see _ring.WAKE_BYTES.
        self.flush = False
        self._waiting_since: float | None = None
        self._seen = self.next  # the write cursor last seen, and when it moved
        self._last_arrival = time.monotonic()
        self._frame_gap = 0.0  # seconds between frames, smoothed

    def _open_new(self) -> None:
        """Create file and journal; on failure leave no half-made file that
        this call created, and no open descriptor."""
        existed = os.path.exists(self.spec.path)
        opened = False
        try:
            self.sink.open(None)
            opened = True
            self.journal = Journal.create(self.spec)
            self._unsettled = True
        except BaseException:
            with suppress(Exception):
                self.sink.abort()
            if opened and not existed:
                with suppress(OSError):
                    os.unlink(self.spec.path)
            raise

    def settle(self) -> None:
        """Make the file and then its journal durable, names included (a
        durable journal always has its file): before the first frame is
        written, after the open was answered."""
        if self._unsettled:
            self._unsettled = False
            assert self.journal is not None
            self.sink.settle()
            self.journal.settle()

    _unsettled = False

    def _resume(self) -> None:
        """Take over a stream whose worker died: never truncate, never
        rewrite what is committed; a finalised file is only reported."""
        ring = self.ring
        committed = ring.read_cursor
        jpath = journal_path(self.spec.path)
        positions: list[int] = []
        if os.path.exists(jpath):
            _, records, _ = scan(jpath)
            positions = [k for _, k, _ in records[:committed]]
        written = ring.positions(committed, max(committed, ring.freed_cursor))
        try:
            self.sink.open(ResumeState(committed, positions, written))
        except SinkFinalised as done:
            with suppress(Exception):
                self.sink.abort()  # its lock and threads: nothing to write
            self.final_frames = done.frames
            self.notes.append(f"a replacement worker found the file {done}")
            return
        if os.path.exists(jpath):
            self.journal = Journal.reopen(jpath, keep=committed)
        elif committed == 0:
            self.journal = Journal.create(self.spec)
        else:
            raise RuntimeError(
                f"{jpath} is gone while {committed} frames are committed; the file "
                f"keeps them: `mesowriter recover {self.spec.path}`"
            )
        self.resumed_from = committed
        if written:
            self.notes.append(
                f"a replacement worker adopted {len(written)} frames the first "
                "had written and not committed"
            )
        # The first worker may have died before its settle: this one makes
        # file, journal and names durable before its first commit.
        self._unsettled = True

    @property
    def failed(self) -> bool:
        return self.error is not None

    @property
    def done(self) -> bool:
        return self.failed or self.report is not None or self.final_frames is not None

    def published(self) -> int:
        """Frames the producer has published that this worker may read."""
        cursor = self.ring.write_cursor
        return cursor if self.announced is None else min(cursor, self.announced)

    def announce(self, published: int) -> None:
        if self.announced is not None:
            self.announced = max(self.announced, published)

    # -- the work ---------------------------------------------------------------------
    def pump(self) -> bool:
        """Submit what is published, harvest what finished; True if progress."""
        if self.done:
            return False
        t0 = time.perf_counter()
        try:
            progress = self._apply_synced()
            progress = self._submit() | self._collect() | progress
            self._free_written()
        finally:
            self.write_seconds += time.perf_counter() - t0
        return progress

    def _free_written(self) -> None:
        """Free the slots of frames whose writes returned, their file
        positions first (what a replacement adopts), no further past the
        last commit than the ring keeps metadata (it stays until
        journalled; see _ring)."""
        written = self._unsynced + self.sink.written_uncommitted()
        ring, committed = self.ring, self.committed
        stop = committed + min(len(written), ring.layout.early_free)
        freed = ring.freed_cursor
        if stop > freed:
            ring.set_positions(freed, written[freed - committed : stop - committed])
            ring.freed_cursor = stop
            self.faults.after_free(committed, stop)

    def _submit(self) -> bool:
        ring, sink = self.ring, self.sink
        stop = self.published()
        progress = False
        while (count := self._next_count(stop)) > 0:
            first = self.next
            single = first < self.by_frame_until
            try:
                self.faults.before_write(first, count)
            except OSError:
                if single or not sink.retry_by_frame:
                    raise
                # Nothing of this batch was submitted: try it frame by frame.
                self.by_frame_until = max(self.by_frame_until, first + count)
                continue
            frames = []
            for seq in range(first, first + count):
                index, meta = ring.get_metadata(seq)
                frames.append(SlotFrame(index, ring.pixels(seq), meta))
            span = None if ring.wraps(first, count) else ring.span(first, count)
            batch = FrameBatch(frames, span, ring.stride)
            self.next = first + count
            self._waiting_since = None  # what is left waits anew
            try:
                committed = sink.submit(batch)
            except BatchFailed as failed:
                # `discarded`: every write in flight went too; else only this
                # batch was undone and the ones before it are still in flight.
                self._after_failure(
                    failed, self.appended if failed.discarded else first
                )
                return True
            self._commit(committed)
            progress = True
        return progress

    def _collect(self) -> bool:
        try:
            positions = self.sink.collect(idle=self._idle())
        except BatchFailed as failed:
            self._after_failure(failed, self.appended)
            return True
        self._commit(positions)
        return bool(positions)

    def _idle(self) -> bool:
        """Frames stopped arriving (see IDLE_SECONDS) and all were submitted."""
        published, now = self.published(), time.monotonic()
        if published != self._seen:
            gap = (now - self._last_arrival) / (published - self._seen)
            self._frame_gap = (self._frame_gap + gap) / 2
            self._seen, self._last_arrival = published, now
            return False
        return published == self.next and now >= self._idle_from()

    def _idle_from(self) -> float:
        """When the stream counts as idle if no frame arrives before."""
        return self._last_arrival + max(IDLE_SECONDS, IDLE_GAPS * self._frame_gap)

    def _after_failure(self, failed: BatchFailed, resume_at: int) -> None:
        """Journal what the sink committed before the failure; then either
        give up (a lone frame failed, or the sink cannot retry) or retry the
        frames from `resume_at` one at a time (a full disk keeps every frame
        that still fits)."""
        self._commit(failed.committed)
        if failed.failed <= 1 or not self.sink.retry_by_frame:
            raise failed.cause from None
        until = self.next
        self.next = max(resume_at, self.appended)
        self.by_frame_until = max(self.by_frame_until, until)

    def _drain(self) -> None:
        """Wait for every write and journal it; the frames committed before
        a failure are journalled too."""
        try:
            positions = self.sink.drain()
        except BatchFailed as failed:
            self._commit(failed.committed)
            self.wait_journal()
            raise failed.cause from None
        self._commit(positions)
        self.wait_journal()

    def _commit(self, positions: list[int]) -> None:
        """Journal frames the sink committed (durable): their lines are
        written now and synced on the journal's thread (`_apply_synced`)."""
        if not positions:
            return
        ring = self.ring
        first, n = self.appended, len(positions)
        self.faults.after_write(first, first + n)
        entries = []
        for j, pos in enumerate(positions):
            index, meta = ring.get_metadata(first + j)
            entries.append((index, pos, meta))
        assert self.journal is not None
        self.journal.append(entries)
        self.appended = first + n
        self._unsynced.extend(positions)
        self._journal_sync.request(self.appended)
        self._apply_synced()

    def _apply_synced(self) -> bool:
        """Move the read cursor past the frames whose lines are durable;
        True if it moved. A failed sync raises here, on the main thread."""
        synced = self._journal_sync.synced()
        first = self.committed
        if synced > first:
            ring, n = self.ring, synced - first
            del self._unsynced[:n]
            self.committed = synced
            ring.bytes_written = ring.bytes_written + n * ring.layout.frame_nbytes
            # The read cursor first: frames below the freed cursor and past
            # the read cursor must have their positions in the table (a
            # replacement adopts them), and these may not (a sink that frees
            # at commit).
            ring.read_cursor = synced
            if ring.freed_cursor < synced:
                ring.freed_cursor = synced
            self.faults.after_commit(first, synced)
        self._journal_sync.raise_failure()  # after what it made durable
        return synced > first

    def wait_journal(self) -> None:
        """Block until every journal line written is durable, and move the
        read cursor past them (draining; tests)."""
        with suppress(Exception):  # raised below, once the cursor moved
            self._journal_sync.wait()
        self._apply_synced()

    def due(self, published: int) -> bool:
        """Whether the frames waiting up to `published` make a batch now: a
        wake-up's worth, or `urgent`."""
        waiting = published - self.next
        if waiting <= 0:
            self._waiting_since = None
            return False
        return waiting >= self.ring.wake_frames or self._urgent(published)

    def _urgent(self, published: int) -> bool:
        """Frames must go now, however few: the stream is closing, half the
        ring waits, or they have waited a nap."""
        if self.flush or 2 * (published - self.next) >= self.ring.n_slots:
            return True
        now = time.monotonic()
        if self._waiting_since is None:
            self._waiting_since = now
        return now - self._waiting_since >= NAP_SECONDS

    def _next_count(self, published: int) -> int:
        """Frames of the batch to submit now; 0: none yet.

        A sink may want batches that end on a multiple of its `batch_unit`
        (staged frames: then batches share no page and several can be in
        flight); until the frames that complete one have arrived, nothing
        goes, unless `urgent`.
        """
        if not self.sink.ready() or not self.due(published):
            return 0
        first = self.next
        if first < self.by_frame_until:
            return 1
        ring = self.ring
        max_bytes = self.batch_bytes
        unit = self.sink.batch_unit()
        # Waiting for a unit pays only if a batch (up to 4x its size, half
        # the ring) can hold one; a sink with a unit copies, so may wrap.
        reachable = 2 * unit <= ring.n_slots and unit * ring.stride <= 4 * max_bytes
        if reachable:
            max_bytes = max(max_bytes, unit * ring.stride)
        count = ring.run_length(first, published, max_bytes, wrap=unit > 1)
        if unit == 1 or not reachable:
            return count
        to_end = ring.n_slots - first % ring.n_slots
        if count > to_end and to_end % unit == 0:
            count = to_end  # whole units that do not wrap go without a copy
        trimmed = count - (first + count) % unit
        if trimmed > 0:
            return trimmed
        full = count >= max(1, max_bytes // ring.stride)
        return count if full or self._urgent(published) else 0

    def batch_due(self) -> bool:
        """A batch should be submitted now (see `_next_count`)."""
        return self._next_count(self.published()) > 0

    def doorbell_at(self) -> int:
        """The write cursor at which the producer should wake this worker
        from its sleep: once a wake-up's worth waits to be submitted. 0 (no
        doorbell) while that many already wait and the worker holds them
        back for a page boundary: the nap or a finished write wakes it then."""
        if self.published() - self.next >= self.ring.wake_frames:
            return 0
        return self.next + self.ring.wake_frames

    def wait_hint(self) -> float | None:
        """Seconds until this stream needs the worker again: a commit due
        (by the sink's pace, or frames stopped arriving), or frames that
        will have waited a nap."""
        commit = self.sink.next_commit_in()
        if commit is not None and self.published() == self.next:
            # or sooner, once frames stop arriving (see `_idle`)
            commit = min(commit, max(0.0, self._idle_from() - time.monotonic()))
        if self._waiting_since is None:
            return commit
        nap = max(0.0, self._waiting_since + NAP_SECONDS - time.monotonic())
        return nap if commit is None else min(commit, nap)

    def fail(self, exc: BaseException) -> None:
        """Stop writing; what was committed stays (finalised at close)."""
        self.error = remote_error(exc)
        with suppress(Exception):
            self._drain()

    # -- the end -----------------------------------------------------------------------
    def close(
        self,
        reason: str,
        producer: ProducerStats | None,
        extra: dict[str, Any] | None = None,
        written_by: str = "writer",
    ) -> StreamReport:
        """Drain, finalise, sidecar, report, then remove the journal.

        Each step is guarded: a failure becomes the stream's error (or a
        secondary one) and the journal is kept for `mesowriter recover`.
        """
        if self.report is not None:
            return self.report
        orphaned = written_by == ORPHANED
        writes_sidecar = self.spec.writes_sidecar(orphaned=orphaned)
        # A caller that joins the sidecar itself may have added files to the
        # run after this one opened: an orphan's sidecar may lack them, so
        # its journal stays for `recover` to join them all.
        removes_journal = writes_sidecar and not self.spec.sidecar_spec.by_caller
        if self.final_frames is None:
            self._finalise(reason, extra, writes_sidecar)
        elif writes_sidecar:
            self._sidecar_of_final_file(extra)
        report = self._report(reason, producer, written_by)
        if self.sink.keeps_files:
            try:
                atomic_write(report_path(self.spec.path), report.to_json())
            except Exception as exc:
                report.secondary_errors.append(f"writing the report: {exc!r}")
        self._journal_sync.stop()  # before the journal's descriptor closes
        if self._sidecar_done and self.journal is not None and removes_journal:
            with suppress(OSError):
                self.journal.remove()
        elif self.journal is not None:
            self.journal.close()
        elif self._sidecar_done and removes_journal:
            with suppress(OSError):  # a leftover journal: recover removes it
                unlink(journal_path(self.spec.path))
        self.report = report
        return report

    def _sidecar_of_final_file(self, extra: dict[str, Any] | None) -> None:
        """A replacement found the file final: its worker died before the
        sidecar, or between the sidecar and removing the journal. The journal
        still holds every frame's metadata: write the sidecar from it."""
        if not os.path.exists(journal_path(self.spec.path)):
            return  # sidecar written and journal removed before the death
        self._sidecar_done = self._write_sidecar(extra)

    def _write_sidecar(self, extra: dict[str, Any] | None) -> bool:
        """The stream's own sidecar, from its journal; False if that failed."""
        try:
            write_group_sidecar(
                self.spec.sidecar_spec,
                extra={**(self.spec.extra_metadata or {}), **(extra or {})},
            )
        except Exception as exc:
            self._step_failed("writing the sidecar", exc)
            return False
        return True

    _sidecar_done = False
    _sink_summary: dict[str, Any] | None = None

    def _finalise(
        self, reason: str, extra: dict[str, Any] | None, writes_sidecar: bool
    ) -> None:
        if not self.failed:
            try:
                self._drain()
            except Exception as exc:
                self._step_failed("writing the last frames", exc)
        if not self.sink.keeps_files:
            self._sink_summary = self.sink.close(reason, iter(()))
            return
        jpath = journal_path(self.spec.path)
        finalised = False
        try:
            # Every line written, synced or not: after a failed journal
            # sync those frames are still in the file (the sink committed
            # them) and their lines readable; finalising makes both durable.
            records = iter_records(jpath, self.appended)
            self._sink_summary = self.sink.close(reason, records)
            finalised = True
            self.faults.after_finalise()
        except Exception as exc:
            self._step_failed("finalising the file", exc)
            with suppress(Exception):
                self.sink.abort()
        if writes_sidecar:
            self._sidecar_done = self._write_sidecar(extra) and finalised

    def _report(
        self, reason: str, producer: ProducerStats | None, written_by: str
    ) -> StreamReport:
        spec = self.spec
        written = self._written_indices()
        stats = producer or ProducerStats(received=self.ring.received)
        received = max(stats.received, max(written, default=-1) + 1)
        drops = {k: list(v) for k, v in stats.drops.items() if v}
        known = {i for v in drops.values() for i in v}
        written_set = set(written)
        lost = [i for i in range(received) if i not in written_set and i not in known]
        if lost:
            drops["not_written"] = lost
        for v in drops.values():
            v[:] = [i for i in v if i not in written_set]
        dropped = dropped_from(drops)
        err = self.error
        finish = _finish_reason(reason, err, dropped, spec.frames, len(written))
        if producer is None and finish not in (FinishReason.ERROR,):
            finish = FinishReason.ACQUISITION_EXITED
        # The frames in the file, not the ring's count of journalled ones:
        # after a failed journal sync the file also holds those whose lines
        # were written (see _finalise).
        nbytes = len(written) * self.ring.layout.frame_nbytes
        seconds = stats.seconds
        return StreamReport(
            path=spec.path,
            kind=spec.kind,
            position_key=spec.position_key,
            shape=list(spec.shape),
            dtype=spec.dtype,
            finish_reason=finish,
            frames_expected=spec.frames,
            frames_received=received,
            frames_written=len(written),
            frames_dropped=len(dropped),
            dropped_indices=dropped,
            drops=drops,
            rejected=stats.rejected,
            ring_slots=self.ring.n_slots,
            ring_bytes=self.ring.layout.region_bytes,
            ring_high_water=stats.ring_high_water,
            blocked_seconds=stats.blocked_seconds,
            blocked_events=stats.blocked_events,
            bytes_written=nbytes,
            seconds=seconds,
            throughput_gbps=nbytes / seconds / 1e9 if seconds > 0 else 0.0,
            write_seconds=self.write_seconds,
            worker_restarts=stats.worker_restarts,
            metadata_fallbacks=stats.metadata_fallbacks,
            metadata_frames_replaced=stats.metadata_frames_replaced,
            metadata_nonfinite=stats.metadata_nonfinite,
            metadata_truncated=stats.metadata_truncated,
            sidecar=spec.sidecar_spec.path if self.sink.keeps_files else None,
            sink=self._sink_summary or {},
            written_by=written_by,
            error=f"{err.type}: {err.message}" if err else None,
            error_traceback=err.traceback if err else None,
            secondary_errors=self.secondary_errors,
            notes=self.notes,
            started_at=stats.started_at,
            finished_at=_now(),
        )

    def _written_indices(self) -> list[int]:
        """Stream indices of the frames in the file, from the journal."""
        if isinstance(self.journal, MemoryJournal):
            return list(self.journal.indices)
        jpath = journal_path(self.spec.path)
        if os.path.exists(jpath):
            # A file finalised by a dead worker holds every line it wrote.
            limit = self.appended if self.final_frames is None else self.final_frames
            return [i for i, _ in iter_records(jpath, limit)]
        if self.final_frames is not None:  # finalised before: read its report
            try:
                with open(os_path(report_path(self.spec.path)), "rb") as fh:
                    old = StreamReport.from_json(fh.read())
                dropped = set(old.dropped_indices)
                return [i for i in range(old.frames_received) if i not in dropped]
            except (OSError, ValueError):
                return list(range(self.final_frames))
        return []

    def _step_failed(self, step: str, exc: BaseException) -> None:
        """A finalisation step failed: the stream's error unless it has one."""
        if self.error is None:
            self.error = msgspec.structs.replace(
                remote_error(exc), message=f"{step}: {exc}"
            )
        else:
            self.secondary_errors.append(f"{step}: {exc!r}")

    def release(self) -> None:
        """Drop the ring's views (the block stays mapped for the next stream)."""
        self._journal_sync.stop()
        self.ring.close()


def _spec_for_reopen(spec: StreamSpec) -> StreamSpec:
    """The spec a replacement opens with when the first worker died inside
    the open: the file it may have begun is started over, never a file that
    holds anything else (the parent checked the path was free before)."""
    if spec.overwrite or not os.path.lexists(spec.path):
        return spec
    if not sink_class(spec.kind).never_started(spec.path):
        raise FileExistsError(
            f"{spec.path} appeared while its writer was starting, and holds data: "
            "it is left as it is"
        )
    return msgspec.structs.replace(spec, overwrite=True)


def _finish_reason(
    reason: str,
    err: m.RemoteError | None,
    dropped: list[int],
    expected: int | None,
    written: int,
) -> FinishReason:
    if err is not None:
        return FinishReason.ERROR
    try:
        given = FinishReason(reason)
    except ValueError:
        given = FinishReason.COMPLETED
    if given is not FinishReason.COMPLETED:
        return given
    if dropped or (expected is not None and written != expected):
        return FinishReason.INCOMPLETE
    return FinishReason.COMPLETED


class Worker:
    """The message loop of one writer process."""

    def __init__(self, inbound: Any, outbound: Any) -> None:
        self.inbound = inbound
        self.outbound = outbound
        self.blocks: dict[str, SharedBlock] = {}
        self.streams: dict[int, StreamRunner] = {}
        self.wants: dict[int, int] = {}
        self.closing: dict[int, m.CloseStream] = {}
        parent = parent_process()
        self.parent_sentinel = parent.sentinel if parent is not None else None
        # Finished writes (I/O threads) wake the loop through this pipe.
        self._io_r, self._io_w = Pipe(duplex=False)

    def _io_done(self, _future: Any) -> None:
        with suppress(OSError):
            self._io_w.send_bytes(b"")

    def send(self, msg: m.ToParent) -> None:
        with suppress(OSError):  # the parent is gone: nobody to tell
            self.outbound.send_bytes(m.encoder.encode(msg))

    def run(self) -> None:
        while True:
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
            if self._work():
                continue
            ready = self._sleep()
            if self.parent_sentinel is not None and self.parent_sentinel in ready:
                self._orphaned()
                return

    def _sleep(self) -> list[Any]:
        """Wait for a message, a finished write, the parent's death or a nap.

        Each ring's `wake_at` word tells its producer when to ring the
        doorbell; the rings are looked at again after setting it, so a frame
        published meanwhile is not left waiting for the nap to end.
        """
        waitables: list[Any] = [self.inbound, self._io_r]
        if self.parent_sentinel is not None:
            waitables.append(self.parent_sentinel)
        live = [r for r in self.streams.values() if not r.done]
        for r in live:
            r.ring.wake_at = r.doorbell_at()
        try:
            # Work to do only where frames wait AND the sink takes a batch:
            # with every write in flight, wait for one to finish (the I/O
            # pipe wakes us) instead of spinning.
            if any(r.batch_due() for r in live):
                return []
            timeout: float | None = NAP_SECONDS if live and STORES_IN_ORDER else None
            hints = [h for r in live if (h := r.wait_hint()) is not None]
            if hints:
                timeout = min(hints + ([timeout] if timeout is not None else []))
            ready = list(connection.wait(waitables, timeout=timeout))
        finally:
            for r in live:
                r.ring.wake_at = 0
        with suppress(OSError, EOFError):
            while self._io_r.poll():
                self._io_r.recv_bytes()
        return ready

    def _handle(self, msg: m.ToWorker) -> None:
        if isinstance(msg, m.Doorbell):
            runner = self.streams.get(msg.stream_id)
            if runner is not None:
                runner.announce(msg.published)
        elif isinstance(msg, m.WantSpace):
            self.wants[msg.stream_id] = msg.seq
            self._answer_want(msg.stream_id)
        elif isinstance(msg, m.OpenStream):
            self._open(msg)
        elif isinstance(msg, m.CloseStream):
            self.closing[msg.stream_id] = msg
            runner = self.streams.get(msg.stream_id)
            if runner is not None:
                runner.announce(msg.published)
                runner.flush = True
        elif isinstance(msg, m.MapBlock):
            try:
                self._block(msg.name)
                self.send(m.BlockMapped(msg.name))
            except Exception as exc:
                self.send(m.BlockMapped(msg.name, error=repr(exc)))
        elif isinstance(msg, m.UnmapBlock):
            block = self.blocks.pop(msg.name, None)
            if block is not None:
                block.close()

    def _block(self, name: str) -> SharedBlock:
        block = self.blocks.get(name)
        if block is None:
            block = self.blocks[name] = SharedBlock.attach(name)
        return block

    def _open(self, msg: m.OpenStream) -> None:
        sid = msg.spec.stream_id
        try:
            block = self._block(msg.ring.block)
            runner = StreamRunner(
                msg.spec, msg.ring, block, msg.resume, self._io_done, msg.reopen
            )
        except Exception as exc:
            self.send(m.StreamOpened(sid, error=remote_error(exc)))
            return
        runner.flush = sid in self.closing
        self.streams[sid] = runner
        self.send(m.StreamOpened(sid, resumed_from=runner.resumed_from))
        try:  # the syncs of a new file, once the user's open has its answer
            runner.settle()
        except Exception as exc:
            self._failed(sid, runner, exc)

    def _failed(self, sid: int, runner: StreamRunner, exc: BaseException) -> None:
        """Stop a stream's writing and tell its producer, with the traceback."""
        runner.fail(exc)
        assert runner.error is not None
        self.send(m.StreamFailed(sid, runner.error))

    def _answer_want(self, sid: int) -> None:
        seq = self.wants.get(sid)
        runner = self.streams.get(sid)
        if seq is None:
            return
        if (
            runner is None
            or runner.done
            or (seq - runner.ring.freed_cursor < runner.ring.n_slots)
        ):
            del self.wants[sid]
            self.send(m.Space(sid))

    def _work(self) -> bool:
        progress = False
        for sid, runner in list(self.streams.items()):
            try:
                progress |= runner.pump()
            except Exception as exc:
                self._failed(sid, runner, exc)
                progress = True
            self._answer_want(sid)
        for sid in [s for s in self.closing if self._close_ready(s)]:
            close = self.closing.pop(sid)
            if sid not in self.streams:  # never opened here: say so, no report
                self.send(m.StreamClosed(sid, b""))
                continue
            runner = self.streams.pop(sid)
            report = runner.close(close.reason, close.producer, close.extra_metadata)
            runner.faults.after_close()
            self.send(m.StreamClosed(sid, report.to_json()))
            runner.release()
            progress = True
        return progress

    def _close_ready(self, sid: int) -> bool:
        runner = self.streams.get(sid)
        close = self.closing[sid]
        return runner is None or runner.done or runner.next >= close.published

    def _close_all(self, reason: str) -> None:
        for sid, runner in list(self.streams.items()):
            with suppress(Exception):
                report = runner.close(reason, None, written_by="writer (shutdown)")
                self.send(m.StreamClosed(sid, report.to_json()))
                runner.release()
        self.streams.clear()
        self._unmap_all()

    def _unmap_all(self) -> None:
        for block in self.blocks.values():
            block.close()
        self.blocks.clear()

    def _orphaned(self) -> None:
        """The user's process died: write what the rings hold, then finalise.

        The producer is gone, so each ring's write cursor is final; those
        frames reached us and are written. A stream the producer had asked
        to close gets its figures; the others are accounted from the ring.
        """
        for sid, runner in self.streams.items():
            runner.announced = None  # the producer is gone: its stores are seen
            runner.flush = True
            while not runner.done and runner.published() > runner.next:
                try:
                    if not runner.pump():
                        runner.sink.wait_for_writes(NAP_SECONDS)
                except Exception as exc:
                    runner.fail(exc)
            close = self.closing.get(sid)
            with suppress(Exception):
                if close is not None:
                    runner.close(
                        close.reason,
                        close.producer,
                        close.extra_metadata,
                        written_by=ORPHANED,
                    )
                else:
                    runner.close(
                        FinishReason.ACQUISITION_EXITED.value,
                        None,
                        written_by=ORPHANED,
                    )
            runner.release()
        self.streams.clear()
        self._unmap_all()


def worker_main(inbound: Any, outbound: Any) -> None:
    """Entry point of a spawned writer process."""
    # Ctrl-C and a closed terminal reach the whole process group; the parent
    # decides how to stop, and a worker whose parent died finishes alone.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if hasattr(signal, "SIGHUP"):
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
    # The sinks now, while the worker waits for its first stream, not inside
    # the user's first open (about 50 ms here; OpenCV only comes with video).
    preload_sinks()
    Worker(inbound, outbound).run()
