"""`recover` after a killed multi-position run keeps the run's structure.

A real acquisition process (`tests/_recover_child.py`: CustomWriter over
the DemoCamera, 2 positions x T x 2 channels x 3 z, `axis_order="tpcz"`)
is stopped at a chosen frame once its writer processes committed every
frame, then SIGKILLed with those writer processes (the whole process
group: nobody finalises anything). `mesowriter.recover` on each position's
file must then give:

- when the frames on disk complete whole time points: the hypercube
  (T', 2, 3, Y, X), axes TCZYX, channels named DAPI and FITC in the
  OME-XML (an ImageJ file: (T', 3, 2, Y, X), TZCYX, channels=2 slices=3);
- when they stop mid time point: a flat stack of exactly the frames on
  disk, never a zero plane passed off as a frame;
- in both cases a file that memory-maps, pixels equal to what the camera
  delivered, and, once both files are recovered, the run's ONE sidecar
  `<filename>_frame_metadata.json` with both positions' keys.
"""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import tifffile

import mesowriter
from mesowriter.sinks._tiff_format import PAGE, newest_block
from tests._tiffcheck import check_mappable

ROOT = Path(__file__).resolve().parent.parent
CHILD = Path(__file__).with_name("_recover_child.py")
SHAPE = (48, 64)
PER_T = 6  # frames of one position in one time point: 2 channels x 3 z
SHM = Path("/dev/shm")


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] == "Z"
    except OSError:
        return True


def _killed_run(path: Path, stop_after: int, sent: Path) -> list[int]:
    """Run the child until its READY line, then SIGKILL its process group."""
    proc = subprocess.Popen(
        [sys.executable, str(CHILD), str(path), str(stop_after), str(sent)],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], 90)
    line = proc.stdout.readline() if ready else "(no line in 90 s)"
    if not line.startswith("READY"):
        os.killpg(proc.pid, signal.SIGKILL)
        _, err = proc.communicate(timeout=10)
        pytest.fail(f"child did not stop where asked: {line!r}\n{err}")
    workers = [int(p) for p in line.split()[1:]]
    assert workers
    os.killpg(proc.pid, signal.SIGKILL)  # the acquisition and its writers
    proc.communicate(timeout=10)
    deadline = time.monotonic() + 10
    while not all(_gone(p) for p in workers):
        assert time.monotonic() < deadline, "a writer process survived SIGKILL"
        time.sleep(0.02)
    return workers


def _state(path: Path) -> str:
    with open(path, "rb") as fh:
        block = newest_block(fh.read(PAGE))
    assert block is not None
    return block.state


def _tzc(index: np.ndarray) -> tuple[int, int, int]:
    t, c, z = (int(v) for v in index)
    return t, z, c


@pytest.mark.parametrize(
    ("suffix", "stop_after"),
    [
        # p0: 2 time points + 4 frames (mid time point), p1: 2 time points
        (".ome.tif", 2 * 12 + 4),
        # p0: 3 time points, p1: 2 time points
        (".ome.tif", 2 * 12 + 6),
        # ImageJ, acquired t, c, z and stored t, z, c (reordered)
        (".tif", 2 * 12 + 4),
        (".tif", 2 * 12 + 6),
    ],
    ids=["ome-mid", "ome-whole", "imagej-mid", "imagej-whole"],
)
def test_recover_keeps_the_structure_of_a_killed_multiposition_run(
    tmp_path: Path, suffix: str, stop_after: int
) -> None:
    path = tmp_path / f"run{suffix}"
    sent_path = tmp_path / "sent.npz"
    _killed_run(path, stop_after, sent_path)
    sent = np.load(sent_path)
    files = {k: tmp_path / f"run_{k}{suffix}" for k in ("p0", "p1")}
    side = Path(f"{path}_frame_metadata.json")

    # what the crash left: provisional files, journals, no sidecar
    counts = {}
    for key, file in files.items():
        frames = sent[f"{key}_frames"]
        counts[key] = len(frames)
        assert len({f.tobytes() for f in frames}) == len(frames)  # all differ
        assert _state(file) == "writing"
        assert Path(f"{file}_journal.ndjson").exists()
        # preallocated for the whole run: zeros follow the last frame
        assert file.stat().st_size > 10 * PER_T * frames[0].nbytes
    assert counts == {"p0": stop_after - 12, "p1": 12}
    assert not side.exists()

    removed: list[str] = []
    keys = ["p0", "p1"] if suffix == ".ome.tif" else ["p1", "p0"]  # any order
    for n_done, key in enumerate(keys):
        file = files[key]
        result = mesowriter.recover(file)
        removed += result.removed_rings
        n = counts[key]
        assert result.recovered
        assert result.frames_on_disk == result.frames_in_journal == n
        assert result.frames_declared == n
        assert _state(file) == "final"
        if n_done == 0:  # the other file is not final yet: no sidecar
            assert result.sidecar is None and not side.exists()
            assert any("recover" in note for note in result.notes)
        else:
            assert result.sidecar == str(side)
    assert removed, "the rings the killed processes left were not removed"
    assert not [p for p in removed if (SHM / p.lstrip("/")).exists()]

    for key, file in files.items():
        frames = sent[f"{key}_frames"]
        index = sent[f"{key}_index"]
        n = counts[key]
        whole = n % PER_T == 0
        if suffix == ".ome.tif":
            order = list(range(n))  # acquisition order: t, c, z
        else:
            order = sorted(range(n), key=lambda k: _tzc(index[k]))
        check_mappable(file, frames[order])
        with tifffile.TiffFile(file) as tf:
            series = tf.series[0]
            assert len(tf.pages) == n
            if suffix == ".ome.tif":
                assert tf.is_ome and tf.is_bigtiff
                xml = tf.ome_metadata or ""
                if whole:
                    assert series.shape == (n // PER_T, 2, 3, *SHAPE)
                    assert series.axes == "TCZYX"
                    assert 'Name="DAPI"' in xml and 'Name="FITC"' in xml
                    data = series.asarray()
                    for k in range(n):
                        t, c, z = (int(v) for v in index[k])
                        np.testing.assert_array_equal(data[t, c, z], frames[k])
                else:
                    assert series.shape == (n, *SHAPE)
                    assert "DAPI" not in xml.split("<Channel", 1)[1].split(">")[0]
            else:
                assert tf.is_imagej and not tf.is_bigtiff
                ij = tf.imagej_metadata or {}
                if whole:
                    assert series.shape == (n // PER_T, 3, 2, *SHAPE)
                    assert series.axes == "TZCYX"
                    assert (ij["frames"], ij["slices"], ij["channels"]) == (
                        n // PER_T,
                        3,
                        2,
                    )
                    data = series.asarray()
                    for k in range(n):
                        t, c, z = (int(v) for v in index[k])
                        np.testing.assert_array_equal(data[t, z, c], frames[k])
                else:
                    assert series.shape == (n, *SHAPE)
                    assert "channels" not in ij and "slices" not in ij
        assert not Path(f"{file}_journal.ndjson").exists()
        report = json.loads(Path(f"{file}_report.json").read_text("utf-8"))
        assert report["finish_reason"] == "recovered"
        assert report["frames_written"] == n

    # ONE sidecar for the run, rebuilt with both positions, in acquisition order
    assert [p.name for p in tmp_path.glob("*_frame_metadata.json")] == [side.name]
    combined = json.loads(side.read_text("utf-8"))
    assert sorted(combined) == ["p0", "p1"]
    for key in files:
        metas = combined[key]
        assert len(metas) == counts[key]
        got = [tuple(m["mda_event"]["index"].get(a, 0) for a in "tcz") for m in metas]
        assert got == [tuple(int(v) for v in i) for i in sent[f"{key}_index"]]
        assert all(m["mda_event"]["index"].get("p", 0) == int(key[1]) for m in metas)
