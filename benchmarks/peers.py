"""Peer writers, driven the way they are used: from the acquisition process.

Each peer writes the same synthetic frames and is timed twice: when its API
returns (what the acquisition code sees) and when the data is durable (file
closed, any writer thread finished, file fsync'd). Buffered writers can look
fast at the first mark and pay at the second; the dirty-page trace shows
where the gap went.

Run ``python -m benchmarks.peers --help`` for a one-shot comparison with the
raw O_DIRECT ceiling.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import tempfile
import threading
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np
import tifffile

from mesowriter.synthetic import make_frames as make_camera_frames
from mesowriter.synthetic import read_index, stamp_index

from ._raw import bare_memcpy_cost, raw_odirect_write
from ._sampling import MemorySampler

__all__ = [
    "PEERS",
    "make_frames",
    "run_ome_writers",
    "run_peer",
    "run_pymmcore_plus_ometiff",
    "run_tifffile_plain",
    "verify_output",
    "warm_guest_memory",
]

Result = dict[str, Any]
_GB = 1e9


# -- synthetic frames ------------------------------------------------------
def make_frames(
    shape: tuple[int, int] = (2048, 2048), dtype: Any = np.uint16, n_distinct: int = 4
) -> list[np.ndarray]:
    """The synthetic cameras' frames (generated once, never timed); the
    frame index is stamped per frame in ``_feed``."""
    if n_distinct <= 0:
        raise ValueError("n_distinct must be positive")
    return make_camera_frames(shape, np.dtype(dtype).str, n_distinct)


def _feed(
    frames: Sequence[np.ndarray], n: int, fresh_frames: bool
) -> Iterator[np.ndarray]:
    """Yield ``n`` frames cycling over ``frames``.

    With ``fresh_frames`` each frame is a new stamped copy, as
    ``popNextImageAndMD`` hands every handler a fresh array; this costs one
    memcpy a frame (see ``bare_memcpy_cost``) but keeps writers that queue
    references (ome-writers) honest about the memory their backlog holds.
    """
    k = len(frames)
    for i in range(n):
        if fresh_frames:
            f = frames[i % k].copy()
            stamp_index(f, i)
            yield f
        else:
            yield frames[i % k]


# -- timing harness --------------------------------------------------------
def _fsync_path(path: str | os.PathLike[str]) -> None:
    """fsync one file: durable for this file only, unlike ``os.sync()``, which
    would also flush other users' writes on a shared machine into our time."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _timed_run(
    name: str,
    n: int,
    frame_nbytes: int,
    body: Callable[[Callable[[], None], Callable[[], None]], list[str]],
    interval: float,
) -> Result:
    """Run ``body`` under a sampler and turn its marks into a result dict.

    ``body(start, tick)`` builds its writer, calls ``start()`` (the clock
    starts there, as mesowriter's starts after ``open_stream``), writes,
    calling ``tick()`` after each frame is accepted, and returns the output
    file paths once its close call has returned.
    Threads it started are joined before fsync: ome-writers' ``close()`` may
    return while its writer thread is still writing.
    """
    before = set(threading.enumerate())
    frame_t: list[float] = []
    with MemorySampler(interval=interval) as sampler:
        t0 = time.perf_counter()

        def start() -> None:
            nonlocal t0
            t0 = time.perf_counter()

        def tick() -> None:
            frame_t.append(time.perf_counter())

        paths = body(start, tick)
        t_returned = time.perf_counter()
        leftover = [
            t
            for t in threading.enumerate()
            if t not in before and t.is_alive() and t.name != "MemorySampler"
        ]
        for t in leftover:
            t.join()
        t_closed = time.perf_counter()
        for p in paths:
            _fsync_path(p)
        t_durable = time.perf_counter()
    total = n * frame_nbytes
    off = t0 - sampler.t0
    return {
        "name": name,
        "frames": n,
        "bytes": total,
        "paths": paths,
        "seconds_frames": (frame_t[-1] - t0) if frame_t else 0.0,
        "seconds_returned": t_returned - t0,
        "seconds_closed": t_closed - t0,
        "seconds_durable": t_durable - t0,
        "gbps_returned": total / (t_returned - t0) / _GB,
        "gbps_durable": total / (t_durable - t0) / _GB,
        "threads_alive_after_close": len(leftover),
        "baseline_dirty_bytes": sampler.baseline_dirty_bytes,
        "peak_dirty_bytes": sampler.peak_dirty_bytes,
        "peak_writeback_bytes": sampler.peak_writeback_bytes,
        "peak_rss_bytes": sampler.peak_rss_total_bytes,
        "peak_rss_anon_bytes": sampler.peak_rss_anon_bytes,
        "frame_times": [t - t0 for t in frame_t],
        "t_offset": off,
        "series": sampler.series,
    }


# -- peers -----------------------------------------------------------------
def run_tifffile_plain(
    path: str | os.PathLike[str],
    n: int,
    frames: Sequence[np.ndarray],
    *,
    fresh_frames: bool = True,
    interval: float = 0.05,
) -> Result:
    """Plain ``tifffile.TiffWriter(bigtiff=True)``, one contiguous page a frame."""
    path = os.fspath(path)

    def body(start: Callable[[], None], tick: Callable[[], None]) -> list[str]:
        with tifffile.TiffWriter(path, bigtiff=True) as tw:
            start()
            for f in _feed(frames, n, fresh_frames):
                tw.write(f, contiguous=True)
                tick()
        return [path]

    return _timed_run("tifffile_plain", n, frames[0].nbytes, body, interval)


def _import_pmp_ometiff() -> Any:
    """Import the deprecated handler without letting its FutureWarning escape."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        from pymmcore_plus.mda.handlers import OMETiffWriter
    return OMETiffWriter


def run_pymmcore_plus_ometiff(
    path: str | os.PathLike[str],
    n: int,
    frames: Sequence[np.ndarray],
    *,
    fresh_frames: bool = True,
    interval: float = 0.05,
) -> Result:
    """pymmcore-plus ``OMETiffWriter`` driven as the MDA runner drives it.

    sequenceStarted -> frameReady per event of a ``t`` time-lapse ->
    sequenceFinished. The handler keeps its memmap until it is garbage
    collected, so the arrays are dropped explicitly to close the file.
    """
    import useq

    writer_cls = _import_pmp_ometiff()
    path = os.fspath(path)
    if not path.endswith((".ome.tif", ".ome.tiff")):
        raise ValueError("pymmcore-plus OMETiffWriter wants a .ome.tif(f) path")
    seq = useq.MDASequence(
        time_plan=useq.TIntervalLoops(interval=timedelta(0), loops=n)
    )
    events = list(seq)  # built up front: event creation is not the writer's cost
    summary: dict[str, Any] = {"format": "summary-dict", "version": "1.0"}

    def body(start: Callable[[], None], tick: Callable[[], None]) -> list[str]:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            handler = writer_cls(path)
            handler.sequenceStarted(seq, summary)
            start()
            t0 = time.perf_counter()
            for ev, f in zip(events, _feed(frames, n, fresh_frames), strict=True):
                meta = {
                    "format": "frame-dict",
                    "version": "1.0",
                    "runner_time_ms": (time.perf_counter() - t0) * 1e3,
                    "mda_event": ev,
                }
                handler.frameReady(f, ev, meta)
                tick()
            handler.sequenceFinished(seq)
            # the last reference to the np.memmap: dropping it unmaps the file
            handler.position_arrays.clear()
        return [path]

    return _timed_run("pymmcore_plus_ometiff", n, frames[0].nbytes, body, interval)


def run_ome_writers(
    path: str | os.PathLike[str],
    n: int,
    frames: Sequence[np.ndarray],
    *,
    fresh_frames: bool = True,
    interval: float = 0.05,
) -> Result:
    """ome-writers 0.3 OME-TIFF stream, tifffile backend, as its docs show.

    ``create_stream(settings)`` as a context manager, ``append`` per frame.
    Its writer thread may outlive ``close()`` (5 s join timeout); the harness
    joins it before fsync and reports ``threads_alive_after_close``.
    """
    from ome_writers import (
        AcquisitionSettings,
        OmeTiffFormat,
        create_stream,
        dims_from_standard_axes,
    )

    h, w = frames[0].shape
    settings = AcquisitionSettings(
        root_path=os.fspath(path),
        dimensions=tuple(dims_from_standard_axes({"t": n, "y": h, "x": w})),
        dtype=str(frames[0].dtype),
        format=OmeTiffFormat(backend="tifffile"),
        overwrite=True,
    )
    out = settings.output_path

    def body(start: Callable[[], None], tick: Callable[[], None]) -> list[str]:
        with create_stream(settings) as stream:
            start()
            for f in _feed(frames, n, fresh_frames):
                stream.append(f)
                tick()
        return [out]

    return _timed_run("ome_writers", n, frames[0].nbytes, body, interval)


PEERS: dict[str, Callable[..., Result]] = {
    "tifffile_plain": run_tifffile_plain,
    "pymmcore_plus_ometiff": run_pymmcore_plus_ometiff,
    "ome_writers": run_ome_writers,
}


def run_peer(
    name: str,
    directory: str | os.PathLike[str],
    n: int,
    frames: Sequence[np.ndarray],
    **kwargs: Any,
) -> Result:
    """Run peer ``name`` into ``directory`` (file name chosen per peer).

    The plain tifffile peer gets ``.tif``: an ``.ome.tif`` name would switch
    tifffile to OME mode, which is a different writer.
    """
    ext = ".tif" if name == "tifffile_plain" else ".ome.tiff"
    return PEERS[name](Path(directory) / f"{name}{ext}", n, frames, **kwargs)


# -- correctness -----------------------------------------------------------
def verify_output(
    path: str | os.PathLike[str], expected_frames: int, *, check_stamps: bool = True
) -> dict[str, Any]:
    """Read a peer's file back with tifffile: frame count, and stamped indices.

    Guards the comparison against a broken run (short file, OME-XML declaring
    planes that were never written, frames out of order). Stamps are checked
    on the first, middle and last frames only, to stay cheap.
    """
    problems: list[str] = []
    with tifffile.TiffFile(path) as tf:
        n_pages = len(tf.pages)
        series = tf.series[0]
        n_series = int(np.prod(series.shape[:-2])) if series.ndim > 2 else 1
        if n_series != expected_frames:
            problems.append(f"series has {n_series} frames, want {expected_frames}")
        if check_stamps and n_series:
            arr = series.asarray(out="memmap") if n_series > 64 else series.asarray()
            arr = arr.reshape(-1, *series.shape[-2:])
            for i in sorted({0, n_series // 2, n_series - 1}):
                try:
                    got: int | str = read_index(arr[i])
                except ValueError as exc:
                    got = str(exc)
                if got != i:
                    problems.append(f"frame {i} carries stamp {got}")
            del arr
    return {
        "path": os.fspath(path),
        "pages": n_pages,
        "frames": n_series,
        "expected": expected_frames,
        "ok": not problems,
        "problems": problems,
    }


# -- CLI -------------------------------------------------------------------
def _fmt(r: Result) -> str:
    mib = 1 << 20
    dirty = r.get("peak_dirty_bytes")
    return (
        f"{r['name']:<24} {r.get('gbps_durable', r.get('gbps', 0.0)):6.2f} GB/s "
        f"durable  {r.get('gbps_returned', r.get('gbps', 0.0)):6.2f} GB/s returned  "
        f"peak dirty {dirty / mib if dirty is not None else float('nan'):7.0f} MiB  "
        f"peak rss {r.get('peak_rss_bytes', 0) / mib:6.0f} MiB "
        f"(anon {(r.get('peak_rss_anon_bytes') or 0) / mib:5.0f})"
    )


def warm_guest_memory(nbytes: int) -> float:
    """Touch and free ``nbytes`` of anonymous memory; return the seconds taken.

    On this VM the first touch of guest RAM runs at about 0.6 GB/s (host-side
    faults), the second at about 7 GB/s, so whichever writer ran first paid
    for it in its page-cache copies (tifffile 0.47 vs 3.7 GB/s accepted).
    Warming before every writer puts them all on the same footing, as on a
    bare-metal acquisition PC.
    """
    t0 = time.perf_counter()
    if nbytes > 0:
        ballast = np.empty(nbytes, dtype=np.uint8)
        ballast[::4096] = 1  # one write a page faults every page in
        del ballast
    return time.perf_counter() - t0


def _warm_up(name: str, directory: str) -> None:
    """Run a peer once on tiny frames so lazy imports are not timed (~0.2 s
    for ome-writers' backend on first use), then delete its output."""
    r = run_peer(name, directory, 2, make_frames((64, 64), np.uint16, 2))
    for p in r["paths"]:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(p)


def main(argv: Sequence[str] | None = None) -> int:
    """One modest comparison run; writes only under a temporary directory."""
    ap = argparse.ArgumentParser(prog="python -m benchmarks.peers")
    ap.add_argument("--frames", type=int, default=128, help="frames per writer")
    ap.add_argument("--shape", type=int, nargs=2, default=(2048, 2048))
    ap.add_argument("--dir", default=None, help="parent of the temp dir (disk!)")
    ap.add_argument("--peers", nargs="*", default=list(PEERS))
    ap.add_argument("--no-raw", action="store_true")
    ap.add_argument("--raw-chunk-mib", type=int, default=0, help="0: one frame")
    ap.add_argument(
        "--cold", action="store_true", help="skip warm_guest_memory before writers"
    )
    ap.add_argument("--no-fresh", action="store_true", help="reuse cycled frames")
    ap.add_argument("--plots", default=None, help="directory for PNG plots")
    ap.add_argument("--json", default=None, help="write results (no series) here")
    args = ap.parse_args(argv)

    shape = (args.shape[0], args.shape[1])
    frames = make_frames(shape, np.uint16)
    frame_nbytes = frames[0].nbytes
    results: list[Result] = []
    tmp = tempfile.mkdtemp(prefix="mesowriter-bench-", dir=args.dir)
    try:
        memcpy = bare_memcpy_cost(shape, np.uint16, repeats=20)
        print(
            f"bare memcpy: {memcpy * 1e3:.3f} ms/frame "
            f"({frame_nbytes / memcpy / _GB:.1f} GB/s)"
        )
        warm = 0 if args.cold else int(args.frames * frame_nbytes * 1.25)
        if not args.no_raw:
            warm_guest_memory(warm)
            chunk = (args.raw_chunk_mib << 20) or frame_nbytes
            raw = raw_odirect_write(
                Path(tmp) / "raw.bin", args.frames * frame_nbytes, chunk
            )
            os.unlink(Path(tmp) / "raw.bin")
            results.append(raw)
            print(
                f"{'raw_odirect':<24} {raw['gbps']:6.2f} GB/s durable "
                f"({raw['bytes'] / (1 << 30):.2f} GiB in {raw['seconds']:.2f} s, "
                f"{chunk >> 10} KiB chunks)"
            )
        for name in args.peers:
            _warm_up(name, tmp)
            warm_guest_memory(warm)
            r = run_peer(name, tmp, args.frames, frames, fresh_frames=not args.no_fresh)
            check = verify_output(
                r["paths"][0], args.frames, check_stamps=not args.no_fresh
            )
            r["verify"] = check
            for p in r["paths"]:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(p)
            results.append(r)
            flag = "ok" if check["ok"] else f"BROKEN {check['problems']}"
            print(f"{_fmt(r)}  [{flag}]")
            print(
                f"{'':<24} frames {r['seconds_frames']:.2f} s, returned "
                f"{r['seconds_returned']:.2f} s, durable {r['seconds_durable']:.2f} s, "
                f"threads alive after close: {r['threads_alive_after_close']}"
            )
        if args.plots:
            from .plots import plot_peer_results

            for p in plot_peer_results(results, args.plots):
                print("plot:", p)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    if args.json:
        slim = [{k: v for k, v in r.items() if k != "series"} for r in results]
        Path(args.json).write_text(json.dumps(slim, indent=1, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
