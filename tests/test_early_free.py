"""Slots freed once their frames are written, before the commit: the
producer goes on while a commit syncs, and a replacement worker adopts the
frames the dead one had written, without reading their slots (which hold
later frames by then).

Frames must be at least EARLY_FREE_RATIO times `metadata_bytes` for the
ring to free early; these tests use small metadata to keep frames small.
"""

from __future__ import annotations

import signal
import time
from pathlib import Path

import numpy as np
import pytest
import tifffile
import useq

from mesowriter import WriterService
from mesowriter._ring import EARLY_FREE_RATIO
from tests.conftest import index_frame

SHAPE = (128, 160)  # 40 KiB
META = 4096
assert SHAPE[0] * SHAPE[1] * 2 >= EARLY_FREE_RATIO * META


def _pages(path: Path) -> np.ndarray:
    with tifffile.TiffFile(path) as tf:
        return np.stack([p.asarray() for p in tf.pages])


def test_a_producer_goes_on_while_a_commit_syncs(tmp_path: Path) -> None:
    # The first commit's sync takes 5 s. Slots freed only at commit would
    # hold the producer after one ring of frames; freed once written, it
    # writes a second ring's worth, and the metadata of every frame not yet
    # journalled stays (the freed cursor stops one ring past the commit).
    path = tmp_path / "slow sync.ome.tiff"
    with WriterService(ring_bytes=1 << 20) as svc:
        stream = svc.open_stream(
            path,
            shape=SHAPE,
            dtype="uint16",
            metadata_bytes=META,
            _fault="slow-sync:2:5",
        )
        ring = stream.ring
        n = ring.n_slots
        assert ring.layout.n_entries == 2 * n and n >= 4
        t0 = time.monotonic()
        for i in range(2 * n):
            assert stream.write(index_frame(i, SHAPE), {"i": i})
        deadline = time.monotonic() + 4
        while ring.freed_cursor < n and time.monotonic() < deadline:
            time.sleep(0.01)
        fill = (ring.write_cursor, ring.freed_cursor, ring.read_cursor)
        elapsed = time.monotonic() - t0
        report = stream.close()
    assert elapsed < 5, "the first commit ended: nothing is shown"
    assert fill == (2 * n, n, 0), fill
    assert report.frames_written == 2 * n and report.frames_dropped == 0
    got = _pages(path)
    assert len(got) == 2 * n
    for i in range(2 * n):
        np.testing.assert_array_equal(got[i], index_frame(i, SHAPE))


@pytest.mark.parametrize(
    "fault",
    # the second: every journal sync takes 0.3 s, so the worker dies with
    # commits whose journal lines wait for their sync (their slots freed
    # with the right positions: test_early_free_paths.py, in-process)
    ["die-written:40", "slow-journal-sync:0.3,die-written:40"],
    ids=["written", "lines-unsynced"],
)
def test_a_replacement_adopts_written_frames_whose_slots_were_reused(
    tmp_path: Path, fault: str
) -> None:
    path = tmp_path / "adopt.ome.tiff"
    frames = 200
    with WriterService(ring_bytes=1 << 20) as svc:
        stream = svc.open_stream(
            path,
            shape=SHAPE,
            dtype="uint16",
            frames=frames,
            metadata_bytes=META,
            _fault=fault,
        )
        first_pid = svc.workers[0]
        for i in range(frames):
            assert stream.write(index_frame(i, SHAPE), {"i": i, "tag": "ü"})
        report = stream.close()
    assert svc.worker_deaths and svc.worker_deaths[0]["pid"] == first_pid
    assert svc.worker_deaths[0]["exitcode"] == -signal.SIGKILL
    assert report.worker_restarts == 1, report.problems()
    assert report.finish_reason == "completed", report.problems()
    assert report.frames_written == frames and report.dropped_indices == []
    adopted = [n for n in report.notes if "adopted" in n]
    assert adopted, report.notes
    got = _pages(path)
    assert len(got) == frames
    for i in range(frames):
        np.testing.assert_array_equal(got[i], index_frame(i, SHAPE))
    with tifffile.TiffFile(path) as tf:
        assert tf.is_ome and len(tf.series[0]) == frames


def test_a_replacement_adopts_frames_of_a_reordered_imagej_file(
    tmp_path: Path,
) -> None:
    # Acquired t, c, z; stored t, z, c: adopted frames keep the places the
    # dead worker gave them (read from the ring, not worked out again).
    seq = useq.MDASequence(
        channels=["DAPI", "FITC"],
        z_plan={"range": 4, "step": 1},
        time_plan={"interval": 0, "loops": 12},
        axis_order="tcz",
    )
    events = list(seq)
    path = tmp_path / "adopt.tif"
    with WriterService(ring_bytes=1 << 20) as svc:
        stream = svc.open_stream(
            path,
            shape=SHAPE,
            dtype="uint16",
            frames=len(events),
            metadata_bytes=META,
            sequence=seq.model_dump(mode="json"),
            _fault="die-written:33",
        )
        for i, event in enumerate(events):
            meta = {"i": i, "mda_event": event.model_dump(mode="json")}
            assert stream.write(index_frame(i, SHAPE), meta)
        report = stream.close()
    assert report.worker_restarts == 1, report.problems()
    assert report.finish_reason == "completed", report.problems()
    assert any("adopted" in n for n in report.notes), report.notes

    def tzc(i: int) -> tuple[int, int, int]:
        idx = events[i].index
        return (idx.get("t", 0), idx.get("z", 0), idx.get("c", 0))

    want = sorted(range(len(events)), key=tzc)
    got = _pages(path)
    assert len(got) == len(events)
    for plane, i in enumerate(want):
        np.testing.assert_array_equal(got[plane], index_frame(i, SHAPE))
