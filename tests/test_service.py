"""WriterService end to end: real worker processes, real files read back."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tifffile

from mesowriter import FrameRejected, StreamReport, WriterError, WriterService
from tests.conftest import index_frame


def _read(path: Path) -> np.ndarray:
    with tifffile.TiffFile(path) as tf:
        # .ome.tif(f) names give OME-TIFF, plain .tif an ImageJ hyperstack
        assert tf.is_ome if ".ome." in path.name else tf.is_imagej
        data = tf.series[0].asarray()
    # every file memory-maps as one array of its frames
    np.testing.assert_array_equal(np.asarray(tifffile.memmap(path, mode="r")), data)
    return data


def test_index_frames_read_back_value_by_value(
    service: WriterService, tmp_path: Path
) -> None:
    shape = (64, 96)
    path = tmp_path / "idx.ome.tiff"
    stream = service.open_stream(path, shape=shape, dtype="uint16", frames=40)
    for i in range(40):
        assert stream.write(index_frame(i, shape), {"i": i})
    report = stream.close()
    assert report.finish_reason == "completed"
    assert (report.frames_received, report.frames_written, report.frames_dropped) == (
        40,
        40,
        0,
    )
    data = _read(path)
    assert data.shape == (40, *shape) and data.dtype == np.uint16
    for i in range(40):
        np.testing.assert_array_equal(data[i], index_frame(i, shape))
    sidecar = json.loads(Path(f"{path}_frame_metadata.json").read_text())
    assert sidecar == {"p0": [{"i": i} for i in range(40)]}
    on_disk = StreamReport.from_json(Path(f"{path}_report.json").read_bytes())
    assert (
        on_disk.frames_written == 40 and on_disk.bytes_written == report.bytes_written
    )


def test_a_lone_frame_reaches_the_disk_without_close_or_doorbell(
    service: WriterService, tmp_path: Path
) -> None:
    # A producer wakes a sleeping worker only once several frames wait; a
    # slow camera's single frame is still written promptly (the worker naps).
    path = tmp_path / "lone.ome.tiff"
    stream = service.open_stream(
        path, shape=(2048, 2048), dtype="uint16", ring_bytes=256 << 20
    )
    assert stream._ring.wake_frames > 1
    for i in range(2):
        assert stream.write(index_frame(i, (2048, 2048)), {"i": i})
        deadline = time.monotonic() + 10
        while stream.frames_written < i + 1 and time.monotonic() < deadline:
            time.sleep(0.005)
        assert stream.frames_written == i + 1
        with tifffile.TiffFile(path) as tf:  # on disk and declared, while open
            assert len(tf.series[0]) == i + 1
    assert stream.close().frames_written == 2


def test_several_streams_at_once_keep_their_own_order(tmp_path: Path) -> None:
    shapes = {"a.ome.tif": (32, 48), "b.ome.tif": (50, 20), "c.tif": (16, 16)}
    with WriterService(ring_bytes=8 << 20, workers=2) as svc:
        streams = {
            name: svc.open_stream(tmp_path / name, shape=shape, dtype="uint16")
            for name, shape in shapes.items()
        }
        assert len(set(svc.workers)) >= 2
        for i in range(60):
            for name, stream in streams.items():
                stream.write(
                    index_frame(i + len(name), shapes[name]), {"n": name, "i": i}
                )
        reports = {name: s.close() for name, s in streams.items()}
    for name, shape in shapes.items():
        assert reports[name].frames_written == 60
        data = _read(tmp_path / name)
        for i in range(60):
            np.testing.assert_array_equal(data[i], index_frame(i + len(name), shape))


def test_unknown_frame_count_grows_and_ring_wraps(tmp_path: Path) -> None:
    shape = (128, 128)  # 32 KiB frames in a ring of a few slots: many laps
    with WriterService(ring_bytes=300_000, workers=1) as svc:
        stream = svc.open_stream(
            tmp_path / "grow.ome.tiff", shape=shape, dtype="uint16"
        )
        assert stream._ring.n_slots < 10
        for i in range(200):
            stream.write(index_frame(i, shape))
        report = stream.close()
    assert report.frames_written == 200 and report.frames_expected is None
    assert report.ring_high_water <= report.ring_slots
    data = _read(tmp_path / "grow.ome.tiff")
    assert data.shape[0] == 200
    np.testing.assert_array_equal(data[199], index_frame(199, shape))


def test_pixels_are_contiguous_from_one_aligned_offset(
    service: WriterService, tmp_path: Path
) -> None:
    path = tmp_path / "aligned.ome.tiff"
    stream = service.open_stream(path, shape=(33, 17), dtype="uint16", frames=5)
    for i in range(5):
        stream.write(index_frame(i, (33, 17)))
    report = stream.close()
    assert report.sink["direct_io"] is True  # ext4 in tests: O_DIRECT is used
    with tifffile.TiffFile(path) as tf:
        assert tf.is_bigtiff
        offsets = [page.dataoffsets[0] for page in tf.pages]
        start = tf.series[0].dataoffset
    assert start == offsets[0] and start % 4096 == 0
    assert offsets == [start + k * 33 * 17 * 2 for k in range(5)]
    raw = np.memmap(path, np.uint16, "r", start, (5, 33, 17))
    for i in range(5):
        np.testing.assert_array_equal(raw[i], index_frame(i, (33, 17)))
    del raw


def test_buffered_fallback_writes_the_same_file(
    service: WriterService, tmp_path: Path
) -> None:
    path = tmp_path / "buffered.ome.tiff"
    stream = service.open_stream(path, shape=(40, 40), dtype="uint8", direct_io=False)
    for i in range(30):
        stream.write(index_frame(i, (40, 40), "uint8"))
    report = stream.close()
    assert report.sink["direct_io"] is False
    data = _read(path)
    np.testing.assert_array_equal(data[29], index_frame(29, (40, 40), "uint8"))


def test_file_is_readable_while_open_and_declares_only_written_frames(
    service: WriterService, tmp_path: Path
) -> None:
    path = tmp_path / "live.ome.tiff"
    stream = service.open_stream(path, shape=(32, 32), dtype="uint16", frames=100)
    for i in range(10):
        stream.write(index_frame(i, (32, 32)))
    while stream.frames_written < 10:  # the worker flushes when idle
        stream._space.wait(0.01)
    import time

    deadline = time.monotonic() + 5
    while True:
        with tifffile.TiffFile(path) as tf:
            if tf.is_ome and tf.series[0].shape[0] == 10:
                live = tf.series[0].asarray()
                break
        assert time.monotonic() < deadline, (
            "provisional OME-XML never declared 10 frames"
        )
        time.sleep(0.05)
    np.testing.assert_array_equal(live[9], index_frame(9, (32, 32)))
    report = stream.close("canceled")
    assert report.finish_reason == "canceled"
    with tifffile.TiffFile(path) as tf:
        assert tf.series[0].shape == (10, 32, 32)
        assert tf.ome_metadata is not None and 'SizeT="10"' in tf.ome_metadata
    # a canceled, preallocated file is cut back to what it holds
    assert os.path.getsize(path) < 8192 + 11 * (4096 + 32 * 32 * 2) + 1_000_000


def test_wrong_shape_or_dtype_is_refused_and_the_run_kept(
    service: WriterService, tmp_path: Path
) -> None:
    path = tmp_path / "refuse.ome.tiff"
    stream = service.open_stream(path, shape=(20, 30), dtype="uint16")
    stream.write(index_frame(0, (20, 30)))
    with pytest.raises(FrameRejected, match="shape"):
        stream.write(np.zeros((30, 20), np.uint16))
    with pytest.raises(FrameRejected, match="dtype"):
        stream.write(np.zeros((20, 30), np.float32))
    stream.write(index_frame(3, (20, 30)))
    report = stream.close()
    assert report.frames_written == 2
    assert report.drops["rejected"] == [1, 2]
    assert report.frames_received == report.frames_written + report.frames_dropped
    assert report.finish_reason == "incomplete"
    data = _read(path)
    np.testing.assert_array_equal(data[1], index_frame(3, (20, 30)))


def test_non_contiguous_and_byteswapped_frames_are_copied_right(
    service: WriterService, tmp_path: Path
) -> None:
    path = tmp_path / "views.ome.tiff"
    stream = service.open_stream(path, shape=(16, 16), dtype="uint16")
    big = index_frame(5, (32, 32))
    stream.write(big[::2, ::2])
    stream.write(index_frame(6, (16, 16)).astype(">u2"))
    stream.close()
    data = _read(path)
    np.testing.assert_array_equal(data[0], big[::2, ::2])
    np.testing.assert_array_equal(data[1], index_frame(6, (16, 16)))


@pytest.mark.parametrize(
    ("name", "error", "match"),
    [
        ("exists.ome.tiff", FileExistsError, "overwrite"),
        ("data.png", ValueError, "format from the name"),
        ("", ValueError, "file name"),
    ],
)
def test_bad_paths_fail_before_any_frame(
    service: WriterService, tmp_path: Path, name: str, error: type, match: str
) -> None:
    (tmp_path / "exists.ome.tiff").write_bytes(b"keep me")
    with pytest.raises(error, match=match):
        service.open_stream(
            str(tmp_path / name) if name else "", shape=(8, 8), dtype="uint16"
        )
    assert (tmp_path / "exists.ome.tiff").read_bytes() == b"keep me"


def test_unwritable_folder_fails_before_any_frame(
    service: WriterService, tmp_path: Path
) -> None:
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    with pytest.raises(PermissionError, match="cannot create the folder"):
        service.open_stream(blocker / "x.ome.tiff", shape=(8, 8), dtype="uint16")
    with pytest.raises(PermissionError):
        service.open_stream("/proc/mesowriter/x.ome.tiff", shape=(8, 8), dtype="uint16")


def test_overwrite_replaces_file_and_old_sidecar(
    service: WriterService, tmp_path: Path
) -> None:
    path = tmp_path / "again.ome.tiff"
    for n in (5, 3):
        stream = service.open_stream(path, shape=(8, 8), dtype="uint16", overwrite=True)
        for i in range(n):
            stream.write(index_frame(i, (8, 8)), {"n": n})
        stream.close()
    assert _read(path).shape[0] == 3
    assert (
        json.loads(Path(f"{path}_frame_metadata.json").read_text())["p0"]
        == [{"n": 3}] * 3
    )


def test_unsupported_dtype_and_oversized_ring_are_clear_errors(
    service: WriterService, tmp_path: Path
) -> None:
    with pytest.raises(ValueError, match="dtype"):
        service.open_stream(tmp_path / "c.ome.tiff", shape=(8, 8), dtype="complex64")
    with pytest.raises(MemoryError, match="ring"):
        service.open_stream(
            tmp_path / "big.ome.tiff", shape=(8, 8), dtype="uint16", ring_bytes=1 << 46
        )
    from mesowriter import VideoOptions

    with pytest.raises(ValueError, match="video options"):
        service.open_stream(
            tmp_path / "v.ome.tiff", shape=(8, 8), dtype="uint16", video=VideoOptions()
        )
    with pytest.raises(ValueError, match="fewer than 2 frames"):
        service.open_stream(
            tmp_path / "tiny.ome.tiff",
            shape=(512, 512),
            dtype="uint16",
            ring_bytes=10_000,
        )


def test_drop_policy_never_waits_and_records_indices(tmp_path: Path) -> None:
    shape = (64, 64)
    with WriterService(ring_bytes=200_000, policy="drop") as svc:
        stream = svc.open_stream(
            tmp_path / "drop.ome.tiff", shape=shape, dtype="uint16", _fault="slow:0.05"
        )
        kept = [stream.write(index_frame(i, shape)) for i in range(40)]
        report = stream.close()
    dropped = [i for i, k in enumerate(kept) if not k]
    assert dropped, "a slow disk and a tiny ring must drop frames"
    assert report.drops["ring_full"] == dropped == report.dropped_indices
    assert report.blocked_seconds == 0.0
    assert report.frames_written == 40 - len(dropped)
    data = _read(tmp_path / "drop.ome.tiff")
    written = [i for i, k in enumerate(kept) if k]
    for pos, i in enumerate(written):
        np.testing.assert_array_equal(data[pos], index_frame(i, shape))


def test_block_policy_waits_and_records_the_time(tmp_path: Path) -> None:
    shape = (64, 64)
    with WriterService(ring_bytes=200_000) as svc:
        stream = svc.open_stream(
            tmp_path / "block.ome.tiff", shape=shape, dtype="uint16", _fault="slow:0.02"
        )
        for i in range(30):
            assert stream.write(index_frame(i, shape))
        report = stream.close()
    assert report.frames_written == 30 and report.frames_dropped == 0
    assert report.blocked_seconds > 0.05 and report.blocked_events > 0
    assert report.ring_high_water == report.ring_slots


def test_worker_error_reaches_the_user_with_its_traceback(tmp_path: Path) -> None:
    shape = (32, 32)
    path = tmp_path / "full.ome.tiff"
    with WriterService(ring_bytes=4 << 20) as svc:
        stream = svc.open_stream(
            path, shape=shape, dtype="uint16", _fault="fail-after:12"
        )
        with pytest.raises(WriterError, match="No space left") as info:
            for i in range(200):
                stream.write(index_frame(i, shape), {"i": i})
                stream._space.wait(0.002)
        assert "Traceback" in str(info.value.__cause__)
        with pytest.raises(WriterError) as closing:
            stream.close()
        report = closing.value.report  # type: ignore[attr-defined]
    assert report.finish_reason == "error" and "No space left" in report.error
    assert report.frames_written == 12
    assert report.frames_received == report.frames_written + report.frames_dropped
    data = _read(path)  # finalised with the frames that made it
    assert data.shape[0] == 12
    np.testing.assert_array_equal(data[11], index_frame(11, shape))
    assert len(json.loads(Path(f"{path}_frame_metadata.json").read_text())["p0"]) == 12


def test_metadata_that_cannot_be_encoded_keeps_the_pixels(
    service: WriterService, tmp_path: Path
) -> None:
    path = tmp_path / "meta.ome.tiff"
    stream = service.open_stream(
        path, shape=(8, 8), dtype="uint16", metadata_bytes=4096
    )
    stream.write(
        index_frame(0, (8, 8)), {"obj": object(), "nan": float("nan"), 3: "int key"}
    )
    stream.write(index_frame(1, (8, 8)), {"huge": "x" * 10_000})
    stream.write(index_frame(2, (8, 8)), {"np": np.arange(3), "p": Path("/a b/ü")})
    report = stream.close()
    assert report.frames_written == 3
    assert report.metadata_fallbacks == 1 and report.metadata_truncated == [1]
    assert report.metadata_nonfinite == 1
    side = json.loads(Path(f"{path}_frame_metadata.json").read_text())["p0"]
    assert side[0]["3"] == "int key" and np.isnan(side[0]["nan"])
    assert side[0]["obj"]["mesowriter_unencodable"] == "object"
    assert "mesowriter_error" in side[1]
    assert side[2] == {"np": [0, 1, 2], "p": "/a b/ü"}


def test_paths_with_spaces_and_non_ascii(
    service: WriterService, tmp_path: Path
) -> None:
    path = tmp_path / "Maus 3 - Zelle \u00fc \u6570\u636e" / "lauf 1.ome.tiff"
    stream = service.open_stream(path, shape=(8, 8), dtype="uint16")
    stream.write(index_frame(0, (8, 8)), {"name": "ü"})
    stream.close()
    with tifffile.TiffFile(path) as tf:
        assert len(tf.pages) == 1 and tf.pages[0].shape == (8, 8)


def test_a_file_that_cannot_be_preallocated_is_not_left_behind(
    service: WriterService, tmp_path: Path
) -> None:
    # 10^10 frames do not fit on any test disk: the open fails at once, and
    # neither a half-made file nor its journal blocks the next try.
    path = tmp_path / "huge.ome.tiff"
    with pytest.raises(OSError, match="MiB free"):
        service.open_stream(path, shape=(64, 64), dtype="uint16", frames=10**10)
    assert sorted(p.name for p in tmp_path.iterdir()) == []
    stream = service.open_stream(path, shape=(64, 64), dtype="uint16", frames=2)
    for i in range(2):
        stream.write(index_frame(i, (64, 64)))
    assert stream.close().frames_written == 2


# the monitor thread re-raises its error after failing the streams: expected here
@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
def test_a_failed_monitor_fails_every_stream_and_every_later_open(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The thread that hears the workers dies (a bug of ours): open streams
    fail with its traceback, a later open fails at once instead of waiting
    for an answer that cannot come, and no ring of the lost streams goes
    back to the pool, since their worker may still store into it."""
    from mesowriter import _messages as m
    from mesowriter import _service

    real = _service.WriterService._dispatch

    def dispatch(self: Any, msg: Any) -> None:
        if isinstance(msg, m.StreamClosed):
            raise RuntimeError("a bug in the monitor thread")
        real(self, msg)

    monkeypatch.setattr(_service.WriterService, "_dispatch", dispatch)
    shape = (16, 16)
    with WriterService(ring_bytes=1 << 20) as svc:
        first = svc.open_stream(tmp_path / "a.ome.tiff", shape=shape, dtype="uint16")
        second = svc.open_stream(tmp_path / "b.ome.tiff", shape=shape, dtype="uint16")
        free_before = svc.pool.free_bytes()
        first.write(index_frame(0, shape))
        with pytest.raises(WriterError, match="monitor thread failed") as info:
            first.close()
        assert "a bug in the monitor thread" in str(info.value)
        report = info.value.report  # type: ignore[attr-defined]
        assert report.frames_received == report.frames_written + report.frames_dropped
        with pytest.raises(WriterError, match="monitor thread failed"):
            second.close()
        with pytest.raises(WriterError, match="monitor thread failed"):
            svc.open_stream(tmp_path / "c.ome.tiff", shape=shape, dtype="uint16")
        assert svc.pool.free_bytes() == free_before  # both rings kept out


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
def test_the_shared_service_is_replaced_once_its_monitor_failed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A GUI session runs all day on the process-wide service: after such a
    failure the next writer gets a new service, not the same error forever."""
    from mesowriter import _messages as m
    from mesowriter import _service

    real = _service.WriterService._dispatch

    def dispatch(self: Any, msg: Any) -> None:
        if (
            isinstance(msg, m.StreamClosed)
            and "broken" in self._streams.get(msg.stream_id, None).spec.path
        ):
            raise RuntimeError("a bug in the monitor thread")
        real(self, msg)

    monkeypatch.setattr(_service.WriterService, "_dispatch", dispatch)
    shape = (16, 16)
    _service.configure_shared_service(idle_timeout=None)
    try:
        first = _service.shared_service()
        stream = first.open_stream(
            tmp_path / "broken.ome.tiff", shape=shape, dtype="uint16"
        )
        with pytest.raises(WriterError, match="monitor thread failed"):
            stream.close()
        assert first.broken is not None
        second = _service.shared_service()
        assert second is not first and second.broken is None and first.closed
        path = tmp_path / "fine.ome.tiff"
        stream = second.open_stream(path, shape=shape, dtype="uint16")
        stream.write(index_frame(0, shape))
        assert stream.close().frames_written == 1
    finally:
        _service.configure_shared_service()
