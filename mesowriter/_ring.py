"""The frame ring: a region of a shared-memory block, holding fixed-size slots.

A ring is both the pixel store and the record of progress, so that a
replacement worker can resume from it alone::

    region + 0        header page: layout + cursors, the producer's words
                      and the worker's on cache lines of their own
                        write_cursor  frames published by the producer
                        received      frames handed to write() (with drops)
                        freed_cursor  frames whose pixels are in the file (the
                                      writes returned): their slots are free
                        read_cursor   frames committed (durable) by the worker
    region + 4096     metadata table: per entry, u64 place in the metadata
                      area, u64 length, u64 stream index (the producer's),
                      u64 file position once written (the worker's)
    region + meta     metadata area: each frame's JSON bytes, one after the
                      other, starting over at the area's start when the next
                      would not fit (room for a full table of the largest)
    region + data     slots: frame k in slot k % n_slots, back to back
                      (stride = frame bytes), so consecutive frames are
                      consecutive bytes and a batch is one buffer

Frame `seq` has its pixels in slot `seq % n_slots` and its metadata in entry
`seq % n_entries` (up to four times as many entries as slots for large
frames, as many for small ones: see `entries_per_slot`). The producer (the
acquisition process) only ever advances `write_cursor` and `received`; the
worker only ever advances `freed_cursor` and `read_cursor`. A slot is free
for frame `seq` once `seq - freed_cursor < n_slots`.

Why two worker cursors: a commit (three syncs, 20-65 ms each on a busy
disk) frees nothing until it returns. With slots freed only at commit, the
ring held every frame between copy and commit and capped the rate well
below the disk's. A slot is free as soon as its frame's write returned; the
frame's metadata stays until the journal has it (`read_cursor`), in the
table that the worker keeps at most `n_entries - n_slots` ahead of it
(`freed_cursor - read_cursor <= n_entries - n_slots`), so `seq - freed_cursor <
n_slots` also keeps every metadata entry not yet journalled. A replacement
worker adopts the frames in [read_cursor, freed_cursor): their pixels and
IFDs are in the file, at the positions their entries give, and their slots
may hold later frames already; it commits them without reading a slot.

Each cursor is an aligned 8-byte word with a single writer, so no lock is
needed. A word `wake_at` tells the producer that the worker waits on its
pipe, and from which frame on it wants the doorbell (see `Stream.write`).

Ordering: pixels are copied before `write_cursor` moves. On x86-64 stores
become visible in program order, so a worker that sees the cursor sees the
pixels. On other CPUs the producer rings the doorbell after every frame: the
pipe's kernel lock orders the stores for the worker that reads it.

Blocks (`SharedBlock`) belong to the pool (`mesowriter._pool`): only the
creator unlinks a block, exactly once; attaching processes never let their
resource tracker claim it.
"""

from __future__ import annotations

import math
import mmap
import os
import platform
import struct
import sys
from contextlib import suppress
from multiprocessing import shared_memory
from typing import Any

import msgspec
import numpy as np

PAGE = 4096
MAGIC = 0x4D45534F52494E47  # "MESORING", first word of every block and region
RING_VERSION = 5
DEFAULT_METADATA_BYTES = 32 * 1024
MAX_SLOTS = 4096
# The largest metadata a frame may carry is `metadata_bytes` less this (the
# head a slot kept before ring version 4: the limit users saw stays the same).
_META_HEAD = 16
# A metadata table entry: place in the metadata area, length, stream index
# (the producer's), then the frame's file position (the worker's, set once
# its write returned: see `FrameRing.set_positions`).
_META_ENTRY = struct.Struct("<QQQ")
_POSITION = struct.Struct("<Q")
_ENTRY_BYTES = _META_ENTRY.size + _POSITION.size
# Metadata entries per pixel slot: a frame's metadata outlives its slot
# until the journal has it (see the module docstring), so written frames may
# run up to (entries - 1) rings past the last commit. One more entry per
# EARLY_FREE_RATIO times the largest metadata in a frame, up to
# MAX_ENTRIES_PER_SLOT: the area is reserved for the largest, so a small
# frame would trade many of its slots for a disk speed it never needs (one
# entry per slot: slots are freed at commit), while a 2048x2048 frame pays
# 1.5% for four. Why four: a commit here takes about 220 ms (three syncs),
# and the frames harvested during one wait for the next, so at 2.3 GB/s two
# entries per slot (1 GiB past the commit, with a 1 GiB ring) still held
# the producer for whole commits (waits of 200 ms in every run of bench a).
EARLY_FREE_RATIO = 8
MAX_ENTRIES_PER_SLOT = 4


def entries_per_slot(frame_nbytes: int, metadata_bytes: int) -> int:
    """Metadata entries per pixel slot for frames of this size."""
    extra = frame_nbytes // (EARLY_FREE_RATIO * metadata_bytes)
    return 1 + min(MAX_ENTRIES_PER_SLOT - 1, extra)


# Header words (uint64 indices into a region's header page): constants, the
# worker's words, the producer's words, each group on a 64-byte cache line of
# its own, so that a frame's stores do not take the line the worker writes.
_MAGIC, _VERSION, _NSLOTS, _STRIDE, _FRAME_NBYTES = 0, 1, 2, 3, 4
_META_CAP, _DATA_OFFSET, _META_OFFSET = 5, 6, 7
_READ, _BYTES_WRITTEN, _WAKE_AT, _FREED = 8, 9, 10, 11
_WRITE, _RECEIVED = 16, 17
_HEADER_WORDS = 24
# The words `Stream.write` reads and sets itself, through `FrameRing.words`.
WRITE_WORD, FREED_WORD, RECEIVED_WORD, WAKE_AT_WORD = (
    _WRITE,
    _FREED,
    _RECEIVED,
    _WAKE_AT,
)


# CPUs whose stores other cores see in program order (total store order).
# MESOWRITER_PIPE_EVERY_FRAME=1 forces the other CPUs' protocol (for tests).
STORES_IN_ORDER = os.environ.get(
    "MESOWRITER_PIPE_EVERY_FRAME"
) != "1" and platform.machine().lower() in {
    "x86_64",
    "amd64",
    "i386",
    "i686",
    "x86",
}


def round_up(n: int, to: int = PAGE) -> int:
    return -(-n // to) * to


class RingLayout(msgspec.Struct, frozen=True):
    """Everything needed to find a ring; sent to workers as msgpack."""

    block: str  # the shared-memory block holding the ring
    offset: int  # where the ring's region starts in the block
    n_slots: int
    frame_nbytes: int
    metadata_bytes: int
    shape: tuple[int, ...]
    dtype: str
    n_entries: int  # metadata entries: n_slots, or more (slots freed early)

    @property
    def early_free(self) -> int:
        """How far `freed_cursor` may run ahead of `read_cursor`."""
        return self.n_entries - self.n_slots

    @property
    def slot_stride(self) -> int:
        return self.frame_nbytes

    @property
    def metadata_offset(self) -> int:
        return PAGE + round_up(self.n_entries * _ENTRY_BYTES)

    @property
    def metadata_area_bytes(self) -> int:
        """Room for a full table of the largest metadata, and the one gap
        left where the area starts over (see `FrameRing.put_metadata`)."""
        return (self.n_entries + 1) * self.metadata_bytes

    @property
    def data_offset(self) -> int:
        return self.metadata_offset + round_up(self.metadata_area_bytes)

    @property
    def region_bytes(self) -> int:
        return round_up(self.data_offset + self.n_slots * self.frame_nbytes)

    @staticmethod
    def plan(
        *,
        ring_bytes: int,
        shape: tuple[int, ...],
        dtype: np.dtype[Any],
        metadata_bytes: int = DEFAULT_METADATA_BYTES,
        max_slots: int = MAX_SLOTS,
    ) -> RingLayout:
        """Fit as many slots as `ring_bytes` allows (at least two)."""
        frame_nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
        if frame_nbytes <= 0:
            raise ValueError(f"frame shape {shape} holds no pixels")
        if metadata_bytes < 1024:
            raise ValueError("metadata_bytes must be at least 1024")
        entries = entries_per_slot(frame_nbytes, metadata_bytes)
        per_slot = frame_nbytes + entries * (metadata_bytes + _ENTRY_BYTES)
        n_slots = min(max_slots, (ring_bytes - 4 * PAGE - metadata_bytes) // per_slot)
        if n_slots < 2:
            raise ValueError(
                f"ring_bytes={ring_bytes} holds fewer than 2 frames of "
                f"{frame_nbytes} bytes; give at least "
                f"{2 * per_slot + 4 * PAGE + metadata_bytes}"
            )
        # Frames off the page grid are written in batches of whole pages
        # (`page_unit` frames). In a ring of whole units every such batch
        # starts on a page in memory too, so it goes to the disk straight
        # from the ring, with no copy (see TiffSink._write_pixels).
        unit = page_unit(frame_nbytes)
        if unit > 1 and n_slots >= 4 * unit:
            n_slots -= n_slots % unit
        return RingLayout(
            block="",
            offset=0,
            n_slots=int(n_slots),
            frame_nbytes=frame_nbytes,
            metadata_bytes=metadata_bytes,
            shape=tuple(int(s) for s in shape),
            dtype=dtype.str,
            n_entries=int(n_slots) * entries,
        )


def page_unit(nbytes: int, page: int = PAGE) -> int:
    """How many frames of `nbytes` end on a `page` boundary together."""
    return page // math.gcd(nbytes, page)


# -- shared-memory blocks -------------------------------------------------------------


def _attach_untracked(name: str) -> shared_memory.SharedMemory:
    """Attach without registering with this process's resource tracker.

    Under `spawn`, every process shares the parent's tracker; a registration
    by an attaching worker (and its later unregister) would either unlink the
    creator's block or forget it, so attachers stay out of the tracker.
    """
    if sys.version_info >= (3, 13):
        return shared_memory.SharedMemory(name, track=False)  # type: ignore[call-arg]
    from multiprocessing import resource_tracker

    original = resource_tracker.register
    resource_tracker.register = lambda *args, **kwargs: None  # type: ignore[assignment]
    try:
        return shared_memory.SharedMemory(name)
    finally:
        resource_tracker.register = original  # type: ignore[assignment]


class SharedBlock:
    """One shared-memory block: created and touched once, carved into rings."""

    def __init__(self, shm: shared_memory.SharedMemory, owner: bool) -> None:
        self._shm = shm
        self.owner = owner
        self.name = shm.name
        self.size = shm.size
        buf = shm.buf
        assert buf is not None
        self.buf: memoryview = buf
        self.huge_pages = False
        self._unlinked = False
        self._closed = False

    @classmethod
    def create(cls, size: int) -> SharedBlock:
        """Create, size and touch a block (slow: ~1 s a GiB on first touch)."""
        from mesowriter._platform import advise_huge_pages

        shm = shared_memory.SharedMemory(create=True, size=round_up(size))
        block = cls(shm, owner=True)
        mm = getattr(shm, "_mmap", None)
        if isinstance(mm, mmap.mmap):
            block.huge_pages = advise_huge_pages(mm)
        block.touch(write=True)
        block.buf[:8] = MAGIC.to_bytes(8, "little")
        return block

    @classmethod
    def attach(cls, name: str) -> SharedBlock:
        """Map a block made by the parent (in a worker); never unlinks it.

        The pages exist already (the creator touched them); this process
        maps them lazily, a minor fault per page on its first lap, off the
        acquisition's threads.
        """
        return cls(_attach_untracked(name), owner=False)

    def touch(self, write: bool) -> None:
        """Fault every page in now: a cold page copies ten times slower."""
        pages = np.ndarray((len(self.buf) // PAGE, PAGE), np.uint8, self.buf)
        if write:
            pages[:, 0] = 0
        else:
            int(pages[:, 0].sum())

    def region(self, offset: int, nbytes: int) -> memoryview:
        return self.buf[offset : offset + nbytes]

    def close(self) -> None:
        """Drop this process's mapping (every view must be gone)."""
        if self._closed:
            return
        self._closed = True
        del self.buf
        with suppress(BufferError):  # a caller still holds a view: unmapped at exit
            self._shm.close()

    def destroy(self) -> None:
        """Unmap, then (creator only) remove the block, exactly once."""
        self.close()
        if self.owner and not self._unlinked:
            self._unlinked = True
            with suppress(FileNotFoundError):
                self._shm.unlink()


# -- rings -----------------------------------------------------------------------------


# A batch worth a wake-up: the producer rings a sleeping worker's doorbell
# once this much waits, and the worker submits no smaller batch unless the
# frames have waited a nap, or the stream closes. A fast camera then pays one
# wake-up and one batch for many frames, and the worker does not spin on the
# core the acquisition shares (its hyperthread sibling, on many machines).
WAKE_BYTES = 32 * 1024 * 1024


class FrameRing:
    """A ring of frame slots in one region of a shared block."""

    def __init__(self, layout: RingLayout, region: memoryview) -> None:
        self.layout = layout
        self._buf: memoryview | None = region
        # The header's words as native uint64: a memoryview item costs the
        # hot path a third of a numpy scalar's (Stream.write reads `words`).
        self.words: memoryview = region[: _HEADER_WORDS * 8].cast("Q")
        self._dtype = np.dtype(layout.dtype)
        self.n_slots = layout.n_slots
        self.n_entries = layout.n_entries
        self.stride = layout.slot_stride
        self._data = layout.data_offset
        self._meta_table = PAGE
        self._meta_area = layout.metadata_offset
        self._meta_size = layout.metadata_area_bytes
        self._meta_max = layout.metadata_bytes - _META_HEAD
        self._meta_head = 0  # the producer's next place in the metadata area
        self._pixels = [self._pixel_view(i) for i in range(layout.n_slots)]
        self.wake_frames = max(
            1, min(layout.n_slots // 4, WAKE_BYTES // layout.frame_nbytes)
        )

    @classmethod
    def create(cls, layout: RingLayout, block: SharedBlock) -> FrameRing:
        """Lay a fresh ring out in its region (parent side); cursors at 0."""
        ring = cls(layout, block.region(layout.offset, layout.region_bytes))
        h = ring.words
        for word in range(_HEADER_WORDS):
            h[word] = 0
        h[_VERSION], h[_NSLOTS] = RING_VERSION, layout.n_slots
        h[_STRIDE], h[_FRAME_NBYTES] = layout.slot_stride, layout.frame_nbytes
        h[_META_CAP], h[_DATA_OFFSET] = layout.metadata_bytes, layout.data_offset
        h[_META_OFFSET] = layout.metadata_offset
        h[_MAGIC] = MAGIC
        return ring

    @classmethod
    def attach(cls, layout: RingLayout, block: SharedBlock) -> FrameRing:
        """A worker's view of a ring the parent created. Every place is
        computed again here, by this process's code: the words the creator
        wrote must agree, or the two would read and write different bytes
        (a worker spawned after `_ring.py` changed on disk, say)."""
        h = block.region(layout.offset, _HEADER_WORDS * 8).cast("Q")
        try:
            if h[_MAGIC] != MAGIC or h[_NSLOTS] != layout.n_slots:
                raise RuntimeError(f"no frame ring at {layout.block}+{layout.offset}")
            mine = (
                RING_VERSION,
                layout.slot_stride,
                layout.frame_nbytes,
                layout.metadata_bytes,
                layout.metadata_offset,
                layout.data_offset,
            )
            theirs = tuple(
                h[w]
                for w in (
                    _VERSION,
                    _STRIDE,
                    _FRAME_NBYTES,
                    _META_CAP,
                    _META_OFFSET,
                    _DATA_OFFSET,
                )
            )
        finally:
            h.release()
        if mine != theirs:
            raise RuntimeError(
                f"the frame ring at {layout.block}+{layout.offset} was laid out "
                f"by other code (version, stride, frame bytes, metadata bytes, "
                f"metadata offset, data offset: {theirs}, here {mine}): was "
                "mesowriter changed on disk while its service ran?"
            )
        return cls(layout, block.region(layout.offset, layout.region_bytes))

    # -- cursors ----------------------------------------------------------------
    @property
    def write_cursor(self) -> int:
        return self.words[_WRITE]

    @write_cursor.setter
    def write_cursor(self, value: int) -> None:
        self.words[_WRITE] = value

    @property
    def read_cursor(self) -> int:
        return self.words[_READ]

    @read_cursor.setter
    def read_cursor(self, value: int) -> None:
        self.words[_READ] = value

    @property
    def freed_cursor(self) -> int:
        """Frames whose slots are free: written to the file, maybe not
        yet committed (at most `layout.early_free` ahead of `read_cursor`)."""
        return self.words[_FREED]

    @freed_cursor.setter
    def freed_cursor(self, value: int) -> None:
        self.words[_FREED] = value

    @property
    def received(self) -> int:
        """Frames the producer was handed (written or dropped)."""
        return self.words[_RECEIVED]

    @received.setter
    def received(self, value: int) -> None:
        self.words[_RECEIVED] = value

    @property
    def bytes_written(self) -> int:
        return self.words[_BYTES_WRITTEN]

    @bytes_written.setter
    def bytes_written(self, value: int) -> None:
        self.words[_BYTES_WRITTEN] = value

    @property
    def wake_at(self) -> int:
        """Set by the worker just before it waits on its pipe: ring the
        doorbell once `write_cursor` reaches this (0: awake, or no doorbell
        wanted)."""
        return self.words[_WAKE_AT]

    @wake_at.setter
    def wake_at(self, value: int) -> None:
        self.words[_WAKE_AT] = value

    # -- slots ------------------------------------------------------------------
    def _pixel_view(self, slot: int) -> np.ndarray:
        off = self._data + slot * self.stride
        return np.ndarray(self.layout.shape, self._dtype, self._buf, off)

    def pixels(self, seq: int) -> np.ndarray:
        """The pixel array of frame `seq`'s slot (writable view)."""
        return self._pixels[seq % self.n_slots]

    def put_metadata(self, seq: int, index: int, data: bytes) -> bool:
        """Store frame `seq`'s stream index and metadata; False if too large.

        Producer side. Each frame's bytes follow the last frame's, so that a
        run of small metadata fills a few pages, not a page per frame. The
        area holds `n_entries + 1` of the largest: the frames not yet
        committed (at most `n_entries`, this one included, since the producer
        stays under `n_slots` past `freed_cursor` and the worker keeps that
        within `layout.early_free` of `read_cursor`) and the one gap left
        where the area starts over, so no frame's bytes reach those of a
        frame not yet committed.
        """
        n = len(data)
        if n > self._meta_max:
            return False
        buf = self._buf
        assert buf is not None
        at = self._meta_head
        if at + n > self._meta_size:
            at = 0
        start = self._meta_area + at
        buf[start : start + n] = data
        _META_ENTRY.pack_into(
            buf,
            self._meta_table + (seq % self.n_entries) * _ENTRY_BYTES,
            at,
            n,
            index,
        )
        self._meta_head = at + n
        return True

    def get_metadata(self, seq: int) -> tuple[int, bytes]:
        """Frame `seq`'s stream index and metadata JSON (worker side)."""
        buf = self._buf
        assert buf is not None
        at, n, index = _META_ENTRY.unpack_from(
            buf, self._meta_table + (seq % self.n_entries) * _ENTRY_BYTES
        )
        at = min(at, self._meta_size)
        n = min(n, self._meta_max, self._meta_size - at)
        start = self._meta_area + at
        return index, bytes(buf[start : start + n])

    def set_positions(self, first: int, positions: list[int]) -> None:
        """Worker side: the file positions of frames first.. (their writes
        returned), before `freed_cursor` passes them, for a replacement."""
        buf = self._buf
        assert buf is not None
        for seq, pos in enumerate(positions, first):
            _POSITION.pack_into(buf, self._position_at(seq), pos)

    def positions(self, first: int, stop: int) -> list[int]:
        """The file positions `set_positions` gave frames first..stop-1."""
        buf = self._buf
        assert buf is not None
        return [
            _POSITION.unpack_from(buf, self._position_at(seq))[0]
            for seq in range(first, stop)
        ]

    def _position_at(self, seq: int) -> int:
        """Where frame `seq`'s file position sits: after its table entry's
        producer fields."""
        entry = self._meta_table + (seq % self.n_entries) * _ENTRY_BYTES
        return entry + _META_ENTRY.size

    def span(self, first: int, count: int) -> memoryview:
        """The slots of frames first..first+count-1, back to back.

        The caller keeps the run inside one lap of the ring (no wrap).
        """
        slot = first % self.n_slots
        if slot + count > self.n_slots:
            raise ValueError("a span may not wrap around the ring")
        buf = self._buf
        assert buf is not None
        off = self._data + slot * self.stride
        return buf[off : off + count * self.stride]

    def run_length(
        self, first: int, stop: int, max_bytes: int, wrap: bool = False
    ) -> int:
        """How many frames from `first` (< stop) form one batch: at most
        `max_bytes` (at least one frame), and within one lap of the ring
        unless `wrap`."""
        to_wrap = stop - first if wrap else self.n_slots - first % self.n_slots
        return max(1, min(stop - first, to_wrap, max_bytes // self.stride))

    def wraps(self, first: int, count: int) -> bool:
        """Whether frames first..first+count-1 cross the ring's end."""
        return first % self.n_slots + count > self.n_slots

    # -- teardown ---------------------------------------------------------------
    def close(self) -> None:
        """Drop this ring's views of the block (the block stays mapped)."""
        self._pixels.clear()
        self.words.release()
        self.words = memoryview(bytearray(_HEADER_WORDS * 8)).cast("Q")
        self._buf = None

    @property
    def name(self) -> str:
        return f"{self.layout.block}+{self.layout.offset}"


def remove_stale_rings() -> list[str]:
    """Unlink ring blocks that no living process maps; return their names.

    The resource tracker removes a dead process's blocks, unless it died
    too (SIGKILL of a whole process group, a closed terminal, power loss of
    a container). Where the platform can tell (Linux), only blocks that
    carry the ring's magic and that no process maps are removed.
    """
    from mesowriter._platform import remove_shared_memory, stale_shared_memory

    removed = []
    for name in stale_shared_memory(MAGIC):
        with suppress(OSError):
            remove_shared_memory(name)
            removed.append(name)
    return removed


def page_aligned_buffer(nbytes: int) -> mmap.mmap:
    """An anonymous, page-aligned buffer, as direct I/O requires."""
    return mmap.mmap(-1, round_up(max(nbytes, 1)))
