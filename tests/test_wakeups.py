"""How producer and worker wake each other, and when written frames become
committed: the doorbell rings once per sleep, once a wake-up's worth of
frames waits to be written; frames that stopped arriving are committed
without waiting for the commit pace."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import msgspec
import numpy as np
import pytest

from mesowriter import _worker
from mesowriter._ring import PAGE, STORES_IN_ORDER, FrameRing, RingLayout, SharedBlock
from mesowriter._spec import StreamSpec
from mesowriter._stream import Stream

SHAPE = (30, 50)


class _Pipe:
    """The worker's end as the producer sees it: every message kept."""

    def __init__(self) -> None:
        self.sent: list[Any] = []

    def send_raw(self, raw: bytes) -> None:
        self.sent.append(raw)

    def send(self, msg: Any) -> None:
        self.sent.append(msg)


def _ring() -> tuple[FrameRing, SharedBlock]:
    layout = RingLayout.plan(ring_bytes=1 << 20, shape=SHAPE, dtype=np.dtype("<u2"))
    block = SharedBlock.create(layout.region_bytes + PAGE)
    placed = msgspec.structs.replace(layout, block=block.name, offset=PAGE)
    return FrameRing.create(placed, block), block


def _spec(tmp_path: Path) -> StreamSpec:
    return StreamSpec(
        stream_id=1,
        path=str(tmp_path / "d"),
        kind="discard",
        shape=SHAPE,
        dtype="<u2",
    )


@pytest.mark.skipif(not STORES_IN_ORDER, reason="other CPUs ring for every frame")
def test_the_doorbell_rings_once_per_sleep_once_enough_frames_wait(
    tmp_path: Path,
) -> None:
    ring, block = _ring()
    pipe = _Pipe()
    try:
        stream = Stream(_spec(tmp_path), ring, pipe, "block", lambda s: None)  # type: ignore[arg-type]
        frame = np.zeros(SHAPE, "<u2")
        for _ in range(3):  # the worker is awake (wake_at 0): nothing to say
            assert stream.write(frame)
        assert pipe.sent == []
        # It went to sleep having taken those 3 and wants 4 more: frames
        # merely waiting for their commit do not count.
        ring.wake_at = 3 + 4
        for _ in range(3):
            stream.write(frame)
        assert pipe.sent == []
        stream.write(frame)  # the 7th frame: one doorbell
        assert len(pipe.sent) == 1
        for _ in range(5):  # not yet awake: it was told once
            stream.write(frame)
        assert len(pipe.sent) == 1
        ring.wake_at = 0  # awake: silence again
        stream.write(frame)
        assert len(pipe.sent) == 1
        ring.wake_at = 13 + 4  # asleep again, with 13 taken
        for _ in range(3):
            stream.write(frame)
        assert len(pipe.sent) == 1
        stream.write(frame)
        assert len(pipe.sent) == 2
        assert ring.write_cursor == 17 and ring.received == 17
        del stream
    finally:
        ring.close()
        block.destroy()


def _runner(tmp_path: Path) -> tuple[_worker.StreamRunner, FrameRing, SharedBlock]:
    ring, block = _ring()
    runner = _worker.StreamRunner(
        _spec(tmp_path), ring.layout, block, False, lambda _f: None
    )
    runner.sink.commit_bytes = 1 << 40  # never due by size: only by time
    return runner, ring, block


def _publish(ring: FrameRing, count: int) -> None:
    first = ring.write_cursor
    for seq in range(first, first + count):
        ring.put_metadata(seq, seq, b"{}")
    ring.received = ring.write_cursor = first + count


def test_frames_that_stopped_arriving_are_committed_at_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    runner, ring, block = _runner(tmp_path)
    try:
        runner.flush = True  # submit what waits, however few
        monkeypatch.setattr(_worker, "IDLE_SECONDS", 0.0)
        monkeypatch.setattr(_worker, "IDLE_GAPS", 0)
        _publish(ring, 3)
        runner.pump()  # new frames: submitted, not idle yet
        assert runner.next == 3 and ring.read_cursor == 0
        runner.pump()  # nothing new since, everything submitted: commit
        assert ring.read_cursor == 3 and runner.committed == 3
        assert runner.wait_hint() is None  # nothing left to wake up for
    finally:
        runner.release()
        ring.close()
        block.destroy()


def test_frames_still_arriving_wait_for_the_commit_pace(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    runner, ring, block = _runner(tmp_path)
    try:
        runner.flush = True
        monkeypatch.setattr(_worker, "IDLE_SECONDS", 3600.0)
        monkeypatch.setattr("mesowriter.sinks._base.COMMIT_SECONDS", 3600.0)
        for _ in range(3):
            _publish(ring, 2)
            runner.pump()
            runner.pump()
        assert runner.next == 6 and ring.read_cursor == 0
        hint = runner.wait_hint()
        assert hint is not None and hint > 1000  # asleep until the pace says
        monkeypatch.setattr(_worker, "IDLE_SECONDS", 0.0)
        monkeypatch.setattr(_worker, "IDLE_GAPS", 0)
        assert runner.wait_hint() == 0.0  # frames stopped: wake now
        runner.pump()
        assert ring.read_cursor == 6
    finally:
        runner.release()
        ring.close()
        block.destroy()


def test_the_worker_asks_for_the_doorbell_once_a_wake_ups_worth_waits(
    tmp_path: Path,
) -> None:
    runner, ring, block = _runner(tmp_path)
    try:
        wake = ring.wake_frames
        assert runner.doorbell_at() == wake  # nothing taken yet
        _publish(ring, 2)
        runner.flush = True
        runner.pump()
        runner.flush = False
        assert runner.next == 2
        assert runner.doorbell_at() == 2 + wake  # written ones do not count
        _publish(ring, wake)  # a wake-up's worth waits: no doorbell wanted
        assert runner.doorbell_at() == 0
    finally:
        runner.release()
        ring.close()
        block.destroy()


def test_a_steady_slow_camera_is_not_taken_for_idle(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # 30 fps: 33 ms between frames, more than IDLE_SECONDS. Committing each
    # frame as "idle" would triple the syncs; frames wait for the pace, and
    # only once they stop are they committed at once.
    now = [time.monotonic()]
    monkeypatch.setattr(_worker.time, "monotonic", lambda: now[0])
    runner, ring, block = _runner(tmp_path)
    monkeypatch.setattr("mesowriter.sinks._base.COMMIT_SECONDS", 3600.0)
    try:
        runner.flush = True
        for _ in range(30):
            _publish(ring, 1)
            for _ in range(3):  # the worker's naps between two frames
                runner.pump()
                now[0] += 0.011
        committed_while_running = ring.read_cursor
        assert committed_while_running <= 2  # the first frames, before a gap is known
        now[0] += 0.2  # the camera stopped
        runner.pump()
        assert ring.read_cursor == 30
    finally:
        runner.release()
        ring.close()
        block.destroy()
