"""The frame ring on its own: layout, cursors, metadata, ownership, cleanup."""

from __future__ import annotations

import os
from multiprocessing import resource_tracker, shared_memory

import numpy as np
import pytest

from mesowriter._ring import PAGE, FrameRing, RingLayout, remove_stale_rings


def _layout(ring_bytes: int = 1 << 20) -> RingLayout:
    return RingLayout.plan(
        ring_bytes=ring_bytes,
        shape=(30, 50),
        dtype=np.dtype("uint16"),
        slot_prefix=PAGE,
    )


def test_slots_are_page_aligned_and_metadata_round_trips() -> None:
    ring = FrameRing.create(_layout())
    try:
        assert ring.n_slots >= 2 and ring.stride % PAGE == 0
        for seq in range(ring.n_slots + 3):  # more than one lap
            pixels = ring.pixels(seq)
            assert pixels.ctypes.data % PAGE == 0
            pixels[:] = seq
            assert ring.put_metadata(seq, seq * 10, b'{"seq": %d}' % seq)
            assert ring.get_metadata(seq) == (seq * 10, b'{"seq": %d}' % seq)
        assert not ring.put_metadata(0, 0, b"x" * ring.layout.metadata_bytes)
        span = ring.span(0, 2)
        assert len(span) == 2 * ring.stride
        with pytest.raises(ValueError, match="wrap"):
            ring.span(ring.n_slots - 1, 2)
        runs = list(ring.runs(ring.n_slots - 2, ring.n_slots + 3, 1 << 30))
        assert runs == [(ring.n_slots - 2, 2), (ring.n_slots, 3)]
        del pixels, span  # views must go before the mapping does
    finally:
        ring.close()
        ring.unlink()


def test_attacher_never_unlinks_and_creator_unlinks_once() -> None:
    ring = FrameRing.create(_layout())
    other = FrameRing.attach(ring.layout)
    ring.write_cursor = 7
    assert other.write_cursor == 7
    other.close()
    other.unlink()  # not the owner: no effect
    assert os.path.exists(f"/dev/shm/{ring.name}")
    ring.close()
    ring.unlink()
    ring.unlink()  # exactly once: the second is a no-op
    assert not os.path.exists(f"/dev/shm/{ring.name}")


@pytest.mark.skipif(not os.path.isdir("/proc"), reason="needs Linux /proc")
def test_stale_rings_are_removed_live_ones_kept() -> None:
    live = FrameRing.create(_layout())
    stale = FrameRing.create(_layout())
    name = stale.name
    # what a SIGKILL of the whole process group leaves: a block nobody maps,
    # no tracker left to remove it
    resource_tracker.unregister(f"/{name}", "shared_memory")
    stale.close()
    plain = shared_memory.SharedMemory(create=True, size=PAGE)  # not a ring
    try:
        removed = remove_stale_rings()
        assert name in removed
        assert not os.path.exists(f"/dev/shm/{name}")
        assert os.path.exists(f"/dev/shm/{live.name}")
        assert os.path.exists(f"/dev/shm/{plain.name}")
    finally:
        live.close()
        live.unlink()
        plain.close()
        plain.unlink()
