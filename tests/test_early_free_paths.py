"""Early free on every path, in-process: a worker's runner on a real ring and
a real TIFF, the producer's part played by the test (publishing only where
`seq - freed_cursor < n_slots`, as `Stream.write`), and a worker's death as
an exception at the point where the process would be SIGKILLed.

Freed slots are filled with junk the moment they are free (a producer that
reuses them at once), so a slot read after its free puts junk in the file;
every frame's pixels are checked in the final TIFF.
(Written by an adversarial review of the change; the first test failed on it.)"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgspec
import numpy as np
import pytest
import tifffile

from mesowriter import StreamReport, _worker
from mesowriter._ring import PAGE, FrameRing, RingLayout, SharedBlock
from mesowriter._spec import StreamSpec


class _Died(BaseException):
    """The worker process is SIGKILLed here."""


def _frame(i: int, shape: tuple[int, int]) -> np.ndarray:
    return np.full(shape, i + 1, "<u2")


def _setup(
    tmp_path: Path,
    shape: tuple[int, int],
    frames: int,
    metadata_bytes: int,
    ring_bytes: int = 2 << 20,
):
    layout = RingLayout.plan(
        ring_bytes=ring_bytes,
        shape=shape,
        dtype=np.dtype("<u2"),
        metadata_bytes=metadata_bytes,
    )
    block = SharedBlock.create(layout.region_bytes + PAGE)
    placed = msgspec.structs.replace(layout, block=block.name, offset=PAGE)
    ring = FrameRing.create(placed, block)
    spec = StreamSpec(
        stream_id=1,
        path=str(tmp_path / "a.ome.tiff"),
        kind="ome-tiff",
        shape=shape,
        dtype="<u2",
        frames=frames,
    )
    return placed, block, ring, spec


def _publish(ring: FrameRing, shape: tuple[int, int], count: int) -> None:
    first = ring.write_cursor
    for seq in range(first, first + count):
        ring.pixels(seq)[...] = _frame(seq, shape)
        ring.put_metadata(seq, seq, msgspec.json.encode({"i": seq}))
    ring.received = ring.write_cursor = first + count


def _assert_file_holds(path: str, total: int, shape: tuple[int, int]) -> None:
    """The TIFF holds frames 0..total-1, in order, pixel by pixel."""
    with tifffile.TiffFile(path) as tf:
        got = np.stack([p.asarray() for p in tf.pages])
    assert len(got) == total
    bad = [i for i in range(total) if not np.array_equal(got[i], _frame(i, shape))]
    assert not bad, bad


def _runner(
    spec: StreamSpec, layout: RingLayout, block: SharedBlock, resume: bool = False
) -> _worker.StreamRunner:
    """A worker's runner for the stream, its file settled (a replacement's
    with `resume`)."""
    runner = _worker.StreamRunner(spec, layout, block, resume, lambda _f: None)
    try:
        runner.settle()
    except BaseException:
        runner.release()
        raise
    return runner


def _dies(runner: _worker.StreamRunner) -> None:
    """What a SIGKILL leaves: the process's descriptors, lock and mapping
    go, the file, journal and ring stay as they are."""
    runner.sink.abort()
    assert runner.journal is not None
    runner.journal.close()


def _write_all(runner: _worker.StreamRunner) -> None:
    runner.flush = True
    while runner.next < runner.published():
        runner.pump()
    runner._drain()


@pytest.mark.parametrize(
    ("shape", "metadata_bytes"),
    [((64, 64), 32 * 1024), ((128, 160), 4096)],
    ids=["slots-freed-at-commit", "early-free-ring"],
)
def test_a_death_between_the_two_cursor_stores_of_a_commit_is_resumed(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    shape: tuple[int, int],
    metadata_bytes: int,
) -> None:
    """A commit moves both cursors. Had it stored the freed cursor first, a
    worker killed between the two stores left freed > read over frames
    whose positions were never put in the table (a sink that frees at
    commit, or frames the clamp held back): the replacement adopted them
    from stale positions and lost the stream."""
    frames = 40
    layout, block, ring, spec = _setup(tmp_path, shape, frames, metadata_bytes)
    runner = _runner(spec, layout, block)
    try:
        _publish(ring, shape, 10)
        _write_all(runner)
        assert ring.read_cursor == ring.freed_cursor == 10
        _publish(ring, shape, 10)
        # For the early-free ring, hold the harvest back so the commit (not
        # _free_written) is what moves freed_cursor, as when the clamp holds.
        monkeypatch.setattr(runner.sink, "written_uncommitted", lambda: [])

        # SIGKILL between the two cursor stores of that commit: the first
        # of them (whichever the code does first) lands, the second not.
        stores: list[str] = []
        originals = {n: getattr(FrameRing, n) for n in ("read_cursor", "freed_cursor")}

        def dying(name: str) -> property:
            prop = originals[name]

            def setter(self: FrameRing, value: int) -> None:
                if value > 10:
                    stores.append(name)
                    if len(stores) == 2:
                        raise _Died
                prop.fset(self, value)  # type: ignore[misc]

            return property(prop.fget, setter)

        for name in originals:
            monkeypatch.setattr(FrameRing, name, dying(name))
        with pytest.raises(_Died):
            _write_all(runner)
        for name, prop in originals.items():
            monkeypatch.setattr(FrameRing, name, prop)
        # 20 frames journalled (synced) and committed in the file; one of
        # the two words says 20, the other 10.
        assert sorted((ring.freed_cursor, ring.read_cursor)) == [10, 20]
    finally:
        _dies(runner)
        runner.release()

    # The replacement.
    try:
        r2 = _runner(spec, layout, block, resume=True)
        try:
            _publish(ring, shape, frames - 20)
            _write_all(r2)
            report = r2.close("completed", None)
        finally:
            r2.release()
    finally:
        ring.close()
        block.destroy()
    assert report.frames_written == frames, report
    _assert_file_holds(spec.path, frames, shape)


def _drive(runner: _worker.StreamRunner, ring: FrameRing, shape, total: int) -> None:
    """Producer and worker in one thread: publish what the ring has room for
    (seq - freed_cursor < n_slots, as Stream.write), pump, until `total`."""
    _pump_until(runner, ring, shape, total, lambda: runner.next >= total)
    runner._drain()


def _pump_until(
    runner: _worker.StreamRunner,
    ring: FrameRing,
    shape,
    total: int,
    done: Callable[[], bool],
) -> None:
    """As _drive, until `done()`, without the drain."""
    import time

    runner.flush = True
    deadline = time.monotonic() + 30
    while not done():
        while ring.write_cursor < total and (
            ring.write_cursor - ring.freed_cursor < ring.n_slots
        ):
            _publish(ring, shape, 1)
        if not runner.pump():
            runner.sink.wait_for_writes(0.05)
        assert time.monotonic() < deadline, "stalled"


def per_frame(shape: tuple[int, int]) -> int:
    return shape[0] * shape[1] * 2 + 2 * (2048 + 32) + 4096


@pytest.mark.parametrize(
    ("shape", "metadata_bytes", "declared", "total"),
    [
        ((100, 130), 2048, 80, 80),  # 26000 B: staged, mid-page carries
        ((64, 64), 1024, 12, 80),  # more than declared: the tail moves
    ],
    ids=["staged-unaligned", "tail-relocation"],
)
def test_adoption_with_slots_reused(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    shape: tuple[int, int],
    metadata_bytes: int,
    declared: int,
    total: int,
) -> None:
    from mesowriter import _faults
    from mesowriter.sinks import _tiff

    layout, block, ring, spec = _setup(
        tmp_path, shape, declared, metadata_bytes, ring_bytes=20 * per_frame(shape)
    )
    assert layout.early_free == layout.n_slots >= 8
    try:
        runner = _runner(spec, layout, block)
        assert runner.sink.file.direct  # type: ignore[attr-defined]
        # Commits only when forced: freed runs early_free past read.
        runner.sink.commit_bytes = 4 * layout.n_slots * layout.frame_nbytes
        monkeypatch.setattr(_tiff, "COMMIT_SECONDS", 1e9)
        monkeypatch.setattr(_worker, "IDLE_SECONDS", 1e9)
        mark = (
            layout.early_free - 1
            if declared == total
            else declared + layout.early_free // 2
        )

        def die() -> None:
            raise _Died

        monkeypatch.setattr(_faults, "_die", die)
        runner.faults.die_written = mark
        try:
            with pytest.raises(_Died):
                _drive(runner, ring, shape, total)
        finally:
            _dies(runner)
            runner.release()
        monkeypatch.undo()
        freed, read = ring.freed_cursor, ring.read_cursor
        assert read < freed
        r2 = _runner(spec, layout, block, resume=True)
        try:
            assert r2.next == freed
            # The producer reuses the freed slots at once.
            _drive(r2, ring, shape, total)
            report = r2.close("completed", None)
        finally:
            r2.release()
    finally:
        ring.close()
        block.destroy()
    assert report.frames_written == total, report.problems()
    assert any("adopted" in n for n in report.notes), report.notes
    _assert_file_holds(spec.path, total, shape)


def _drive_scribbling(
    runner: _worker.StreamRunner,
    ring: FrameRing,
    shape,
    total: int,
    settle: bool = True,
) -> None:
    """As _drive, and every slot is filled with junk the moment its frame is
    freed (a producer reusing it at once): a slot read after its free puts
    junk in the file."""
    import time

    runner.flush = True
    junk = np.full(shape, 0xDEAD, "<u2")
    scribbled = ring.freed_cursor
    deadline = time.monotonic() + 30
    while runner.next < total or (settle and runner.sink._pending):  # type: ignore[attr-defined]
        while ring.write_cursor < total and (
            ring.write_cursor - ring.freed_cursor < ring.n_slots
        ):
            _publish(ring, shape, 1)
        progress = runner.pump()
        for seq in range(scribbled, ring.freed_cursor):
            if seq + ring.n_slots >= ring.write_cursor:  # not reused yet
                ring.pixels(seq)[...] = junk
        scribbled = max(scribbled, ring.freed_cursor)
        if not progress:
            runner.sink.wait_for_writes(0.05)
        assert time.monotonic() < deadline, "stalled"
    runner._drain()


@pytest.mark.parametrize("shape", [(64, 64), (100, 130)], ids=["aligned", "staged"])
@pytest.mark.parametrize("fail_at", [0.35, 0.6])
def test_a_failed_write_after_early_frees_reads_no_freed_slot(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    shape: tuple[int, int],
    fail_at: float,
) -> None:
    import errno

    from mesowriter.sinks import _tiff

    total = 120
    layout, block, ring, spec = _setup(
        tmp_path, shape, total, 1024, ring_bytes=20 * per_frame(shape)
    )
    assert layout.early_free > 0
    try:
        runner = _runner(spec, layout, block)
        monkeypatch.setattr(_tiff, "COMMIT_SECONDS", 0.02)
        sink = runner.sink
        f = sink.file  # type: ignore[attr-defined]
        target = sink.geo.pixel_offset(int(total * fail_at))  # type: ignore[attr-defined]
        real = f.pwrite
        fired: list[int] = []

        def pwrite(buf, offset):  # type: ignore[no-untyped-def]
            n = memoryview(buf).nbytes
            if not fired and offset <= target < offset + n:
                fired.append(offset)
                raise OSError(errno.ENOSPC, "injected")
            return real(buf, offset)

        monkeypatch.setattr(f, "pwrite", pwrite)
        report = _to_the_end(runner, ring, shape, total)
    finally:
        ring.close()
        block.destroy()
    assert fired
    assert report.frames_written == total, report.problems()
    _assert_file_holds(spec.path, total, shape)


def _to_the_end(
    runner: _worker.StreamRunner, ring: FrameRing, shape: tuple[int, int], total: int
) -> StreamReport:
    """Drive the stream to `total` frames (slots junked once free), close it."""
    try:
        _drive_scribbling(runner, ring, shape, total)
        return runner.close("completed", None)
    finally:
        runner.release()


def _scribble_uncommitted(ring: FrameRing, shape) -> None:
    """Junk into every slot of [read, freed) not yet holding a later frame."""
    junk = np.full(shape, 0xBEEF, "<u2")
    for seq in range(ring.read_cursor, ring.freed_cursor):
        if seq + ring.n_slots >= ring.write_cursor:
            ring.pixels(seq)[...] = junk


@pytest.mark.parametrize("shape", [(64, 64), (100, 130)], ids=["aligned", "staged"])
def test_a_replacement_that_dies_too(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, shape: tuple[int, int]
) -> None:
    from mesowriter import _faults
    from mesowriter.sinks import _tiff

    total = 120
    layout, block, ring, spec = _setup(
        tmp_path, shape, total, 1024, ring_bytes=20 * per_frame(shape)
    )

    def die() -> None:
        raise _Died

    monkeypatch.setattr(_faults, "_die", die)
    monkeypatch.setattr(_tiff, "COMMIT_SECONDS", 1e9)
    monkeypatch.setattr(_worker, "IDLE_SECONDS", 1e9)
    n = layout.n_slots
    try:
        for k, mark in enumerate([n - 1, 2 * n + 3, None]):
            r = _runner(spec, layout, block, resume=k > 0)
            try:
                per = (4 * n) if k == 0 else (n // 2)  # R1 commits as it goes
                r.sink.commit_bytes = per * layout.frame_nbytes
                r.faults.die_written = mark
                if mark is None:
                    _drive_scribbling(r, ring, shape, total)
                    report = r.close("completed", None)
                    break
                with pytest.raises(_Died):
                    _drive_scribbling(r, ring, shape, total)
                assert ring.read_cursor < ring.freed_cursor
                _dies(r)
                _scribble_uncommitted(ring, shape)
            finally:
                r.release()
    finally:
        ring.close()
        block.destroy()
    assert report.frames_written == total, report.problems()
    assert report.dropped_indices == []
    _assert_file_holds(spec.path, total, shape)


def test_a_reservation_failing_after_a_tail_move_keeps_what_the_move_committed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Moving the tail extent commits every write in flight first; if the
    reservation right after it fails, those commits must still reach the
    journal (they were lost, and every later journal line then carried the
    metadata of another frame), and the batch is tried frame by frame."""
    import errno

    shape, declared, total = (64, 64), 12, 80
    layout, block, ring, spec = _setup(
        tmp_path, shape, declared, 1024, ring_bytes=20 * per_frame(shape)
    )
    try:
        runner = _runner(spec, layout, block)
        sink = runner.sink
        real = sink._reserve_room  # type: ignore[attr-defined]
        failed: list[int] = []

        def reserve_room(top: int) -> None:
            if sink.tail and not failed:  # type: ignore[attr-defined]
                failed.append(top)
                raise OSError(errno.EIO, "injected")
            real(top)

        monkeypatch.setattr(sink, "_reserve_room", reserve_room)
        report = _to_the_end(runner, ring, shape, total)
    finally:
        ring.close()
        block.destroy()
    assert failed, "the tail never moved"
    assert report.frames_written == total, report.problems()
    _assert_file_holds(spec.path, total, shape)
    side = json.loads(Path(f"{spec.path}_frame_metadata.json").read_text("utf-8"))
    assert [m["i"] for m in side["p0"]] == list(range(total))


def test_ifd_writes_never_take_a_pixel_writes_thread(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A batch's IFDs are buffered writes, which wait for the inode lock
    while direct writes are in flight: on a pixel thread one kept a pixel
    write waiting. They run on a thread of their own."""
    import threading

    shape, total = (64, 64), 60
    layout, block, ring, spec = _setup(
        tmp_path, shape, total, 1024, ring_bytes=20 * per_frame(shape)
    )
    try:
        runner = _runner(spec, layout, block)
        sink = runner.sink
        f = sink.file  # type: ignore[attr-defined]
        seen: dict[str, set[str]] = {"pixels": set(), "ifds": set()}
        pwrite, put_all = f.pwrite, sink._put_all  # type: ignore[attr-defined]

        def pixels(buf: Any, offset: int) -> int:
            seen["pixels"].add(threading.current_thread().name)
            return int(pwrite(buf, offset))

        def ifds(writes: Any) -> int:
            seen["ifds"].add(threading.current_thread().name)
            return int(put_all(writes))

        monkeypatch.setattr(f, "pwrite", pixels)
        monkeypatch.setattr(sink, "_put_all", ifds)
        report = _to_the_end(runner, ring, shape, total)
    finally:
        ring.close()
        block.destroy()
    assert report.frames_written == total, report.problems()
    assert seen["pixels"] and seen["ifds"]
    assert not seen["pixels"] & seen["ifds"], seen
    assert all(name.startswith("mesowriter-io") for name in seen["pixels"]), seen
    _assert_file_holds(spec.path, total, shape)


@pytest.mark.parametrize("shape", [(64, 64), (100, 130)], ids=["aligned", "staged"])
def test_frames_freed_while_their_journal_lines_wait_for_a_sync(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, shape: tuple[int, int]
) -> None:
    """The journal syncs on a thread of its own. While its syncs are held
    back the worker goes on writing and committing; the read cursor never
    passes a line that is not durable and the freed cursor stays within
    early_free of it (those frames' metadata is kept). Once one sync
    returns, the slots it lets go include frames the sink committed whose
    lines are still unsynced: their tabled positions come from the
    runner's unsynced list, and a death then is resumed pixel by pixel."""
    import threading

    from mesowriter.sinks import _tiff

    total = 120
    layout, block, ring, spec = _setup(
        tmp_path, shape, total, 1024, ring_bytes=20 * per_frame(shape)
    )
    monkeypatch.setattr(_tiff, "COMMIT_SECONDS", 1e9)
    monkeypatch.setattr(_worker, "IDLE_SECONDS", 1e9)
    allowed, dead = threading.Semaphore(0), threading.Event()
    early = layout.early_free
    try:
        runner = _runner(spec, layout, block)
        runner.sink.commit_bytes = 3 * layout.frame_nbytes  # commits often
        sync = runner._journal_sync._sync
        targets: list[int] = []

        def held() -> None:
            allowed.acquire(timeout=30)
            if dead.is_set():
                raise OSError("the process is gone")
            targets.append(runner._journal_sync._wanted)
            sync()

        runner._journal_sync._sync = held
        # Every sync held: the sink commits all it may while the freed
        # cursor stops early_free past the read cursor.
        _pump_until(
            runner,
            ring,
            shape,
            total,
            lambda: (
                ring.freed_cursor == early
                and runner.appended >= early + ring.n_slots // 2
            ),
        )
        assert ring.read_cursor == runner.committed == 0
        # One sync through: the read cursor moves past its lines only.
        allowed.release()
        _pump_until(runner, ring, shape, total, lambda: runner.committed > 0)
        first = ring.read_cursor
        assert first == runner.committed < runner.appended
        assert ring.freed_cursor == first + early  # [early, first + early):
        assert ring.freed_cursor <= runner.appended  # committed, unsynced
        # The worker dies; the sync that would have run on its descriptor
        # fails with the process.
        _dies(runner)
        dead.set()
        allowed.release()
        runner.release()
        _scribble_uncommitted(ring, shape)
        r2 = _runner(spec, layout, block, resume=True)
        assert r2.next == first + early
        report = _to_the_end(r2, ring, shape, total)
    finally:
        dead.set()
        allowed.release()
        ring.close()
        block.destroy()
    assert report.frames_written == total, report.problems()
    assert any("adopted" in n for n in report.notes), report.notes
    _assert_file_holds(spec.path, total, shape)


def test_a_slow_journal_sync_holds_the_read_cursor_not_the_writes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Released, the held sync moves the read cursor past every line it
    covered, and one sync covers every commit that queued meanwhile."""
    import threading
    import time

    from mesowriter.sinks import _tiff

    shape, total = (64, 64), 30
    layout, block, ring, spec = _setup(
        tmp_path, shape, total, 1024, ring_bytes=20 * per_frame(shape)
    )
    monkeypatch.setattr(_tiff, "COMMIT_SECONDS", 1e9)
    released = threading.Event()
    syncs: list[float] = []
    try:
        runner = _runner(spec, layout, block)
        runner.sink.commit_bytes = 2 * layout.frame_nbytes
        sync = runner._journal_sync._sync

        def held() -> None:
            released.wait()
            syncs.append(time.monotonic())
            sync()

        runner._journal_sync._sync = held
        runner.flush = True
        _publish(ring, shape, 12)
        deadline = time.monotonic() + 30
        while runner.appended < 12:
            if not runner.pump():
                runner.sink.wait_for_writes(0.05)
            assert time.monotonic() < deadline, "stalled"
        assert ring.read_cursor == 0 and runner.committed == 0
        released.set()
        runner.wait_journal()
        assert ring.read_cursor == runner.committed == 12
        # The first sync may have been waiting already; the rest is one.
        assert 1 <= len(syncs) <= 2, syncs
        assert ring.bytes_written == 12 * layout.frame_nbytes
        _publish(ring, shape, total - 12)
        report = _to_the_end(runner, ring, shape, total)
    finally:
        released.set()
        ring.close()
        block.destroy()
    assert report.frames_written == total, report.problems()
    _assert_file_holds(spec.path, total, shape)
