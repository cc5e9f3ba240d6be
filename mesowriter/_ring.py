"""The frame ring: one shared-memory block of fixed-size, page-aligned slots.

The ring is both the pixel store and the record of progress, so that a
replacement worker can resume from it alone::

    offset 0      header page: layout + two cursors
                    write_cursor  frames published by the producer
                    read_cursor   frames durably written by the worker
    offset 4096   metadata area: per slot, u32 length + JSON bytes
    data_offset   slots: [sink prefix][pixels, padded to 4096] x n_slots

Frame `seq` lives in slot `seq % n_slots`. The producer (the acquisition
process) only ever advances `write_cursor`; the worker only ever advances
`read_cursor`. A slot is free for frame `seq` once `seq - read_cursor <
n_slots`. Each cursor is an aligned 8-byte word with a single writer, so no
lock is needed. A third word, `worker_asleep`, tells the producer whether
the worker waits on its pipe; the producer rings the doorbell only then, so
that a busy worker is not woken once per frame (see `Stream.write`).

Ordering: pixels are copied before `write_cursor` moves. On x86-64 stores
become visible in program order, so a worker that sees the cursor sees the
pixels. On other CPUs the producer rings the doorbell after every frame: the
pipe's kernel lock orders the stores for the worker that reads it.

Only the creator unlinks the block, exactly once. Attaching processes never
let their resource tracker claim it.
"""

from __future__ import annotations

import mmap
import os
import platform
import sys
from collections.abc import Iterator
from contextlib import suppress
from dataclasses import dataclass
from multiprocessing import shared_memory

import msgspec
import numpy as np

from mesowriter._platform import remove_shared_memory, stale_shared_memory
from mesowriter._platform import shm_available_bytes as shm_available_bytes

PAGE = 4096
MAGIC = 0x4D45534F52494E47  # "MESORING"
RING_VERSION = 2
DEFAULT_METADATA_BYTES = 32 * 1024
MAX_SLOTS = 4096

# Header words (uint64 indices into the header page).
_MAGIC, _VERSION, _NSLOTS, _STRIDE, _PREFIX, _FRAME_NBYTES = 0, 1, 2, 3, 4, 5
_META_CAP, _DATA_OFFSET, _WRITE, _READ, _BYTES_WRITTEN = 6, 7, 8, 9, 10
_ASLEEP = 11
_HEADER_WORDS = 16


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
    """Everything needed to attach to a ring; sent to workers as msgpack."""

    name: str
    n_slots: int
    slot_prefix: int
    frame_nbytes: int
    metadata_bytes: int
    shape: tuple[int, ...]
    dtype: str

    @property
    def slot_stride(self) -> int:
        return self.slot_prefix + round_up(self.frame_nbytes)

    @property
    def data_offset(self) -> int:
        return PAGE + round_up(self.n_slots * self.metadata_bytes)

    @property
    def total_bytes(self) -> int:
        return self.data_offset + self.n_slots * self.slot_stride

    @staticmethod
    def plan(
        *,
        ring_bytes: int,
        shape: tuple[int, ...],
        dtype: np.dtype,
        slot_prefix: int,
        metadata_bytes: int = DEFAULT_METADATA_BYTES,
        max_slots: int = MAX_SLOTS,
    ) -> RingLayout:
        """Fit as many slots as `ring_bytes` allows (at least two)."""
        if slot_prefix % PAGE:
            raise ValueError("slot_prefix must be a multiple of 4096")
        frame_nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
        if frame_nbytes <= 0:
            raise ValueError(f"frame shape {shape} holds no pixels")
        per_slot = slot_prefix + round_up(frame_nbytes) + metadata_bytes
        n_slots = min(max_slots, (ring_bytes - PAGE) // per_slot)
        if n_slots < 2:
            raise ValueError(
                f"ring_bytes={ring_bytes} holds fewer than 2 frames of "
                f"{frame_nbytes} bytes; give at least {2 * per_slot + PAGE}"
            )
        return RingLayout(
            name="",
            n_slots=int(n_slots),
            slot_prefix=slot_prefix,
            frame_nbytes=frame_nbytes,
            metadata_bytes=metadata_bytes,
            shape=tuple(int(s) for s in shape),
            dtype=dtype.str,
        )


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


@dataclass
class _Views:
    header: np.ndarray
    meta_len: np.ndarray


class FrameRing:
    """A ring of frame slots in one shared-memory block."""

    def __init__(
        self, layout: RingLayout, shm: shared_memory.SharedMemory, owner: bool
    ) -> None:
        self.layout = layout
        self._shm = shm
        self._owner = owner
        self._unlinked = False
        self._closed = False
        buf = shm.buf
        assert buf is not None
        self._buf: memoryview = buf
        self._header = np.ndarray((_HEADER_WORDS,), np.uint64, buf, 0)
        self._dtype = np.dtype(layout.dtype)
        self.n_slots = layout.n_slots
        self.stride = layout.slot_stride
        self._pixels = [self._pixel_view(i) for i in range(layout.n_slots)]

    # -- creation and attachment -------------------------------------------
    @classmethod
    def create(cls, layout: RingLayout) -> FrameRing:
        """Create, size and touch a new ring (in the producer's process)."""
        shm = shared_memory.SharedMemory(create=True, size=layout.total_bytes)
        layout = msgspec.structs.replace(layout, name=shm.name)
        ring = cls(layout, shm, owner=True)
        ring._touch(write=True)
        h = ring._header
        h[_MAGIC], h[_VERSION], h[_NSLOTS] = MAGIC, RING_VERSION, layout.n_slots
        h[_STRIDE], h[_PREFIX] = layout.slot_stride, layout.slot_prefix
        h[_FRAME_NBYTES], h[_META_CAP] = layout.frame_nbytes, layout.metadata_bytes
        h[_DATA_OFFSET] = layout.data_offset
        return ring

    @classmethod
    def attach(cls, layout: RingLayout) -> FrameRing:
        """Attach to an existing ring (in a worker); never unlinks it."""
        shm = _attach_untracked(layout.name)
        ring = cls(layout, shm, owner=False)
        if int(ring._header[_MAGIC]) != MAGIC:
            ring.close()
            raise RuntimeError(f"shared memory {layout.name!r} is not a frame ring")
        ring._touch(write=False)
        return ring

    def _touch(self, write: bool) -> None:
        """Fault every page in now: a cold page copies ten times slower."""
        pages = np.ndarray((len(self._buf) // PAGE, PAGE), np.uint8, self._buf)
        if write:
            pages[:, 0] = 0
        else:
            int(pages[:, 0].sum())

    # -- cursors ----------------------------------------------------------------
    @property
    def write_cursor(self) -> int:
        return int(self._header[_WRITE])

    @write_cursor.setter
    def write_cursor(self, value: int) -> None:
        self._header[_WRITE] = value

    @property
    def read_cursor(self) -> int:
        return int(self._header[_READ])

    @read_cursor.setter
    def read_cursor(self, value: int) -> None:
        self._header[_READ] = value

    @property
    def bytes_written(self) -> int:
        return int(self._header[_BYTES_WRITTEN])

    @bytes_written.setter
    def bytes_written(self, value: int) -> None:
        self._header[_BYTES_WRITTEN] = value

    @property
    def worker_asleep(self) -> bool:
        """Set by the worker just before it waits on its pipe."""
        return bool(self._header[_ASLEEP])

    @worker_asleep.setter
    def worker_asleep(self, value: bool) -> None:
        self._header[_ASLEEP] = int(value)

    # -- slots ------------------------------------------------------------------
    def _slot_offset(self, slot: int) -> int:
        return self.layout.data_offset + slot * self.stride

    def _pixel_view(self, slot: int) -> np.ndarray:
        off = self._slot_offset(slot) + self.layout.slot_prefix
        return np.ndarray(self.layout.shape, self._dtype, self._buf, off)

    def pixels(self, seq: int) -> np.ndarray:
        """The pixel array of frame `seq`'s slot (writable view)."""
        return self._pixels[seq % self.n_slots]

    def put_metadata(self, seq: int, index: int, data: bytes) -> bool:
        """Store frame `seq`'s stream index and metadata; False if too large."""
        cap = self.layout.metadata_bytes
        if len(data) > cap - 16:
            return False
        off = PAGE + (seq % self.n_slots) * cap
        self._buf[off : off + 16] = len(data).to_bytes(8, "little") + index.to_bytes(
            8, "little"
        )
        self._buf[off + 16 : off + 16 + len(data)] = data
        return True

    def get_metadata(self, seq: int) -> tuple[int, bytes]:
        """Frame `seq`'s stream index and metadata JSON."""
        off = PAGE + (seq % self.n_slots) * self.layout.metadata_bytes
        n = int.from_bytes(self._buf[off : off + 8], "little")
        index = int.from_bytes(self._buf[off + 8 : off + 16], "little")
        return index, bytes(self._buf[off + 16 : off + 16 + n])

    def prefix(self, seq: int) -> memoryview:
        off = self._slot_offset(seq % self.n_slots)
        return self._buf[off : off + self.layout.slot_prefix]

    def span(self, first: int, count: int) -> memoryview:
        """Contiguous [prefix + padded pixels] of frames first..first+count-1.

        The caller keeps the run inside one lap of the ring (no wrap).
        """
        slot = first % self.n_slots
        if slot + count > self.n_slots:
            raise ValueError("a span may not wrap around the ring")
        off = self._slot_offset(slot)
        return self._buf[off : off + count * self.stride]

    def runs(self, first: int, stop: int, max_bytes: int) -> Iterator[tuple[int, int]]:
        """Split frames [first, stop) into (first, count) runs that do not wrap."""
        per_run = max(1, max_bytes // self.stride)
        seq = first
        while seq < stop:
            to_wrap = self.n_slots - seq % self.n_slots
            count = min(stop - seq, to_wrap, per_run)
            yield seq, count
            seq += count

    # -- teardown ---------------------------------------------------------------
    def close(self) -> None:
        """Drop this process's mapping (views first, or mmap refuses)."""
        if self._closed:
            return
        self._closed = True
        self._pixels.clear()
        del self._header
        del self._buf
        with suppress(BufferError):  # a caller still holds a view: unmapped at exit
            self._shm.close()

    def destroy(self) -> None:
        """Unmap, then (creator only) remove the block."""
        self.close()
        self.unlink()

    def unlink(self) -> None:
        """Remove the block from the system: creator only, exactly once."""
        if not self._owner or self._unlinked:
            return
        self._unlinked = True
        with suppress(FileNotFoundError):
            self._shm.unlink()

    @property
    def name(self) -> str:
        return self.layout.name


def remove_stale_rings() -> list[str]:
    """Remove frame rings that no living process maps; return their names.

    The resource tracker removes a dead process's blocks, unless it died
    too (SIGKILL of a whole process group, power loss of a container).
    Only blocks that carry the ring's magic and that no process maps are
    removed (the platform layer knows where that can be told).
    """
    removed = []
    for name in stale_shared_memory(MAGIC):
        with suppress(OSError):
            remove_shared_memory(name)
            removed.append(name)
    return removed


def page_aligned_buffer(nbytes: int) -> mmap.mmap:
    """An anonymous, page-aligned buffer, as direct I/O requires."""
    return mmap.mmap(-1, round_up(max(nbytes, 1)))
