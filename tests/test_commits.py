"""Commits on a thread of their own: writes go on while one waits for the
drive, nothing counts as committed before its last step returned, and a
commit that failed is never retried."""

from __future__ import annotations

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
from mesowriter.sinks._base import FrameBatch, SlotFrame
from mesowriter.sinks._tiff import TiffSink
from mesowriter.sinks._tiff_format import PAGE, newest_block
from tests.conftest import index_frame

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


def test_a_failed_sync_is_never_retried_and_reaches_the_user(tmp_path: Path) -> None:
    # The open syncs once and each commit twice: the fourth sync is the
    # first of the second commit. Linux reports lost pages to one sync
    # only, so a retry would "succeed" over them: the frames of that
    # commit and every later one are reported not written.
    path = tmp_path / "eio.ome.tiff"
    with WriterService(ring_bytes=4 << 20) as svc:
        stream = svc.open_stream(
            path, shape=SHAPE, dtype="uint16", _fault="fail-sync:4"
        )
        for i in range(10):
            stream.write(index_frame(i, SHAPE), {"i": i})
        deadline = time.monotonic() + 30
        while stream.frames_written < 10 and stream.error is None:  # a commit
            assert time.monotonic() < deadline
            time.sleep(0.01)
        with pytest.raises(WriterError, match="Input/output error") as info:
            for i in range(10, 400):
                stream.write(index_frame(i, SHAPE), {"i": i})
                time.sleep(0.002)
        assert "Traceback" in str(info.value.__cause__)
        with pytest.raises(WriterError) as closing:
            stream.close()
        report = closing.value.report  # type: ignore[attr-defined]
    assert report.finish_reason == "error" and "Input/output error" in report.error
    kept = report.frames_written  # the first commit's frames: 10, unless
    assert 1 <= kept <= 10  # the worker took them in two
    assert report.frames_received == report.frames_written + report.frames_dropped
    assert report.dropped_indices == list(range(kept, report.frames_received))
    data = tifffile.imread(path)  # finalised with what the first commit made durable
    np.testing.assert_array_equal(
        data.reshape(-1, *SHAPE), np.stack([index_frame(i, SHAPE) for i in range(kept)])
    )
    side = json.loads(Path(f"{path}_frame_metadata.json").read_text())["p0"]
    assert [m["i"] for m in side] == list(range(kept))
