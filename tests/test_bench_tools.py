"""Fast checks of the benchmark tools (sampler, raw baseline, peers, plots).

They guard the comparison itself: a peer that silently writes a short file,
or a sampler that sees nothing, would make every benchmark figure wrong.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # plain `pytest` too

from benchmarks import _rounds as rounds
from benchmarks import peers, plots, suite
from benchmarks._raw import (
    ODirectUnsupportedError,
    bare_memcpy_cost,
    fio_path,
    fio_write,
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


# -- alternating rounds, medians, spreads, best of raw --------------------------------
def test_schedule_alternates_references_then_subjects() -> None:
    refs, subs = ["x1", "x4", "fio"], ["meso", "odd"]
    plan = rounds.schedule(3, refs, subs)
    assert len(plan) == 3
    for row in plan:
        assert sorted(row[:3]) == sorted(refs) and sorted(row[3:]) == sorted(subs)
    # rotated: no configuration always runs first, or always right after another
    assert len({row[0] for row in plan}) == 3
    assert {row[3] for row in plan} == set(subs)
    with pytest.raises(ValueError):
        rounds.schedule(0, refs, subs)


def test_a_bracket_runs_on_both_sides_of_every_subject() -> None:
    refs, subs = ["x1", "x8", "fio"], ["meso", "odd"]
    plan = rounds.schedule(3, refs, subs, bracket="fio")
    for row in plan:
        assert sorted(row[:2]) == ["x1", "x8"] and row[2] == "fio"
        for i, name in enumerate(row):
            if name in subs:
                assert row[i - 1] == row[i + 1] == "fio"
        assert sorted(n for n in row if n in subs) == subs
    assert {row[3] for row in plan} == set(subs)  # subjects still rotate
    with pytest.raises(ValueError, match="not one of the references"):
        rounds.schedule(3, refs, subs, bracket="fio_qd32")


def test_bracketed_ratio_is_to_the_runs_right_around_the_subject() -> None:
    # the disk slows down in the middle of round 0: the round's first fio run
    # would make meso look slow, the runs beside it do not
    trail = [
        [
            ("x1", 1.0),
            ("fio", 2.5),
            ("meso", 1.8),
            ("fio", 2.0),
            ("odd", 1.9),
            ("fio", 2.0),
        ],
        [("fio", 2.4), ("odd", None), ("fio", None), ("meso", 2.2), ("fio", 2.4)],
    ]
    meso = rounds.bracketed_ratios(trail, "meso", "fio")
    assert meso == pytest.approx([1.8 / 2.25, 2.2 / 2.4])  # type: ignore[arg-type]
    odd = rounds.bracketed_ratios(trail, "odd", "fio")
    assert odd == [pytest.approx(0.95), None]  # a failed run: no ratio


def test_run_rounds_keeps_each_rounds_order_with_repeated_names() -> None:
    values = iter([1.0, 2.0, 3.0, 4.0, 5.0])
    trail: list[list[tuple[str, dict[str, float] | None]]] = []
    plan = [["fio", "meso", "fio"], ["fio", "meso"]]
    runs, failures = rounds.run_rounds(
        plan,
        {"fio": lambda: {"v": next(values)}, "meso": lambda: {"v": next(values)}},
        trail=trail,
    )
    assert not failures
    assert [[(n, r["v"] if r else None) for n, r in row] for row in trail] == [
        [("fio", 1.0), ("meso", 2.0), ("fio", 3.0)],
        [("fio", 4.0), ("meso", 5.0)],
    ]
    assert [r["v"] if r else None for r in runs["fio"]] == [1.0, 4.0]  # the first


def test_spread_median_min_max_skip_failed_runs() -> None:
    s = rounds.spread([2.0, None, 4.0, 3.0])
    assert (s["median"], s["min"], s["max"], s["n"]) == (3.0, 2.0, 4.0, 3)
    assert s["values"] == [2.0, None, 4.0, 3.0]
    empty = rounds.spread([None, None])
    assert empty["median"] is None and empty["n"] == 0


def test_ratio_is_per_round_against_the_best_median() -> None:
    raws = {
        "x1": [1.0, 1.2, 1.1],
        "x8": [3.0, 2.0, 2.5],  # best median (2.5), though not best every round
        "fio": [2.4, 2.4, None],
    }
    assert rounds.best_reference(raws) == "x8"
    meso = [2.7, 1.9, None]
    v = rounds.versus_best(meso, raws)
    assert v["best"] == "x8"
    assert v["ratios"] == pytest.approx([0.9, 0.95, None])  # type: ignore[list-item]
    assert v["ratio"]["median"] == pytest.approx(0.925)
    assert v["ratio"]["min"] == pytest.approx(0.9)
    assert rounds.ratios([1.0], [0.0]) == [None]
    with pytest.raises(ValueError):
        rounds.ratios([1.0], [1.0, 2.0])


def test_run_rounds_keeps_going_past_a_failed_run() -> None:
    calls: list[str] = []

    def ok(name: str, value: float) -> Callable[[], dict[str, Any]]:
        def run() -> dict[str, Any]:
            calls.append(name)
            return {"gbps": value}

        return run

    def broken() -> dict[str, Any]:
        calls.append("fio")
        raise RuntimeError("io_uring refused")

    plan = rounds.schedule(2, ["x1", "fio"], ["meso"])
    runs, failures = rounds.run_rounds(
        plan, {"x1": ok("x1", 1.0), "fio": broken, "meso": ok("meso", 2.0)}
    )
    assert calls == [n for row in plan for n in row]
    assert runs["fio"] == [None, None] and len(failures) == 2
    assert failures[0]["name"] == "fio" and "io_uring" in failures[0]["error"]
    assert [r["gbps"] for r in runs["meso"] if r] == [2.0, 2.0]


def test_only_takes_letters_and_names() -> None:
    assert suite.parse_only("ad") == {"a", "d"}
    assert suite.parse_only("depth") == {"depth"}  # not d + e + p + t + h
    assert suite.parse_only("a,depth") == {"a", "depth"}
    with pytest.raises(Exception, match="use letters"):
        suite.parse_only("z")


def test_raw_several_in_flight_write_every_byte(tmp: Path) -> None:
    target = tmp / "raw.bin"
    total = (5 << 20) + 4096
    try:
        r = raw_odirect_write(
            target, total, 1 << 20, in_flight=4, prealloc_bytes=total + (1 << 20)
        )
    except ODirectUnsupportedError as e:
        pytest.skip(f"O_DIRECT unsupported on {tmp}: {e}")
    assert r["in_flight"] == 4 and r["gbps"] > 0
    assert sum(n for _, n in r["completions"]) == total
    assert target.stat().st_size == total + (1 << 20)  # preallocated size kept


@pytest.mark.skipif(fio_path() is None, reason="fio not installed")
def test_fio_reference_writes_whole_blocks(tmp: Path) -> None:
    try:
        r = fio_write(tmp / "fio.bin", (8 << 20) + 4096, block_bytes=1 << 20, iodepth=4)
    except RuntimeError as e:  # e.g. no io_uring in this sandbox
        pytest.skip(str(e))
    assert r["bytes"] == 8 << 20 and r["gbps"] > 0


def test_plot_points_and_rounds(tmp: Path) -> None:
    rows = [
        ("mesowriter", rounds.spread([2.0, 2.5, 2.2])),
        ("peer", rounds.spread([0.5])),
    ]
    refs = {"x1": rounds.spread([1.5, 1.8, 1.7]), "x8": rounds.spread([2.4, 2.6, 2.8])}
    series = [[(0.1 * i, 2e9 + 1e8 * (i % 3)) for i in range(30)]] * 2
    paths = [
        plots.plot_points(rows, tmp / "points.png", references=refs, best="x8"),
        plots.plot_rate_rounds(
            {"mesowriter": series}, tmp / "rounds.png", hlines={"fio": 2.9e9}
        ),
    ]
    for p in paths:
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_pipeline_section_runs_and_cleans_up(tmp: Path) -> None:
    """(h) end to end on tiny frames: producer process, discard stream, copies;
    the dummy stream's companions and folder are gone afterwards."""
    import argparse

    from benchmarks._producer import Producer

    args = argparse.Namespace(
        pipeline_sizes=(64,), pipeline_gib=0.0, rounds=2, pipeline_dir=str(tmp)
    )
    with Producer(4 << 20) as producer:
        h = suite.bench_pipeline(producer, args, 4 << 20)
    size = h["sizes"]["64x64"]
    assert size["frames"] == 8 and size["order"][0][-1] == "ring_worker"
    for key in ("ring_worker_gbps", "copy_shared_gbps", "copy_ordinary_gbps"):
        assert size[key]["n"] == 2 and size[key]["median"] > 0
    assert size["ratio_shared"]["n"] == 2 and not size["failures"]
    assert size["write_us_p99"]["median"] >= size["write_us_median"]["median"]
    assert list(tmp.iterdir()) == []


class _FailingBracket:
    """Raw references whose likely best (fio) cannot run here (io_uring
    refused, say): the writer is still held to the best that did run."""

    total_bytes = prealloc_bytes = 1 << 30
    fio_depth = 32

    def runners(self) -> dict[str, Any]:
        return {"pwrite_x8": lambda: {"gbps": 2.0}, "fio_qd32": self._fio}

    def _fio(self) -> dict[str, Any]:
        raise RuntimeError("fio: io_uring_setup: Operation not permitted")

    def likely_best(self) -> str:
        return "fio_qd32"


def test_a_bracket_that_never_runs_leaves_the_ratio_to_the_best_of_the_round() -> None:
    from benchmarks import suite

    out = suite.against_raw(
        _FailingBracket(),  # type: ignore[arg-type]
        {"meso": lambda: {"gbps": 1.9}},
        rounds=3,
    )
    meso = out["subjects"]["meso"]
    assert out["best_raw"] == "pwrite_x8"
    assert len(out["failures"]) == 6  # fio before and after the writer
    assert meso["ratio"]["median"] == pytest.approx(0.95)
    assert meso["ratio"]["n"] == 3
