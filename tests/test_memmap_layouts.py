"""Every file memory-maps: pixels contiguous from one 4096-aligned offset.

Real writer processes write real files; each is read back in this process
with `tifffile.memmap` AND with a bare `numpy.memmap` at the series' data
offset (what analysis code does), and every frame is compared value by
value with the frame that was written (`index_frame`: each frame carries
its index). Cases: a completed run, a canceled one, an unknown frame count
past the 1024 IFDs kept in front (tail extent placed and moved while
writing), more frames than declared, several positions through
`CustomWriter`, RGB, frame sizes that are not a multiple of 4096 bytes
(staged writes, several batches), buffered I/O, and reading while the file
is still being written.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tifffile
import useq

from mesowriter import CustomWriter, WriterService
from mesowriter.sinks._tiff_format import PAGE, newest_block
from tests._tiffcheck import check_mappable
from tests.conftest import index_frame

SHAPE = (48, 40)


def frames(indices: range | list[int], shape: tuple[int, ...], dtype: str) -> list[Any]:
    return [index_frame(i, shape, dtype) for i in indices]


def write_run(
    path: Path,
    n: int,
    *,
    shape: tuple[int, ...] = SHAPE,
    dtype: str = "uint16",
    declared: int | None = None,
    reason: str = "completed",
    ring_bytes: int = 4 << 20,
    direct_io: bool = True,
    on_frame: Any = None,
) -> tuple[Any, int]:
    with WriterService(ring_bytes=ring_bytes) as svc:
        stream = svc.open_stream(
            path, shape=shape, dtype=dtype, frames=declared, direct_io=direct_io
        )
        for i in range(n):
            assert stream.write(index_frame(i, shape, dtype), {"i": i})
            if on_frame is not None:
                on_frame(i, stream)
        slots = stream.ring.n_slots
        report = stream.close(reason)
    assert report.frames_written == n and report.frames_dropped == 0
    return report, slots


def _block(path: Path) -> Any:
    with open(path, "rb") as fh:
        block = newest_block(fh.read(PAGE))
    assert block is not None
    return block


# -- one position, WriterService ----------------------------------------------------
@pytest.mark.parametrize("suffix", [".ome.tif", ".tif"])
def test_completed_run(tmp_path: Path, suffix: str) -> None:
    path = tmp_path / f"done{suffix}"
    report, _ = write_run(path, 60, declared=60)
    assert report.finish_reason == "completed"
    check_mappable(path, frames(range(60), SHAPE, "uint16"))


@pytest.mark.parametrize("suffix", [".ome.tif", ".tif"])
def test_canceled_run_maps_the_frames_it_got(tmp_path: Path, suffix: str) -> None:
    path = tmp_path / f"cut{suffix}"
    report, _ = write_run(path, 23, declared=100, reason="canceled")
    assert report.finish_reason == "canceled"
    check_mappable(path, frames(range(23), SHAPE, "uint16"))
    # the 77 frames reserved and never written are not in the file
    assert path.stat().st_size < _block(path).geometry().data_end(23) + 64 * 1024


def _check_sampled(path: Path, n: int, shape: tuple[int, int]) -> None:
    """`check_mappable` for long files: every page counted, frames sampled."""
    with tifffile.TiffFile(path) as tf:
        series = tf.series[0]
        assert len(tf.pages) == n and series.shape == (n, *shape)
        offset = series.dataoffset
        assert offset is not None and offset % PAGE == 0
    mapped = tifffile.memmap(path, mode="r")
    raw = np.memmap(path, "<u2", "r", offset, (n, *shape))
    try:
        assert mapped.shape == (n, *shape)
        for k in sorted(
            {*range(0, n, 97), *range(1000, min(n, 1050)), *range(n - 40, n)}
        ):
            want = index_frame(k, shape)
            np.testing.assert_array_equal(mapped[k], want, err_msg=f"memmap {k}")
            np.testing.assert_array_equal(raw[k], want, err_msg=f"numpy {k}")
    finally:
        del mapped, raw


@pytest.mark.parametrize("suffix", [".ome.tif", ".tif"])
def test_unknown_count_past_the_front_ifds_moves_the_tail(
    tmp_path: Path, suffix: str
) -> None:
    # 128 KiB frames: the tail extent is placed at frame 1025 with room for
    # 2048 frames (256 MiB) of pixels, and moved out when frame 2049 comes.
    # Read while writing after each (the chain must follow the move) and
    # after the close (which moves the tail to just after the last frame).
    shape = (256, 256)
    n = 2100
    path = tmp_path / f"unknown{suffix}"
    tails: list[int] = []

    def look(i: int, stream: Any) -> None:
        if i + 1 not in (1000, 1100, 2080):
            return
        deadline = time.monotonic() + 20
        while stream._ring.read_cursor < i + 1:
            assert time.monotonic() < deadline, "the worker did not commit"
            time.sleep(0.005)
        tails.append(_block(path).tail_offset)
        _check_sampled(path, i + 1, shape)

    write_run(path, n, shape=shape, ring_bytes=16 << 20, on_frame=look)
    assert tails[0] == 0 and 0 < tails[1] < tails[2], f"no tail move: {tails}"
    block = _block(path)
    assert block.state == "final" and block.committed == n
    _check_sampled(path, n, shape)
    with tifffile.TiffFile(path) as tf:  # an ImageJ file that fits is classic
        assert tf.is_bigtiff == (suffix == ".ome.tif")


@pytest.mark.parametrize("suffix", [".ome.tif", ".tif"])
def test_more_frames_than_declared(tmp_path: Path, suffix: str) -> None:
    path = tmp_path / f"more{suffix}"
    write_run(path, 75, declared=40)
    check_mappable(path, frames(range(75), SHAPE, "uint16"))
    # the IFDs of frames 40..74 went to a tail extent, moved to the end at
    # close: the file is no longer than its pixels and metadata
    assert path.stat().st_size < _block(path).geometry().data_end(75) + 64 * 1024


@pytest.mark.parametrize("suffix", [".ome.tif", ".tif"])
def test_rgb_uint8(tmp_path: Path, suffix: str) -> None:
    shape = (48, 40, 3)
    path = tmp_path / f"rgb{suffix}"
    write_run(path, 30, shape=shape, dtype="uint8", declared=30)
    check_mappable(path, frames(range(30), shape, "uint8"))
    with tifffile.TiffFile(path) as tf:
        assert tf.series[0].axes.endswith("YXS")
        assert tf.series[0].shape == (30, *shape)
        assert tf.pages[0].photometric == tifffile.PHOTOMETRIC.RGB


@pytest.mark.parametrize(
    ("shape", "dtype", "n", "ring"),
    [((1000, 1000), "uint16", 16, 10 << 20), ((641, 480), "uint8", 45, 4 << 20)],
    ids=["1000x1000-u2", "641x480-u1"],
)
@pytest.mark.parametrize("declared", [True, False], ids=["declared", "unknown"])
def test_frames_not_a_multiple_of_4096_bytes(
    tmp_path: Path,
    shape: tuple[int, int],
    dtype: str,
    n: int,
    ring: int,
    declared: bool,
) -> None:
    nbytes = int(np.prod(shape)) * np.dtype(dtype).itemsize
    assert nbytes % PAGE
    path = tmp_path / f"odd{shape[0]}.ome.tif"
    report, slots = write_run(
        path,
        n,
        shape=shape,
        dtype=dtype,
        declared=n if declared else None,
        ring_bytes=ring,
    )
    # direct I/O, so staged (a frame does not end on a page), and the ring
    # holds a fraction of the run: many batches, each carrying a partial page
    assert report.sink["direct_io"] is True
    assert slots * 3 <= n
    check_mappable(path, frames(range(n), shape, dtype))


def test_staged_batches_end_on_page_boundaries(tmp_path: Path) -> None:
    # 20 000-byte frames: 128 of them end on a page. The worker waits for
    # the frames that complete a page (it need not here: the ring is large)
    # and staged batches cross the ring's end, so batch after batch shares
    # no page and several are in flight. A batch ends mid-page only at the
    # end, or when the producer paused 10 ms (a loaded machine); batches cut
    # at the ring's end or by size alone made every other one end mid-page.
    shape = (100, 100)
    path = tmp_path / "staged.ome.tif"
    report, slots = write_run(path, 3000, shape=shape, ring_bytes=24 << 20)
    assert slots % 128 and slots * 3 <= 3000
    assert report.sink["staged_batches"] >= 3000 // slots
    staged = report.sink["staged_batches"]
    assert report.sink["mid_page_batches"] <= max(2, staged // 4), report.sink
    check_mappable(path, frames(range(3000), shape, "uint16"))


def test_buffered_io(tmp_path: Path) -> None:
    path = tmp_path / "buffered.ome.tif"
    report, _ = write_run(path, 50, declared=50, direct_io=False)
    assert report.sink["direct_io"] is False
    check_mappable(path, frames(range(50), SHAPE, "uint16"))


@pytest.mark.parametrize("suffix", [".ome.tif", ".tif"])
def test_read_while_writing(tmp_path: Path, suffix: str) -> None:
    # The provisional description declares exactly the linked frames: at each
    # look, once the worker committed every frame sent, the file maps them.
    path = tmp_path / f"live{suffix}"
    shape, n = SHAPE, 90
    looks = {5, 17, 40, 41, 77}
    seen: list[int] = []

    def look(i: int, stream: Any) -> None:
        if i + 1 not in looks:
            return
        deadline = time.monotonic() + 10
        while stream._ring.read_cursor < i + 1:
            assert time.monotonic() < deadline, "the worker did not commit"
            time.sleep(0.005)
        check_mappable(path, frames(range(i + 1), shape, "uint16"))
        assert _block(path).state == "writing"
        seen.append(i + 1)

    write_run(path, n, declared=n, on_frame=look)
    assert seen == sorted(looks)
    check_mappable(path, frames(range(n), shape, "uint16"))


# -- several positions through CustomWriter -------------------------------------------
def _run_custom_writer(
    path: Path,
    seq: useq.MDASequence,
    shape: tuple[int, int],
    *,
    feed: list[int] | None = None,
) -> Any:
    """Feed index frames for the events of `seq` (those numbered in `feed`,
    else all), as pymmcore-plus would; canceled when `feed` is given."""
    writer = CustomWriter(path, ring_bytes=64 << 20)
    meta = {"image_infos": [{"plane_shape": shape, "dtype": "uint16"}]}
    sent: dict[str, list[tuple[int, dict[str, int]]]] = {}
    with writer:
        writer.sequenceStarted(seq, meta)
        for i, event in enumerate(seq):
            if feed is not None and i not in feed:
                continue
            key = event.pos_name or f"p{event.index.get('p', 0)}"
            sent.setdefault(key, []).append(
                (i, {str(k): v for k, v in event.index.items()})
            )
            writer.frameReady(
                index_frame(i, shape),
                event,
                {"mda_event": event, "runner_time_ms": float(i)},
            )
        if feed is None:
            writer.sequenceFinished(seq)
        else:
            writer.sequenceCanceled(seq)
            writer.sequenceFinished(seq)
    return writer, sent


def check_imagej_planes(
    path: Path, got: list[tuple[int, dict[str, int]]], shape: tuple[int, int]
) -> dict[str, Any]:
    """Each plane of an ImageJ file holds a frame that was sent, once; when
    the description declares a hyperstack, the plane at (t, z, c) is the
    frame of event (t, z, c). Returns the ImageJ metadata."""
    by_value = {int(index_frame(i, shape)[0, 0]): (i, idx) for i, idx in got}
    assert len(by_value) == len(got)
    with tifffile.TiffFile(path) as tf:
        assert tf.is_imagej
        ij = dict(tf.imagej_metadata or {})
        data = tf.series[0].asarray().reshape(-1, *shape)
    assert len(data) == len(got) == ij["images"]
    sizes = (ij.get("frames", 1), ij.get("slices", 1), ij.get("channels", 1))
    hyper = ij.get("slices", 1) * ij.get("channels", 1) > 1
    seen = set()
    for k, plane in enumerate(data):
        i, idx = by_value[int(plane[0, 0])]
        np.testing.assert_array_equal(plane, index_frame(i, shape))
        seen.add(i)
        if hyper:
            t, z, c = np.unravel_index(k, sizes)
            assert (idx.get("t", 0), idx.get("z", 0), idx.get("c", 0)) == (t, z, c), (
                f"plane {k} is declared (t, z, c) = {(t, z, c)} but holds {idx}"
            )
    assert seen == {i for i, _ in got}
    return ij


@pytest.mark.parametrize("suffix", [".ome.tif", ".tif"])
def test_positions_each_file_maps(tmp_path: Path, suffix: str) -> None:
    shape = (40, 32)
    seq = useq.MDASequence(
        stage_positions=[(0, 0, 0), (10, 10, 0), (20, 0, 0)],
        channels=["DAPI", "FITC"],
        z_plan={"range": 2, "step": 1},
        time_plan={"interval": 0, "loops": 3},
        axis_order="tpcz",
    )
    path = tmp_path / f"multi{suffix}"
    writer, sent = _run_custom_writer(path, seq, shape)
    assert sorted(writer.reports) == ["p0", "p1", "p2"]
    stem = suffix.join(path.name.rsplit(suffix, 1)[:1])
    for key, got in sent.items():
        file = tmp_path / f"{stem}_{key}{suffix}"
        assert writer.reports[key].frames_written == len(got) == 18
        if suffix == ".tif":
            # ImageJ: planes in T, Z, C order whatever the acquisition order
            order = sorted(got, key=lambda e: (e[1]["t"], e[1]["z"], e[1]["c"]))
            want_shape = (3, 3, 2, *shape)
        else:
            order = got
            want_shape = (3, 2, 3, *shape)
        check_mappable(file, [index_frame(i, shape) for i, _ in order])
        with tifffile.TiffFile(file) as tf:
            assert tf.series[0].shape == want_shape
        if suffix == ".tif":
            check_imagej_planes(file, got, shape)


# -- ImageJ files cut short: a hyperstack only of planes where they belong -------------
@pytest.mark.parametrize(
    ("axis_order", "feed", "hyperstack"),
    [
        # reordered (acquisition c, t; file t, c), canceled: the holes are
        # closed, so the planes no longer sit at their TZC places
        ("ct", [0, 1, 2, 3], None),
        # reordered, canceled after whole time points: no hole
        ("tc", [0, 1, 2, 3], (2, 1, 2)),
        # in file order already (t, z, c) and a frame never delivered: every
        # later plane moves up one
        ("tzc", [0, 2, 3, 4], None),
        # in file order, canceled after one whole time point
        ("tzc", [0, 1, 2, 3], (1, 2, 2)),
    ],
)
def test_cut_short_imagej_files_declare_only_true_planes(
    tmp_path: Path,
    axis_order: str,
    feed: list[int],
    hyperstack: tuple[int, int, int] | None,
) -> None:
    shape = (24, 16)
    seq = useq.MDASequence(
        channels=["DAPI", "FITC"],
        z_plan={"range": 1, "step": 1} if "z" in axis_order else None,
        time_plan={"interval": 0, "loops": 3},
        axis_order=axis_order,
    )
    path = tmp_path / "cut.tif"
    writer, sent = _run_custom_writer(path, seq, shape, feed=feed)
    got = sent["p0"]
    assert writer.reports["p0"].frames_written == len(got) == 4
    ij = check_imagej_planes(path, got, shape)
    with tifffile.TiffFile(path) as tf:
        assert not tf.is_bigtiff
        series_shape = tf.series[0].shape
        file_order = [int(p[0, 0]) for p in tf.series[0].asarray().reshape(-1, *shape)]
    if hyperstack is None:
        assert "channels" not in ij and "slices" not in ij
        assert series_shape == (4, *shape)
    else:
        t, z, c = hyperstack
        assert (ij.get("frames", 1), ij.get("slices", 1), ij.get("channels", 1)) == (
            t,
            z,
            c,
        )

    # flat or not, the planes are in TZC order of the frames that came
    def tzc(i: int) -> tuple[int, int, int]:
        idx = dict(got)[i]
        return (idx.get("t", 0), idx.get("z", 0), idx.get("c", 0))

    want = sorted((i for i, _ in got), key=tzc)
    assert file_order == [int(index_frame(i, shape)[0, 0]) for i in want]
    check_mappable(path, [index_frame(i, shape) for i in want])


def test_read_while_writing_a_reordered_imagej_file(tmp_path: Path) -> None:
    # Acquired t, c, z; stored t, z, c: mid-run the file declares the planes
    # from position 0 up to the first one not yet written, and maps them.
    shape = (24, 16)
    seq = useq.MDASequence(
        channels=["DAPI", "FITC"],
        z_plan={"range": 2, "step": 1},
        time_plan={"interval": 0, "loops": 3},
        axis_order="tpcz",
    )
    events = list(seq)
    path = tmp_path / "live.tif"

    def position(idx: Any) -> int:
        return (idx["t"] * 3 + idx["z"]) * 2 + idx["c"]

    looks = {3, 6, 9, 10, 13, 17}
    seen = []
    with CustomWriter(path, ring_bytes=64 << 20) as writer:
        writer.sequenceStarted(
            seq, {"image_infos": [{"plane_shape": shape, "dtype": "uint16"}]}
        )
        at: dict[int, int] = {}  # file position -> frame
        for i, event in enumerate(events):
            writer.frameReady(index_frame(i, shape), event, {"mda_event": event})
            at[position(event.index)] = i
            if i + 1 not in looks:
                continue
            stream = writer._streams["p0"]
            deadline = time.monotonic() + 10
            while stream._ring.read_cursor < i + 1:
                assert time.monotonic() < deadline, "the worker did not commit"
                time.sleep(0.005)
            prefix = next(p for p in range(len(events) + 1) if p not in at)
            check_mappable(path, [index_frame(at[p], shape) for p in range(prefix)])
            seen.append((i + 1, prefix))
        writer.sequenceFinished(seq)
    # after 9 frames: t0 whole (0..5), t1 c0 at positions 6, 8, 10
    assert (9, 7) in seen and (3, 1) in seen
    full = sorted(range(len(events)), key=lambda i: position(events[i].index))
    check_mappable(path, [index_frame(i, shape) for i in full])


def test_frames_off_the_page_grid_go_straight_from_the_ring(tmp_path: Path) -> None:
    # 20 000-byte frames end on a page every 128 frames. A ring of whole
    # such units (planned so when it holds at least four) puts every unit's
    # first frame on a page in memory as in the file: those batches are
    # written from the ring itself, not copied (staged) first.
    from mesowriter._ring import page_unit

    shape = (100, 100)
    path = tmp_path / "unstaged.ome.tif"
    report, slots = write_run(path, 3000, shape=shape, ring_bytes=32 << 20)
    assert page_unit(20_000) == 128 and slots % 128 == 0 and slots * 3 <= 3000
    assert report.sink["direct_io"] is True
    # 23 batches of 128: the last part-unit, and one after a producer that
    # paused 10 ms on a loaded machine, are staged; not the rest
    assert report.sink["staged_batches"] <= 3000 // 128 // 2, report.sink
    check_mappable(path, frames(range(3000), shape, "uint16"))
