"""Nothing lost: killed workers, killed acquisitions, full disks, signals.

Real processes, real signals, real files read back with tifffile; every
frame's pixels and metadata are checked where a crash is involved.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import tifffile

import mesowriter
from mesowriter import StreamReport, WriterError, WriterService
from mesowriter._recover import RecoverError, recover
from mesowriter.sinks._omexml import sidecar_from_ome_xml
from tests.conftest import index_frame

ROOT = Path(__file__).resolve().parent.parent
CHILD = Path(__file__).with_name("_crash_child.py")
CHILD_SHAPE = (48, 40)
FRAME = 48 * 40 * 2  # pixels are contiguous: frame k at data_offset + k * FRAME
SHM = Path("/dev/shm")


# -- helpers -------------------------------------------------------------------
def _series(path: Path) -> tuple[np.ndarray, str]:
    with tifffile.TiffFile(path) as tf:
        assert tf.is_ome and tf.is_bigtiff
        assert tf.ome_metadata is not None
        series = tf.series[0]
        data = series.asarray().reshape(len(series), *series.keyframe.shape)
        return data, tf.ome_metadata


def _sidecar(path: Path) -> list[dict[str, object]]:
    data = json.loads(Path(f"{path}_frame_metadata.json").read_text("utf-8"))
    return list(data["p0"])


def _check_frames(
    path: Path, indices: list[int], shape: tuple[int, ...], meta: bool = True
) -> None:
    """The file holds exactly these frames, in order, pixels value by value."""
    data, xml = _series(path)
    assert data.shape == (len(indices), *shape), (data.shape, len(indices))
    for pos, i in enumerate(indices):
        np.testing.assert_array_equal(data[pos], index_frame(i, shape))
    assert f'SizeT="{len(indices)}"' in xml
    if meta:
        side = _sidecar(path)
        assert [m["i"] for m in side] == indices
        assert all(m.get("tag") == "ü" for m in side)


def _start_child(
    mode: str, path: Path, frames: int
) -> tuple[subprocess.Popen[str], list[str]]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(
        [sys.executable, str(CHILD), mode, str(path), str(frames)],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if not line.startswith("READY"):
        proc.kill()
        _, err = proc.communicate(timeout=10)
        pytest.fail(f"child did not start: {line!r}\n{err}")
    return proc, line.split()[1:]


def _wait_until(cond: object, what: str, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():  # type: ignore[operator]
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def _pid_gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    # a zombie of another parent still answers; check its state
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] == "Z"
    except OSError:
        return True


def _shm_gone(name: str) -> bool:
    return not (SHM / name.lstrip("/")).exists()


# -- 1. a writer process dies mid-run -------------------------------------------
def test_worker_that_kills_itself_is_replaced_and_nothing_repeats(
    tmp_path: Path,
) -> None:
    shape = (64, 48)
    path = tmp_path / "die.ome.tiff"
    with WriterService(ring_bytes=4 << 20) as svc:
        stream = svc.open_stream(
            path, shape=shape, dtype="uint16", frames=120, _fault="die-after:37"
        )
        first_pid = svc.workers[0]
        for i in range(120):
            assert stream.write(index_frame(i, shape), {"i": i, "tag": "ü"})
        report = stream.close()
        assert first_pid not in svc.workers
    assert report.worker_restarts == 1 and report.finish_reason == "completed"
    assert report.frames_written == 120 and report.frames_dropped == 0
    assert svc.worker_deaths and svc.worker_deaths[0]["pid"] == first_pid
    assert svc.worker_deaths[0]["exitcode"] == -signal.SIGKILL
    _check_frames(path, list(range(120)), shape)
    assert not Path(f"{path}_journal.ndjson").exists()
    on_disk = StreamReport.from_json(Path(f"{path}_report.json").read_bytes())
    assert on_disk.worker_restarts == 1


def test_worker_dying_before_its_journal_line_rewrites_in_place(
    tmp_path: Path,
) -> None:
    # Frames written and linked but not journalled: the replacement cuts the
    # chain after the last journalled frame and writes them again, once.
    shape = (40, 56)
    path = tmp_path / "unjournalled.ome.tiff"
    with WriterService(ring_bytes=4 << 20) as svc:
        stream = svc.open_stream(
            path, shape=shape, dtype="uint16", _fault="die-unjournalled:25"
        )
        for i in range(90):
            assert stream.write(index_frame(i, shape), {"i": i, "tag": "ü"})
            if i < 30:
                stream._space.wait(0.002)  # small batches around the mark
        report = stream.close()
    assert report.worker_restarts == 1 and report.frames_written == 90
    assert svc.worker_deaths[0]["exitcode"] == -signal.SIGKILL
    _check_frames(path, list(range(90)), shape)
    with tifffile.TiffFile(path) as tf:
        assert len(tf.pages) == 90


def test_worker_killed_from_outside_while_frames_wait_in_the_ring(
    tmp_path: Path,
) -> None:
    shape = (64, 64)
    path = tmp_path / "outside.ome.tiff"
    killed: list[int] = []
    with WriterService(ring_bytes=1 << 20) as svc:  # about a dozen slots
        stream = svc.open_stream(path, shape=shape, dtype="uint16", _fault="slow:0.004")
        for i in range(150):
            assert stream.write(index_frame(i, shape), {"i": i, "tag": "ü"})
            if i in (40, 100):
                pid = svc.workers[0]
                assert stream.ring_fill > 0, "frames must be waiting in the ring"
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)
        report = stream.close()
    assert report.worker_restarts == 2
    assert {d["pid"] for d in svc.worker_deaths} == set(killed)
    assert report.frames_written == 150 and report.dropped_indices == []
    _check_frames(path, list(range(150)), shape)


def test_protocol_for_cpus_without_ordered_stores(tmp_path: Path) -> None:
    # Off x86-64 a worker may read only frames a pipe message announced;
    # forced here, with two worker kills so that replacements must resume.
    path = tmp_path / "every frame.ome.tiff"
    child = Path(__file__).with_name("_pipe_every_frame_child.py")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "MESOWRITER_PIPE_EVERY_FRAME": "1"}
    out = subprocess.run(
        [sys.executable, str(child), str(path)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["stores_in_order"] is False
    report = result["report"]
    assert report["worker_restarts"] == 2 and report["frames_written"] == 150
    _check_frames(path, list(range(150)), (64, 64))


# -- 2. the acquisition process dies --------------------------------------------
def test_orphaned_worker_finalises_when_the_acquisition_is_killed(
    tmp_path: Path,
) -> None:
    path = tmp_path / "orphan run ü.ome.tiff"
    proc, (worker, shm, _) = _start_child("wait", path, 60)
    proc.kill()
    proc.communicate(timeout=10)
    _wait_until(lambda: _pid_gone(int(worker)), "the orphaned worker to exit")
    report = StreamReport.from_json(Path(f"{path}_report.json").read_bytes())
    assert report.finish_reason == "acquisition exited"
    assert report.written_by == "orphaned writer"
    assert report.frames_written == report.frames_received == 60
    _check_frames(path, list(range(60)), CHILD_SHAPE)
    assert not Path(f"{path}_journal.ndjson").exists()
    # the file was preallocated for 120 frames: the zeros are gone
    assert os.path.getsize(path) < _data_offset(path) + 60 * FRAME + 100_000
    _wait_until(lambda: _shm_gone(shm), "the ring to be unlinked")
    result = recover(path)  # finalised already: nothing to do
    assert not result.recovered and result.frames_declared == 60


def _dead_run(tmp_path: Path, name: str, mode: str = "dead") -> tuple[Path, int]:
    """A child whose worker died mid-run, then the child itself: SIGKILL.

    Returns the data file and how many frames the worker had committed.
    """
    path = tmp_path / name
    proc, (worker, shm, on_disk) = _start_child(mode, path, 80)
    assert _pid_gone(int(worker))
    proc.kill()
    proc.communicate(timeout=10)
    _wait_until(lambda: _shm_gone(shm), "the resource tracker to unlink the ring")
    assert Path(f"{path}_journal.ndjson").exists()
    assert not Path(f"{path}_frame_metadata.json").exists()
    # preallocated for 160 frames: zeros follow the last frame
    assert os.path.getsize(path) >= _data_offset(path) + 160 * FRAME
    return path, int(on_disk)


def _data_offset(path: Path) -> int:
    from mesowriter.sinks._tiff_format import newest_block

    with open(path, "rb") as fh:
        block = newest_block(fh.read(4096))
    assert block is not None
    return block.geometry().data_offset


def _check_recovered(path: Path, n: int, meta: bool = True) -> None:
    _check_frames(path, list(range(n)), CHILD_SHAPE, meta=meta)
    _, xml = _series(path)  # the OME-XML carries the same metadata
    assert sidecar_from_ome_xml(xml) == {"p0": _sidecar(path)}
    with tifffile.TiffFile(path) as tf:
        assert len(tf.pages) == n  # no zero page passed off as a frame
        assert tf.series[0].dataoffset == _data_offset(path)
    mapped = tifffile.memmap(path, mode="r")
    assert mapped.shape == (n, *CHILD_SHAPE)
    del mapped
    data_end = _data_offset(path) + n * FRAME  # where the preallocated zeros began
    assert data_end < os.path.getsize(path) < data_end + 100_000  # + OME-XML
    assert not Path(f"{path}_journal.ndjson").exists()
    report = json.loads(Path(f"{path}_report.json").read_text("utf-8"))
    assert report["finish_reason"] == "recovered" and report["frames_written"] == n


def test_recover_after_acquisition_and_worker_both_died(tmp_path: Path) -> None:
    path, on_disk = _dead_run(tmp_path, "dead run.ome.tiff")
    assert on_disk >= 40
    journal = Path(f"{path}_journal.ndjson").read_bytes().splitlines()[1:]
    metas = [json.loads(line)["m"] for line in journal]
    assert len(metas) == on_disk
    # the provisional file is readable already; it declares only linked frames
    # (its XML is refreshed at most once a second, so possibly fewer)
    with tifffile.TiffFile(path) as tf:
        assert 1 <= tf.series[0].shape[0] <= on_disk
    moved = tmp_path / "moved ü 数据" / path.name  # the files travel together
    moved.parent.mkdir()
    for suffix in ("", "_journal.ndjson"):
        os.replace(f"{path}{suffix}", f"{moved}{suffix}")
    path = moved
    result = mesowriter.recover(path)
    assert result.recovered
    assert (result.frames_on_disk, result.frames_in_journal) == (on_disk, on_disk)
    assert result.frames_declared == on_disk
    _check_recovered(path, on_disk)
    assert _sidecar(path) == metas
    assert recover(path).recovered is False  # a second run has nothing to do


def test_recover_keeps_durable_frames_whose_journal_lines_never_came(
    tmp_path: Path,
) -> None:
    # The worker died after a commit made the batch durable (pixels synced,
    # header block updated) and before its journal lines: the block vouches
    # for those frames, so they are kept, their metadata marked as lost.
    path, journalled = _dead_run(tmp_path, "cli.ome.tif", mode="torn")
    assert 0 < journalled < 40
    jpath = Path(f"{path}_journal.ndjson")
    with jpath.open("ab") as fh:
        fh.write(b'{"i":999,"k":')  # and a torn line at the end of the journal
    out = subprocess.run(
        [sys.executable, "-m", "mesowriter", "recover", str(path), "--json"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    kept = result["frames_on_disk"]
    assert kept >= 40 > journalled  # the batch that crossed the mark
    assert result["frames_in_journal"] == journalled
    assert result["frames_declared"] == kept
    assert any("metadata never reached the journal" in n for n in result["notes"])
    _check_recovered(path, kept, meta=False)
    side = _sidecar(path)
    assert [m["i"] for m in side[:journalled]] == list(range(journalled))
    assert all(m == {"mesowriter_metadata_lost": True} for m in side[journalled:])
    report = StreamReport.from_json(Path(f"{path}_report.json").read_bytes())
    assert len(report.metadata_missing) == kept - journalled
    assert report.frames_received == report.frames_written + report.frames_dropped


def test_recover_refuses_a_file_without_frames(tmp_path: Path) -> None:
    path = tmp_path / "empty.ome.tiff"
    with WriterService(ring_bytes=1 << 20, restart_workers=False) as svc:
        stream = svc.open_stream(path, shape=(8, 8), dtype="uint16", frames=10)
        os.kill(svc.workers[0], signal.SIGKILL)
        _wait_until(lambda: stream.error is not None, "the worker death")
        with pytest.raises(WriterError, match="died"):
            stream.close()
    before = path.read_bytes()
    with pytest.raises(RecoverError, match="no frame reached the disk"):
        recover(path)
    assert path.read_bytes() == before  # nothing touched
    out = subprocess.run(
        [sys.executable, "-m", "mesowriter", "recover", str(path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 1 and "no frame reached the disk" in out.stderr


# -- 3. a full disk on one stream ---------------------------------------------------
@pytest.mark.parametrize("pause", [0.002, 0.0], ids=["paced", "batched"])
def test_enospc_stops_one_stream_and_the_other_carries_on(
    tmp_path: Path, pause: float
) -> None:
    # Unpaced, frames reach the worker in batches that straddle the failing
    # write; the batch is retried frame by frame, keeping all that fit.
    shape = (32, 32)
    full, fine = tmp_path / "full.ome.tiff", tmp_path / "fine.ome.tiff"
    with WriterService(ring_bytes=1 << 20, workers=1, max_workers=1) as svc:
        a = svc.open_stream(full, shape=shape, dtype="uint16", _fault="fail-after:10")
        b = svc.open_stream(fine, shape=shape, dtype="uint16")
        assert a.worker is b.worker  # the same process writes both
        failed_at = None
        for i in range(80):
            if failed_at is None:
                try:
                    a.write(index_frame(i, shape), {"i": i, "tag": "ü"})
                except WriterError as exc:
                    assert "No space left" in str(exc)
                    failed_at = i
            assert b.write(index_frame(i, shape), {"i": i, "tag": "ü"})
            time.sleep(pause)  # paced: the worker reaches the failing write mid-run
        assert failed_at is not None
        with pytest.raises(WriterError, match="No space left") as info:
            a.close()
        ra = info.value.report  # type: ignore[attr-defined]
        rb = b.close()
    assert ra.finish_reason == "error" and ra.frames_written == 10
    assert ra.frames_received == ra.frames_written + ra.frames_dropped
    _check_frames(full, list(range(10)), shape)
    assert rb.finish_reason == "completed" and rb.frames_written == 80
    _check_frames(fine, list(range(80)), shape)


# -- 4. a slow disk: the ring absorbs a burst -------------------------------------
def test_ring_absorbs_a_burst_on_a_slow_disk(tmp_path: Path) -> None:
    shape = (64, 64)
    path = tmp_path / "burst.ome.tiff"
    with WriterService(ring_bytes=2 << 20, policy="drop") as svc:
        stream = svc.open_stream(path, shape=shape, dtype="uint16", _fault="slow:0.03")
        burst = stream._ring.n_slots - 1
        t0 = time.perf_counter()
        for i in range(burst):
            assert stream.write(index_frame(i, shape), {"i": i, "tag": "ü"})
        took = time.perf_counter() - t0
        report = stream.close()
    assert took < 0.03 * burst / 2, "the producer must not wait for the disk"
    assert report.frames_dropped == 0 and report.blocked_seconds == 0.0
    assert report.ring_high_water >= burst - 1
    _check_frames(path, list(range(burst)), shape)


# -- 5. SIGTERM / SIGINT to the acquisition process ---------------------------------
@pytest.mark.parametrize(
    ("sig", "code"), [(signal.SIGTERM, 128 + signal.SIGTERM), (signal.SIGINT, None)]
)
def test_signal_to_the_acquisition_finalises_open_streams(
    tmp_path: Path, sig: signal.Signals, code: int | None
) -> None:
    path = tmp_path / f"sig {sig.name}.ome.tiff"
    proc, (worker, shm, _) = _start_child("wait", path, 50)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=30)
    if code is None:  # KeyboardInterrupt: Python re-raises SIGINT on exit
        assert proc.returncode in (-signal.SIGINT, 130), err
        assert "KeyboardInterrupt" in err
    else:
        assert proc.returncode == code, err
    _check_frames(path, list(range(50)), CHILD_SHAPE)
    report = StreamReport.from_json(Path(f"{path}_report.json").read_bytes())
    assert report.finish_reason == "interrupted" and report.frames_written == 50
    assert _shm_gone(shm), "the parent must unlink its ring before exiting"
    _wait_until(lambda: _pid_gone(int(worker)), "the worker to exit")


# -- 6. shared memory after a killed worker or an exception ---------------------------
def test_no_shared_memory_left_after_killed_worker_or_exception(
    tmp_path: Path,
) -> None:
    shape = (16, 16)
    names = []
    with pytest.raises(RuntimeError, match="user code"):
        with WriterService(ring_bytes=1 << 20) as svc:
            stream = svc.open_stream(tmp_path / "k.ome.tiff", shape=shape, dtype="u2")
            names.append(stream.ring.layout.block)
            stream.write(index_frame(0, shape), {"i": 0, "tag": "ü"})
            os.kill(svc.workers[0], signal.SIGKILL)
            stream.write(index_frame(1, shape), {"i": 1, "tag": "ü"})
            other = svc.open_stream(tmp_path / "e.ome.tiff", shape=shape, dtype="u2")
            names.append(other.ring.layout.block)
            other.write(index_frame(0, shape), {"i": 0, "tag": "ü"})
            raise RuntimeError("user code failed")
    assert all(_shm_gone(n) for n in names)
    _check_frames(tmp_path / "k.ome.tiff", [0, 1], shape)
    assert (
        StreamReport.from_json(
            Path(f"{tmp_path / 'k.ome.tiff'}_report.json").read_bytes()
        ).finish_reason
        == "canceled"
    )
    _check_frames(tmp_path / "e.ome.tiff", [0], shape)


# -- 7. bad input ----------------------------------------------------------------------
def test_video_refuses_a_dtype_it_cannot_write_and_the_run_goes_on(
    service: WriterService, tmp_path: Path
) -> None:
    with pytest.raises(ValueError, match="cannot write float64"):
        service.open_stream(tmp_path / "v.avi", shape=(16, 16), dtype="float64")
    assert not (tmp_path / "v.avi").exists()
    stream = service.open_stream(tmp_path / "t.ome.tiff", shape=(16, 16), dtype="u2")
    stream.write(index_frame(0, (16, 16)), {"i": 0, "tag": "ü"})
    assert stream.close().frames_written == 1


def test_extra_metadata_reaches_the_sidecar_of_a_failed_stream(tmp_path: Path) -> None:
    shape = (32, 32)
    path = tmp_path / "failed.ome.tiff"
    with WriterService(ring_bytes=1 << 20) as svc:
        stream = svc.open_stream(
            path, shape=shape, dtype="uint16", _fault="fail-after:3"
        )
        for i in range(10):
            try:
                stream.write(index_frame(i, shape), {"i": i, "tag": "ü"})
            except WriterError:
                break
            time.sleep(0.002)
        _wait_until(lambda: stream.error is not None, "the failing write")
        report = stream.close(check=False, extra_metadata={"subject": "m1"})
    assert report.finish_reason == "error" and report.frames_written == 3
    side = json.loads(Path(f"{path}_frame_metadata.json").read_text("utf-8"))
    assert side["subject"] == "m1" and [m["i"] for m in side["p0"]] == [0, 1, 2]
