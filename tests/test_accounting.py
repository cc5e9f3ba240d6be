"""Every frame handed to `Stream.write` is written or dropped with its index,
whatever stops it between being received and being published: a frame that
is not an array, an interruption at any point, a worker that dies for good
after frames were dropped."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tifffile

from mesowriter import FrameRejected, WriterError, WriterService
from tests.conftest import index_frame

SHAPE = (16, 24)


def _accounted(report: Any) -> None:
    assert report.frames_received == report.frames_written + report.frames_dropped
    assert len(report.dropped_indices) == report.frames_dropped


def test_a_frame_that_is_not_an_array_is_rejected_and_counted(tmp_path: Path) -> None:
    path = tmp_path / "ragged.ome.tiff"
    with WriterService(ring_bytes=1 << 20) as svc:
        stream = svc.open_stream(path, shape=SHAPE, dtype="uint16")
        stream.write(index_frame(0, SHAPE))
        with pytest.raises(FrameRejected, match="not an array"):
            stream.write([[1, 2], [3]])  # type: ignore[arg-type]
        stream.write(memoryview(index_frame(2, SHAPE)))  # any buffer is one
        report = stream.close()
    _accounted(report)
    assert report.drops == {"rejected": [1]} and report.frames_written == 2
    data = tifffile.imread(path)
    np.testing.assert_array_equal(data[1], index_frame(2, SHAPE))


@pytest.mark.parametrize("where", ["encode", "copy", "metadata"])
def test_an_interruption_before_publishing_drops_the_frame_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, where: str
) -> None:
    """Ctrl-C (KeyboardInterrupt) lands between any two steps of `write`:
    the frame is dropped as interrupted, and the next frame takes its slot."""
    from mesowriter import _stream

    path = tmp_path / f"interrupted-{where}.ome.tiff"
    with WriterService(ring_bytes=1 << 20) as svc:
        stream = svc.open_stream(path, shape=SHAPE, dtype="uint16")
        for i in range(3):
            stream.write(index_frame(i, SHAPE), {"i": i})

        def interrupt(*args: Any, **kwargs: Any) -> Any:
            raise KeyboardInterrupt

        with monkeypatch.context() as mp:
            if where == "encode":
                mp.setattr(stream._encoder, "encode", interrupt)
            elif where == "copy":
                mp.setattr(_stream.np, "copyto", interrupt)
            else:
                mp.setattr(stream._ring, "put_metadata", interrupt)
            with pytest.raises(KeyboardInterrupt):
                stream.write(index_frame(3, SHAPE), {"i": 3})
        for i in range(4, 6):
            stream.write(index_frame(i, SHAPE), {"i": i})
        report = stream.close()
    _accounted(report)
    assert report.drops == {"interrupted": [3]} and report.frames_written == 5
    data = tifffile.imread(path)
    kept = [0, 1, 2, 4, 5]
    np.testing.assert_array_equal(data, np.stack([index_frame(i, SHAPE) for i in kept]))


def test_a_dead_workers_report_names_the_unwritten_frames_after_drops(
    tmp_path: Path,
) -> None:
    """The worker dies for good with frames in the ring, after some were
    dropped for a full ring: the report this side makes names each frame
    not written by its own index (the drops shift them from the slots)."""
    shape = (64, 64)
    path = tmp_path / "dead.ome.tiff"
    with WriterService(ring_bytes=200_000, policy="drop", restart_workers=False) as svc:
        stream = svc.open_stream(path, shape=shape, dtype="uint16", _fault="slow:0.2")
        kept = [stream.write(index_frame(i, shape)) for i in range(40)]
        os.kill(svc.workers[0], signal.SIGKILL)
        deadline = time.monotonic() + 15
        while stream.error is None:
            assert time.monotonic() < deadline, "the worker's death went unseen"
            time.sleep(0.02)
        with pytest.raises(WriterError) as info:
            stream.close()
        report = info.value.report  # type: ignore[attr-defined]
    _accounted(report)
    published = [i for i, k in enumerate(kept) if k]
    ring_full = [i for i, k in enumerate(kept) if not k]
    assert ring_full and report.drops["ring_full"] == ring_full
    written = report.frames_written
    assert written < len(published)
    assert report.drops["stream_error"] == published[written:]


class _InterruptAfterAppend(list):  # type: ignore[type-arg]
    """A Ctrl-C landing right after a drop was appended (Python checks for
    signals when a call returns, before the call site is specialised)."""

    def append(self, item: Any) -> None:
        super().append(item)
        raise KeyboardInterrupt


def test_an_interruption_while_a_drop_is_recorded_counts_it_once(
    tmp_path: Path,
) -> None:
    with WriterService(ring_bytes=1 << 20) as svc:
        stream = svc.open_stream(
            tmp_path / "twice.ome.tiff", shape=SHAPE, dtype="uint16"
        )
        stream.write(index_frame(0, SHAPE))
        stream._drops["rejected"] = _InterruptAfterAppend()
        with pytest.raises(KeyboardInterrupt):
            stream.write(np.zeros((3, 3), np.uint16))  # rejected, then Ctrl-C
        stream._drops["rejected"] = list(stream._drops["rejected"])
        stream.write(index_frame(2, SHAPE))
        live = (stream.frames_received, stream.frames_dropped)
        report = stream.close()
    assert live == (3, 1)
    assert report.drops == {"rejected": [1]}
    _accounted(report)
