"""WriterService: writer worker processes, their streams, and who watches them.

::

    user's process                                         writer processes
    ┌──────────────────────────────────────────┐
    │ Stream.write ──copy──► ring (shm) ───────┼──shm──► worker 0: sinks ─► files
    │        └─ Doorbell/WantSpace ──pipe──────┼───────►
    │ monitor thread ◄── StreamOpened/Space/ ──┼─pipe─── worker 1: ...
    │   (connection.wait)    Failed/Closed     │
    │                  ◄── process sentinels ──┼──────── (death noticed at once)
    └──────────────────────────────────────────┘

Workers start with the `spawn` method (the Windows default, and the only one
safe beside MMCore's threads). The monitor thread blocks in
`multiprocessing.connection.wait` on every worker's result pipe and process
sentinel: replies are dispatched as they come, and a worker that dies is
noticed at once and replaced; its streams resume from their rings.
Shutdown is one message per worker, a bounded join, then terminate.
"""

from __future__ import annotations

import atexit
import itertools
import multiprocessing as mp
import os
import signal
import threading
import weakref
from contextlib import suppress
from dataclasses import dataclass, field
from typing import Any

import msgspec
import numpy as np
import psutil

from mesowriter import _messages as m
from mesowriter._paths import normalised_path, prepare_output_path
from mesowriter._platform import wait_any
from mesowriter._ring import (
    DEFAULT_METADATA_BYTES,
    FrameRing,
    RingLayout,
    remove_stale_rings,
    shm_available_bytes,
)
from mesowriter._spec import StreamSpec, VideoOptions
from mesowriter._stream import Stream, check_policy
from mesowriter.sinks import kind_for_path, sink_class

DEFAULT_RING_BYTES = 1 << 30
WORKER_NAME_PREFIX = "mesowriter-writer-"
JOIN_TIMEOUT = 10.0
MAX_RESTARTS = 3


@dataclass(eq=False)
class WorkerHandle:
    """The parent's end of one writer process."""

    index: int
    process: Any
    to_worker: Any
    from_worker: Any
    send_lock: threading.Lock = field(default_factory=threading.Lock)
    streams: set[int] = field(default_factory=set)

    def send(self, msg: m.ToWorker) -> None:
        self.send_raw(m.encoder.encode(msg))

    def send_raw(self, payload: bytes) -> None:
        with self.send_lock:
            try:
                self.to_worker.send_bytes(payload)
            except OSError:
                pass  # the worker is gone; its sentinel tells the monitor


class WriterService:
    """Writer processes fed by shared-memory rings, one ring per stream.

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
    ) -> None:
        if workers < 1:
            raise ValueError("workers must be at least 1")
        self.ring_bytes = int(ring_bytes)
        self.policy = check_policy(policy)
        self.max_workers = max(
            workers, max_workers or max(workers, os.cpu_count() or 1)
        )
        self.restart_workers = restart_workers
        self._ctx = mp.get_context("spawn")
        self._lock = threading.RLock()
        self._workers: dict[int, WorkerHandle] = {}
        self._streams: dict[int, Stream] = {}
        self._ids = itertools.count()
        self._worker_ids = itertools.count()
        self._closed = False
        self._releasers: list[threading.Thread] = []
        self.worker_deaths: list[dict[str, Any]] = []
        self._wake_r, self._wake_w = self._ctx.Pipe(duplex=False)
        _prepare_worker_environment()
        _skip_main_module_in_workers()
        remove_stale_rings()
        for _ in range(workers):
            self._start_worker()
        self._monitor = threading.Thread(
            target=self._monitor_loop, name="mesowriter-monitor", daemon=True
        )
        self._monitor.start()
        self._previous_sigterm: Any = None
        if handle_signals:
            self._install_sigterm()
        ref = weakref.ref(self)

        def _close_at_exit() -> None:
            service = ref()
            if service is not None:
                service.close()

        self._atexit = _close_at_exit
        atexit.register(self._atexit)

    # -- context manager --------------------------------------------------------
    def __enter__(self) -> WriterService:
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        self.close(reason="canceled" if exc_type is not None else "completed")

    # -- workers ----------------------------------------------------------------
    def _start_worker(self) -> WorkerHandle:
        from mesowriter._worker import worker_main

        to_r, to_w = self._ctx.Pipe(duplex=False)
        from_r, from_w = self._ctx.Pipe(duplex=False)
        index = next(self._worker_ids)
        proc = self._ctx.Process(
            target=worker_main,
            args=(to_r, from_w),
            name=f"{WORKER_NAME_PREFIX}{index}",
            daemon=True,
        )
        proc.start()
        to_r.close()
        from_w.close()
        handle = WorkerHandle(index, proc, to_w, from_r)
        with self._lock:
            self._workers[index] = handle
        self._wake()
        return handle

    def _pick_worker(self) -> WorkerHandle:
        with self._lock:
            idle = [w for w in self._workers.values() if not w.streams]
            if idle:
                return idle[0]
            if len(self._workers) < self.max_workers:
                return self._start_worker()
            return min(self._workers.values(), key=lambda w: len(w.streams))

    @property
    def workers(self) -> list[int]:
        """PIDs of the live writer processes."""
        with self._lock:
            return [w.process.pid for w in self._workers.values()]

    @property
    def streams(self) -> list[Stream]:
        with self._lock:
            return list(self._streams.values())

    # -- streams ----------------------------------------------------------------
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
        ring_bytes: int | None = None,
        policy: str | None = None,
        metadata_bytes: int = DEFAULT_METADATA_BYTES,
        direct_io: bool = True,
        sequence: dict[str, Any] | None = None,
        summary: dict[str, Any] | None = None,
        video: VideoOptions | None = None,
        extra_metadata: dict[str, Any] | None = None,
        _fault: str | None = None,
    ) -> Stream:
        """Open a file for frames of one shape and dtype; returns its Stream.

        Everything that can be checked is checked here, before any frame:
        the path (existing file, folder, writability), the format and codec,
        the dtype, and whether the ring fits in memory.
        """
        if self._closed:
            raise RuntimeError("this WriterService is closed")
        if frames is not None and frames < 0:
            raise ValueError("frames must be >= 0 or None")
        if policy is not None:
            check_policy(policy)  # before a ring is created and touched
        raw_path = os.fspath(path)
        if not raw_path.strip():
            raise ValueError("an empty path is not a file name")
        kind = kind or kind_for_path(raw_path)
        if video is not None and kind != "video":
            raise ValueError(
                f"{raw_path!r} is written as {kind}: video options do not apply"
            )
        np_dtype = np.dtype(dtype).newbyteorder("<")
        if np_dtype.itemsize == 1:
            np_dtype = np_dtype.newbyteorder("|")
        spec = StreamSpec(
            stream_id=next(self._ids),
            path=raw_path,
            kind=kind,
            shape=tuple(int(s) for s in shape),
            dtype=np_dtype.str,
            frames=frames,
            overwrite=overwrite,
            position_key=position_key,
            direct_io=direct_io,
            sequence=sequence,
            summary=summary,
            video=video,
            extra_metadata=extra_metadata,
            fault=_fault,
        )
        sink_cls = sink_class(kind)
        sink_cls.check(spec)
        spec = sink_cls.prepare(spec)  # e.g. codec choice, warned about here
        # Checked before prepare_output_path, which clears an overwritten
        # file's old sidecar and journal, and again where the stream is
        # registered (two threads may open the same path at once).
        self._check_not_open(normalised_path(raw_path))
        spec = msgspec.structs.replace(
            spec, path=prepare_output_path(raw_path, overwrite)
        )
        requested = ring_bytes or self.ring_bytes
        if requested > psutil.virtual_memory().total:
            raise MemoryError(
                f"ring_bytes={requested} asks for a ring larger than this machine's "
                f"{psutil.virtual_memory().total / 2**30:.1f} GiB of memory"
            )
        layout = RingLayout.plan(
            ring_bytes=requested,
            shape=spec.shape,
            dtype=np_dtype,
            slot_prefix=sink_cls.slot_prefix,
            metadata_bytes=metadata_bytes,
        )
        _check_memory(layout.total_bytes)
        ring = FrameRing.create(layout)
        try:
            # Pick, claim and register at once: concurrent opens spread out,
            # and a worker that dies now finds the stream among its orphans.
            with self._lock:
                self._check_not_open(spec.path)
                worker = self._pick_worker()
                stream = Stream(self, spec, ring, worker, policy or self.policy)
                worker.streams.add(spec.stream_id)
                self._streams[spec.stream_id] = stream
            worker.send(m.OpenStream(spec, ring.layout))
            stream.opened.wait()
        except BaseException:
            self._discard(spec.stream_id, ring)
            raise
        if stream.open_error is not None:
            self._discard(spec.stream_id, ring)
            raise stream.open_error
        return stream

    def _check_not_open(self, path: str) -> None:
        with self._lock:
            if any(s.spec.path == path for s in self._streams.values()):
                raise ValueError(f"{path} is already open in this service")

    def _discard(self, stream_id: int, ring: FrameRing) -> None:
        with self._lock:
            self._streams.pop(stream_id, None)
            for w in self._workers.values():
                w.streams.discard(stream_id)
        ring.destroy()

    def _release_ring(self, ring: FrameRing) -> None:
        """Unmap and unlink a finished ring off the caller's thread.

        Freeing a 1 GiB block takes ~0.15 s; the user's `close()` need not
        wait for it. `WriterService.close()` joins these threads, so the
        block is gone once the service is.
        """
        thread = threading.Thread(
            target=ring.destroy, name="mesowriter-release", daemon=True
        )
        with self._lock:
            self._releasers = [t for t in self._releasers if t.is_alive()]
            self._releasers.append(thread)
        thread.start()

    def _forget(self, stream: Stream) -> None:
        with self._lock:
            self._streams.pop(stream.spec.stream_id, None)
            stream.worker.streams.discard(stream.spec.stream_id)

    # -- the monitor thread -------------------------------------------------------
    def _wake(self) -> None:
        with suppress(OSError):
            self._wake_w.send_bytes(b"w")

    def _monitor_loop(self) -> None:
        """Watch the workers; should the watching itself fail, no stream may
        wait for a reply that will never come: each is failed with the cause."""
        try:
            self._watch_workers()
        except BaseException:
            import traceback

            cause = "the writer service's monitor thread failed:\n" + (
                traceback.format_exc()
            )
            with self._lock:
                streams = list(self._streams.values())
            for stream in streams:
                if not stream._closed.is_set():
                    stream.on_worker_lost(cause)
            raise

    def _watch_workers(self) -> None:
        while True:
            with self._lock:
                handles = list(self._workers.values())
                if self._closed and not handles:
                    return
            waitables: list[Any] = [self._wake_r]
            for h in handles:
                waitables += [h.from_worker, h.process.sentinel]
            ready = wait_any(waitables)
            if self._wake_r in ready:
                with suppress(EOFError, OSError):
                    while self._wake_r.poll():
                        self._wake_r.recv_bytes()
            for h in handles:
                if h.from_worker in ready or h.process.sentinel in ready:
                    self._drain(h)
                if h.process.sentinel in ready:
                    self._on_worker_exit(h)

    def _drain(self, h: WorkerHandle) -> None:
        try:
            while h.from_worker.poll():
                msg = m.to_parent_decoder.decode(h.from_worker.recv_bytes())
                self._dispatch(msg)
        except (EOFError, OSError):
            pass

    def _dispatch(self, msg: m.ToParent) -> None:
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
            stream.on_closed(msg.report)

    def _on_worker_exit(self, h: WorkerHandle) -> None:
        h.process.join(timeout=1)
        with self._lock:
            self._workers.pop(h.index, None)
            orphans = [self._streams[s] for s in h.streams if s in self._streams]
            closing = self._closed
        with suppress(OSError):
            h.to_worker.close()
            h.from_worker.close()
        if closing and not orphans:
            return
        code = h.process.exitcode
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
                replacement = self._pick_worker()
                replacement.streams.add(stream.spec.stream_id)
            stream.on_worker_replaced(replacement)

    # -- signals and shutdown -------------------------------------------------------
    def _install_sigterm(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        if (
            not hasattr(signal, "SIGTERM")
            or signal.getsignal(signal.SIGTERM) != signal.SIG_DFL
        ):
            return

        def _terminate(signum: int, frame: Any) -> None:
            raise SystemExit(128 + signum)  # unwinds: streams are finalised

        signal.signal(signal.SIGTERM, _terminate)
        self._previous_sigterm = signal.SIG_DFL

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
            handles = list(self._workers.values())
        for h in handles:
            h.send(m.Shutdown())
        for h in handles:
            h.process.join(JOIN_TIMEOUT)
            if h.process.is_alive():
                h.process.terminate()
                h.process.join(JOIN_TIMEOUT)
        self._wake()
        self._monitor.join(JOIN_TIMEOUT)
        for stream in self.streams:  # streams whose worker never answered
            stream.abort()
        with self._lock:
            releasers = list(self._releasers)
        for thread in releasers:
            thread.join()
        with suppress(OSError):
            self._wake_r.close()
            self._wake_w.close()
        atexit.unregister(self._atexit)
        if (
            self._previous_sigterm is not None
            and threading.current_thread() is threading.main_thread()
        ):
            with suppress(ValueError):
                signal.signal(signal.SIGTERM, self._previous_sigterm)
        if errors:
            raise errors[0]


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
            f"a ring of {nbytes / 2**30:.2f} GiB does not fit in /dev/shm "
            f"({shm_free / 2**30:.2f} GiB free); lower ring_bytes"
        )


def _skip_main_module_in_workers() -> None:
    """Spawn writer workers without re-running the user's script.

    Under `spawn`, a child normally re-imports the parent's `__main__` so
    that pickled functions defined there resolve. Our workers need nothing
    from it (their entry point is `mesowriter._worker.worker_main`), and a
    lab script without an `if __name__ == "__main__":` guard would otherwise
    run again in every worker: load the hardware configuration, start
    another acquisition. Only processes named for our workers are affected.
    """
    from multiprocessing import spawn

    original = spawn.get_preparation_data
    if getattr(original, "_mesowriter_hook", False):
        return

    def get_preparation_data(name: str) -> dict[str, Any]:
        data: dict[str, Any] = original(name)
        if name.startswith(WORKER_NAME_PREFIX):
            data.pop("init_main_from_path", None)
            data.pop("init_main_from_name", None)
        return data

    get_preparation_data._mesowriter_hook = True  # type: ignore[attr-defined]
    spawn.get_preparation_data = get_preparation_data


def _prepare_worker_environment() -> None:
    """Settings workers inherit at spawn (codec search paths, quiet logging)."""
    try:
        from mesowriter.video import configure_opencv_codec
    except ImportError:  # pragma: no cover - video support not installed
        return
    configure_opencv_codec()
