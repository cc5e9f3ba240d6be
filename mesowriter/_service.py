"""WriterService: streams, the warm ring pool and the writer processes, one owner.

::

    user's process                                         writer processes
    ┌──────────────────────────────────────────┐
    │ Stream.write ──copy──► ring (pool block) ┼──shm──► worker 0: sinks ─► files
    │        └─ Doorbell/WantSpace ──pipe──────┼───────►
    │ monitor thread ◄── StreamOpened/Space/ ──┼─pipe─── worker 1: ...
    │   (wait_any)      Failed/Closed          │
    │                  ◄── process sentinels ──┼──────── (death noticed at once)
    │ pool: warm blocks, carved into rings ────┼─MapBlock─► each worker maps a
    └──────────────────────────────────────────┘           block once, keeps it

This is the one picture of the processes; the other modules' diagrams zoom
into their part of it. The service owns the stream registry and the ring
pool; `Stream` objects know only their ring, their worker and a callback.
Opening a stream takes a warm region of the pool (microseconds) and a file
open in the worker (milliseconds): nothing heavy runs on the caller's
thread unless the pool cannot hold the ring.

A service may reap itself when idle (`idle_timeout`): its workers stop and
its pool is released, and the next `open_stream` starts them again. The
handlers share one such service per process (`shared_service()`), so a GUI
session that runs acquisitions all day holds at most one idle writer
process and one warm pool, and nothing once the rig has been idle a while.
"""

from __future__ import annotations

import atexit
import itertools
import os
import threading
import time
import weakref
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from typing import Any

import msgspec
import numpy as np
import psutil

from mesowriter import _messages as m
from mesowriter._errors import WriterError
from mesowriter._paths import normalised_path, prepare_output_path
from mesowriter._platform import install_shutdown_handler, shm_available_bytes
from mesowriter._pool import Region, RingPool
from mesowriter._ring import (
    DEFAULT_METADATA_BYTES,
    FrameRing,
    RingLayout,
    SharedBlock,
    remove_stale_rings,
)
from mesowriter._spec import DEFAULT_WRITE_DEPTH, SidecarSpec, StreamSpec, VideoOptions
from mesowriter._stream import Stream, check_policy
from mesowriter._workers import WorkerHandle, Workers
from mesowriter.sinks import preload as preload_sinks
from mesowriter.sinks import sink_class, sink_for_path

DEFAULT_RING_BYTES = 1 << 30
DEFAULT_IDLE_TIMEOUT = 20.0  # seconds; the shared service's
MAX_RESTARTS = 3

_live: weakref.WeakSet[WriterService] = weakref.WeakSet()
_process_setup = threading.Lock()
_process_ready = False


class WriterService:
    """Writer processes fed by shared-memory rings from a warm pool.

    Parameters
    ----------
    ring_bytes
        Shared memory for each stream's ring unless `open_stream` says
        otherwise. The ring absorbs disk stalls: 1 GiB holds about 1.2 s of a
        2048x2048 uint16 camera at 100 fps.
    workers
        Writer processes started up front. Each new stream gets a worker of
        its own while there are idle ones; more are started up to
        `max_workers`, after which streams share the least-loaded worker.
    policy
        What a full ring does: "block" (wait, time recorded) or "drop"
        (never wait, each dropped index recorded).
    restart_workers
        Replace a worker that dies; its streams resume from their rings.
    pool_bytes
        Shared memory kept warm (created and touched once, reused by every
        stream). Default: `ring_bytes`.
    write_depth
        Pixel writes each stream keeps in flight.
    idle_timeout
        Seconds without a stream after which the workers stop and the pool is
        released (None: never); the next `open_stream` starts them again.
    """

    def __init__(
        self,
        ring_bytes: int = DEFAULT_RING_BYTES,
        workers: int = 1,
        *,
        max_workers: int | None = None,
        policy: str = "block",
        restart_workers: bool = True,
        handle_signals: bool = True,
        pool_bytes: int | None = None,
        write_depth: int = DEFAULT_WRITE_DEPTH,
        idle_timeout: float | None = None,
    ) -> None:
        if workers < 1:
            raise ValueError("workers must be at least 1")
        if write_depth < 1:
            raise ValueError("write_depth must be at least 1")
        self.ring_bytes = int(ring_bytes)
        self.policy = check_policy(policy)
        self.restart_workers = restart_workers
        self.write_depth = int(write_depth)
        self.idle_timeout = idle_timeout
        self.open_seconds: list[float] = []  # how long each open_stream took
        self._initial_workers = workers
        self._lock = threading.RLock()
        self._streams: dict[int, Stream] = {}
        self._regions: dict[int, Region] = {}
        self._monitor_failure: str | None = None
        self._ids = itertools.count()
        self._closed = False
        self._running = False
        self._idle_timer: threading.Timer | None = None
        self._opening = 0  # opens under way: no idle reap meanwhile
        self._life = threading.Lock()  # starting and reaping exclude each other
        self.worker_deaths: list[dict[str, Any]] = []
        _setup_process(handle_signals)
        self._pool = RingPool(
            self.ring_bytes if pool_bytes is None else pool_bytes,
            on_block=self._block_created,
        )
        self._workers = Workers(
            max(workers, max_workers or max(workers, os.cpu_count() or 1)),
            on_message=self._dispatch,
            on_exit=self._on_worker_exit,
            on_monitor_failure=self._monitor_failed,
            greeting=lambda: [m.MapBlock(b.name) for b in self._pool.blocks],
        )
        self._start()
        _live.add(self)

    # -- running and reaping -------------------------------------------------------
    def _start(self) -> None:
        """Start the workers and warm the pool in the background."""
        with self._life:
            with self._lock:
                if self._running:
                    return
                self._running = True
                self._pool.reopen()
                for _ in range(self._initial_workers):
                    self._workers.start()
            self._pool.warm_in_background()
            preload_sinks()  # while the workers start, not in the first open

    def prewarm(self) -> None:
        """Make sure workers run and the pool is (being) warmed, without
        waiting: a writer calls this at construction, before the run."""
        if not self._closed:
            self._start()

    def _block_created(self, block: SharedBlock) -> None:
        self._workers.broadcast(m.MapBlock(block.name))

    def _schedule_idle_reap(self) -> None:
        if self.idle_timeout is None or self._closed:
            return
        with self._lock:
            if self._streams:
                return
            if self._idle_timer is not None:
                self._idle_timer.cancel()
            timer = threading.Timer(self.idle_timeout, self._reap_if_idle)
            timer.daemon = True
            self._idle_timer = timer
        timer.start()

    def _reap_if_idle(self) -> None:
        with self._life:
            with self._lock:
                if self._streams or self._opening or not self._running or self._closed:
                    return
                self._running = False
            self._stop_everything()

    def _stop_everything(self) -> None:
        self._workers.stop()
        self._pool.close()

    @property
    def running(self) -> bool:
        """Whether workers and a pool are up (False after an idle reap)."""
        return self._running

    # -- context manager --------------------------------------------------------
    def __enter__(self) -> WriterService:
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        reason = "completed"
        if exc_type is not None:
            reason = (
                "interrupted"
                if issubclass(exc_type, (KeyboardInterrupt, SystemExit))
                else "canceled"
            )
        self.close(reason=reason)

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def broken(self) -> str | None:
        """Why this service can take no stream any more (its monitor thread
        failed, with the traceback), or None."""
        return self._monitor_failure

    @property
    def workers(self) -> list[int]:
        """PIDs of the live writer processes."""
        return [w.process.pid for w in self._workers.handles]

    @property
    def streams(self) -> list[Stream]:
        with self._lock:
            return list(self._streams.values())

    @property
    def pool(self) -> RingPool:
        return self._pool

    # -- streams ----------------------------------------------------------------
    @contextmanager
    def _opening_guard(self) -> Iterator[None]:
        """While an open is under way no idle reap may stop the workers."""
        with self._lock:
            if self._closed:
                raise RuntimeError("this WriterService is closed")
            if self._monitor_failure is not None:  # no answer would ever come
                raise WriterError(self._monitor_failure)
            self._opening += 1
            if self._idle_timer is not None:
                self._idle_timer.cancel()
                self._idle_timer = None
        try:
            yield
        finally:
            with self._lock:
                self._opening -= 1
            self._schedule_idle_reap()

    def open_stream(
        self,
        path: str | os.PathLike[str],
        *,
        shape: tuple[int, ...],
        dtype: Any,
        frames: int | None = None,
        overwrite: bool = False,
        kind: str | None = None,
        position_key: str = "p0",
        position_index: int | None = None,
        ring_bytes: int | None = None,
        policy: str | None = None,
        metadata_bytes: int = DEFAULT_METADATA_BYTES,
        direct_io: bool = True,
        sequence: dict[str, Any] | None = None,
        summary: dict[str, Any] | None = None,
        video: VideoOptions | None = None,
        extra_metadata: dict[str, Any] | None = None,
        sidecar: SidecarSpec | None = None,
        write_depth: int | None = None,
        notes: tuple[str, ...] = (),
        _fault: str | None = None,
    ) -> Stream:
        """Open a file for frames of one shape and dtype; returns its Stream.

        Everything that can be checked is checked here, before any frame:
        the path and every companion name (existing file, folder, length,
        a live owner), the format and codec, the dtype, the disk space the
        first frames need, and whether the ring fits in memory.
        """
        t0 = time.perf_counter()
        with self._opening_guard():
            if frames is not None and frames < 0:
                raise ValueError("frames must be >= 0 or None")
            if policy is not None:
                check_policy(policy)
            raw_path = os.fspath(path)
            if not raw_path.strip():
                raise ValueError("an empty path is not a file name")
            kind = kind or sink_for_path(raw_path).kind
            if video is not None and kind != "video":
                raise ValueError(
                    f"{raw_path!r} is written as {kind}: video options do not apply"
                )
            np_dtype = np.dtype(dtype).newbyteorder("<")
            if np_dtype.itemsize == 1:
                np_dtype = np_dtype.newbyteorder("|")
            depth = self.write_depth if write_depth is None else int(write_depth)
            if depth < 1:
                raise ValueError("write_depth must be at least 1")
            spec = StreamSpec(
                stream_id=next(self._ids),
                path=raw_path,
                kind=kind,
                shape=tuple(int(s) for s in shape),
                dtype=np_dtype.str,
                frames=frames,
                overwrite=overwrite,
                position_key=position_key,
                position_index=position_index,
                direct_io=direct_io,
                sequence=sequence,
                summary=summary,
                video=video,
                extra_metadata=extra_metadata,
                fault=_fault,
                write_depth=depth,
                sidecar=sidecar,
                notes=tuple(notes),
            )
            sink_cls = sink_class(kind)
            sink_cls.check(spec)
            spec = sink_cls.prepare(spec)  # e.g. codec choice, warned about here
            self._check_not_open(normalised_path(raw_path))
            # The ring is planned before the path is prepared: a refusal of
            # either leaves the disk as it was.
            requested = ring_bytes or self.ring_bytes
            if requested > psutil.virtual_memory().total:
                raise MemoryError(
                    f"ring_bytes={requested} asks for a ring larger than this "
                    f"machine's {psutil.virtual_memory().total / 2**30:.1f} GiB "
                    "of memory"
                )
            layout = RingLayout.plan(
                ring_bytes=requested,
                shape=spec.shape,
                dtype=np_dtype,
                metadata_bytes=metadata_bytes,
            )
            if sink_cls.keeps_files:
                path = prepare_output_path(
                    raw_path,
                    overwrite,
                    sidecar=spec.sidecar_spec.path if spec.solo else None,
                    space_needed=sink_cls.space_needed(spec),
                )
            else:  # nothing is written: the path only names the stream
                path = normalised_path(raw_path)
            spec = msgspec.structs.replace(spec, path=path)
            if spec.sidecar is None:
                spec = msgspec.structs.replace(spec, sidecar=spec.sidecar_spec)
            self._start()
            region, block = self._take_region(layout.region_bytes)
            layout = msgspec.structs.replace(
                layout, block=region.block, offset=region.offset
            )
            ring = FrameRing.create(layout, block)
            stream: Stream | None = None
            try:
                with self._lock:
                    self._check_not_open(spec.path)
                    worker = self._workers.pick(own_process=sink_cls.cpu_bound)
                    stream = Stream(
                        spec, ring, worker, policy or self.policy, self._done
                    )
                    worker.streams.add(spec.stream_id)
                    self._streams[spec.stream_id] = stream
                    self._regions[spec.stream_id] = region
                worker.send(m.OpenStream(spec, ring.layout))
                stream.opened.wait()
            except BaseException:
                if stream is not None and self._streams.get(spec.stream_id) is stream:
                    # The worker has (or will have) the stream open on this ring:
                    # tell it to close, and give the region back only once it has.
                    stream.abandon()
                else:
                    self._discard(spec.stream_id, ring, region)
                raise
            if stream.open_error is not None:
                self._discard(spec.stream_id, ring, region)
                raise stream.open_error
            self.open_seconds.append(time.perf_counter() - t0)
            return stream

    def _take_region(self, nbytes: int) -> tuple[Region, SharedBlock]:
        """A warm region; else (slow) a block of its own for this ring."""
        got = self._pool.acquire(nbytes)
        if got is not None:
            return got
        _check_memory(nbytes)
        return self._pool.create(nbytes)

    def _check_not_open(self, path: str) -> None:
        real = os.path.realpath(path)
        with self._lock:
            for s in self._streams.values():
                if os.path.realpath(s.spec.path) == real:
                    raise ValueError(f"{path} is already open in this service")

    def _discard(self, stream_id: int, ring: FrameRing, region: Region) -> None:
        with self._lock:
            self._streams.pop(stream_id, None)
            self._regions.pop(stream_id, None)
            for w in self._workers.handles:
                w.streams.discard(stream_id)
        ring.close()
        self._give_back(region)

    def _give_back(self, region: Region) -> None:
        gone = self._pool.release(region)
        if gone is not None:
            self._workers.broadcast(m.UnmapBlock(gone.name))

    def _done(self, stream: Stream) -> None:
        """A stream closed: its region goes back to the pool, still warm."""
        sid = stream.spec.stream_id
        with self._lock:
            self._streams.pop(sid, None)
            region = self._regions.pop(sid, None)
            stream.worker.streams.discard(sid)
        stream.ring.close()
        # After a monitor failure every stream still open lost its worker,
        # which may yet store into the ring: its region stays out of the pool.
        if region is not None and self._monitor_failure is None:
            self._give_back(region)
        self._trim_idle_workers()
        self._schedule_idle_reap()

    def _trim_idle_workers(self) -> None:
        """Keep at most one idle worker once streams close."""
        idle = [h for h in self._workers.handles if not h.streams]
        for extra in idle[1:]:
            self._workers.forget(extra)
            extra.send(m.Shutdown())

    # -- messages from the monitor thread ---------------------------------------------
    def _dispatch(self, msg: m.ToParent) -> None:
        if isinstance(msg, m.BlockMapped):
            return
        with self._lock:
            stream = self._streams.get(msg.stream_id)
        if stream is None:
            return
        if isinstance(msg, m.Space):
            stream._space.set()
        elif isinstance(msg, m.StreamOpened):
            if msg.error is not None and stream.opened.is_set():
                stream.on_failed(msg.error)  # a replacement could not resume
                stream.on_closed(None)
            else:
                stream.on_opened(msg)
        elif isinstance(msg, m.StreamFailed):
            stream.on_failed(msg.error)
        elif isinstance(msg, m.StreamClosed):
            stream.on_closed(msg.report or None)

    def _monitor_failed(self, cause: str) -> None:
        """Nobody hears the workers any more, but they may still run and
        still store their cursors into the streams' rings: those regions are
        never given back to the pool (a new stream's ring would take them)."""
        with self._lock:
            self._monitor_failure = cause
        for stream in self.streams:
            if not stream._closed.is_set():
                stream.on_worker_lost(cause)

    def _on_worker_exit(self, h: WorkerHandle) -> None:
        with self._lock:
            orphans = [self._streams[s] for s in h.streams if s in self._streams]
            closing = self._closed or not self._running
        if closing and not orphans:
            return
        code = h.process.exitcode
        if orphans:
            self.worker_deaths.append(
                {
                    "pid": h.process.pid,
                    "exitcode": code,
                    "streams": [s.spec.path for s in orphans],
                }
            )
        for stream in orphans:
            if stream._closed.is_set():
                continue
            if not self.restart_workers or stream.restarts >= MAX_RESTARTS:
                stream.on_worker_lost(
                    f"writer process {h.process.pid} died (exit code {code}) "
                    f"after {stream.restarts} restart(s)"
                )
                continue
            with self._lock:
                replacement = self._workers.pick()
                replacement.streams.add(stream.spec.stream_id)
            stream.on_worker_replaced(replacement)

    # -- shutdown -------------------------------------------------------------------
    def close(self, reason: str = "completed") -> None:
        """Finish every open stream, stop the workers, release shared memory."""
        if self._closed:
            return
        errors: list[BaseException] = []
        for stream in self.streams:
            try:
                stream.close(reason)
            except Exception as exc:
                errors.append(exc)
        self._closed = True
        with self._lock:
            if self._idle_timer is not None:
                self._idle_timer.cancel()
            self._running = False
        self._workers.close()
        for stream in self.streams:  # streams whose worker never answered
            stream.abort()
            with suppress(Exception):
                stream.ring.close()
        self._pool.close()
        _live.discard(self)
        if errors:
            raise errors[0]


_shared: WriterService | None = None
_shared_lock = threading.Lock()
_shared_options: dict[str, Any] = {"idle_timeout": DEFAULT_IDLE_TIMEOUT}


def shared_service() -> WriterService:
    """The process-wide service the handlers use unless given one.

    It reaps itself after `idle_timeout` seconds without a stream (default
    `DEFAULT_IDLE_TIMEOUT`) and starts again on the next open, so writers
    that are never closed leave at most one idle writer process and one warm
    pool, and nothing after that.
    """
    global _shared
    broken = None
    with _shared_lock:
        if _shared is not None and _shared.broken:
            broken, _shared = _shared, None  # a long session goes on with a new one
        if _shared is None or _shared.closed:
            _shared = WriterService(**_shared_options)
        service = _shared
    if broken is not None:
        with suppress(Exception):  # its streams already failed with the cause
            broken.close("error")
    return service


def configure_shared_service(
    *,
    pool_bytes: int | None = None,
    ring_bytes: int | None = None,
    idle_timeout: float | None = DEFAULT_IDLE_TIMEOUT,
    write_depth: int | None = None,
) -> None:
    """Settings of the process-wide service (a running one is closed first,
    so that the next writer gets them)."""
    global _shared
    options: dict[str, Any] = {"idle_timeout": idle_timeout}
    if pool_bytes is not None:
        options["pool_bytes"] = pool_bytes
    if ring_bytes is not None:
        options["ring_bytes"] = ring_bytes
    if write_depth is not None:
        options["write_depth"] = write_depth
    with _shared_lock:
        old, _shared = _shared, None
        _shared_options.clear()
        _shared_options.update(options)
    if old is not None:
        old.close()


# Finishers of work above the services (the handlers' runs: their one
# sidecar per run), called before the services close on a console event.
_finishers: list[Any] = []


def add_finisher(finish: Any) -> None:
    if finish not in _finishers:
        _finishers.append(finish)


def _close_all(reason: str) -> None:
    for finish in list(_finishers):
        with suppress(Exception):
            finish()
    for service in list(_live):
        with suppress(Exception):
            service.close(reason)


def _setup_process(handle_signals: bool) -> None:
    """Once per process: stale rings removed, exit and signal hooks in place."""
    global _process_ready
    with _process_setup:
        if _process_ready:
            return
        _process_ready = True
        _prepare_worker_environment()
        remove_stale_rings()
        atexit.register(_close_all, "interrupted")
        if handle_signals:
            install_shutdown_handler(_on_shutdown_signal)


def _on_shutdown_signal(reason: str) -> None:
    """SIGTERM/SIGHUP (POSIX) or a console event (Windows): finalise.

    On the main thread (POSIX signal handlers) unwind with SystemExit, so
    `with` blocks and atexit finalise every stream outside any lock a frame
    may hold; on another thread (Windows console handler) finalise here.
    """
    if threading.current_thread() is threading.main_thread():
        raise SystemExit(128 + 15)
    _close_all("interrupted")


def _check_memory(nbytes: int) -> None:
    """Refuse a ring the machine cannot hold, before allocating it."""
    available = psutil.virtual_memory().available
    if nbytes > available:
        raise MemoryError(
            f"a ring of {nbytes / 2**30:.2f} GiB does not fit in the "
            f"{available / 2**30:.2f} GiB of memory available; lower ring_bytes"
        )
    shm_free = shm_available_bytes()
    if shm_free is not None and nbytes > shm_free:
        raise MemoryError(
            f"a ring of {nbytes / 2**30:.2f} GiB does not fit in the free shared "
            f"memory ({shm_free / 2**30:.2f} GiB); lower ring_bytes"
        )


def _prepare_worker_environment() -> None:
    """Settings workers inherit at spawn (codec search paths, quiet logging)."""
    try:
        from mesowriter.video import configure_opencv_codec
    except ImportError:  # pragma: no cover - video support not installed
        return
    configure_opencv_codec()
