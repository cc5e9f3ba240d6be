"""The ring pool: warm shared memory, carved into rings in microseconds.

Creating and touching shared memory costs about a second a GiB on first
touch, far too slow for `open_stream` on a short run. The pool creates its
blocks once, off the acquisition's threads, and hands out page-aligned
regions of them (first fit); a closed stream's region goes back at once,
still warm, for the next stream. A request the warm blocks cannot hold gets
a block of its own, destroyed when that stream is done.

The pool lives in the user's process and owns the blocks: it alone
creates and unlinks them, exactly once. Workers map each block once (the
service tells them as soon as it exists) and keep the mapping.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from contextlib import suppress
from dataclasses import dataclass

from mesowriter._ring import PAGE, SharedBlock, round_up

__all__ = ["Region", "RingPool"]


@dataclass(frozen=True)
class Region:
    """A ring's place: `nbytes` at `offset` in block `block`."""

    block: str
    offset: int
    nbytes: int


class RingPool:
    """Warm blocks and their free ranges."""

    def __init__(
        self, pool_bytes: int, on_block: Callable[[SharedBlock], None] | None = None
    ) -> None:
        self.pool_bytes = max(0, int(pool_bytes))
        self._on_block = on_block
        self._lock = threading.Lock()
        self._blocks: dict[str, SharedBlock] = {}
        self._free: dict[str, list[tuple[int, int]]] = {}
        self._extra: set[str] = set()  # blocks made for one stream
        self._warming: threading.Event | None = None
        self._closed = False

    # -- warm blocks --------------------------------------------------------------
    def warm(self) -> None:
        """Create the pool's block (blocking: call it off the hot threads).

        Concurrent callers wait for the one that does the work.
        """
        with self._lock:
            if self._closed or self.pool_bytes == 0:
                return
            if any(name not in self._extra for name in self._blocks):
                return
            if self._warming is not None:
                waiting = self._warming
                owner = False
            else:
                waiting = self._warming = threading.Event()
                owner = True
        if not owner:
            waiting.wait()
            return
        try:
            block = SharedBlock.create(self.pool_bytes + PAGE)  # page 0: the magic
            self._adopt(block, extra=False)
        finally:
            with self._lock:
                self._warming = None
            waiting.set()

    def warm_in_background(self) -> threading.Thread:
        def warm() -> None:
            with suppress(RuntimeError):  # closed meanwhile (the process exits)
                self.warm()

        thread = threading.Thread(target=warm, name="mesowriter-pool", daemon=True)
        thread.start()
        return thread

    def _adopt(self, block: SharedBlock, *, extra: bool) -> None:
        with self._lock:
            if self._closed:
                block.destroy()
                raise RuntimeError("the ring pool is closed")
            self._blocks[block.name] = block
            self._free[block.name] = [(PAGE, block.size - PAGE)]  # page 0: magic
            if extra:
                self._extra.add(block.name)
        if self._on_block is not None:
            self._on_block(block)

    # -- regions ---------------------------------------------------------------------
    def acquire(
        self, nbytes: int, *, wait_for_warm: bool = True
    ) -> tuple[Region, SharedBlock] | None:
        """A free region of `nbytes` in a warm block, or None (fast)."""
        need = round_up(nbytes)
        if wait_for_warm:
            with self._lock:
                waiting = self._warming
            if waiting is not None:
                waiting.wait()
        with self._lock:
            for name, ranges in self._free.items():
                if name in self._extra:
                    continue
                for i, (off, size) in enumerate(ranges):
                    if size >= need:
                        if size == need:
                            del ranges[i]
                        else:
                            ranges[i] = (off + need, size - need)
                        return Region(name, off, need), self._blocks[name]
        return None

    def create(self, nbytes: int) -> tuple[Region, SharedBlock]:
        """A block of its own for one ring (slow: ~1 s a GiB)."""
        block = SharedBlock.create(round_up(nbytes) + PAGE)
        self._adopt(block, extra=True)
        with self._lock:
            self._free[block.name] = []
        return Region(block.name, PAGE, round_up(nbytes)), block

    def release(self, region: Region) -> SharedBlock | None:
        """Give a region back; returns a block that is now gone (an extra
        block whose ring closed), which workers must unmap."""
        with self._lock:
            if region.block not in self._blocks:
                return None
            if region.block in self._extra:
                self._extra.discard(region.block)
                self._free.pop(region.block, None)
                gone = self._blocks.pop(region.block)
            else:
                _give_back(self._free[region.block], region.offset, region.nbytes)
                return None
        gone.destroy()
        return gone

    def free_bytes(self) -> int:
        with self._lock:
            return sum(
                s for n, r in self._free.items() if n not in self._extra for _, s in r
            )

    @property
    def blocks(self) -> list[SharedBlock]:
        with self._lock:
            return list(self._blocks.values())

    def close(self) -> list[str]:
        """Destroy every block (exactly once); returns their names."""
        with self._lock:
            self._closed = True
            waiting = self._warming
        if waiting is not None:
            waiting.wait()
        with self._lock:
            blocks = list(self._blocks.values())
            self._blocks.clear()
            self._free.clear()
            self._extra.clear()
        for block in blocks:
            block.destroy()
        return [b.name for b in blocks]

    def reopen(self) -> None:
        """Allow warming again after `close` (the service was reaped)."""
        with self._lock:
            self._closed = False


def _give_back(ranges: list[tuple[int, int]], offset: int, nbytes: int) -> None:
    """Insert a free range, merging it with its neighbours."""
    ranges.append((offset, nbytes))
    ranges.sort()
    merged: list[tuple[int, int]] = []
    for off, size in ranges:
        if merged and merged[-1][0] + merged[-1][1] == off:
            merged[-1] = (merged[-1][0], merged[-1][1] + size)
        else:
            merged.append((off, size))
    ranges[:] = merged
