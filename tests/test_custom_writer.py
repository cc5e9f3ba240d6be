"""CustomWriter with Micro-Manager's DemoCamera through pymmcore-plus."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tifffile
import useq

from mesowriter import CustomJSONEncoder, CustomWriter, WriterError


class Recorder:
    """Keeps what pymmcore-plus delivered, to compare the files against."""

    def __init__(self) -> None:
        self.frames: list[tuple[np.ndarray, Any, dict[str, Any]]] = []

    def frameReady(self, img: np.ndarray, event: Any, meta: dict[str, Any]) -> None:
        self.frames.append((img.copy(), event, meta))

    def as_sidecar_items(self, key: str | None = None) -> list[Any]:
        items = []
        for _, event, meta in self.frames:
            if key is None or (event.pos_name or f"p{event.index.get('p', 0)}") == key:
                items.append(json.loads(json.dumps(meta, cls=CustomJSONEncoder)))
        return items


def _series(path: str | Path) -> tuple[str, tuple[int, ...], np.ndarray]:
    with tifffile.TiffFile(path) as tf:
        assert tf.is_ome and tf.is_bigtiff
        s = tf.series[0]
        return s.axes, s.shape, s.asarray()


@pytest.mark.parametrize("mode", ["relay", "acquisition-thread"])
def test_single_position_burst_matches_camera(
    core: Any, tmp_path: Path, mode: str
) -> None:
    recorder = Recorder()
    core.mda.events.frameReady.connect(recorder.frameReady)
    path = tmp_path / "burst.ome.tiff"
    seq = useq.MDASequence(time_plan={"interval": 0, "loops": 40})
    with CustomWriter(path, ring_bytes=64 << 20) as writer:
        if mode == "relay":
            core.mda.run(seq, output=writer)
        else:
            with writer.attach(core):
                core.mda.run(seq)
    report = writer.reports["p0"]
    assert report.finish_reason == "completed" and report.frames_written == 40
    axes, shape, data = _series(path)
    assert axes == "TYX"
    assert shape == (40, 192, 256) and data.dtype == np.uint16
    for i, (img, _, _) in enumerate(recorder.frames):
        np.testing.assert_array_equal(data[i], img)
    sidecar = json.loads(Path(f"{path}_frame_metadata.json").read_text())
    assert list(sidecar) == ["p0"]
    assert sidecar["p0"] == recorder.as_sidecar_items()
    assert writer.frame_metadatas == sidecar
    first = sidecar["p0"][0]
    assert first["mda_event"]["index"] == {"t": 0}  # plain fields, not null
    assert "sequence" not in first["mda_event"]
    assert "TimeReceivedByCore" in first["camera_metadata"]


def test_positions_channels_and_z_one_file_per_position(
    core: Any, tmp_path: Path
) -> None:
    recorder = Recorder()
    core.mda.events.frameReady.connect(recorder.frameReady)
    seq = useq.MDASequence(
        stage_positions=[
            (0, 0, 0),
            (10, 10, 0),
            useq.Position(x=5, y=5, z=0, name="cell"),
        ],
        channels=["DAPI", "FITC"],
        z_plan={"range": 2, "step": 1},
        time_plan={"interval": 0, "loops": 2},
        axis_order="tpcz",
    )
    path = tmp_path / "multi.ome.tif"
    with CustomWriter(path, ring_bytes=64 << 20) as writer:
        core.mda.run(seq, output=writer)
    keys = ["p0", "p1", "cell"]
    assert sorted(writer.reports) == sorted(keys)
    for key in keys:
        file = tmp_path / f"multi_{key}.ome.tif"
        axes, shape, data = _series(file)
        assert axes == "TCZYX" and shape == (2, 2, 3, 192, 256)
        ours = [
            f
            for f in recorder.frames
            if (f[1].pos_name or f"p{f[1].index['p']}") == key
        ]
        flat = data.reshape(-1, 192, 256)
        for k, (img, event, _) in enumerate(ours):
            t, c, z = event.index["t"], event.index["c"], event.index["z"]
            assert k == (t * 2 + c) * 3 + z
            np.testing.assert_array_equal(flat[k], img)
    # ONE sidecar for the run, every position keyed by its key
    assert [p.name for p in tmp_path.glob("*_frame_metadata.json")] == [
        "multi.ome.tif_frame_metadata.json"
    ]
    assert not list(tmp_path.glob("*_journal.ndjson"))
    combined = json.loads(Path(f"{path}_frame_metadata.json").read_text())
    assert sorted(combined) == sorted(keys)
    for key in keys:
        assert combined[key] == recorder.as_sidecar_items(key)
    assert combined == writer.frame_metadatas
    assert writer._frame_metadata_filename == f"{path}_frame_metadata.json"
    assert sum(len(v) for v in combined.values()) == len(recorder.frames) == 36


def test_errors_surface_at_sequence_finished(core: Any, tmp_path: Path) -> None:
    seq = useq.MDASequence(time_plan={"interval": 0, "loops": 3})
    writer = CustomWriter(tmp_path / "bad.ome.tiff", ring_bytes=64 << 20)
    try:
        meta = {"image_infos": [{"plane_shape": (4, 4), "dtype": "uint16"}]}
        writer.sequenceStarted(seq, meta)
        events = list(seq)
        writer.frameReady(np.ones((4, 4), np.uint16), events[0], {"n": 0})
        writer.frameReady(np.ones((5, 4), np.uint16), events[1], {"n": 1})  # no raise
        writer.frameReady(np.full((4, 4), 2, np.uint16), events[2], {"n": 2})
        with pytest.raises(WriterError, match="1 frame"):
            writer.sequenceFinished(seq)
    finally:
        with pytest.raises(WriterError):  # close() raises what pymmcore-plus swallows
            writer.close()
    report = writer.reports["p0"]
    assert report.drops["rejected"] == [1] and report.frames_written == 2
    assert writer.frame_metadatas == {"p0": [{"n": 0}, {"n": 2}]}


def test_bad_filenames_fail_at_construction(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="format from the name"):
        CustomWriter(tmp_path / "run.zarr")
    with pytest.raises(ValueError, match="CustomWriter writes TIFF"):
        CustomWriter(tmp_path / "run.mp4")
    (tmp_path / "taken.ome.tiff").write_bytes(b"x")
    with pytest.raises(FileExistsError):
        CustomWriter(tmp_path / "taken.ome.tiff")


def test_custom_json_encoder_handles_acquisition_types() -> None:
    event = useq.MDAEvent(index={"t": 3, "c": 1}, channel={"config": "DAPI"}, x_pos=1.5)
    data = {
        "u16": np.uint16(7),
        "f32": np.float32(0.5),
        "arr": np.arange(4).reshape(2, 2),
        "path": Path("/data/run 1"),
        "when": dt.datetime(2026, 11, 24, 10, 2, 53),
        "event": event,
        "set": {3, 1},
    }
    decoded = json.loads(json.dumps(data, cls=CustomJSONEncoder))
    assert decoded["u16"] == 7 and decoded["f32"] == 0.5
    assert decoded["arr"] == [[0, 1], [2, 3]]
    assert decoded["path"] == "/data/run 1"
    assert decoded["when"] == "2026-11-24T10:02:53"
    assert decoded["event"]["index"] == {"t": 3, "c": 1}
    assert decoded["event"]["channel"]["config"] == "DAPI"
    assert decoded["event"]["x_pos"] == 1.5 and "sequence" not in decoded["event"]
    assert decoded["set"] == [1, 3]
    with pytest.raises(TypeError):
        json.dumps({"x": object()}, cls=CustomJSONEncoder)


def test_a_file_that_cannot_be_opened_fails_once_and_close_raises(
    core: Any, tmp_path: Path
) -> None:
    path = tmp_path / "late.ome.tiff"
    writer = CustomWriter(path, ring_bytes=64 << 20)
    path.write_bytes(b"appeared after the writer was made")
    seq = useq.MDASequence(time_plan={"interval": 0, "loops": 20})
    with pytest.raises(WriterError, match="20 frame"):
        with writer:
            with writer.attach(core):
                core.mda.run(seq)  # pymmcore-plus logs sequenceFinished's error
    assert len(writer.service.worker_deaths) == 0
    assert path.read_bytes() == b"appeared after the writer was made"
    assert "could not be opened" in str(writer.error)


def test_positions_sharing_a_name_get_files_of_their_own(
    core: Any, tmp_path: Path
) -> None:
    seq = useq.MDASequence(
        stage_positions=[
            useq.Position(x=0, y=0, z=0, name="A"),
            useq.Position(x=9, y=9, z=0, name="A"),
        ],
        time_plan={"interval": 0, "loops": 2},
    )
    path = tmp_path / "dup.ome.tiff"
    with CustomWriter(path, ring_bytes=64 << 20) as writer:
        writer.sequenceStarted(seq, {})
        for event in seq:
            writer.frameReady(np.full((4, 4), event.index["p"], np.uint16), event, {})
        writer.sequenceFinished(seq)
    for p, name in ((0, "A"), (1, "A_2")):
        _, shape, data = _series(tmp_path / f"dup_{name}.ome.tiff")
        assert shape == (2, 4, 4) and (data == p).all()
    assert sorted(writer.frame_metadatas) == ["A", "A_2"]
    # the rename is said, once, in the run's notes and each report
    assert any("'A' -> 'A_2'" in n for n in writer.notes)
    assert any("'A' -> 'A_2'" in n for n in writer.reports["A_2"].notes)


SCRIPT_WITHOUT_MAIN_GUARD = """
import sys
import numpy as np
from mesowriter import WriterService

with open(sys.argv[1], "a") as log:
    log.write("ran\\n")
with WriterService(ring_bytes=8 << 20) as svc:
    stream = svc.open_stream(sys.argv[2], shape=(8, 8), dtype="uint16")
    for i in range(5):
        stream.write(np.full((8, 8), i, np.uint16))
    print(stream.close().frames_written)
"""


def test_a_script_without_main_guard_runs_once(tmp_path: Path) -> None:
    import subprocess
    import sys

    script = tmp_path / "acquire.py"
    script.write_text(SCRIPT_WITHOUT_MAIN_GUARD)
    log = tmp_path / "log.txt"
    proc = subprocess.run(
        [sys.executable, str(script), str(log), str(tmp_path / "out.ome.tiff")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "5"
    assert log.read_text() == "ran\n"  # the writer process did not re-run it


@pytest.mark.parametrize(
    "plan",
    [
        {
            "time_plan": {"interval": 0, "loops": 3},
            "channels": ["DAPI", "FITC"],
            "z_plan": {"range": 4, "step": 1},
            "stage_positions": [(1, 2, 3), (4, 5, 6)],
        },
        {
            "grid_plan": {"rows": 2, "columns": 2, "fov_width": 10, "fov_height": 10},
            "channels": ["DAPI"],
            "z_plan": {"above": 2, "below": 2, "step": 1},
        },
        {
            "time_plan": {"interval": 0, "loops": 3},
            "channels": [{"config": "DAPI", "do_stack": False}, "FITC"],
            "z_plan": {"range": 4, "step": 1},
        },
        {
            "time_plan": {"interval": 0, "loops": 4},
            "channels": [{"config": "DAPI", "acquire_every": 2}, "FITC"],
        },
    ],
    ids=["t-c-z-p", "grid-z", "do_stack", "acquire_every"],
)
def test_expected_frames_per_file_match_the_events(plan: dict[str, Any]) -> None:
    from mesowriter.handlers._custom_writer import _expected_frames

    seq = useq.MDASequence(**plan)
    expected = _expected_frames(seq, max(1, len(seq.stage_positions)))
    counted: dict[int, int] = {}
    for event in seq:
        p = int(event.index.get("p", 0))
        counted[p] = counted.get(p, 0) + 1
    assert expected == counted
