"""Commits on a thread of their own: writes go on while one waits for the
drive, nothing counts as committed before its last step returned, and a
commit that failed is never retried."""

from __future__ import annotations

import errno
import json
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import tifffile

from mesowriter import WriterError, WriterService
from mesowriter._ring import page_aligned_buffer
from mesowriter._spec import StreamSpec
from mesowriter.sinks._base import BatchFailed, FrameBatch, SlotFrame
from mesowriter.sinks._tiff import TiffSink
from mesowriter.sinks._tiff_format import PAGE, newest_block
from tests.conftest import index_frame, write_until_the_error

SHAPE = (64, 64)  # 8192 bytes: the direct path, straight from the "ring"


def _batch(frames: np.ndarray, first: int, count: int) -> FrameBatch:
    part = frames[first : first + count]
    return FrameBatch(
        [SlotFrame(first + k, part[k], b"{}") for k in range(count)],
        memoryview(part.reshape(-1).view(np.uint8)),
        part[0].nbytes,
    )


def _wait_for_writes(sink: TiffSink) -> None:
    deadline = time.monotonic() + 30
    while any(not fu.done() for p in sink._pending for fu in p.futures):
        assert time.monotonic() < deadline, "writes never finished"
        sink.wait_for_writes(0.1)


def _committed_on_disk(path: Path) -> int:
    block = newest_block(path.read_bytes()[:PAGE])
    assert block is not None
    return block.committed


def test_writes_go_on_while_a_commit_waits_for_the_drive(tmp_path: Path) -> None:
    path = tmp_path / "overlap.ome.tiff"
    spec = StreamSpec(
        stream_id=1, path=str(path), kind="ome-tiff", shape=SHAPE, dtype="<u2"
    )
    # Frames in page-aligned memory, as ring slots are.
    frames = np.frombuffer(page_aligned_buffer(8 * 8192), "<u2").reshape(8, *SHAPE)
    frames[:] = [index_frame(i, SHAPE) for i in range(8)]
    sink = TiffSink(spec)
    sink.open()
    sink.commit_bytes = 1  # every completed batch is due a commit
    assert sink.file is not None
    entered, release = threading.Event(), threading.Event()
    real_sync = sink.file.sync

    def held_sync() -> None:  # a drive that takes its time
        entered.set()
        release.wait(30)
        real_sync()

    sink.file.sync = held_sync  # type: ignore[method-assign]
    try:
        assert sink.submit(_batch(frames, 0, 4)) == []
        _wait_for_writes(sink)
        assert sink.collect() == []  # the commit started; it has not returned
        assert entered.wait(10)
        # The loop goes on: a second batch is written while the sync waits.
        assert sink.submit(_batch(frames, 4, 4)) == []
        _wait_for_writes(sink)
        with open(path, "rb") as fh:
            fh.seek(sink.geo.pixel_offset(4))
            on_disk = np.frombuffer(fh.read(4 * frames[0].nbytes), "<u2")
        np.testing.assert_array_equal(on_disk.reshape(4, *SHAPE), frames[4:])
        # Nothing is committed, in the sink or on disk, until it returns.
        assert sink.collect() == [] and sink.committed == 0
        assert _committed_on_disk(path) == 0
        assert sink.in_flight() and sink.next_commit_in() is None
    finally:
        release.set()
    assert sink.drain() == list(range(8))
    assert sink.committed == 8 and not sink.in_flight()
    assert _committed_on_disk(path) == 8
    sink.close("completed", iter([(i, b"{}") for i in range(8)]))
    np.testing.assert_array_equal(tifffile.imread(path), frames)


@pytest.mark.parametrize("nth", [4, 5], ids=["before-links", "after-links"])
def test_a_failed_sync_is_never_retried_and_reaches_the_user(
    tmp_path: Path, nth: int
) -> None:
    # The open syncs once and each commit twice: the fourth sync is the
    # first of the second commit, the fifth its second, once the links over
    # its frames are written. Linux reports lost pages to one sync only, so
    # a retry would "succeed" over them: the frames of that commit and every
    # later one are reported not written, and no IFD leads to them.
    path = tmp_path / "eio.ome.tiff"
    with WriterService(ring_bytes=4 << 20) as svc:
        stream = svc.open_stream(
            path, shape=SHAPE, dtype="uint16", _fault=f"fail-sync:{nth}"
        )
        write_until_the_error(stream, SHAPE)
        with pytest.raises(WriterError) as closing:
            stream.close()
        report = closing.value.report  # type: ignore[attr-defined]
    assert report.finish_reason == "error" and "Input/output error" in report.error
    kept = report.frames_written  # the first commit's frames: 10, unless
    assert 1 <= kept <= 10  # the worker took them in two
    assert report.frames_received == report.frames_written + report.frames_dropped
    assert report.dropped_indices == list(range(kept, report.frames_received))
    with tifffile.TiffFile(path) as tf:  # the chain ends where the frames do
        assert len(tf.pages) == kept
        assert all(page.asarray().shape == SHAPE for page in tf.pages)
    data = tifffile.imread(path)  # finalised with what the first commit made durable
    np.testing.assert_array_equal(
        data.reshape(-1, *SHAPE), np.stack([index_frame(i, SHAPE) for i in range(kept)])
    )
    side = json.loads(Path(f"{path}_frame_metadata.json").read_text())["p0"]
    assert [m["i"] for m in side] == list(range(kept))


def _sink(tmp_path: Path, **spec: object) -> TiffSink:
    sink = TiffSink(
        StreamSpec(
            stream_id=1,
            path=str(tmp_path / "unit.ome.tiff"),
            kind="ome-tiff",
            shape=SHAPE,
            dtype="<u2",
            **spec,  # type: ignore[arg-type]
        )
    )
    sink.open()
    sink.commit_bytes = 1
    return sink


def _aligned_frames(n: int) -> np.ndarray:
    frames = np.frombuffer(page_aligned_buffer(n * 8192), "<u2").reshape(n, *SHAPE)
    frames[:] = [index_frame(i, SHAPE) for i in range(n)]
    return frames


def test_waiting_for_a_write_sleeps_until_it_lands(tmp_path: Path) -> None:
    # A batch is a pixel write and an IFD write; the IFDs land first. The
    # wait must then sleep on the pixels, not return at once (a spinning
    # loop starves the I/O threads of the GIL).
    sink = _sink(tmp_path)
    assert sink.file is not None
    release = threading.Event()
    real_pwrite = sink.file.pwrite

    def held_pwrite(buf: object, offset: int) -> int:
        release.wait(30)
        return real_pwrite(buf, offset)  # type: ignore[arg-type]

    sink.file.pwrite = held_pwrite  # type: ignore[method-assign]
    try:
        sink.submit(_batch(_aligned_frames(2), 0, 2))
        deadline = time.monotonic() + 10
        while not sink._pending[0].futures[-1].done():  # the IFDs
            assert time.monotonic() < deadline
            time.sleep(0.001)
        t0 = time.monotonic()
        sink.wait_for_writes(0.3)
        assert time.monotonic() - t0 >= 0.25
    finally:
        release.set()
    assert sink.drain() == [0, 1]
    sink.close("completed", iter([(0, b"{}"), (1, b"{}")]))


def test_a_flush_that_lost_cached_writes_fails_the_commit(tmp_path: Path) -> None:
    # Buffered pixels are flushed every `sync_every` bytes on the I/O
    # threads; a flush that failed took the one report of lost pages, so
    # the commit's own sync would succeed: the commit must fail anyway.
    sink = _sink(tmp_path, direct_io=False)
    f = sink.file
    assert f is not None and not f.direct
    f.sync_every = 1  # a flush after every pixel write
    frames = _aligned_frames(4)
    assert sink.submit(_batch(frames, 0, 2)) == []
    _wait_for_writes(sink)

    def lost() -> None:
        raise OSError(errno.EIO, "Input/output error")

    f._flush_dirty = lost  # type: ignore[method-assign]
    sink.submit(_batch(frames, 2, 2))
    _wait_for_writes(sink)
    with pytest.raises(BatchFailed) as info:
        sink.drain()
    assert info.value.failed == 0 and info.value.committed == []
    assert sink.committed == 0 and not sink.in_flight()
    with pytest.raises(OSError, match="earlier commit failed"):
        sink.submit(_batch(frames, 2, 2))
    sink.abort()


def test_a_commit_that_cannot_start_stops_commits_and_keeps_what_came_before(
    tmp_path: Path,
) -> None:
    sink = _sink(tmp_path)
    frames = _aligned_frames(4)
    sink.submit(_batch(frames, 0, 2))
    _wait_for_writes(sink)
    assert sink.collect() == []  # the first commit is running
    sink.submit(_batch(frames, 2, 2))
    _wait_for_writes(sink)

    def too_long(frames: int) -> bytes:
        raise ValueError("provisional description does not fit its page")

    sink._description_page = too_long  # type: ignore[method-assign]
    with pytest.raises(BatchFailed) as info:
        sink.drain()
    # The first commit's frames are on the exception (the worker journals
    # them); the second batch is given up, and close finalises the first.
    assert info.value.committed == [0, 1] and info.value.failed == 0
    assert sink.committed == 2 and not sink.in_flight()
    with pytest.raises(OSError, match="earlier commit failed"):
        sink.submit(_batch(frames, 2, 2))
    sink.close("error", iter([(i, b"{}") for i in range(2)]))
    np.testing.assert_array_equal(tifffile.imread(sink.spec.path), frames[:2])


def test_idle_makes_written_frames_due_at_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("mesowriter.sinks._tiff.COMMIT_SECONDS", 3600.0)
    sink = _sink(tmp_path)
    sink.commit_bytes = 1 << 40  # never due by size
    sink.submit(_batch(_aligned_frames(2), 0, 2))
    _wait_for_writes(sink)
    assert sink.collect() == [] and sink._job is None  # not due by the pace
    assert sink.collect(idle=True) == [] and sink._job is not None
    assert sink.drain() == [0, 1]
    sink.close("completed", iter([(0, b"{}"), (1, b"{}")]))


class _Recording:
    """An AlignedFile that logs its metadata writes and syncs."""

    def __init__(self, inner: object, log: list[tuple[str, int]]) -> None:
        self._inner, self._log = inner, log

    def __getattr__(self, name: str) -> object:
        return getattr(self._inner, name)

    def pwrite_meta(self, data: bytes, offset: int) -> None:
        self._log.append(("write", offset))
        self._inner.pwrite_meta(data, offset)  # type: ignore[attr-defined]

    def sync(self) -> None:
        self._log.append(("sync", 0))
        self._inner.sync()  # type: ignore[attr-defined]


def test_after_a_failed_commit_the_chain_is_cut_before_anything_overwrites_it(
    tmp_path: Path,
) -> None:
    # The second sync of a commit failed: the links over its frames are in
    # the file. Finalising first ends the chain at the last committed frame
    # and syncs that, before the description or new IFDs may land on the
    # IFDs past it (a cut in between would leave a chain into garbage).
    sink = _sink(tmp_path)
    f = sink.file
    assert f is not None
    frames = _aligned_frames(4)
    sink.submit(_batch(frames, 0, 2))
    assert sink.drain() == [0, 1]
    syncs = 0
    real_sync = f.sync

    def second_fails() -> None:
        nonlocal syncs
        syncs += 1
        if syncs == 2:
            raise OSError(errno.EIO, "Input/output error")
        real_sync()

    f.sync = second_fails  # type: ignore[method-assign]
    sink.submit(_batch(frames, 2, 2))
    with pytest.raises(BatchFailed):
        sink.drain()
    del f.sync
    log: list[tuple[str, int]] = []
    sink.file = _Recording(f, log)  # type: ignore[assignment]
    sink.close("error", iter([(0, b"{}"), (1, b"{}")]))
    cut = sink.geo.ifd_offset(1, sink.tail)
    first_sync = log.index(("sync", 0))
    assert ("write", cut) in log[:first_sync]
    assert all(op == "write" for op, _ in log[:first_sync])
    assert len(log[:first_sync]) == 2  # the "finalising" block, then the cut
    with tifffile.TiffFile(sink.spec.path) as tf:
        assert len(tf.pages) == 2
    np.testing.assert_array_equal(tifffile.imread(sink.spec.path), frames[:2])


def test_open_is_answered_before_the_new_files_syncs(tmp_path: Path) -> None:
    # On a disk busy with other programs' data a sync can take long; the
    # user's open must not wait for it (the frames wait in the ring).
    path = tmp_path / "slow.ome.tiff"
    with WriterService(ring_bytes=4 << 20) as svc:
        svc.prewarm()
        t0 = time.monotonic()
        stream = svc.open_stream(
            path, shape=SHAPE, dtype="uint16", _fault="slow-sync:1:5"
        )
        assert time.monotonic() - t0 < 2.5  # not the 5 s of the sync
        for i in range(6):
            assert stream.write(index_frame(i, SHAPE), {"i": i})
        report = stream.close()
    assert report.frames_written == 6 and report.frames_dropped == 0
    np.testing.assert_array_equal(
        tifffile.imread(path), np.stack([index_frame(i, SHAPE) for i in range(6)])
    )


def test_a_new_file_whose_first_sync_fails_reaches_the_user(tmp_path: Path) -> None:
    path = tmp_path / "eio-at-open.ome.tiff"
    with WriterService(ring_bytes=4 << 20) as svc:
        stream = svc.open_stream(
            path, shape=SHAPE, dtype="uint16", _fault="fail-sync:1"
        )
        with pytest.raises(WriterError, match="Input/output error"):
            for i in range(200):
                stream.write(index_frame(i, SHAPE), {"i": i})
                time.sleep(0.005)
        with pytest.raises(WriterError) as closing:
            stream.close()
        report = closing.value.report  # type: ignore[attr-defined]
    assert report.finish_reason == "error" and "Input/output error" in report.error
    assert report.frames_written == 0
    assert report.frames_received == report.frames_dropped
    assert not path.exists()  # no frames: no data file is kept


def test_a_batch_padding_a_shared_page_holds_back_the_next_after_a_fallback(
    tmp_path: Path,
) -> None:
    # A staged batch that ends inside a page writes that page padded with
    # zeros; the next batch shares the page, so it waits. Direct I/O that
    # the filesystem refuses at the write falls back to buffered writes:
    # the padded write is retried and must still hold the next one back.
    shape = (30, 50)  # 3000 bytes: three frames end inside a page
    spec = StreamSpec(
        stream_id=1,
        path=str(tmp_path / "fallback.ome.tiff"),
        kind="ome-tiff",
        shape=shape,
        dtype="<u2",
    )
    sink = TiffSink(spec)
    sink.open()
    f = sink.file
    assert f is not None and f.direct
    release = threading.Event()
    real_buffered = f._write_buffered

    def refused(view: memoryview, offset: int) -> int:
        raise OSError(errno.EINVAL, "Invalid argument")

    def held(view: memoryview, offset: int) -> int:
        if len(view) >= PAGE:  # the padded pixels, not the IFDs
            release.wait(30)
        return real_buffered(view, offset)

    f._write_direct = refused  # type: ignore[method-assign]
    f._write_buffered = held  # type: ignore[method-assign]
    buf = np.frombuffer(page_aligned_buffer(6 * 3000), "<u2")[: 6 * 1500]
    frames = buf.reshape(6, *shape)
    frames[:] = [index_frame(i, shape) for i in range(6)]
    try:
        sink.submit(_batch(frames, 0, 3))
        deadline = time.monotonic() + 10
        while f.direct:  # the refused direct write fell back
            assert time.monotonic() < deadline
            time.sleep(0.001)
        assert not sink.ready()  # the padded write is still in flight
    finally:
        release.set()
    assert sink.drain() == [0, 1, 2]
    assert sink.ready()
    sink.submit(_batch(frames, 3, 3))
    assert sink.drain() == [3, 4, 5]
    sink.close("completed", iter([(i, b"{}") for i in range(6)]))
    np.testing.assert_array_equal(tifffile.imread(spec.path), frames)
