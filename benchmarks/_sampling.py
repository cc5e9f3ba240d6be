"""Background sampling of dirty pages and RSS while a writer runs.

Buffered writers look fast until the kernel has to flush what they left in the
page cache, so a benchmark has to watch ``Dirty``/``Writeback`` and the memory
held by the writing processes, not only the wall time.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from collections.abc import Callable, Iterable
from types import TracebackType
from typing import Any

import psutil

__all__ = ["MemorySampler", "read_meminfo"]

_MEMINFO = "/proc/meminfo"
_FIELDS = {"Dirty": "dirty_bytes", "Writeback": "writeback_bytes"}

PidSource = Iterable[int] | Callable[[], Iterable[int]]


def read_meminfo() -> dict[str, int | None]:
    """Return system ``Dirty`` and ``Writeback`` in bytes; ``None`` off Linux.

    Read directly (not via psutil) because psutil does not expose these fields
    and one small read every 50 ms is cheap.
    """
    out: dict[str, int | None] = dict.fromkeys(_FIELDS.values())
    if not sys.platform.startswith("linux"):
        return out
    try:
        with open(_MEMINFO, "rb") as fh:
            for line in fh:
                key, _, rest = line.partition(b":")
                name = _FIELDS.get(key.decode())
                if name is not None:
                    parts = rest.split()
                    unit = 1024 if len(parts) > 1 and parts[1] == b"kB" else 1
                    out[name] = int(parts[0]) * unit
    except OSError:
        pass
    return out


class MemorySampler:
    """Context manager sampling dirty pages and RSS on a background thread.

    ``pids`` adds processes besides this one; pass a callable to pick up writer
    workers that are spawned after the sampler starts. With
    ``include_children=True`` every descendant of this process is sampled too.
    Each sample is a dict ``{"t", "dirty_bytes", "writeback_bytes",
    "rss_bytes": {pid: bytes}, "rss_total_bytes", "rss_anon_total_bytes"}``
    where ``t`` is seconds since the sampler started; the anon total leaves
    out file-backed and shared-memory pages (``None`` where unknown).
    """

    def __init__(
        self,
        interval: float = 0.05,
        pids: PidSource | None = None,
        include_children: bool = False,
        include_self: bool = True,
    ) -> None:
        if interval <= 0:
            raise ValueError("interval must be positive")
        self.interval = interval
        self._pid_source = pids
        self._include_children = include_children
        self._include_self = include_self
        self._procs: dict[int, psutil.Process] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._t0 = 0.0
        self.series: list[dict[str, Any]] = []
        self.peak_dirty_bytes: int | None = None
        self.peak_writeback_bytes: int | None = None
        self.baseline_dirty_bytes: int | None = None
        self.peak_rss_bytes: dict[int, int] = {}
        self.peak_rss_total_bytes: int = 0
        self.peak_rss_anon_bytes: int | None = None

    @property
    def t0(self) -> float:
        """``time.perf_counter()`` at start; sample ``t`` is relative to it."""
        return self._t0

    # -- lifecycle ---------------------------------------------------------
    def start(self) -> MemorySampler:
        """Take a first sample synchronously, then start the sampling thread."""
        if self._thread is not None:
            raise RuntimeError("sampler already started")
        self._t0 = time.perf_counter()
        self.baseline_dirty_bytes = read_meminfo()["dirty_bytes"]
        self.sample()
        self._thread = threading.Thread(
            target=self._run, name="MemorySampler", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop the thread and take a last sample so the end state is recorded."""
        if self._thread is None:
            return
        self._stop.set()
        self._thread.join()
        self._thread = None
        self.sample()

    def __enter__(self) -> MemorySampler:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.sample()

    # -- sampling ----------------------------------------------------------
    def _current_pids(self) -> set[int]:
        pids: set[int] = set()
        me = os.getpid()
        if self._include_self:
            pids.add(me)
        src = self._pid_source
        if src is not None:
            try:
                pids.update(int(p) for p in (src() if callable(src) else src))
            except Exception:  # a racing pid callable must not kill the sampler
                pass
        if self._include_children:
            try:
                pids.update(c.pid for c in psutil.Process(me).children(recursive=True))
            except psutil.Error:
                pass
        return pids

    def _rss(self, pid: int) -> tuple[int, int | None] | None:
        """Return ``(rss, anon)`` for one pid; ``anon`` is RSS minus shared.

        Shared (file-backed and shm) pages are split out because a memmap
        writer's RSS is mostly page cache, and a shm ring's is the ring.
        """
        proc = self._procs.get(pid)
        try:
            if proc is None:
                # Cached: Process() reads /proc/<pid>/stat, which we need not
                # repeat 20 times a second.
                proc = self._procs[pid] = psutil.Process(pid)
            mi = proc.memory_info()
        except psutil.Error:
            self._procs.pop(pid, None)
            return None
        shared = getattr(mi, "shared", None)
        return int(mi.rss), (int(mi.rss - shared) if shared is not None else None)

    def sample(self) -> dict[str, Any]:
        """Take one sample now, append it to ``series`` and update peaks."""
        mem = read_meminfo()
        rss: dict[int, int] = {}
        anon: int | None = 0
        for pid in sorted(self._current_pids()):
            value = self._rss(pid)
            if value is not None:
                rss[pid] = value[0]
                anon = None if anon is None or value[1] is None else anon + value[1]
        total = sum(rss.values())
        s: dict[str, Any] = {
            "t": time.perf_counter() - self._t0,
            "dirty_bytes": mem["dirty_bytes"],
            "writeback_bytes": mem["writeback_bytes"],
            "rss_bytes": rss,
            "rss_total_bytes": total,
            "rss_anon_total_bytes": anon,
        }
        self.series.append(s)
        d, w = mem["dirty_bytes"], mem["writeback_bytes"]
        if d is not None:
            self.peak_dirty_bytes = max(d, self.peak_dirty_bytes or 0)
        if w is not None:
            self.peak_writeback_bytes = max(w, self.peak_writeback_bytes or 0)
        for pid, nbytes in rss.items():
            self.peak_rss_bytes[pid] = max(nbytes, self.peak_rss_bytes.get(pid, 0))
        self.peak_rss_total_bytes = max(total, self.peak_rss_total_bytes)
        if anon is not None:
            self.peak_rss_anon_bytes = max(anon, self.peak_rss_anon_bytes or 0)
        return s

    # -- views for plotting ------------------------------------------------
    def timeseries(self, key: str) -> list[tuple[float, float]]:
        """Return ``[(t, value)]`` for one scalar key, skipping ``None`` values."""
        return [(s["t"], float(s[key])) for s in self.series if s.get(key) is not None]
