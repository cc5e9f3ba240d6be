"""Fault injection for tests: a slow, failing or dying disk, a power cut.

Only active when a stream is opened with the private `_fault=` argument;
normal use never reaches this code. Faults are written as
`kind[:arg[:arg]]`, several joined by `,`:

    slow:SECONDS             a slow disk: sleep this long per frame written
    fail-after:N[:ERRNO]     the write that would pass N frames raises OSError
                             (default ENOSPC, "No space left on device")
    die-after:N              the worker kills itself (SIGKILL) once N frames
                             are committed and journalled
    die-unjournalled:N       the same, but after the commit that passes N
                             frames and before its journal lines: frames
                             durable in the file, yet not in the journal
    die-written:N            the worker kills itself once N frames are
                             written (their writes returned, their slots
                             freed) and some of them are not yet committed:
                             a replacement must adopt what is in the file
    die-in-open              the worker kills itself once it created the file
                             and the journal, before it answers the open
    die-after-finalise       the worker kills itself once the file is final,
                             before the sidecar is written
    die-after-close          the worker kills itself once the stream is
                             finalised (journal removed, report written) and
                             before it tells the parent
    fail-sync:K              the K-th sync of the data file (the open's is the
                             first, each commit makes two) raises EIO, as a
                             disk that lost written pages reports it
    slow-sync:K:SECONDS      the K-th sync of the data file takes this long
                             first (a disk busy with other programs' data)
    fail-journal-sync:K      the K-th sync of the journal's lines (on its own
                             thread; the open's settle is not counted) raises
                             EIO
    slow-journal-sync:SECONDS  every sync of the journal's lines takes this
                             long first: the worker goes on writing and
                             freeing slots while they wait
    powercut:N               before the batch that would pass N submitted
                             frames (so never more than N), every byte written
                             to the data file and the journal since their
                             last sync is undone, as a power cut would lose
                             it, and the worker's whole process group is
                             SIGKILLed (the test runs it in its own session)

The power cut is modelled by `UnsyncedLog`: each write since the last sync
records the bytes it overwrote and the file's size, and the cut puts them
back. A completed but unsynced direct write is lost too: drives hold such
writes in a volatile cache, so nothing durable may depend on them.
"""

from __future__ import annotations

import errno
import os
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Faults:
    slow: float = 0.0
    fail_after: int | None = None
    fail_errno: int = errno.ENOSPC
    die_after: int | None = None
    die_unjournalled: int | None = None
    die_written: int | None = None
    die_after_close: bool = False
    die_in_open: bool = False
    die_after_finalise: bool = False
    powercut: int | None = None
    fail_sync: int | None = None
    slow_sync: tuple[int, float] | None = None
    fail_journal_sync: int | None = None
    slow_journal_sync: float = 0.0

    @classmethod
    def parse(cls, text: str | None, *, resumed: bool = False) -> Faults:
        """`resumed`: a replacement worker, which must not die again."""
        faults = cls()
        for part in filter(None, (text or "").split(",")):
            kind, *args = part.split(":")
            if kind == "slow":
                faults.slow = float(args[0])
            elif kind == "fail-after":
                faults.fail_after = int(args[0])
                if len(args) > 1:
                    faults.fail_errno = int(args[1])
            elif kind == "die-after":
                faults.die_after = int(args[0])
            elif kind == "die-unjournalled":
                faults.die_unjournalled = None if resumed else int(args[0])
            elif kind == "die-written":
                faults.die_written = None if resumed else int(args[0])
            elif kind == "die-in-open":
                faults.die_in_open = not resumed
            elif kind == "die-after-finalise":
                faults.die_after_finalise = not resumed
            elif kind == "die-after-close":
                faults.die_after_close = not resumed
            elif kind == "powercut":
                faults.powercut = int(args[0])
            elif kind == "fail-sync":
                faults.fail_sync = int(args[0])
            elif kind == "slow-sync":
                faults.slow_sync = (int(args[0]), float(args[1]))
            elif kind == "fail-journal-sync":
                faults.fail_journal_sync = int(args[0])
            elif kind == "slow-journal-sync":
                faults.slow_journal_sync = float(args[0])
            else:
                raise ValueError(f"unknown fault {kind!r}")
        return faults

    def before_write(self, written: int, count: int) -> None:
        """Called with frames submitted so far and the batch size."""
        if self.slow:
            time.sleep(self.slow * count)
        if self.powercut is not None and written + count > self.powercut:
            cut_power()
        if self.fail_after is not None and written + count > self.fail_after:
            raise OSError(self.fail_errno, os.strerror(self.fail_errno))

    def after_write(self, before: int, written: int) -> None:
        """Die between a commit and its journal lines, once, at the mark."""
        mark = self.die_unjournalled
        if mark is not None and before < mark <= written:
            _die()

    def after_free(self, committed: int, freed: int) -> None:
        """Die once slots up to `freed` are free, past the mark, with frames
        written and not committed (a commit may carry the freed cursor past
        the mark itself: the next early free then counts)."""
        mark = self.die_written
        if mark is not None and committed < freed and mark <= freed:
            _die()

    def after_commit(self, before: int, written: int) -> None:
        """Die when this commit crosses the mark (a replacement never does)."""
        if self.die_after is not None and before < self.die_after <= written:
            _die()

    def journal_sync(self, sync: Callable[[], None]) -> Callable[[], None]:
        """The journal's sync as these faults make it (slow, failing)."""
        if self.fail_journal_sync is None and not self.slow_journal_sync:
            return sync
        calls = 0

        def faulty() -> None:
            nonlocal calls
            calls += 1
            time.sleep(self.slow_journal_sync)
            if calls == self.fail_journal_sync:
                raise OSError(errno.EIO, os.strerror(errno.EIO), "journal")
            sync()

        return faulty

    def after_open(self) -> None:
        if self.die_in_open:
            _die()

    def after_finalise(self) -> None:
        if self.die_after_finalise:
            _die()

    def after_close(self) -> None:
        if self.die_after_close:
            _die()


def _die() -> None:
    os.kill(os.getpid(), getattr(signal, "SIGKILL", signal.SIGTERM))


# -- the power-cut model ------------------------------------------------------------


@dataclass
class _Undo:
    offset: int
    old: bytes


@dataclass
class _FileLog:
    path: str
    synced_size: int
    undo: list[_Undo] = field(default_factory=list)


class UnsyncedLog:
    """What a power cut would take back: every unsynced write, per file."""

    _lock = threading.Lock()
    _files: dict[str, _FileLog] = {}

    @classmethod
    def record(cls, path: str, offset: int, length: int) -> None:
        """Keep what a write is about to overwrite (call with the lock held)."""
        log = cls._files.get(path)
        if log is None:
            log = cls._files[path] = _FileLog(path, _size(path))
        with open(path, "rb") as fh:
            fh.seek(offset)
            old = fh.read(length)
        log.undo.append(_Undo(offset, old))

    @classmethod
    def synced(cls, path: str) -> None:
        with cls._lock:
            cls.synced_locked(path)

    @classmethod
    def synced_locked(cls, path: str) -> None:
        """Forget what a sync made durable (call with the lock held, in the
        same locked section as the sync: a write from another thread between
        the two would otherwise lose its undo record)."""
        cls._files[path] = _FileLog(path, _size(path))

    @classmethod
    def cut(cls) -> None:
        """Undo every unsynced write, newest first, and the growth of size
        (call with the lock held)."""
        for log in cls._files.values():
            if not os.path.exists(log.path):
                continue
            fd = os.open(log.path, os.O_RDWR)
            try:
                for undo in reversed(log.undo):
                    os.pwrite(fd, undo.old, undo.offset)
                if os.fstat(fd).st_size > log.synced_size:
                    os.ftruncate(fd, log.synced_size)
                os.fsync(fd)
            finally:
                os.close(fd)


def _size(path: str) -> int:
    try:
        return os.path.getsize(path)
    except OSError:
        return 0


def cut_power() -> None:
    """Undo what was not synced, then SIGKILL the process group at once.

    The lock is never released: a write in flight on another thread either
    landed before the cut (and is undone) or never lands.
    """
    UnsyncedLog._lock.acquire()
    UnsyncedLog.cut()
    os.killpg(os.getpgid(0), signal.SIGKILL)


class PowerCutFile:
    """An AlignedFile whose unsynced writes a power cut takes back (tests)."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner
        UnsyncedLog.synced(inner.path)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    def pwrite(self, buf: Any, offset: int) -> int:
        with UnsyncedLog._lock:
            UnsyncedLog.record(self._inner.path, offset, memoryview(buf).nbytes)
            return int(self._inner.pwrite(buf, offset))

    def pwrite_meta(self, data: Any, offset: int) -> None:
        with UnsyncedLog._lock:
            UnsyncedLog.record(self._inner.path, offset, memoryview(data).nbytes)
            self._inner.pwrite_meta(data, offset)

    def sync(self) -> None:
        with UnsyncedLog._lock:
            self._inner.sync()
            UnsyncedLog.synced_locked(self._inner.path)


class PowerCutJournal:
    """A Journal whose unsynced lines a power cut takes back (tests)."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner
        UnsyncedLog.synced(inner.path)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    def append(self, entries: Any) -> None:
        with UnsyncedLog._lock:
            UnsyncedLog.record(self._inner.path, _size(self._inner.path), 0)
            self._inner.append(entries)

    def sync(self) -> None:
        with UnsyncedLog._lock:
            self._inner.sync()
            UnsyncedLog.synced_locked(self._inner.path)


class SyncFaultFile:
    """An AlignedFile whose `nth` sync raises EIO (what Linux reports once
    writeback of some written pages failed) or first sleeps `delay` (tests)."""

    def __init__(self, inner: Any, nth: int, *, delay: float = 0.0) -> None:
        self._inner = inner
        self._nth = nth
        self._delay = delay
        self._syncs = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    def sync(self) -> None:
        self._syncs += 1
        if self._syncs == self._nth:
            if not self._delay:
                raise OSError(errno.EIO, os.strerror(errno.EIO), self._inner.path)
            time.sleep(self._delay)
        self._inner.sync()
