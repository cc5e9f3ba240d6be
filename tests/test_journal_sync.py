"""The journal's lines are synced on a thread of their own: requests that
queue during a sync share the next one, a failed sync reaches the stream's
user with its traceback and is never retried (a worker killed while lines
wait for their sync: `test_early_free.py`, `test_early_free_paths.py`)."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import tifffile

from mesowriter import WriterError, WriterService
from mesowriter._journal_sync import JournalSync
from tests.conftest import index_frame, write_until_the_error

SHAPE = (128, 160)  # 40 KiB: frees early with 4 KiB of metadata
META = 4096


class _HeldSync:
    """A sync that waits to be let through, counting the calls."""

    def __init__(self) -> None:
        self.gate = threading.Event()
        self.entered = threading.Event()
        self.calls = 0
        self.fail: BaseException | None = None

    def __call__(self) -> None:
        self.entered.set()
        self.gate.wait(10)
        self.calls += 1
        if self.fail is not None:
            raise self.fail


def test_requests_queued_during_a_sync_share_the_next_one() -> None:
    held, wakes = _HeldSync(), []
    sync = JournalSync(held, wakes.append, start=5)
    try:
        assert sync.synced() == 5
        sync.request(8)
        assert held.entered.wait(5)  # the first sync runs, covering 8
        for n in (9, 12, 15):
            sync.request(n)
        sync.request(3)  # never backwards
        held.gate.set()
        assert sync.wait() == 15
        assert held.calls == 2 and len(wakes) == 2
    finally:
        sync.stop()


def test_a_failed_sync_is_raised_on_the_main_thread_and_never_retried() -> None:
    held, wakes = _HeldSync(), []
    held.fail = OSError(5, "Input/output error")
    sync = JournalSync(held, wakes.append, start=0)
    try:
        sync.request(4)
        held.gate.set()
        with pytest.raises(OSError, match="Input/output error") as info:
            sync.wait()
        # raised where it failed, on the sync thread
        assert info.traceback[-1].name == "__call__"
        assert info.traceback[-1].path == Path(__file__)
        sync.request(9)  # lines appended after the failure: no new sync
        time.sleep(0.05)
        assert held.calls == 1 and wakes
        assert sync.synced() == 0  # nothing became durable
        with pytest.raises(OSError):
            sync.raise_failure()
    finally:
        sync.stop()


def test_stop_lets_the_sync_under_way_finish_and_starts_no_other() -> None:
    held = _HeldSync()
    sync = JournalSync(held, lambda _f: None, start=0)
    sync.request(2)
    assert held.entered.wait(5)
    stopper = threading.Thread(target=sync.stop)
    stopper.start()
    time.sleep(0.05)
    assert stopper.is_alive()  # waits for the sync on the descriptor
    held.gate.set()
    stopper.join(5)
    assert not stopper.is_alive() and held.calls == 1
    sync.request(7)
    time.sleep(0.05)
    assert held.calls == 1 and sync.wait() == 2


def test_a_sync_thread_that_cannot_start_is_a_failure_not_a_hang(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def refuse(self: threading.Thread) -> None:
        raise RuntimeError("can't start new thread")

    sync = JournalSync(lambda: None, lambda _f: None, start=0)
    monkeypatch.setattr(threading.Thread, "start", refuse)
    sync.request(3)
    with pytest.raises(RuntimeError, match="can't start new thread"):
        sync.wait()
    assert sync.synced() == 0
    sync.stop()


# Each journal sync takes 50 ms: lines of later commits wait unsynced when
# the second sync fails.
FAILING = "fail-journal-sync:2,slow-journal-sync:0.05"


def test_a_failed_journal_sync_reaches_the_user_and_the_file_keeps_the_rest(
    tmp_path: Path,
) -> None:
    path = tmp_path / "journal eio.ome.tiff"
    with WriterService(ring_bytes=4 << 20) as svc:
        stream = svc.open_stream(path, shape=SHAPE, dtype="uint16", _fault=FAILING)
        error = write_until_the_error(stream, SHAPE)
        assert "_journal_sync" in str(error.__cause__)  # the thread's frames
        with pytest.raises(WriterError) as closing:
            stream.close()
        report = closing.value.report  # type: ignore[attr-defined]
    assert report.bytes_written == report.frames_written * SHAPE[0] * SHAPE[1] * 2
    assert report.finish_reason == "error" and "Input/output error" in report.error
    # The frames the sink committed and whose lines were written before the
    # failure was seen (the sync that failed covered some, commits went on
    # meanwhile): the same in the report, the file and the sidecar.
    kept = report.frames_written
    assert 1 <= kept < report.frames_received
    assert report.sink["frames_in_file"] == kept
    assert report.frames_received == report.frames_written + report.frames_dropped
    assert report.dropped_indices == list(range(kept, report.frames_received))
    side = json.loads(Path(f"{path}_frame_metadata.json").read_text())["p0"]
    assert [m["i"] for m in side] == list(range(kept))
    with tifffile.TiffFile(path) as tf:
        assert len(tf.pages) == kept and len(tf.series[0]) == kept
        data = tf.asarray().reshape(-1, *SHAPE)
    for i in range(kept):
        np.testing.assert_array_equal(data[i], index_frame(i, SHAPE))


def test_a_replacement_reports_what_a_dead_worker_finalised_after_a_failed_sync(
    tmp_path: Path,
) -> None:
    # The first worker finalises with every line it wrote (some never
    # synced), then dies before the sidecar: the replacement's report, the
    # file and the sidecar must agree.
    path = tmp_path / "journal eio then death.ome.tiff"
    with WriterService(ring_bytes=4 << 20) as svc:
        stream = svc.open_stream(
            path,
            shape=SHAPE,
            dtype="uint16",
            _fault=FAILING + ",die-after-finalise",
        )
        write_until_the_error(stream, SHAPE)
        try:
            report = stream.close()
        except WriterError as exc:
            report = exc.report  # type: ignore[attr-defined]
    with tifffile.TiffFile(path) as tf:
        in_file = len(tf.pages)
    side = json.loads(Path(f"{path}_frame_metadata.json").read_text())["p0"]
    assert report.worker_restarts == 1, report.problems()
    assert report.frames_written == in_file == len(side) >= 1
    assert [m["i"] for m in side] == list(range(in_file))
    assert report.frames_received == report.frames_written + report.frames_dropped
