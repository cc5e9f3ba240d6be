"""The writer processes of one service, and the thread that watches them.

Workers start with the `spawn` method (the Windows default, and the only
one safe beside MMCore's threads) and never re-run the user's script. The
monitor thread blocks in `wait_any` on a wake-up pipe and every worker's
result pipe and process sentinel (any number of them: the platform layer
splits waits where the OS caps one, as Windows does at 63 handles): replies
are dispatched as they come, and a worker that dies is noticed at once.
"""

from __future__ import annotations

import itertools
import multiprocessing as mp
import threading
from collections.abc import Callable
from contextlib import suppress
from dataclasses import dataclass, field
from typing import Any

from mesowriter import _messages as m
from mesowriter._platform import wait_any

WORKER_NAME_PREFIX = "mesowriter-writer-"
JOIN_TIMEOUT = 10.0


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


class Workers:
    """Starts, picks, watches and stops the writer processes."""

    def __init__(
        self,
        max_workers: int,
        on_message: Callable[[m.ToParent], None],
        on_exit: Callable[[WorkerHandle], None],
        on_monitor_failure: Callable[[str], None],
        greeting: Callable[[], list[m.ToWorker]],
    ) -> None:
        self.max_workers = max_workers
        self._ctx = mp.get_context("spawn")
        self._lock = threading.RLock()
        self._handles: dict[int, WorkerHandle] = {}
        self._ids = itertools.count()
        self._on_message = on_message
        self._on_exit = on_exit
        self._on_monitor_failure = on_monitor_failure
        self._greeting = greeting
        self._wake_r, self._wake_w = self._ctx.Pipe(duplex=False)
        self._stopping = False
        self._monitor: threading.Thread | None = None
        _skip_main_module_in_workers()

    # -- processes -------------------------------------------------------------------
    def start(self) -> WorkerHandle:
        from mesowriter._worker import worker_main

        to_r, to_w = self._ctx.Pipe(duplex=False)
        from_r, from_w = self._ctx.Pipe(duplex=False)
        index = next(self._ids)
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
        for msg in self._greeting():  # e.g. the pool's blocks, to map at once
            handle.send(msg)
        with self._lock:
            self._handles[index] = handle
            self._stopping = False
            if self._monitor is None or not self._monitor.is_alive():
                self._monitor = threading.Thread(
                    target=self._monitor_loop, name="mesowriter-monitor", daemon=True
                )
                self._monitor.start()
        self.wake()
        return handle

    def pick(self, *, own_process: bool = False) -> WorkerHandle:
        """An idle worker, else (for `own_process` streams, or when there is
        none) a new one up to the maximum, else the least loaded.

        I/O-bound streams share a worker rather than wait for a process to
        spawn while the camera starts; CPU-bound ones (video encoding) get a
        process each while there are cores for them.
        """
        with self._lock:
            idle = [w for w in self._handles.values() if not w.streams]
            if idle:
                return idle[0]
            if len(self._handles) < self.max_workers and (
                own_process or not self._handles
            ):
                return self.start()
            return min(self._handles.values(), key=lambda w: len(w.streams))

    @property
    def handles(self) -> list[WorkerHandle]:
        with self._lock:
            return list(self._handles.values())

    def broadcast(self, msg: m.ToWorker) -> None:
        for h in self.handles:
            h.send(msg)

    def forget(self, handle: WorkerHandle) -> None:
        with self._lock:
            self._handles.pop(handle.index, None)

    def stop(self) -> None:
        """One stop message per worker, a bounded join, then terminate."""
        with self._lock:
            handles = list(self._handles.values())
            self._stopping = True
        for h in handles:
            h.send(m.Shutdown())
        for h in handles:
            h.process.join(JOIN_TIMEOUT)
            if h.process.is_alive():
                h.process.terminate()
                h.process.join(JOIN_TIMEOUT)
        self.wake()
        monitor = self._monitor
        if monitor is not None and monitor is not threading.current_thread():
            monitor.join(JOIN_TIMEOUT)
        with self._lock:
            for h in handles:
                self._handles.pop(h.index, None)
            self._monitor = None

    def close(self) -> None:
        self.stop()
        with suppress(OSError):
            self._wake_r.close()
            self._wake_w.close()

    # -- the monitor thread ------------------------------------------------------------
    def wake(self) -> None:
        with suppress(OSError):
            self._wake_w.send_bytes(b"w")

    def _monitor_loop(self) -> None:
        """Watch the workers; should the watching itself fail, nobody may wait
        for a reply that will never come: every stream is failed with the cause."""
        try:
            self._watch()
        except BaseException:
            import traceback

            self._on_monitor_failure(
                "the writer service's monitor thread failed:\n" + traceback.format_exc()
            )
            raise

    def _watch(self) -> None:
        while True:
            with self._lock:
                handles = list(self._handles.values())
                if self._stopping and not handles:
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
                    h.process.join(timeout=1)
                    self.forget(h)
                    with suppress(OSError):
                        h.to_worker.close()
                        h.from_worker.close()
                    self._on_exit(h)

    def _drain(self, h: WorkerHandle) -> None:
        try:
            while h.from_worker.poll():
                msg = m.to_parent_decoder.decode(h.from_worker.recv_bytes())
                self._on_message(msg)
        except (EOFError, OSError):
            pass


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
