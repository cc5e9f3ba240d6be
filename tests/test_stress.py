"""`make stress`: long soak, three cameras at once, a burst over disk speed.

Excluded from `make test` (marker "stress"). MESOWRITER_SOAK_MINUTES sets the
soak length (default 10) and MESOWRITER_STRESS_DIR where files go.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from mesowriter import stress

pytestmark = pytest.mark.stress


@pytest.fixture
def out(tmp_path: Path) -> Iterator[Path]:
    """Where a stress run writes; removed afterwards (the soak writes ~30 GB)."""
    parent = os.environ.get("MESOWRITER_STRESS_DIR")
    folder = Path(parent) / tmp_path.name if parent else tmp_path
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


def test_soak_memory_flat(out: Path) -> None:
    minutes = float(os.environ.get("MESOWRITER_SOAK_MINUTES", "10"))
    res = stress.soak(out, minutes=minutes, fps=100.0)
    cam = res["cameras"][0]
    assert cam["report"]["frames_dropped"] == 0, cam["report"]["dropped_indices"][:20]
    assert cam["frames_sent"] >= 0.95 * minutes * 60 * 100
    assert res["memory"]["rss_flat"], res["memory"]
    assert res["memory"]["peak_dirty_bytes"] < 256 << 20


def test_three_cameras(out: Path) -> None:
    seconds = 30.0
    res = stress.multi(out, seconds=seconds)
    for cam in res["cameras"]:
        rep = cam["report"]
        assert rep["frames_dropped"] == 0 and rep["error"] is None, rep["path"]
        want = cam["camera"]["fps"] * seconds
        assert cam["frames_sent"] >= 0.95 * want


def test_burst_above_disk_speed_absorbed(out: Path) -> None:
    res = stress.burst(out)
    assert res["frames_dropped"] == 0
    assert res["burst"]["high_water_fraction"] > 0.2  # the ring did the absorbing
