"""Direct I/O and write speed in the user's own folder, written as the sink writes.

The figures that matter are the ones the writer will get: so the files are
`AlignedFile`s opened the way the TIFF sink opens them, reserved first, and
written in the worker's batch size with the sink's writes in flight from a
page-aligned buffer. "Buffered" is the writer's own fallback (the page
cache, synced every `DEFAULT_SYNC_EVERY` bytes), not a buffered write that
leaves gigabytes dirty and looks fast until the flush.

A virtual disk's speed swings twofold from minute to minute, so the two
ways are written in alternating rounds (ABBA, which cancels a steady drift)
and each figure is given with its spread. Each round's file is removed when
the round ends, on Ctrl-C too.
"""

from __future__ import annotations

import mmap
import os
import statistics
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import suppress
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from mesowriter._platform import AlignedFile, unlink
from mesowriter._spec import DEFAULT_WRITE_DEPTH
from mesowriter._worker import BATCH_BYTES  # the writes the sink makes

PAGE = 4096
Progress = Callable[[str], None]


@dataclass(frozen=True)
class DirectProbe:
    """What `AlignedFile.direct` said in the folder, at open and after a write
    (a filesystem may accept O_DIRECT at open and refuse the first write)."""

    at_open: bool
    after_write: bool
    alignment: int
    error: str | None = None


def probe_direct(workdir: str) -> DirectProbe:
    """Open an `AlignedFile` in `workdir`, write one aligned page, sync, remove."""
    path = os.path.join(workdir, "direct-probe.bin")
    try:
        f = AlignedFile(path, mode="create", direct=True)
    except OSError as exc:
        return DirectProbe(False, False, 0, f"cannot create a file there: {exc}")
    buf = mmap.mmap(-1, PAGE)  # page-aligned, as ring slots are
    try:
        at_open = f.direct
        f.pwrite(buf, 0)
        f.sync()
        return DirectProbe(at_open, f.direct, f.alignment)
    except OSError as exc:
        return DirectProbe(f.direct, False, f.alignment, f"cannot write there: {exc}")
    finally:
        f.close()
        buf.close()
        unlink(path)


@dataclass
class Series:
    """GB/s of each round of one way of writing."""

    gbps: list[float] = field(default_factory=list)

    @property
    def median(self) -> float:
        return statistics.median(self.gbps)

    @property
    def low(self) -> float:
        return min(self.gbps)

    @property
    def high(self) -> float:
        return max(self.gbps)

    def text(self) -> str:
        return f"{self.median:.2f} GB/s ({self.low:.2f}-{self.high:.2f})"

    def figures(self) -> dict[str, Any]:
        return {
            "median_gbps": round(self.median, 3),
            "min_gbps": round(self.low, 3),
            "max_gbps": round(self.high, 3),
            "rounds_gbps": [round(g, 3) for g in self.gbps],
        }


@dataclass
class Speed:
    """Both series (direct is None where the folder refuses direct I/O)."""

    direct: Series | None
    buffered: Series
    round_bytes: int
    block_bytes: int
    depth: int
    seconds: float

    @property
    def writer_series(self) -> Series:
        """The way the writer will really write here."""
        return self.direct if self.direct is not None else self.buffered


def measure_speed(
    workdir: str,
    bytes_per_way: int,
    rounds: int,
    *,
    direct: bool,
    progress: Progress | None = None,
) -> Speed:
    """Write `rounds` files of `bytes_per_way / rounds` each way, alternating."""
    round_bytes = max(PAGE, bytes_per_way // rounds // PAGE * PAGE)
    block = min(BATCH_BYTES, round_bytes)
    ways = [True, False] if direct else [False]
    series = {way: Series() for way in ways}
    buf = mmap.mmap(-1, block)
    # Random bytes: a compressing or deduplicating virtual disk cannot cheat.
    np.frombuffer(buf, np.uint8)[:] = np.random.default_rng(0).integers(
        0, 256, block, dtype=np.uint8
    )
    t0 = time.perf_counter()
    try:
        for i in range(rounds):
            for way in ways if i % 2 == 0 else ways[::-1]:
                if progress is not None:
                    label = "direct" if way else "buffered"
                    progress(f"write speed: round {i + 1}/{rounds}, {label}")
                path = os.path.join(workdir, f"speed-{i}.bin")
                seconds = _timed_round(path, way, round_bytes, buf, DEFAULT_WRITE_DEPTH)
                series[way].gbps.append(round_bytes / seconds / 1e9)
    finally:
        with suppress(BufferError):  # a traceback may still hold a slice:
            buf.close()  # then the mapping goes with it
    return Speed(
        direct=series.get(True),
        buffered=series[False],
        round_bytes=round_bytes,
        block_bytes=block,
        depth=DEFAULT_WRITE_DEPTH,
        seconds=time.perf_counter() - t0,
    )


def _timed_round(
    path: str, direct: bool, nbytes: int, buf: mmap.mmap, depth: int
) -> float:
    """Seconds to write `nbytes` into a new file and make them durable."""
    block = len(buf)
    view = memoryview(buf)
    gate = _Gate()
    f = AlignedFile(path, mode="create", direct=direct)
    try:
        f.reserve(0, nbytes)  # as the sink preallocates a run of known length

        def write(offset: int) -> None:
            if gate.enter():
                try:
                    f.pwrite(view[: min(block, nbytes - offset)], offset)
                finally:
                    gate.leave()

        pool = ThreadPoolExecutor(depth, thread_name_prefix="doctor-io")
        t0 = time.perf_counter()
        try:
            for done in [pool.submit(write, o) for o in range(0, nbytes, block)]:
                done.result()
        finally:  # on Ctrl-C: the writes in flight finish, the rest never start
            gate.close()
            pool.shutdown(wait=True, cancel_futures=True)
        f.sync()
        return time.perf_counter() - t0
    finally:
        view.release()
        f.close()
        unlink(path)


class _Gate:
    """Lets writes start until closed; `close` waits for those in flight.

    Joining the pool is not enough: a Ctrl-C that lands while the pool
    starts a thread leaves that thread unknown to the pool, and still
    writing. Every write passes this gate, so once `close` returns none runs
    and none can start, and the file and the buffer may be closed.
    """

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._open = True
        self._busy = 0

    def enter(self) -> bool:
        with self._cond:
            if self._open:
                self._busy += 1
            return self._open

    def leave(self) -> None:
        with self._cond:
            self._busy -= 1
            self._cond.notify_all()

    def close(self) -> None:
        with self._cond:
            self._open = False
            self._cond.wait_for(lambda: self._busy == 0)
