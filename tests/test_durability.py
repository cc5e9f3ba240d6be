"""Crash-consistent through a power cut, one owner per file, reports that add up.

Each test is one of the failures once seen on this project (issue 11),
reproduced with real processes and signals: a replacement worker that
rewrote a finished file, a power cut (modelled by undoing every unsynced
byte, and on a real ext4 image copied at the instant of the kill), recover
beside a live writer, a second writer on a live file, reports missing or not
adding up after kills and signals, shared memory left behind, and a Ctrl-C
that hung the process.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import tifffile

from mesowriter import RecoverError, StreamReport, WriterService, recover
from mesowriter._journal import scan
from tests.conftest import index_frame

ROOT = Path(__file__).resolve().parent.parent
CHILD = Path(__file__).with_name("_durability_child.py")
SHM = Path("/dev/shm")


def _child(mode: str, path: Path, arg: int | None = None) -> subprocess.Popen[str]:
    """The acquisition, in a session of its own (so its group can be killed)."""
    args = [sys.executable, str(CHILD), mode, str(path)]
    if arg is not None:
        args.append(str(arg))
    return subprocess.Popen(
        args,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )


def _expect(proc: subprocess.Popen[str], word: str) -> list[str]:
    assert proc.stdout is not None
    while True:
        line = proc.stdout.readline()
        if not line:
            _, err = proc.communicate(timeout=10)
            pytest.fail(f"child ended before {word}: {err}")
        if line.startswith(word):
            return line.split()[1:]


def _wait_until(cond: object, what: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():  # type: ignore[operator]
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] == "Z"
    except OSError:
        return True


def _frames(path: Path, shape: tuple[int, int]) -> np.ndarray:
    """The frames a reader sees, checked to be exactly what was written."""
    with tifffile.TiffFile(path) as tf:
        data = tf.series[0].asarray().reshape(-1, *shape)
    for i in range(len(data)):
        np.testing.assert_array_equal(data[i], index_frame(i, shape))
    mapped = tifffile.memmap(path, mode="r").reshape(-1, *shape)
    assert len(mapped) == len(data)
    del mapped
    return data


def _sidecar(path: Path) -> list[dict[str, object]]:
    return list(json.loads(Path(f"{path}_frame_metadata.json").read_bytes())["p0"])


# -- finished means finished --------------------------------------------------------
@pytest.mark.parametrize("fault", ["die-after-close", "die-after-finalise"])
def test_a_worker_killed_after_finalising_is_not_followed_by_a_rewrite(
    tmp_path: Path, fault: str
) -> None:
    # die-after-close: killed after the journal went and before it told the
    # parent; the replacement once took the file for new, truncated it and
    # rewrote it from the ring (300 frames through 25 slots became repeats of
    # the last). die-after-finalise: the file is final, the sidecar not yet
    # written; the replacement writes it from the journal left behind.
    shape = (64, 64)
    path = tmp_path / "finished.ome.tiff"
    ring_bytes = 25 * (64 * 64 * 2 + 32 * 1024 + 32) + 4 * 4096 + 32 * 1024
    with WriterService(ring_bytes=ring_bytes) as svc:
        stream = svc.open_stream(
            path, shape=shape, dtype="uint16", frames=300, _fault=fault
        )
        assert stream.ring.n_slots == 25
        for i in range(300):
            assert stream.write(index_frame(i, shape), {"i": i})
        report = stream.close()
    assert report.worker_restarts == 1
    assert report.finish_reason == "completed", report.problems()
    assert report.frames_written == 300
    assert report.frames_received == 300 and report.frames_dropped == 0
    assert any("already final" in n for n in report.notes)
    assert len(_frames(path, shape)) == 300
    assert [m["i"] for m in _sidecar(path)] == list(range(300))
    assert not Path(f"{path}_journal.ndjson").exists()


@pytest.mark.parametrize("frames", [60, None])
def test_a_worker_killed_inside_the_open_is_replaced_by_one_that_starts_over(
    tmp_path: Path, frames: int | None
) -> None:
    # The first worker created the file and the journal, then died before it
    # answered: its replacement may not take the file for someone else's.
    shape = (64, 64)
    path = tmp_path / "died_in_open.ome.tiff"
    with WriterService() as svc:
        stream = svc.open_stream(
            path, shape=shape, dtype="uint16", frames=frames, _fault="die-in-open"
        )
        for i in range(60):
            assert stream.write(index_frame(i, shape), {"i": i})
        report = stream.close()
    assert report.worker_restarts == 1
    assert report.finish_reason == "completed", report.problems()
    assert report.frames_written == 60 and report.frames_received == 60
    assert len(_frames(path, shape)) == 60
    assert [m["i"] for m in _sidecar(path)] == list(range(60))


def test_a_replacement_never_starts_over_a_file_that_holds_data(
    tmp_path: Path,
) -> None:
    # The path was free when the parent checked it; what appears there while
    # the first worker dies in its open is not ours to truncate.
    from mesowriter._spec import StreamSpec
    from mesowriter._worker import _spec_for_reopen

    path = tmp_path / "taken.ome.tiff"
    spec = StreamSpec(
        stream_id=1, path=str(path), kind="ome-tiff", shape=(8, 8), dtype="<u2"
    )
    assert _spec_for_reopen(spec) is spec  # nothing there: a plain open
    path.write_bytes(bytes(8192))  # created, nothing written yet
    assert _spec_for_reopen(spec).overwrite
    path.write_bytes(b"II*\x00" + bytes(8188))  # someone's data
    with pytest.raises(FileExistsError, match="holds data"):
        _spec_for_reopen(spec)
    path.unlink()
    path.symlink_to(tmp_path / "elsewhere")
    with pytest.raises(FileExistsError):
        _spec_for_reopen(spec)


# -- a power cut -----------------------------------------------------------------------
SHAPE_BIG = (256, 256)


def _cut(tmp_path: Path, trigger: int) -> Path:
    """A run whose worker undoes every unsynced byte and kills the group."""
    path = tmp_path / "cut.ome.tiff"
    proc = _child("powercut", path, trigger)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == -signal.SIGKILL, err
    return path


def test_power_cut_keeps_every_frame_that_was_synced(tmp_path: Path) -> None:
    trigger = 250
    path = _cut(tmp_path, trigger)
    _, records, _ = scan(f"{path}_journal.ndjson")
    # before recover, a reader already sees only durable, exact frames
    with tifffile.TiffFile(path) as tf:
        seen = tf.series[0].shape[0]
        data = tf.series[0].asarray().reshape(-1, *SHAPE_BIG)
    # Only durable, exact frames. The journal may trail the file by the
    # commits that ended while a sync of its lines ran: those frames are
    # kept, their metadata marked lost (below).
    assert 0 < seen
    for i in range(seen):
        np.testing.assert_array_equal(data[i], index_frame(i, SHAPE_BIG))
    result = recover(path)
    kept = result.frames_on_disk
    # frames submitted after the last commit are lost: at most a commit's worth
    # (0.1 s or 64 MiB) plus the batches in flight; measured loss is printed
    print(f"power cut after {trigger} frames submitted: {kept} kept")
    assert trigger - 120 <= kept <= trigger
    assert len(_frames(path, SHAPE_BIG)) == kept
    side = _sidecar(path)
    assert [m.get("i") for m in side[: len(records)]] == list(range(len(records)))
    assert all(m == {"mesowriter_metadata_lost": True} for m in side[len(records) :])
    report = StreamReport.from_json(Path(f"{path}_report.json").read_bytes())
    assert report.finish_reason == "recovered"
    assert report.frames_received == report.frames_written + report.frames_dropped
    # the group died at once: its ring was left, and recover removed it
    assert result.removed_rings


def test_power_cut_without_a_journal_recovers_the_durable_frames(
    tmp_path: Path,
) -> None:
    path = _cut(tmp_path, 200)
    os.unlink(f"{path}_journal.ndjson")  # lost, or never synced
    result = recover(path)
    assert 0 < result.frames_on_disk <= 200 and result.frames_in_journal == 0
    assert len(_frames(path, SHAPE_BIG)) == result.frames_on_disk
    side = _sidecar(path)
    assert len(side) == result.frames_on_disk
    assert all(m == {"mesowriter_metadata_lost": True} for m in side)
    report = StreamReport.from_json(Path(f"{path}_report.json").read_bytes())
    assert len(report.metadata_missing) == result.frames_on_disk


def test_cli_recover_takes_a_journal_that_never_reached_the_disk(
    tmp_path: Path,
) -> None:
    # A journal is renamed into place at open and synced just after; a cut
    # in between leaves it empty (ext4) or zeros. recover goes by the
    # file's header block then, the frames' metadata marked lost.
    path = _cut(tmp_path, 200)
    journal = Path(f"{path}_journal.ndjson")
    journal.write_bytes(b"")
    proc = subprocess.run(
        [sys.executable, "-m", "mesowriter", "recover", str(path)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    kept = len(_frames(path, SHAPE_BIG))
    assert 0 < kept <= 200
    assert all(m == {"mesowriter_metadata_lost": True} for m in _sidecar(path))


def test_a_replacement_makes_file_and_journal_durable_before_writing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The first worker answered the open and died before its syncs: the
    # replacement syncs the file, its name, then the journal (a durable
    # journal always has its file) before its first frame.
    import msgspec

    from mesowriter import _worker
    from mesowriter._ring import PAGE, FrameRing, RingLayout, SharedBlock
    from mesowriter._spec import StreamSpec

    path = tmp_path / "settle.ome.tiff"
    layout = RingLayout.plan(ring_bytes=1 << 20, shape=(16, 16), dtype=np.dtype("<u2"))
    block = SharedBlock.create(layout.region_bytes + PAGE)
    placed = msgspec.structs.replace(layout, block=block.name, offset=PAGE)
    ring = FrameRing.create(placed, block)
    spec = StreamSpec(
        stream_id=1, path=str(path), kind="ome-tiff", shape=(16, 16), dtype="<u2"
    )
    first = _worker.StreamRunner(spec, placed, block, False, lambda _f: None)
    first.sink.abort()  # died before settle: its descriptors and lock go
    assert first.journal is not None
    first.journal.close()
    first.release()
    synced: list[str] = []
    real_fsync, real_fdatasync = os.fsync, os.fdatasync

    def name_of(fd: int) -> str:
        return os.path.basename(os.readlink(f"/proc/self/fd/{fd}"))

    def fsync(fd: int) -> None:
        synced.append(name_of(fd))
        real_fsync(fd)

    def fdatasync(fd: int) -> None:
        synced.append(name_of(fd))
        real_fdatasync(fd)

    try:
        second = _worker.StreamRunner(spec, placed, block, True, lambda _f: None)
        monkeypatch.setattr(os, "fsync", fsync)
        monkeypatch.setattr(os, "fdatasync", fdatasync)
        monkeypatch.setattr("mesowriter._platform._posix._datasync", fdatasync)
        second.settle()
        monkeypatch.undo()
        names = list(synced)
        data, journal, folder = path.name, f"{path.name}_journal.ndjson", tmp_path.name
        assert data in names and journal in names and folder in names
        assert names.index(data) < names.index(folder) < names.index(journal)
        second.sink.abort()
        assert second.journal is not None
        second.journal.close()
        second.release()
    finally:
        ring.close()
        block.destroy()


def _can_loop_mount() -> str | None:
    if os.geteuid() != 0:
        return "needs root to mount a loop device"
    for tool in ("losetup", "mkfs.ext4", "e2fsck", "mount", "umount"):
        if shutil.which(tool) is None:
            return f"needs {tool}"
    if not Path("/dev/loop-control").exists():
        return "no loop devices on this machine"
    return None


@pytest.mark.skipif(_can_loop_mount() is not None, reason=str(_can_loop_mount()))
def test_power_cut_on_a_real_ext4_image_copied_at_the_kill(tmp_path: Path) -> None:
    # The image holds exactly what reached the (loop) device when the
    # process group died: dirty pages of the filesystem never got there.
    image, mnt = tmp_path / "disk.img", tmp_path / "mnt"
    copy, mnt2 = tmp_path / "copy.img", tmp_path / "mnt2"
    subprocess.run(["truncate", "-s", "600M", str(image)], check=True)
    subprocess.run(["mkfs.ext4", "-q", "-F", str(image)], check=True)
    mnt.mkdir()
    mnt2.mkdir()
    subprocess.run(["mount", "-o", "loop", str(image), str(mnt)], check=True)
    try:
        path = mnt / "live.ome.tiff"
        proc = _child("live", path)
        _expect(proc, "WROTE 300")
        os.killpg(proc.pid, signal.SIGKILL)
        shutil.copyfile(image, copy)  # the instant of the cut
        proc.communicate(timeout=30)
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)
    subprocess.run(["e2fsck", "-fy", str(copy)], capture_output=True, check=False)
    subprocess.run(["mount", "-o", "loop", str(copy), str(mnt2)], check=True)
    try:
        path = mnt2 / "live.ome.tiff"
        result = recover(path)
        kept = result.frames_on_disk
        print(f"ext4 image: 300+ frames written, {kept} recovered")
        assert kept >= 200
        assert len(_frames(path, SHAPE_BIG)) == kept
        side = _sidecar(path)
        assert [m.get("i") for m in side[: result.frames_in_journal]] == list(
            range(result.frames_in_journal)
        )
    finally:
        subprocess.run(["umount", str(mnt2)], check=False)


# -- one owner per file ----------------------------------------------------------------
def _orphan(mode: str, path: Path) -> tuple[subprocess.Popen[str], int]:
    """A child that fills its ring, then dies: its writer drains it alone.
    Returns the child and the writer's pid."""
    proc = _child(mode, path)
    worker, _ = _expect(proc, "OPEN")
    _expect(proc, "READY")
    proc.kill()
    proc.wait(timeout=10)  # (not communicate: the writer holds the pipes open)
    return proc, int(worker)


def test_recover_refuses_a_file_that_a_live_writer_still_drains(
    tmp_path: Path,
) -> None:
    path = tmp_path / "draining.ome.tiff"
    proc, worker = _orphan("orphan", path)
    assert not _gone(worker)
    with pytest.raises(RecoverError, match="live mesowriter process"):
        recover(path)
    _wait_until(lambda: _gone(worker), "the orphaned writer to finish")
    assert len(_frames(path, (64, 64))) == 40  # untouched by the refused recover
    assert [m["i"] for m in _sidecar(path)] == list(range(40))
    assert recover(path).recovered is False  # finalised by its writer
    proc.communicate(timeout=10)  # the pipes, now that the writer let go


def test_an_orphaned_handler_stream_keeps_its_journal_for_recover(
    tmp_path: Path,
) -> None:
    # Its caller (a handler) joins the run's sidecar and may have added files
    # after this one opened: the orphan writes a sidecar of its own file but
    # keeps the journal, and `recover` joins the run from every journal.
    path = tmp_path / "orphan_caller.ome.tiff"
    proc, worker = _orphan("orphan-caller", path)
    _wait_until(lambda: _gone(worker), "the orphaned writer to finish")
    proc.communicate(timeout=10)
    assert [m["i"] for m in _sidecar(path)] == list(range(40))
    assert Path(f"{path}_journal.ndjson").exists()
    result = recover(path)
    assert result.recovered is False  # final already; only the sidecar joined
    assert [m["i"] for m in _sidecar(path)] == list(range(40))
    assert not Path(f"{path}_journal.ndjson").exists()
    assert len(_frames(path, (64, 64))) == 40


def test_a_second_writer_is_refused_on_a_live_file(tmp_path: Path) -> None:
    path = tmp_path / "owned.ome.tiff"
    alias = tmp_path / "alias.ome.tiff"
    alias.symlink_to(path)
    proc = _child("hold", path)
    worker, _ = _expect(proc, "OPEN")
    _expect(proc, "READY")
    try:
        with WriterService(ring_bytes=8 << 20) as svc:
            for name in (path, alias):
                with pytest.raises(FileExistsError, match="live mesowriter") as info:
                    svc.open_stream(name, shape=(8, 8), dtype="u2", overwrite=True)
                assert "overwrite=True" not in str(info.value)
        # in one process too: a symlinked alias of a stream it has open
        with WriterService(ring_bytes=8 << 20) as svc:
            mine = tmp_path / "mine.ome.tiff"
            stream = svc.open_stream(mine, shape=(8, 8), dtype="u2")
            (tmp_path / "mine-alias.ome.tiff").symlink_to(mine)
            with pytest.raises((ValueError, FileExistsError)):
                svc.open_stream(
                    tmp_path / "mine-alias.ome.tiff",
                    shape=(8, 8),
                    dtype="u2",
                    overwrite=True,
                )
            for i in range(5):
                stream.write(index_frame(i, (8, 8)), {"i": i})
            assert stream.close().frames_written == 5
        assert len(_frames(mine, (8, 8))) == 5
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.communicate(timeout=30)
    assert len(_frames(path, (64, 64))) == 10  # the owner's file is intact
    report = StreamReport.from_json(Path(f"{path}_report.json").read_bytes())
    assert report.frames_written == 10
    _wait_until(lambda: _gone(int(worker)), "the writer to exit")


# -- every frame accounted -------------------------------------------------------------
def test_a_report_exists_when_the_acquisition_dies_during_close(
    tmp_path: Path,
) -> None:
    path = tmp_path / "closing.ome.tiff"
    proc = _child("closing", path)
    worker, _ = _expect(proc, "OPEN")
    _expect(proc, "CLOSING")
    time.sleep(0.2)  # close() has sent its figures; the slow disk is still busy
    proc.kill()
    proc.communicate(timeout=10)
    _wait_until(lambda: _gone(int(worker)), "the writer to finish alone")
    report = StreamReport.from_json(Path(f"{path}_report.json").read_bytes())
    # whichever side survived wrote it, with the producer's own figures
    assert report.written_by in ("writer", "orphaned writer")
    assert report.frames_received == report.frames_written == 30
    assert report.frames_dropped == 0 and report.finish_reason == "completed"
    assert len(_frames(path, (64, 64))) == 30


def test_a_signal_while_write_waits_on_a_full_ring_is_accounted(
    tmp_path: Path,
) -> None:
    path = tmp_path / "full ring.ome.tiff"
    proc = _child("fullring", path)
    _expect(proc, "BLOCKED")
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signal.SIGTERM, err
    report = StreamReport.from_json(Path(f"{path}_report.json").read_bytes())
    assert report.finish_reason == "interrupted"
    assert report.frames_received == report.frames_written + report.frames_dropped
    assert len(report.drops["interrupted"]) == 1  # the frame that was waiting
    assert report.drops["interrupted"] == [report.frames_received - 1]
    assert len(_frames(path, (64, 64))) == report.frames_written


# -- nothing left behind ---------------------------------------------------------------
def test_a_closed_terminal_finalises_and_leaves_no_shared_memory(
    tmp_path: Path,
) -> None:
    path = tmp_path / "hangup.ome.tiff"
    proc = _child("hold", path)
    worker, block = _expect(proc, "OPEN")
    _expect(proc, "READY")
    os.killpg(proc.pid, signal.SIGHUP)  # the terminal closed: the whole group
    proc.communicate(timeout=30)
    _wait_until(lambda: _gone(int(worker)), "the writer to exit")
    assert not (SHM / block).exists()
    report = StreamReport.from_json(Path(f"{path}_report.json").read_bytes())
    assert report.frames_written == 10 and report.finish_reason == "interrupted"


def test_a_killed_group_leaves_a_ring_that_recover_removes(tmp_path: Path) -> None:
    path = tmp_path / "killed.ome.tiff"
    proc = _child("hold", path)
    worker, block = _expect(proc, "OPEN")
    _expect(proc, "READY")
    time.sleep(0.3)  # the frames are committed
    os.killpg(proc.pid, signal.SIGKILL)  # nobody survives to clean up
    proc.communicate(timeout=10)
    _wait_until(lambda: _gone(int(worker)), "the writer to die")
    assert (SHM / block).exists()
    result = recover(path)
    assert block in result.removed_rings and not (SHM / block).exists()
    assert result.frames_on_disk == 10
    assert len(_frames(path, (64, 64))) == 10


MDA_SCRIPT = """
import sys, useq
from pymmcore_plus import CMMCorePlus
from mesowriter import CustomWriter
core = CMMCorePlus()
core.loadSystemConfiguration()
core.setProperty("Camera", "OnCameraCCDXSize", 64)
core.setProperty("Camera", "OnCameraCCDYSize", 48)
core.setExposure(10)
writer = CustomWriter(sys.argv[1])
core.mda.events.frameReady.connect(lambda *a: print("FRAME", flush=True))
seq = useq.MDASequence(time_plan={"interval": 0, "loops": 100000})
core.mda.run(seq, output=writer)
"""


def test_ctrl_c_during_an_mda_run_through_the_relay_thread_exits(
    tmp_path: Path,
) -> None:
    script = tmp_path / "acquire.py"
    script.write_text(MDA_SCRIPT)
    path = tmp_path / "ctrlc.ome.tif"
    proc = subprocess.Popen(
        [sys.executable, str(script), str(path)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    for _ in range(30):
        _expect(proc, "FRAME")
    proc.send_signal(signal.SIGINT)
    try:
        _, err = proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        pytest.fail("the process hung after Ctrl-C")
    assert "KeyboardInterrupt" in err
    report = StreamReport.from_json(Path(f"{path}_report.json").read_bytes())
    # a frame the runner emitted as Ctrl-C landed may never reach the relay
    assert report.finish_reason == "interrupted" and report.frames_written >= 25
    assert report.frames_received == report.frames_written + report.frames_dropped
    assert not Path(f"{path}_journal.ndjson").exists()
    with tifffile.TiffFile(path) as tf:
        assert len(tf.pages) == report.frames_written


def test_a_console_close_finalises_the_run_from_the_handler_thread(
    tmp_path: Path,
) -> None:
    # Windows runs console-control handlers (window closed, logoff, shutdown)
    # on a thread of its own: the run is finished there, sidecar included.
    import threading

    import useq

    from mesowriter import CustomWriter
    from mesowriter._service import _on_shutdown_signal

    seq = useq.MDASequence(
        stage_positions=[useq.Position(), useq.Position()],
        time_plan={"interval": 0, "loops": 4},
    )
    path = tmp_path / "console.ome.tif"
    writer = CustomWriter(path)
    writer.sequenceStarted(
        seq, {"image_infos": [{"plane_shape": (8, 8), "dtype": "uint16"}]}
    )
    for k, event in enumerate(seq):
        if k == 5:
            break
        writer.frameReady(index_frame(k, (8, 8)), event, {"k": k})
    handler = threading.Thread(target=_on_shutdown_signal, args=("CTRL_CLOSE",))
    handler.start()
    handler.join(60)
    side = json.loads(Path(f"{path}_frame_metadata.json").read_bytes())
    assert sorted(side) == ["p0", "p1"]
    assert sum(len(v) for v in side.values()) == 5
    for key in ("p0", "p1"):
        report = writer.reports[key]
        assert report.finish_reason == "interrupted"
        assert report.frames_received == report.frames_written
    assert not list(tmp_path.glob("*_journal.ndjson"))
