"""Parity with pymmcore-plus's own (deprecated) OMETiffWriter.

Labs move from `pymmcore_plus.mda.handlers.OMETiffWriter` (what the legacy
CustomWriter subclassed) to `mesowriter.CustomWriter`; their analysis must
see the same files. Both writers are handlers of the SAME DemoCamera run
(`output=[theirs, ours]`), so they receive the same frames; the camera is
in "Noise" mode so that every frame differs. For every file pymmcore-plus
writes, mesowriter writes one of the same name, and:

- series shape, axes and dtype are equal, and so are the pixels;
- each frame the camera delivered is at its event's index in both files
  (so "equal" is not "equally wrong");
- OME files name the same channels; ImageJ files (`.tif` names) are classic
  TIFF (not BigTIFF) and their `imagej_metadata` hyperstack values match;
- mesowriter's file memory-maps (pixels contiguous from an aligned offset).
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tifffile
import useq

from mesowriter import CustomWriter
from tests._tiffcheck import check_mappable

SEQUENCES: dict[str, dict[str, Any]] = {
    "time-lapse": {"time_plan": {"interval": 0, "loops": 5}},
    "channels-z": {
        "channels": ["DAPI", "FITC"],
        "z_plan": {"range": 3, "step": 1},
        "time_plan": {"interval": 0, "loops": 3},
        "axis_order": "tpcz",
    },
    # channels outermost: ImageJ files are reordered, OME files are not
    "channels-outer": {
        "channels": ["DAPI", "FITC"],
        "z_plan": {"range": 1, "step": 1},
        "time_plan": {"interval": 0, "loops": 2},
        "axis_order": "ctz",
    },
    "positions": {
        "stage_positions": [(0, 0, 0), {"x": 10, "y": 10, "z": 0, "name": "cell"}],
        "channels": ["DAPI", "FITC"],
        "z_plan": {"range": 2, "step": 1},
        "time_plan": {"interval": 0, "loops": 2},
        "axis_order": "tpcz",
    },
}
IMAGEJ_KEYS = ("images", "channels", "slices", "frames", "hyperstack", "mode")


class Recorder:
    """What the camera delivered: (frame, event index, position key)."""

    def __init__(self) -> None:
        self.frames: list[tuple[np.ndarray, dict[str, int], str]] = []

    def frameReady(self, img: np.ndarray, event: Any, meta: Any = None) -> None:
        key = event.pos_name or f"p{event.index.get('p', 0)}"
        index = {str(k): int(v) for k, v in event.index.items()}
        self.frames.append((img.copy(), index, key))


def _read(path: Path) -> dict[str, Any]:
    with tifffile.TiffFile(path) as tf:
        series = tf.series[0]
        out: dict[str, Any] = {
            "shape": tuple(series.shape),
            "axes": series.axes,
            "dtype": series.dtype,
            "data": series.asarray(),
            "bigtiff": tf.is_bigtiff,
            "imagej": tf.is_imagej,
            "ome": tf.is_ome,
            "ij": dict(tf.imagej_metadata or {}),
            "channels": None,
        }
        if tf.is_ome and tf.ome_metadata:
            import ome_types

            ome = ome_types.from_xml(tf.ome_metadata)
            out["channels"] = [c.name for c in ome.images[0].pixels.channels]
    return out


@pytest.mark.parametrize("suffix", [".ome.tif", ".tif"])
@pytest.mark.parametrize("name", list(SEQUENCES))
def test_same_files_as_pymmcore_plus_ometiffwriter(
    core: Any, tmp_path: Path, name: str, suffix: str
) -> None:
    with warnings.catch_warnings():  # the module is deprecated upstream
        warnings.simplefilter("ignore", FutureWarning)
        from pymmcore_plus.mda.handlers import OMETiffWriter

    core.setProperty("Camera", "OnCameraCCDXSize", 64)
    core.setProperty("Camera", "OnCameraCCDYSize", 48)
    core.setProperty("Camera", "Mode", "Noise")
    seq = useq.MDASequence(**SEQUENCES[name])
    (tmp_path / "theirs").mkdir()
    (tmp_path / "ours").mkdir()
    recorder = Recorder()
    core.mda.events.frameReady.connect(recorder.frameReady)
    theirs = OMETiffWriter(tmp_path / "theirs" / f"run{suffix}")
    with CustomWriter(tmp_path / "ours" / f"run{suffix}", ring_bytes=64 << 20) as ours:
        core.mda.run(seq, output=[theirs, ours])
    assert all(r.frames_dropped == 0 for r in ours.reports.values())
    n_events = len(list(seq))
    assert len(recorder.frames) == n_events
    assert len({f.tobytes() for f, _, _ in recorder.frames}) == n_events

    their_files = sorted(p.name for p in (tmp_path / "theirs").glob(f"*{suffix}"))
    our_files = sorted(p.name for p in (tmp_path / "ours").glob(f"*{suffix}"))
    positions = len(SEQUENCES[name].get("stage_positions", ())) or 1
    assert len(their_files) == positions
    assert our_files == their_files  # run_p0.ome.tif, ... for several positions
    for file in their_files:
        a = _read(tmp_path / "theirs" / file)
        b = _read(tmp_path / "ours" / file)
        assert b["shape"] == a["shape"], file
        assert b["axes"] == a["axes"], file
        assert b["dtype"] == a["dtype"], file
        np.testing.assert_array_equal(b["data"], a["data"], err_msg=file)
        # each delivered frame is at its event's index (in both, being equal)
        key = file[len("run_") : -len(suffix)] if positions > 1 else None
        assert key is None or any(k == key for _, _, k in recorder.frames)
        mine = [(f, i) for f, i, k in recorder.frames if key is None or k == key]
        assert int(np.prod(b["shape"][:-2])) == len(mine)
        for frame, index in mine:
            at = tuple(index.get(ax.lower(), 0) for ax in b["axes"][:-2])
            np.testing.assert_array_equal(b["data"][at], frame, err_msg=f"{index}")
        if suffix == ".tif":
            assert b["imagej"] and a["imagej"] and not b["ome"]
            assert not b["bigtiff"] and not a["bigtiff"]  # classic: ImageJ reads it
            assert {k: b["ij"].get(k) for k in IMAGEJ_KEYS} == {
                k: a["ij"].get(k) for k in IMAGEJ_KEYS
            }
            assert b["axes"] == "".join(ax for ax in "TZCYX" if ax in b["axes"])
        else:
            assert b["ome"] and a["ome"]
            assert b["channels"] == a["channels"]
        # ours memory-maps the same frames, in file order
        flat = b["data"].reshape(-1, *b["shape"][-2:])
        check_mappable(tmp_path / "ours" / file, list(flat))
