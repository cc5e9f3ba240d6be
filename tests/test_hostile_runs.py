"""Hostile runs: what untrusted names, shared folders and small disks did to runs.

Every test reproduces something that once happened, end to end: real writer
processes, the real DemoCamera where a camera is part of the story, and every
assertion made here, in the parent, on what is on disk afterwards. What comes
from outside is untrusted: names in a sequence are data, not paths; a shared
folder may hold symbolic links another user planted; an open that is refused
changes nothing on disk.

Some tests need root (a second user, a small mounted filesystem); they skip,
with the reason, where that is not available.
"""

from __future__ import annotations

import errno
import json
import os
import pwd
import shutil
import stat
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tifffile
import useq

from mesowriter import CustomWriter, StreamReport, WriterError, WriterService
from mesowriter._names import is_reserved_on_windows
from mesowriter._paths import position_path
from tests.conftest import index_frame

# -- helpers ---------------------------------------------------------------------------


class Recorder:
    """What pymmcore-plus delivered, to compare the files against."""

    def __init__(self) -> None:
        self.frames: list[tuple[np.ndarray, Any]] = []

    def frameReady(self, img: np.ndarray, event: Any, meta: Any = None) -> None:
        self.frames.append((img.copy(), event))

    def of_position(self, p: int) -> list[np.ndarray]:
        return [img for img, event in self.frames if event.index.get("p", 0) == p]


def _tree(root: Path, *, skip: Path | None = None) -> dict[str, tuple[Any, ...]]:
    """Every entry under `root` (not below `skip`): kind, bytes or link
    target, inode and modification time, so any change at all shows."""
    out: dict[str, tuple[Any, ...]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        here = Path(dirpath)
        if skip is not None and (here == skip or skip in here.parents):
            dirnames[:] = []
            continue
        for name in dirnames + filenames:
            p = here / name
            st = os.lstat(p)
            rel = str(p.relative_to(root))
            if stat.S_ISLNK(st.st_mode):
                out[rel] = ("link", os.readlink(p), st.st_ino, st.st_uid)
            elif stat.S_ISDIR(st.st_mode):
                out[rel] = ("dir",)
            else:
                out[rel] = ("file", p.read_bytes(), st.st_ino, st.st_mtime_ns)
    return out


def _temporaries(folder: Path) -> list[str]:
    return sorted(
        p.name
        for p in folder.rglob("*")
        if ".tmp" in p.name or p.name.startswith(".mesowriter-probe")
    )


def _read_frames(path: str | Path) -> np.ndarray:
    with tifffile.TiffFile(path) as tf:
        data = tf.series[0].asarray()
    return data.reshape(-1, *data.shape[-2:])


# -- 1. position names are data, not paths ---------------------------------------------

TRAVERSAL = "../../../../elsewhere/victim"
HOSTILE_POSITIONS: list[str | None] = [
    TRAVERSAL,
    None,  # unnamed: its key is "p1" ...
    "p1",  # ... and this one is named "p1"
    "a/b",
    "/abs/path",
    "../escape",
    "CON",
    "a:b",
    '<>|?*"',
]


def test_position_names_are_data_not_paths(
    core: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # nine files: a small ring each is plenty for 192x256 frames
    monkeypatch.setattr(CustomWriter, "_min_ring_bytes", 8 << 20)
    out = tmp_path / "lab" / "rig" / "day" / "out"
    out.mkdir(parents=True)
    filename = out / "run.ome.tiff"
    # Where the traversal name would land if it were used as a path: a real
    # file of another run lives there, with its own sidecar and report.
    naive = Path(os.path.normpath(position_path(str(filename), TRAVERSAL)))
    assert tmp_path in naive.parents and out not in naive.parents
    naive.parent.mkdir(parents=True)
    tifffile.imwrite(naive, np.full((4, 4), 7, np.uint16))
    Path(f"{naive}_frame_metadata.json").write_text('{"p0": [{"victim": true}]}')
    Path(f"{naive}_report.json").write_text('{"victim": true}')
    outside_before = _tree(tmp_path, skip=out)

    recorder = Recorder()
    core.mda.events.frameReady.connect(recorder.frameReady)
    seq = useq.MDASequence(
        stage_positions=[
            useq.Position(x=10.0 * i, y=5.0 * i, z=0, name=name)
            for i, name in enumerate(HOSTILE_POSITIONS)
        ],
        time_plan={"interval": 0, "loops": 2},
    )
    with CustomWriter(filename, ring_bytes=72 << 20, overwrite=True) as writer:
        core.mda.run(seq, output=writer)

    # nothing outside the output folder changed: the victim is untouched
    assert _tree(tmp_path, skip=out) == outside_before
    # every file is a direct child of the output folder; no folder was made
    for p in out.rglob("*"):
        assert p.parent == out and stat.S_ISREG(os.lstat(p).st_mode), p
    # nothing failed after the camera ran
    assert writer.error is None and writer.errors == []
    n = len(HOSTILE_POSITIONS)
    assert len(writer.reports) == n
    for report in writer.reports.values():
        assert report.ok, report.problems()
        assert report.frames_written == 2 and report.frames_dropped == 0
    data_files = [Path(r.path) for r in writer.reports.values()]
    assert all(p.parent == out for p in data_files)
    # distinct positions never share a file, not even where case is ignored
    assert len({str(p).casefold() for p in data_files}) == n
    for p in data_files:
        assert not set(p.name) & set('<>:"|?*\\/'), p.name
        assert not is_reserved_on_windows(p.name)
        assert len(f"{p.name}_report.json".encode()) <= 255
    expected = {p.name for p in data_files}
    expected |= {f"{p.name}_report.json" for p in data_files}
    expected |= {"run.ome.tiff_frame_metadata.json"}
    assert set(os.listdir(out)) == expected  # no journal, temporary or probe left

    # distinct sidecar keys: the unnamed position keeps "p1", the one named
    # "p1" gets another; the other names are kept as given (JSON, not paths)
    sidecar = json.loads((out / "run.ome.tiff_frame_metadata.json").read_text())
    assert set(sidecar) == set(writer.reports) and len(sidecar) == n
    assert "p1" in sidecar and TRAVERSAL in sidecar and "a:b" in sidecar
    key_of_p: dict[int, str] = {}
    for key, items in sidecar.items():
        assert len(items) == 2
        ps = {item["mda_event"]["index"].get("p", 0) for item in items}
        assert len(ps) == 1, (key, ps)
        key_of_p[ps.pop()] = key
    assert sorted(key_of_p) == list(range(n))
    assert key_of_p[1] == "p1" and key_of_p[2] != "p1"
    # each position's frames, and only those, are in its file
    for p, key in key_of_p.items():
        data = _read_frames(writer.reports[key].path)
        ours = recorder.of_position(p)
        assert len(ours) == 2 and data.shape == (2, 192, 256)
        for got, img in zip(data, ours, strict=True):
            np.testing.assert_array_equal(got, img)

    # every rename is said: in the writer's notes and in every report
    for name in HOSTILE_POSITIONS:
        if name is not None:
            assert any(repr(name) in note for note in writer.notes), name
    for report in writer.reports.values():
        assert set(writer.notes) <= set(report.notes)
        saved = StreamReport.from_json(Path(f"{report.path}_report.json").read_bytes())
        assert set(writer.notes) <= set(saved.notes)


# -- 2. names checked at open, before the camera ---------------------------------------


def _long_name(folder: Path, nbytes: int) -> Path:
    suffix = ".ome.tiff"
    path = folder / ("x" * (nbytes - len(suffix)) + suffix)
    assert len(path.name.encode()) == nbytes
    return path


@pytest.mark.parametrize("nbytes", [236, 237, 238, 239, 240])
def test_a_name_whose_companions_would_be_too_long_is_refused_at_open(
    service: WriterService, tmp_path: Path, nbytes: int
) -> None:
    # the data file fits in 255 bytes; "<name>_frame_metadata.json" does not
    path = _long_name(tmp_path, nbytes)
    with pytest.raises(ValueError, match="bytes long") as info:
        CustomWriter(path)
    message = str(info.value)
    assert "_frame_metadata.json" in message and "255" in message
    with pytest.raises(ValueError, match=r"_frame_metadata\.json"):
        service.open_stream(path, shape=(8, 8), dtype="uint16", frames=1)
    assert list(tmp_path.iterdir()) == []


def test_the_longest_name_whose_companions_fit_is_written(
    service: WriterService, tmp_path: Path
) -> None:
    path = _long_name(tmp_path, 235)  # its sidecar's name is exactly 255 bytes
    CustomWriter(path).close()
    stream = service.open_stream(path, shape=(8, 8), dtype="uint16", frames=2)
    for i in range(2):
        stream.write(index_frame(i, (8, 8)), {"i": i})
    assert stream.close().ok
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [path.name, f"{path.name}_frame_metadata.json", f"{path.name}_report.json"]
    )


@pytest.mark.parametrize("overwrite", [False, True])
def test_a_sidecar_name_that_is_a_folder_is_refused_at_open(
    service: WriterService, tmp_path: Path, overwrite: bool
) -> None:
    path = tmp_path / "run.ome.tiff"
    folder = tmp_path / "run.ome.tiff_frame_metadata.json"
    folder.mkdir()
    (folder / "someone else's.txt").write_text("keep")
    before = _tree(tmp_path)
    with pytest.raises(IsADirectoryError, match="is a folder"):
        CustomWriter(path, overwrite=overwrite)
    with pytest.raises(IsADirectoryError, match="is a folder"):
        service.open_stream(path, shape=(8, 8), dtype="uint16", overwrite=overwrite)
    assert _tree(tmp_path) == before
    assert _temporaries(tmp_path) == []


def _previous_run(service: WriterService, path: Path) -> None:
    stream = service.open_stream(path, shape=(16, 16), dtype="uint16", frames=3)
    for i in range(3):
        stream.write(index_frame(i, (16, 16)), {"i": i})
    assert stream.close().ok


@pytest.mark.parametrize(
    ("change", "error"),
    [
        ({"shape": (0, 16)}, ValueError),  # refused by the format check
        ({"ring_bytes": 1 << 40}, MemoryError),  # 1 TiB: refused for its ring
    ],
    ids=["zero-shape", "1TiB-ring"],
)
def test_an_open_refused_with_overwrite_leaves_the_previous_run_untouched(
    service: WriterService,
    tmp_path: Path,
    change: dict[str, Any],
    error: type[Exception],
) -> None:
    path = tmp_path / "run.ome.tiff"
    _previous_run(service, path)
    before = _tree(tmp_path)
    assert {"run.ome.tiff", "run.ome.tiff_frame_metadata.json"} <= set(before)
    assert "run.ome.tiff_report.json" in before
    options: dict[str, Any] = {"shape": (16, 16), "dtype": "uint16", "frames": 3}
    with pytest.raises(error):
        service.open_stream(path, overwrite=True, **{**options, **change})
    assert _tree(tmp_path) == before  # same bytes, same inodes, same times
    assert len(_read_frames(path)) == 3


def test_an_old_sidecar_whose_data_file_was_moved_is_not_replaced(
    core: Any, service: WriterService, tmp_path: Path
) -> None:
    path = tmp_path / "run.ome.tiff"
    _previous_run(service, path)
    moved = tmp_path / "moved"
    moved.mkdir()
    for name in ("run.ome.tiff", "run.ome.tiff_report.json"):
        (tmp_path / name).rename(moved / name)
    sidecar = tmp_path / "run.ome.tiff_frame_metadata.json"
    old = sidecar.read_bytes()
    two_positions = useq.MDASequence(
        stage_positions=[(0, 0, 0), (10, 10, 0)], time_plan={"interval": 0, "loops": 2}
    )
    with pytest.raises(FileExistsError, match="moved away"):
        writer = CustomWriter(path, ring_bytes=128 << 20)
        # reached only if the constructor let it through: a run of several
        # positions writes the run's one sidecar at its end
        with writer:
            core.mda.run(two_positions, output=writer)
    with pytest.raises(FileExistsError, match="moved away"):
        service.open_stream(path, shape=(16, 16), dtype="uint16")
    assert sidecar.read_bytes() == old
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "moved",
        "run.ome.tiff_frame_metadata.json",
    ]


def test_a_position_that_never_opened_takes_nothing_from_an_old_journal(
    core: Any, tmp_path: Path
) -> None:
    # An earlier run left p1's file and journal; this run refuses p1 (no
    # overwrite) and writes p0. The sidecar must not give the old journal's
    # metadata as this run's p1.
    (tmp_path / "run_p1.ome.tiff").write_bytes(b"an earlier run's file")
    (tmp_path / "run_p1.ome.tiff_journal.ndjson").write_bytes(
        b'{"mesowriter_journal":2,"spec":{}}\n{"i":0,"k":0,"m":{"old":"run"}}\n'
    )
    seq = useq.MDASequence(
        stage_positions=[(0, 0, 0), (10, 10, 0)], time_plan={"interval": 0, "loops": 2}
    )
    writer = CustomWriter(tmp_path / "run.ome.tiff", ring_bytes=128 << 20)
    with pytest.raises(WriterError, match=r"run_p1\.ome\.tiff exists"):
        with writer, writer.attach(core):
            core.mda.run(seq)
    sidecar = json.loads((tmp_path / "run.ome.tiff_frame_metadata.json").read_text())
    assert len(sidecar["p0"]) == 2
    assert sidecar.get("p1", []) == []


# -- 3. symbolic links planted by another user -----------------------------------------

COMPANIONS = ("_report.json", "_frame_metadata.json", "_journal.ndjson")


def _other_user() -> tuple[int, int]:
    if os.geteuid() != 0:
        pytest.skip("needs root to act as a second user (and to be the victim)")
    try:
        user = pwd.getpwnam("nobody")
    except KeyError:
        pytest.skip("no user 'nobody' on this machine to act as the second user")
    return user.pw_uid, user.pw_gid


@pytest.fixture
def shared_folder() -> Iterator[tuple[Path, tuple[int, int]]]:
    """A sticky, world-writable folder in /tmp, as labs share one, owned by
    the second user: so that the kernel's protected_symlinks (which stops
    root following another user's links only in folders root owns) cannot
    hide a writer that follows links; our code is the only guard."""
    uid, gid = _other_user()
    folder = Path(tempfile.mkdtemp(prefix="mesowriter-shared-", dir="/tmp"))
    try:
        os.chmod(folder, 0o1777)
        os.chown(folder, uid, gid)
        probe = _as_user(uid, gid, folder, ": > probe && rm probe")
        if probe.returncode != 0:
            pytest.skip(f"the second user cannot write in {folder}: {probe.stderr}")
        yield folder, (uid, gid)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _as_user(
    uid: int, gid: int, cwd: Path, script: str, *args: str
) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(
            ["/bin/sh", "-c", script, "sh", *args],
            user=uid,
            group=gid,
            extra_groups=[],
            cwd=cwd,
            env={"PATH": "/usr/bin:/bin"},
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
    except (PermissionError, OSError) as exc:  # no setuid in this container
        pytest.skip(f"cannot run a process as uid {uid}: {exc}")


PLANT = """
set -e
while [ $# -gt 0 ]; do
  printf 'precious: %s\\n' "$2" > "$2"
  ln -s "$PWD/$2" "$1"
  shift 2
done
"""


def _plant(folder: Path, user: tuple[int, int], links: list[str]) -> dict[str, Path]:
    """The second user makes a file of its own for each name and links the
    name to it; returns {link name: target}."""
    pairs: list[str] = []
    for n, name in enumerate(links):
        pairs += [name, f"owned-by-them-{n}.txt"]
    done = _as_user(*user, folder, PLANT, *pairs)
    assert done.returncode == 0, done.stderr
    targets = {name: folder / f"owned-by-them-{n}.txt" for n, name in enumerate(links)}
    for name, target in targets.items():
        st = os.lstat(folder / name)
        assert stat.S_ISLNK(st.st_mode) and st.st_uid == user[0]
        assert os.lstat(target).st_uid == user[0]
    return targets


@pytest.mark.parametrize("overwrite", [False, True], ids=["no-overwrite", "overwrite"])
@pytest.mark.parametrize("api", ["service", "camera"])
def test_links_planted_at_the_companion_names_are_never_written_through(
    shared_folder: tuple[Path, tuple[int, int]], core: Any, api: str, overwrite: bool
) -> None:
    folder, user = shared_folder
    path = folder / "run.ome.tiff"
    with WriterService(ring_bytes=16 << 20, workers=1) as svc:
        # the companions of our next run, and the predictable temporary names
        # (`<name>.tmp-<pid>`) older writers used, for every pid of ours
        pids = [os.getpid(), *svc.workers]
        names = [path.name + c for c in COMPANIONS]
        old_temps = [f"{n}.tmp-{pid}" for n in names for pid in pids]
        targets = _plant(folder, user, names + old_temps)
        theirs = {t: (t.read_bytes(), os.stat(t).st_mtime_ns) for t in targets.values()}
        before = _tree(folder)

        if not overwrite:
            # refused at open: those names are taken, and not by our run
            with pytest.raises(FileExistsError):
                if api == "camera":
                    CustomWriter(path, service=svc)
                else:
                    svc.open_stream(path, shape=(16, 16), dtype="uint16", frames=4)
            assert _tree(folder) == before
        elif api == "camera":
            seq = useq.MDASequence(time_plan={"interval": 0, "loops": 4})
            with CustomWriter(path, service=svc, overwrite=True) as writer:
                core.mda.run(seq, output=writer)
            assert writer.error is None
            report = writer.reports["p0"]
            assert report.ok and report.frames_written == 4
        else:
            stream = svc.open_stream(
                path, shape=(16, 16), dtype="uint16", frames=4, overwrite=True
            )
            for i in range(4):
                stream.write(index_frame(i, (16, 16)), {"i": i})
            report = stream.close()
            assert report.ok and report.frames_written == 4

    # what the second user owns is exactly as it was
    for target, (data, mtime) in theirs.items():
        assert target.read_bytes() == data and os.stat(target).st_mtime_ns == mtime
    for name in old_temps:  # never used, so left alone
        assert os.readlink(folder / name) == str(targets[name])
    if overwrite:
        # the run completed: its links were replaced by our own files
        for name in names:
            p = folder / name
            if name.endswith("_journal.ndjson"):
                assert not os.path.lexists(p)  # a finished run removes it
                continue
            st = os.lstat(p)
            assert stat.S_ISREG(st.st_mode) and st.st_uid == os.geteuid(), name
        assert len(_read_frames(path)) == 4
        saved = StreamReport.from_json((folder / names[0]).read_bytes())
        assert saved.frames_written == 4
        side = json.loads((folder / names[1]).read_text())
        assert len(side["p0"]) == 4
        assert _temporaries(folder) == sorted(old_temps)


@pytest.mark.parametrize("overwrite", [False, True], ids=["no-overwrite", "overwrite"])
def test_a_link_planted_at_the_data_file_is_refused_at_open(
    shared_folder: tuple[Path, tuple[int, int]], overwrite: bool
) -> None:
    folder, user = shared_folder
    path = folder / "run.ome.tiff"
    targets = _plant(folder, user, [path.name])
    before = _tree(folder)
    with pytest.raises(OSError) as info:
        CustomWriter(path, overwrite=overwrite)
    refused = info.value
    assert isinstance(refused, FileExistsError) or refused.errno == errno.ELOOP
    with WriterService(ring_bytes=8 << 20) as svc:
        with pytest.raises(OSError):
            svc.open_stream(path, shape=(8, 8), dtype="uint16", overwrite=overwrite)
    assert _tree(folder) == before
    assert targets[path.name].read_bytes() == b"precious: owned-by-them-0.txt\n"


# -- 4. space --------------------------------------------------------------------------

SMALL_FS_BYTES = 48 << 20
FRAME = (512, 512)
FRAME_BYTES = 512 * 512 * 2


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 48 MiB tmpfs, mounted for the test and unmounted after it."""
    if os.geteuid() != 0:
        pytest.skip("needs root to mount a small filesystem")
    if shutil.which("mount") is None or shutil.which("umount") is None:
        pytest.skip("needs mount and umount")
    mnt = tmp_path / "small"
    mnt.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={SMALL_FS_BYTES}", "mesowriter", mnt],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    try:
        yield mnt
    finally:
        if subprocess.run(["umount", mnt], check=False).returncode != 0:
            subprocess.run(["umount", "-l", mnt], check=False)


def test_unknown_length_writes_until_the_disk_is_full(small_disk: Path) -> None:
    path = small_disk / "full.ome.tiff"
    n = 150  # 75 MiB of frames for a 48 MiB disk
    failed_writes = 0
    with WriterService(ring_bytes=16 << 20) as svc:
        # frames=None: the open needs only what the first batch needs
        stream = svc.open_stream(path, shape=FRAME, dtype="uint16", frames=None)
        for i in range(n):
            try:
                stream.write(index_frame(i, FRAME), {"i": i})
            except WriterError:  # the stream failed: the disk is full
                failed_writes += 1
        report = stream.close(check=False)
    assert failed_writes > 0
    assert report.frames_received == n
    assert report.frames_received == report.frames_written + report.frames_dropped
    # every frame that fit was kept: at most a few frames' worth of the disk
    # holds headers, IFDs, the OME-XML, sidecar and report
    fit = SMALL_FS_BYTES // (FRAME_BYTES + 4096)
    assert fit - 6 <= report.frames_written < n
    kept = [
        m["i"]
        for m in json.loads(Path(f"{path}_frame_metadata.json").read_text())["p0"]
    ]
    assert len(kept) == report.frames_written
    assert sorted(kept + report.dropped_indices) == list(range(n))
    data = _read_frames(path)
    assert data.shape == (report.frames_written, *FRAME)
    for frame, i in zip(data, kept, strict=True):
        np.testing.assert_array_equal(frame, index_frame(i, FRAME))


@pytest.mark.parametrize("where", [".", "new/sub"], ids=["here", "new-folders"])
def test_a_known_length_that_cannot_fit_is_refused_at_open(
    small_disk: Path, where: str
) -> None:
    path = small_disk / where / "run.ome.tiff"
    with WriterService(ring_bytes=16 << 20) as svc:
        with pytest.raises(OSError) as info:
            svc.open_stream(path, shape=FRAME, dtype="uint16", frames=200)
    assert info.value.errno == errno.ENOSPC
    assert "MiB free" in str(info.value) and "needs" in str(info.value)
    assert list(small_disk.iterdir()) == []  # no file, no folder, no probe


# -- 5. counts -------------------------------------------------------------------------


def test_more_frames_than_declared_are_all_written_and_not_ok(
    service: WriterService, tmp_path: Path
) -> None:
    path = tmp_path / "more.ome.tiff"
    stream = service.open_stream(path, shape=(32, 32), dtype="uint16", frames=5)
    for i in range(8):
        stream.write(index_frame(i, (32, 32)), {"i": i})
    report = stream.close()
    assert report.ok is False
    assert any("8 frame(s) written, 5 expected" in p for p in report.problems())
    assert report.frames_expected == 5
    assert report.frames_received == report.frames_written == 8
    assert report.frames_dropped == 0
    data = _read_frames(path)
    assert len(data) == 8
    for i, frame in enumerate(data):
        np.testing.assert_array_equal(frame, index_frame(i, (32, 32)))


def test_more_frames_than_the_sequence_declares_through_the_handler(
    tmp_path: Path,
) -> None:
    seq = useq.MDASequence(time_plan={"interval": 0, "loops": 3})
    events = list(seq)
    extra = [useq.MDAEvent(index={"t": t}) for t in (3, 4)]
    path = tmp_path / "more.ome.tiff"
    writer = CustomWriter(path, ring_bytes=64 << 20)
    meta = {"image_infos": [{"plane_shape": (16, 16), "dtype": "uint16"}]}
    try:
        writer.sequenceStarted(seq, meta)
        for i, event in enumerate(events + extra):
            writer.frameReady(index_frame(i, (16, 16)), event, {"i": i})
        with pytest.raises(WriterError, match="5 frame"):
            writer.sequenceFinished(seq)
    finally:
        with pytest.raises(WriterError):
            writer.close()
    report = writer.reports["p0"]
    assert report.ok is False and report.frames_expected == 3
    assert report.frames_written == 5 and report.frames_dropped == 0
    assert [m["i"] for m in writer.frame_metadatas["p0"]] == list(range(5))
    assert len(_read_frames(path)) == 5


def test_a_position_the_plan_did_not_foresee_joins_the_one_sidecar(
    tmp_path: Path,
) -> None:
    # p0's file opened as the run's only member; p1 arrived later. The one
    # sidecar still holds both, and no journal is left behind.
    seq = useq.MDASequence(time_plan={"interval": 0, "loops": 2})
    events = [useq.MDAEvent(index={"t": t, "p": p}) for t in range(2) for p in (0, 1)]
    path = tmp_path / "late.ome.tiff"
    writer = CustomWriter(path, ring_bytes=64 << 20)
    meta = {"image_infos": [{"plane_shape": (16, 16), "dtype": "uint16"}]}
    try:
        writer.sequenceStarted(seq, meta)
        for i, event in enumerate(events):
            writer.frameReady(index_frame(i, (16, 16)), event, {"i": i})
        writer.sequenceFinished(seq)
    finally:
        writer.close()
    side = json.loads(Path(f"{path}_frame_metadata.json").read_bytes())
    assert set(side) == {"p0", "p1"}
    assert [m["i"] for m in side["p0"]] == [0, 2]
    assert [m["i"] for m in side["p1"]] == [1, 3]
    assert not list(tmp_path.glob("*journal*"))
    assert [p.name for p in tmp_path.glob("*_frame_metadata.json")] == [
        "late.ome.tiff_frame_metadata.json"
    ]


def test_a_plain_list_of_events_has_no_expected_count(
    core: Any, tmp_path: Path
) -> None:
    recorder = Recorder()
    core.mda.events.frameReady.connect(recorder.frameReady)
    events = [useq.MDAEvent(index={"t": t}, exposure=1) for t in range(6)]
    path = tmp_path / "list.ome.tiff"
    with CustomWriter(path, ring_bytes=64 << 20) as writer:
        core.mda.run(events, output=writer)
    assert writer.error is None
    report = writer.reports["p0"]
    assert report.frames_expected is None
    assert report.ok, report.problems()
    assert report.frames_received == report.frames_written == 6
    data = _read_frames(path)
    assert len(data) == len(recorder.frames) == 6
    for got, (img, _) in zip(data, recorder.frames, strict=True):
        np.testing.assert_array_equal(got, img)
