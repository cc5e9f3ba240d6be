"""The frame ring and the warm pool on their own: layout, cursors, metadata,
reuse of warm regions, ownership, cleanup."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from multiprocessing import shared_memory

import numpy as np
import pytest

from mesowriter._pool import RingPool
from mesowriter._ring import (
    FREED_WORD,
    MAGIC,
    PAGE,
    RECEIVED_WORD,
    WAKE_AT_WORD,
    WRITE_WORD,
    FrameRing,
    RingLayout,
    SharedBlock,
    remove_stale_rings,
)


def _layout(shape: tuple[int, ...] = (30, 50), ring_bytes: int = 1 << 20) -> RingLayout:
    return RingLayout.plan(ring_bytes=ring_bytes, shape=shape, dtype=np.dtype("uint16"))


def _ring_in(block: SharedBlock, layout: RingLayout, offset: int = PAGE) -> FrameRing:
    import msgspec

    placed = msgspec.structs.replace(layout, block=block.name, offset=offset)
    return FrameRing.create(placed, block)


@pytest.mark.parametrize(
    ("shape", "entries"), [((4, 4), 1), ((64, 64), 2), ((64, 128), 3), ((256, 256), 4)]
)
def test_metadata_of_frames_in_flight_survives_every_size_and_lap(
    shape: tuple[int, int], entries: int
) -> None:
    """Metadata is packed one frame after the other and starts over at the
    area's end: with the table full of frames not yet committed (for large
    frames up to four times the slots: a slot is freed once written, its
    metadata kept until journalled), each of any size up to the largest, no frame's
    metadata is ever overwritten."""
    frame = shape[0] * shape[1] * 2
    layout = RingLayout.plan(
        ring_bytes=64 * (frame + entries * (1024 + 32)) + 8 * PAGE,
        shape=shape,
        dtype=np.dtype("uint16"),
        metadata_bytes=1024,
    )
    assert layout.n_entries == entries * layout.n_slots and layout.n_slots >= 64
    block = SharedBlock.create(layout.region_bytes + PAGE)
    ring = _ring_in(block, layout)
    rng = np.random.default_rng(7)
    largest = layout.metadata_bytes - 16
    try:
        n = ring.n_entries
        assert n == ring.layout.n_entries and ring.n_slots >= 8
        # Runs of the largest, each after a first frame of another size, so
        # that the area starts over at every offset; then sizes at random.
        sizes = [
            size
            for first in (0, 1, 100, largest // 2, largest - 1)
            for size in [first] + [largest] * (2 * n)
        ]
        sizes += [int(rng.integers(largest + 1)) for _ in range(4 * n)]
        sent: dict[int, bytes] = {}
        for seq, size in enumerate(sizes):
            data = bytes([seq % 251]) * size
            assert ring.put_metadata(seq, 1000 + seq, data)
            sent[seq] = data
            sent.pop(seq - n, None)  # committed before `seq` could be published
            for s, d in sent.items():  # every frame still in flight
                assert ring.get_metadata(s) == (1000 + s, d)
        assert not ring.put_metadata(0, 0, b"x" * (largest + 1))
    finally:
        ring.close()
        block.destroy()


def test_the_producers_and_the_workers_words_share_no_cache_line() -> None:
    line = 64 // 8
    producer = {WRITE_WORD // line, RECEIVED_WORD // line}
    worker = {FREED_WORD // line, WAKE_AT_WORD // line}
    assert len(producer) == 1 and not producer & worker
    layout = _layout()
    block = SharedBlock.create(layout.region_bytes + PAGE)
    ring = _ring_in(block, layout)
    try:
        ring.write_cursor, ring.received, ring.read_cursor, ring.wake_at = 5, 6, 3, 9
        assert (ring.write_cursor, ring.received, ring.read_cursor, ring.wake_at) == (
            5,
            6,
            3,
            9,
        )
        twin = FrameRing.attach(ring.layout, block)  # a worker's view of the same
        assert (twin.write_cursor, twin.received, twin.read_cursor) == (5, 6, 3)
        twin.close()
        assert twin.read_cursor == 0  # a closed ring reads as empty
    finally:
        ring.close()
        block.destroy()


def test_slots_are_back_to_back_and_metadata_round_trips() -> None:
    layout = _layout()
    block = SharedBlock.create(layout.region_bytes + PAGE)
    ring = _ring_in(block, layout)
    try:
        assert ring.n_slots >= 2 and ring.stride == 30 * 50 * 2
        first = ring.pixels(0).ctypes.data
        for seq in range(ring.n_slots + 3):  # more than one lap
            pixels = ring.pixels(seq)
            # consecutive frames are consecutive bytes: one buffer per batch
            assert pixels.ctypes.data == first + (seq % ring.n_slots) * ring.stride
            pixels[:] = seq
            assert ring.put_metadata(seq, seq * 10, b'{"seq": %d}' % seq)
            assert ring.get_metadata(seq) == (seq * 10, b'{"seq": %d}' % seq)
        assert not ring.put_metadata(0, 0, b"x" * ring.layout.metadata_bytes)
        span = ring.span(0, 2)
        assert len(span) == 2 * ring.stride
        assert bytes(span[: ring.stride]) == ring.pixels(0).tobytes()
        with pytest.raises(ValueError, match="wrap"):
            ring.span(ring.n_slots - 1, 2)
        assert ring.run_length(ring.n_slots - 2, ring.n_slots + 3, 1 << 30) == 2
        assert ring.run_length(0, 100, ring.stride * 3) == 3
        del pixels, span  # views must go before the mapping does
    finally:
        ring.close()
        block.destroy()


def test_received_counter_and_cursors_are_shared_between_mappings() -> None:
    layout = _layout()
    block = SharedBlock.create(layout.region_bytes + PAGE)
    other = SharedBlock.attach(block.name)
    ring = _ring_in(block, layout)
    seen = FrameRing.attach(ring.layout, other)
    try:
        ring.write_cursor, ring.received = 7, 9
        seen.read_cursor = 5
        assert (seen.write_cursor, seen.received, ring.read_cursor) == (7, 9, 5)
    finally:
        seen.close()
        ring.close()
        other.destroy()  # not the owner: unmaps only
        assert os.path.exists(f"/dev/shm/{block.name}")
        block.destroy()
        block.destroy()  # exactly once: the second is a no-op
        assert not os.path.exists(f"/dev/shm/{block.name}")


def test_a_pool_ring_is_reused_warm_and_laid_out_anew() -> None:
    seen: list[str] = []
    pool = RingPool(8 << 20, on_block=lambda b: seen.append(b.name))
    try:
        pool.warm()
        assert len(seen) == 1
        layout = _layout((64, 64), ring_bytes=4 << 20)
        got = pool.acquire(layout.region_bytes)
        assert got is not None
        region, block = got
        ring = _ring_in(block, layout, region.offset)
        ring.write_cursor, ring.read_cursor, ring.received = 11, 11, 12
        ring.pixels(3)[:] = 4242
        ring.close()
        pool.release(region)
        # the same warm bytes come back for the next stream, with fresh cursors
        again = pool.acquire(layout.region_bytes)
        assert again is not None and again[0] == region
        other = _layout((32, 32), ring_bytes=4 << 20)
        ring2 = _ring_in(block, other, region.offset)
        assert (ring2.write_cursor, ring2.read_cursor, ring2.received) == (0, 0, 0)
        assert ring2.pixels(0).shape == (32, 32)
        ring2.close()
        pool.release(again[0])
        assert len(seen) == 1  # no new block was made
    finally:
        pool.close()
    assert not os.path.exists(f"/dev/shm/{seen[0]}")


def test_regions_do_not_overlap_and_extra_blocks_go_when_freed() -> None:
    pool = RingPool(4 << 20)
    try:
        pool.warm()
        a = pool.acquire(1 << 20)
        b = pool.acquire(1 << 20)
        assert a is not None and b is not None
        ra, rb = a[0], b[0]
        assert ra.offset + ra.nbytes <= rb.offset or rb.offset + rb.nbytes <= ra.offset
        assert pool.acquire(8 << 20) is None  # the warm block cannot hold it
        region, block = pool.create(8 << 20)  # a block of its own (slow path)
        name = block.name
        assert os.path.exists(f"/dev/shm/{name}")
        gone = pool.release(region)
        assert gone is not None and gone.name == name
        assert not os.path.exists(f"/dev/shm/{name}")
        pool.release(ra)
        pool.release(rb)
        assert pool.free_bytes() == 4 << 20  # merged back into one range
    finally:
        pool.close()


@pytest.mark.skipif(not os.path.isdir("/proc"), reason="needs Linux /proc")
def test_stale_rings_are_removed_live_ones_kept() -> None:
    live = SharedBlock.create(PAGE * 4)
    # what a SIGKILL of the whole process group leaves: a block nobody maps,
    # no tracker left to remove it
    code = (
        "from mesowriter._ring import SharedBlock\n"
        "from multiprocessing import resource_tracker\n"
        "b = SharedBlock.create(4 * 4096)\n"
        "resource_tracker.unregister('/' + b.name, 'shared_memory')\n"
        "print(b.name, flush=True)\n"
        "b.close()\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    stale = out.stdout.strip()
    plain = shared_memory.SharedMemory(create=True, size=PAGE)  # not a ring
    try:
        with open(f"/dev/shm/{stale}", "rb") as fh:
            assert int.from_bytes(fh.read(8), "little") == MAGIC
        deadline = time.monotonic() + 5
        removed: list[str] = []
        while stale not in removed and time.monotonic() < deadline:
            removed += remove_stale_rings()
        assert stale in removed
        assert not os.path.exists(f"/dev/shm/{stale}")
        assert os.path.exists(f"/dev/shm/{live.name}")
        assert os.path.exists(f"/dev/shm/{plain.name}")
    finally:
        live.destroy()
        plain.close()
        plain.unlink()


def test_a_worker_whose_code_lays_the_ring_out_otherwise_refuses_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A worker spawned after `_ring.py` changed on disk (an edit, a
    mutation run, an upgrade) computes its own places: a metadata area one
    slot smaller put its pixel slots 4 frames before the producer's, and it
    wrote zeros and the wrong frames to the file, with the right metadata.
    It must refuse the ring instead."""
    layout = _layout(shape=(64, 64), ring_bytes=4 << 20)
    block = SharedBlock.create(layout.region_bytes + PAGE)
    ring = _ring_in(block, layout)
    try:
        FrameRing.attach(ring.layout, block).close()  # the same code: taken
        monkeypatch.setattr(
            RingLayout,
            "metadata_area_bytes",
            property(lambda self: self.n_slots * self.metadata_bytes),
        )
        with pytest.raises(RuntimeError, match="laid out by other code"):
            FrameRing.attach(ring.layout, block)
    finally:
        ring.close()
        block.destroy()


def test_a_worker_whose_layout_is_larger_gets_the_layout_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A layout this process computes larger than the creator's would run
    past the end of a block sized for the ring: the header is compared
    before any slot is mapped, so the error says why."""
    layout = _layout(shape=(64, 64), ring_bytes=4 << 20)
    block = SharedBlock.create(layout.region_bytes + PAGE)
    ring = _ring_in(block, layout)
    try:
        monkeypatch.setattr(
            RingLayout,
            "metadata_area_bytes",
            property(lambda self: (self.n_entries + 2) * self.metadata_bytes),
        )
        with pytest.raises(RuntimeError, match="laid out by other code"):
            FrameRing.attach(ring.layout, block)
    finally:
        monkeypatch.undo()
        ring.close()
        block.destroy()
