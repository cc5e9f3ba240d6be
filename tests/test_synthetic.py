"""Synthetic cameras: real producer processes, real files read back."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tifffile

from mesowriter.synthetic import (
    Burst,
    CameraFailed,
    SyntheticCamera,
    read_index,
    run_cameras,
    stamp_index,
)


@pytest.mark.parametrize("dtype", ["uint8", "uint16", "float32"])
def test_index_stamp_round_trips(dtype: str) -> None:
    f = np.zeros((4, 8), dtype)
    for i in (0, 1, 65535, 65536, 2**32 - 1):
        stamp_index(f, i)
        assert read_index(f) == i
    f.reshape(-1).view(np.uint8)[5] ^= 1
    with pytest.raises(ValueError, match="no valid index"):
        read_index(f)


def test_bad_specs_are_refused() -> None:
    with pytest.raises(ValueError, match="frames or duration"):
        SyntheticCamera()
    with pytest.raises(ValueError, match="jitter"):
        SyntheticCamera(frames=1, jitter=1.5)
    with pytest.raises(ValueError, match="8 bytes"):
        SyntheticCamera(frames=1, shape=(1, 2))


def test_two_cameras_paced_with_jitter_and_burst(tmp_path: Path) -> None:
    cams = [
        SyntheticCamera(name="a", shape=(64, 96), fps=50, duration=1.0, jitter=0.2),
        SyntheticCamera(
            name="b",
            shape=(32, 32),
            dtype="uint8",
            fps=20,
            frames=30,
            bursts=(Burst(start=0.2, seconds=0.1, fps=500.0),),
            memcpy_alongside=True,
        ),
    ]
    seen: list[dict[str, object]] = []
    res = run_cameras(cams, tmp_path, on_message=seen.append)
    assert {m["name"] for m in seen if m["type"] == "ready"} == {"a", "b"}
    assert len({r["pid"] for r in res}) == 2
    a, b = res
    assert 40 <= a["frames_sent"] <= 55  # 50 fps for 1 s
    assert b["frames_sent"] == 30
    # the burst made b finish faster than 30 frames at 20 fps (1.5 s)
    assert b["seconds_sending"] < 1.4
    # b also timed a bare copy beside each write (bench section d); a did not
    assert a["memcpy_alongside_mean_s"] is None
    assert 0 < b["memcpy_alongside_median_s"] <= b["memcpy_alongside_mean_s"] * 10
    for r, cam in zip(res, cams, strict=True):
        rep = r["report"]
        assert rep["frames_dropped"] == 0 and rep["error"] is None
        data = tifffile.imread(r["path"])
        assert data.shape == (r["frames_sent"], *cam.shape)
        assert [read_index(f) for f in data] == list(range(r["frames_sent"]))


def test_a_failing_camera_raises_in_the_parent(tmp_path: Path) -> None:
    cam = SyntheticCamera(name="bad", frames=2, suffix=".unknown")
    with pytest.raises(CameraFailed, match="cannot tell the format"):
        run_cameras([cam], tmp_path)


def test_stress_refuses_a_run_the_disk_cannot_hold(tmp_path: Path) -> None:
    from mesowriter import stress
    from mesowriter.synthetic import SyntheticCamera

    huge = SyntheticCamera(name="huge", shape=(2048, 2048), fps=1000.0, duration=1e7)
    with pytest.raises(ValueError, match="GB free"):
        stress._check_disk([huge], tmp_path / "not-yet-made")
    small = SyntheticCamera(name="small", shape=(8, 8), fps=10.0, duration=1.0)
    stress._check_disk([small], tmp_path)  # fits: no error


def test_planned_frames_counts_a_burst_in_place_of_the_base_rate() -> None:
    cam = SyntheticCamera(
        fps=20.0, duration=5.0, bursts=(Burst(start=1.0, seconds=0.5, fps=1000.0),)
    )
    assert cam.planned_frames() == int(5.0 * 20 + 0.5 * (1000 - 20))  # 590
    fast = SyntheticCamera(fps=20.0, duration=5.0, bursts=(Burst(1.0, 0.5),))
    assert fast.planned_frames() is None  # "as fast as it goes": no honest total
    assert fast.planned_frames(unpaced_fps=1000.0) == 590
    assert SyntheticCamera(frames=7).planned_frames() == 7
    capped = SyntheticCamera(fps=100.0, duration=10.0, frames=50)
    assert capped.planned_frames() == 50
