"""Fast checks of the benchmark tools (sampler, raw baseline, peers, plots).

They guard the comparison itself: a peer that silently writes a short file,
or a sampler that sees nothing, would make every benchmark figure wrong.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # plain `pytest` too

from benchmarks import peers, plots
from benchmarks._raw import (
    ODirectUnsupportedError,
    bare_memcpy_cost,
    raw_odirect_write,
)
from benchmarks._sampling import MemorySampler, read_meminfo

N = 8
SHAPE = (256, 256)


@pytest.fixture
def tmp() -> Iterator[Path]:
    """A temp dir removed at once (pytest's tmp_path keeps the last runs)."""
    with tempfile.TemporaryDirectory(prefix="mesowriter-benchtest-") as d:
        yield Path(d)


@pytest.fixture(scope="module")
def frames() -> list[np.ndarray]:
    return peers.make_frames(SHAPE, np.uint16, n_distinct=3)


def test_sampler_collects_and_sees_own_rss() -> None:
    with MemorySampler(interval=0.01) as s:
        ballast = np.ones(16 << 20, dtype=np.uint8)  # 16 MiB, touched
        time.sleep(0.1)
    del ballast
    assert len(s.series) >= 3
    me = os.getpid()
    assert s.peak_rss_bytes[me] > 16 << 20
    assert s.peak_rss_total_bytes >= s.peak_rss_bytes[me]
    assert all(me in x["rss_bytes"] for x in s.series)
    if sys.platform.startswith("linux"):
        assert s.peak_dirty_bytes is not None
        assert s.timeseries("dirty_bytes")


def test_sampler_picks_up_late_pids() -> None:
    extra: list[int] = []
    with MemorySampler(interval=0.01, pids=lambda: extra, include_self=False) as s:
        time.sleep(0.03)
        extra.append(os.getpid())  # a "worker" that appears after start
        time.sleep(0.05)
    assert os.getpid() in s.peak_rss_bytes
    assert s.series[0]["rss_bytes"] == {}


def test_read_meminfo_keys() -> None:
    m = read_meminfo()
    assert set(m) == {"dirty_bytes", "writeback_bytes"}


def test_raw_odirect_write_size(tmp: Path) -> None:
    target = tmp / "raw.bin"
    total = (3 << 20) + 1000  # unaligned tail is padded then truncated
    try:
        r = raw_odirect_write(target, total, chunk_bytes=1 << 20)
    except ODirectUnsupportedError as e:
        pytest.skip(f"O_DIRECT unsupported on {tmp}: {e}")
    assert target.stat().st_size == total
    assert r["bytes"] == total and r["gbps"] > 0


def test_raw_rejects_unaligned_chunk(tmp: Path) -> None:
    with pytest.raises(ValueError):
        raw_odirect_write(tmp / "x", 4096, chunk_bytes=1000)


def test_bare_memcpy_cost_positive() -> None:
    assert 0 < bare_memcpy_cost(SHAPE, np.uint16, repeats=5) < 0.1


def _require(name: str) -> None:
    if name == "pymmcore_plus_ometiff":
        try:
            peers._import_pmp_ometiff()
            import useq  # noqa: F401
        except ImportError as e:
            pytest.skip(f"pymmcore-plus handlers unavailable: {e}")
    elif name == "ome_writers":
        pytest.importorskip("ome_writers", reason="ome-writers not installed")


@pytest.mark.parametrize("name", list(peers.PEERS))
def test_peer_writes_readable_file(
    name: str, tmp: Path, frames: list[np.ndarray]
) -> None:
    _require(name)
    r = peers.run_peer(name, tmp, N, frames, interval=0.01)
    assert r["frames"] == N and r["bytes"] == N * frames[0].nbytes
    assert r["seconds_durable"] >= r["seconds_returned"] > 0
    assert len(r["frame_times"]) == N and r["series"]
    check = peers.verify_output(r["paths"][0], N)
    assert check["ok"], check["problems"]
    assert check["frames"] == N


def test_verify_flags_short_file(tmp: Path, frames: list[np.ndarray]) -> None:
    r = peers.run_tifffile_plain(tmp / "short.tif", N - 2, frames)
    check = peers.verify_output(r["paths"][0], N)
    assert not check["ok"]


def test_plots_write_pngs(tmp: Path) -> None:
    pts = [(i * 0.1, float(i % 4)) for i in range(20)]
    cum = [(i * 0.1, float(i * 1e8)) for i in range(20)]
    paths = [
        plots.plot_ring_fill({"cam0": pts}, tmp / "ring.png", capacity=4),
        plots.plot_dirty_pages({"a": pts, "b": pts}, tmp / "dirty.png"),
        plots.plot_throughput(
            {"w": plots.rate_from_cumulative(cum)},
            tmp / "tp.png",
            ceiling_bps=3e9,
        ),
    ]
    for p in paths:
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    rate = plots.rate_from_cumulative(cum, window=0.25)
    assert rate[-1][1] == pytest.approx(1e9, rel=0.01)
