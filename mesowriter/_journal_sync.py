"""The journal's sync, off the worker's main thread.

::

    worker main thread (StreamRunner)          journal sync thread
    ---------------------------------          -------------------
    _commit: journal.append(lines)
             request(appended) ---condition--> fsync(journal): one for every
                                                 request that queued while
                                                 the last one ran
    pump: synced()  <--------------------------  synced = target; wake(loop)
          read_cursor = synced, bookkeeping

An fsync of the journal takes 15-50 ms on a busy disk; inline, it held the
main thread (which submits the pixel writes) for a fifth of a long run, so
the disk often had a single write in flight. Here the main thread keeps
submitting while the lines become durable, and the ring's read cursor still
moves only past lines a sync returned for (see `_worker`'s durable order).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from types import TracebackType
from typing import Any


class JournalSync:
    """Make a journal's appended lines durable; merges waiting requests.

    `request(n)`: the first n frames' lines are written (to the page
    cache); `synced()`: how many are durable. A failed sync is raised to the
    main thread by `raise_failure()` and `wait()`, never retried (after an
    fsync error the kernel may have dropped the pages).
    """

    def __init__(
        self, sync: Callable[[], None], wake: Callable[[Any], None], start: int
    ) -> None:
        self._sync = sync
        self._wake = wake
        self._cond = threading.Condition()
        self._wanted = self._synced = start
        self._error: BaseException | None = None
        self._error_tb: TracebackType | None = None
        self._stopping = False
        self._thread: threading.Thread | None = None

    def request(self, frames: int) -> None:
        with self._cond:
            if frames <= self._wanted or self._error is not None:
                return
            self._wanted = frames
            if self._thread is None and not self._stopping:
                thread = threading.Thread(
                    target=self._run, name="mesowriter-journal-sync", daemon=True
                )
                try:  # it waits for this lock before it looks at anything
                    thread.start()
                except RuntimeError as exc:  # no thread to be had: a failure
                    self._fail(exc)
                    return
                self._thread = thread
            self._cond.notify_all()

    def synced(self) -> int:
        """Frames whose lines are durable (a sync that failed later does
        not take back what an earlier one made durable)."""
        with self._cond:
            return self._synced

    def raise_failure(self) -> None:
        """Raise a failed sync's error (its traceback from the thread)."""
        with self._cond:
            error, tb = self._error, self._error_tb
        if error is not None:
            raise error.with_traceback(tb)  # not one more frame each time

    def wait(self) -> int:
        """Block until every requested line is durable (draining, closing)."""
        with self._cond:
            while (
                self._synced < self._wanted
                and self._error is None
                and self._thread is not None
            ):
                self._cond.wait()
        self.raise_failure()
        return self.synced()

    def stop(self) -> None:
        """Finish the sync under way and end the thread (before the journal's
        descriptor is closed: never sync a reused descriptor)."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
            thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join()

    def _fail(self, exc: BaseException) -> None:
        """Keep the first failure (call with the lock held)."""
        if self._error is None:
            self._error, self._error_tb = exc, exc.__traceback__
        self._cond.notify_all()

    def _run(self) -> None:
        while True:
            with self._cond:
                while self._wanted <= self._synced and not self._stopping:
                    self._cond.wait()
                if self._wanted <= self._synced:
                    self._thread = None
                    self._cond.notify_all()
                    return
                target = self._wanted
            try:
                self._sync()
            except BaseException as exc:
                with self._cond:
                    self._fail(exc)
                    self._thread = None
                self._wake(None)
                return
            with self._cond:
                self._synced = target
                self._cond.notify_all()
            self._wake(None)


class InlineSync(JournalSync):
    """The same contract, synced on the caller's thread: a journal kept in
    memory (a sink without files) has nothing to wait for."""

    def request(self, frames: int) -> None:
        with self._cond:
            if frames <= self._wanted:
                return
            self._wanted = frames
        self._sync()
        with self._cond:
            self._synced = frames
