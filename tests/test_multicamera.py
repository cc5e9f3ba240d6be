"""Several cameras (pymmcore-plus's Multi Camera device) never share a series.

Two DemoCameras behind Micro-Manager's Multi Camera utility deliver two
frames per event, told apart only by each frame's `camera_device`. Each
camera gets its own file (named from the run's name and the camera's) and
its own list in the run's one sidecar.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tifffile
import useq

from mesowriter import CustomWriter

CONFIG = Path(__file__).with_name("multicam.cfg")


@pytest.fixture
def multicam() -> Iterator[Any]:
    from pymmcore_plus import CMMCorePlus

    core = CMMCorePlus()
    core.loadSystemConfiguration(str(CONFIG))
    for cam, mode in (("Camera", "Artificial Waves"), ("Camera2", "Noise")):
        core.setProperty(cam, "OnCameraCCDXSize", 64)
        core.setProperty(cam, "OnCameraCCDYSize", 48)
        core.setProperty(cam, "Mode", mode)
    core.setExposure(2)
    yield core
    core.unloadAllDevices()


def _received(core: Any) -> dict[str, list[np.ndarray]]:
    got: dict[str, list[np.ndarray]] = {}

    def on_frame(img: np.ndarray, event: Any, meta: Any) -> None:
        got.setdefault(str(meta["camera_device"]), []).append(np.array(img))

    core.mda.events.frameReady.connect(on_frame)
    return got


@pytest.mark.parametrize("connect", ["relay", "attach"])
def test_each_camera_gets_its_own_file_and_sidecar_list(
    multicam: Any, tmp_path: Path, connect: str
) -> None:
    got = _received(multicam)
    seq = useq.MDASequence(time_plan={"interval": 0, "loops": 6})
    path = tmp_path / "two.ome.tif"
    with CustomWriter(path) as writer:
        if connect == "relay":
            multicam.mda.run(seq, output=writer)
        else:
            with writer.attach(multicam):
                multicam.mda.run(seq)
    assert sorted(got) == ["Camera", "Camera2"]
    for cam in ("Camera", "Camera2"):
        file = tmp_path / f"two_{cam}.ome.tif"
        with tifffile.TiffFile(file) as tf:
            data = tf.series[0].asarray()
            assert tf.series[0].axes == "TYX" and data.shape == (6, 48, 64)
        for k, frame in enumerate(got[cam]):
            np.testing.assert_array_equal(data[k], frame)  # never interleaved
        report = writer.reports[f"p0_{cam}"]
        assert report.ok and report.frames_written == report.frames_expected == 6
    assert not path.exists()
    side = json.loads(Path(f"{path}_frame_metadata.json").read_bytes())
    assert sorted(side) == ["p0_Camera", "p0_Camera2"]
    for key, items in side.items():
        assert len(items) == 6
        assert {m["camera_device"] for m in items} == {key.removeprefix("p0_")}
    assert [p.name for p in tmp_path.glob("*_frame_metadata.json")] == [
        "two.ome.tif_frame_metadata.json"
    ]


def test_two_positions_times_two_cameras(multicam: Any, tmp_path: Path) -> None:
    seq = useq.MDASequence(
        stage_positions=[useq.Position(), useq.Position(name="cell")],  # no stage
        time_plan={"interval": 0, "loops": 3},
    )
    path = tmp_path / "grid.ome.tif"
    with CustomWriter(path) as writer:
        multicam.mda.run(seq, output=writer)
    names = sorted(p.name for p in tmp_path.glob("grid_*.ome.tif"))
    assert names == [
        "grid_cell_Camera.ome.tif",
        "grid_cell_Camera2.ome.tif",
        "grid_p0_Camera.ome.tif",
        "grid_p0_Camera2.ome.tif",
    ]
    for name in names:
        with tifffile.TiffFile(tmp_path / name) as tf:
            assert tf.series[0].shape[0] == 3
    side = json.loads(Path(f"{path}_frame_metadata.json").read_bytes())
    assert sorted(side) == ["cell_Camera", "cell_Camera2", "p0_Camera", "p0_Camera2"]
