"""`make bench`: mesowriter against the disk, its peers and a bare memcpy.

Sections (see README "Benchmarks"):

a. sustained end-to-end GB/s: a producer process (synthetic frames as fast
   as the writer takes them, policy "block") through a WriterService to a
   durable file (O_DIRECT, synced at close), timed from the first
   `Stream.write` to `Stream.close()` returning; against the best of several
   raw configurations of the same bytes and file size in the same folder
   (O_DIRECT pwrite of 64 MiB requests, 1 and several in flight; fio with
   io_uring when installed), in alternating rounds (raw configurations, then
   mesowriter, `--rounds` times): median and min-max of each, and of the
   per-round ratio. Also a frame size off the 4096-byte grid (1000x1000).
b. the same frames through pymmcore-plus OMETiffWriter, ome-writers and plain
   tifffile, durable (fsync'd), as ratios mesowriter / peer.
c. the DemoCamera through pymmcore-plus: highest drop-free burst rate with
   mesowriter (acquisition thread; relay for reference) vs a do-nothing slot.
d. acquisition-side cost per frame (time in `Stream.write`, paced below disk
   speed so no wait is included) vs a bare memcpy of the same frame into
   ring-sized shared memory, timed next to each write (before it on even
   frames, after it on odd ones, so neither always finds the source frame in
   cache) so both meet the same load (the writer draining, other processes);
   for reference also
   against the same copy and one cache-warm buffer timed on a quiet machine.
e. video fps per working codec and size: the encoder in this process vs 1,
   2 and N parallel video streams (one writer process each).
f. memory: peak RSS of every process and peak dirty page cache in (a), (b).
g. finalisation at scale: close() of a 100 000-frame stream with realistic
   per-frame metadata (OME-XML planes + annotation, sidecar): seconds and
   memory added in the writer process.
h. the pipeline ceiling: ring + writer process with a sink that keeps
   nothing ("discard"), against a bare copy of the same frames into
   ring-sized ordinary and shared memory, alternating rounds, per frame size;
   `Stream.write`'s cost per frame (median, p99) beside the copy's.
depth (optional, `--only depth`): (a)'s stream at each `--depths` write_depth
   against the same raw configurations, alternating rounds.

Writes benchmarks/results/results.json, results.md and PNG plots.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import math
import os
import platform
import shutil
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks import peers, plots  # noqa: E402
from benchmarks._producer import CopyJob, Producer, StreamJob  # noqa: E402
from benchmarks._raw import (  # noqa: E402
    fio_path,
    fio_write,
    raw_odirect_write,
    source_buffers,
)
from benchmarks._rounds import (  # noqa: E402
    best_reference,
    bracketed_ratios,
    ratios,
    run_rounds,
    schedule,
    spread,
    versus_best,
)
from benchmarks._sampling import MemorySampler  # noqa: E402
from mesowriter._spec import DEFAULT_WRITE_DEPTH, companion_paths  # noqa: E402
from mesowriter.synthetic import SyntheticCamera, read_index, run_cameras  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
GIB = 1 << 30
MIB = 1 << 20
SECTIONS = "abcdefghs"
# Optional sections, asked for by name (`--only depth`, `--only a,depth`).
NAMED_SECTIONS = ("depth",)
TARGETS = {
    "a": ("mesowriter / best raw configuration, same round", ">=", 0.9),
    "h": ("ring + worker (discard) / copy into ring-sized shared memory", ">=", 0.8),
    "b": ("mesowriter / slowest-to-fastest peer", ">=", 3.0),
    "c": ("attach fps / min(do-nothing fps, disk fps)", ">=", 0.85),
    "d": ("Stream.write / bare memcpy", "<=", 1.2),
    "f": ("peak dirty pages (MiB) during mesowriter", "<=", 256.0),
    "g": ("close() of a 100 000-frame stream (s)", "<=", 10.0),
    "g_mb": ("writer memory added by that close (MB)", "<=", 500.0),
    "s_open": ("open_stream p50 with a free warm ring (ms)", "<=", 20.0),
    "s_open99": ("open_stream p99 (ms)", "<=", 50.0),
    "s_short": ("50-frame MDA, attach / pymmcore-plus default path", ">=", 0.9),
    "s_relay": ("50-frame MDA, output=writer / do-nothing handler", ">=", 0.9),
    "s_paced": ("paced 2048x2048, output=writer / do-nothing handler", ">=", 0.95),
}


def _start_rows(st: dict[str, Any], verdict: Any) -> list[tuple[str, str, str, str]]:
    """Table rows of section (s): medians with their min-max over rounds."""

    def sp(d: dict[str, Any], fmt: str = ".0f") -> str:
        return f"{d['median']:{fmt}} ({d['min']:{fmt}}-{d['max']:{fmt}})"

    o, sh, pa = st["open"], st["short"], st["paced"]
    pos, cams = st["positions"], st["cameras"]
    lost = {
        m: (
            sum(r.get("dropped", 0) for r in pos[m]["runs"]),
            sum(bool(r["overflow"]) for r in pos[m]["runs"]),
        )
        for m in ("relay", "attach", "nothing")
    }
    ok_open = (
        verdict("s_open", o["p50_ms"]) == verdict("s_open99", o["p99_ms"]) == "PASS"
    )
    return [
        (
            "s open_stream",
            f"p50 {o['p50_ms']:.1f} ms, p99 {o['p99_ms']:.1f} ms ({o['n']} opens "
            "on a running service)"
            + (
                f"; a new service's first open, its writer starting: "
                f"{o['first_open_ms']:.0f} ms"
                if "first_open_ms" in o
                else ""
            ),
            "<= 20 / 50 ms",
            "PASS" if ok_open else "MISS",
        ),
        (
            "s 50-frame MDA, attach",
            f"{sp(sh['attach']['fps'])} fps vs pymmcore-plus default "
            f"(ome-writers) {sp(sh['ome-writers']['fps'])} = "
            f"{sp(sh['ratio_attach_over_default'], '.2f')}",
            ">= 0.9",
            verdict("s_short", sh["ratio_attach_over_default"]["median"]),
        ),
        (
            "s 50-frame MDA, output=writer",
            f"{sp(sh['relay']['fps'])} fps vs do-nothing handler "
            f"{sp(sh['nothing']['fps'])} = "
            f"{sp(sh['ratio_relay_over_nothing'], '.2f')}",
            ">= 0.9",
            verdict("s_relay", sh["ratio_relay_over_nothing"]["median"]),
        ),
        (
            f"s paced {pa['size']}x{pa['size']}, {pa['exposure_ms']:.1f} ms "
            f"(disk {st.get('disk_gbps', 0):.2f} GB/s)",
            f"output=writer {sp(pa['relay']['fps'])} fps vs nothing "
            f"{sp(pa['nothing']['fps'])} = "
            f"{sp(pa['ratio_relay_over_nothing'], '.2f')}; attach "
            f"{sp(pa['attach']['fps'])}",
            ">= 0.95",
            verdict("s_paced", pa["ratio_relay_over_nothing"]["median"]),
        ),
        (
            "s 4 positions",
            "frames dropped / runs overflowed: "
            + ", ".join(f"{m} {d}/{o}" for m, (d, o) in lost.items()),
            "0 where nothing has 0",
            "PASS"
            if lost["relay"] == lost["attach"] == (0, 0) or lost["nothing"][1]
            else "MISS",
        ),
        (
            f"s two cameras, {st.get('cameras_exposure_ms', 2.0):.1f} ms",
            f"Multi Camera with mesowriter {sp(cams['two, attach']['fps'])} events/s "
            f"vs no writer {sp(cams['two, nothing']['fps'])} = "
            f"{sp(cams['ratio_two_over_one'], '.2f')} (one camera, no writer: "
            f"{sp(cams['one, nothing']['fps'])})",
            "the rate of one",
            "PASS" if cams["ratio_two_over_one"]["median"] >= 0.9 else "MISS",
        ),
    ]


def _log(msg: str) -> None:
    print(msg, flush=True)


# -- (a) (f) depth: mesowriter against the best raw configuration ---------------------
@dataclass
class RawReferences:
    """The raw writes every round repeats: same bytes, same file size.

    The file is preallocated to what mesowriter's TIFF sink reserves for the
    same frames, so both pay the same extent conversion; the source buffers
    are made and touched once for all rounds.
    """

    scratch: Path
    total_bytes: int
    prealloc_bytes: int
    chunk_bytes: int
    in_flight: tuple[int, ...]
    fio_depth: int | None  # None: fio skipped
    buffers: list[memoryview] = field(default_factory=list)

    def runners(self) -> dict[str, Callable[[], dict[str, Any]]]:
        if not self.buffers:
            self.buffers = source_buffers(max(self.in_flight), self.chunk_bytes)
        out = {f"pwrite_x{k}": self._pwrite(k) for k in self.in_flight}
        if self.fio_depth is not None:
            out[f"fio_qd{self.fio_depth}"] = self._fio
        return out

    def likely_best(self) -> str:
        """The configuration expected to be the ceiling (fio's io_uring where
        it runs, else the most requests in flight): the subjects' bracket."""
        if self.fio_depth is not None:
            return f"fio_qd{self.fio_depth}"
        return f"pwrite_x{max(self.in_flight)}"

    def _pwrite(self, k: int) -> Callable[[], dict[str, Any]]:
        def run() -> dict[str, Any]:
            path = self.scratch / "raw.bin"
            try:
                return raw_odirect_write(
                    path,
                    self.total_bytes,
                    self.chunk_bytes,
                    in_flight=k,
                    prealloc_bytes=self.prealloc_bytes,
                    buffers=self.buffers,
                )
            finally:
                path.unlink(missing_ok=True)

        return run

    def _fio(self) -> dict[str, Any]:
        path = self.scratch / "fio.bin"
        try:
            return fio_write(
                path,
                self.total_bytes,
                block_bytes=self.chunk_bytes,
                iodepth=self.fio_depth or 1,
                prealloc_bytes=self.prealloc_bytes,
            )
        finally:
            path.unlink(missing_ok=True)


def tiff_reserved_bytes(shape: tuple[int, ...], frames: int) -> int:
    """Bytes mesowriter's TIFF sink reserves before the first frame (the raw
    references preallocate the same), or the pixel bytes if it cannot say."""
    from mesowriter._spec import StreamSpec
    from mesowriter.sinks import sink_class

    spec = StreamSpec(
        stream_id=0,
        path="reserve.ome.tiff",
        kind="ome-tiff",
        shape=shape,
        dtype="<u2",
        frames=frames,
    )
    try:
        return int(sink_class("ome-tiff").space_needed(spec))
    except Exception:  # the engine's API moved: the bytes written will do
        return frames * math.prod(shape) * 2


def mesowriter_runner(
    producer: Producer, job: StreamJob, verify: bool = True
) -> Callable[[], dict[str, Any]]:
    """One mesowriter run with memory sampled; the file read back, removed."""

    def run() -> dict[str, Any]:
        try:
            with MemorySampler(interval=0.1, include_children=True) as sampler:
                r = producer.stream(job)
            rep = r["report"]
            if rep["frames_written"] != job.frames or rep["error"]:
                raise RuntimeError(
                    f"mesowriter run incomplete: {rep['frames_written']} of "
                    f"{job.frames} frames, error {rep['error']}"
                )
            if verify:
                r["verify"] = _verify(job.path, job.frames)
        finally:
            _remove_stream_files(job.path)
        r["memory"] = {
            "peak_dirty_bytes": sampler.peak_dirty_bytes,
            "baseline_dirty_bytes": sampler.baseline_dirty_bytes,
            "peak_rss_bytes_by_pid": {
                str(k): v for k, v in sampler.peak_rss_bytes.items()
            },
            "peak_rss_total_bytes": sampler.peak_rss_total_bytes,
            "peak_rss_anon_bytes": sampler.peak_rss_anon_bytes,
            "dirty_series": sampler.timeseries("dirty_bytes"),
        }
        return r

    return run


def _log_run(r: int, name: str, res: dict[str, Any] | None) -> None:
    if res is None:
        _log(f"  round {r + 1} {name:<22} FAILED")
        return
    extra = f" ({res['seconds']:.2f} s)" if "seconds" in res else ""
    rate = res.get("gbps_committed", res["gbps"]) if res.get("kind") else res["gbps"]
    _log(f"  round {r + 1} {name:<22} {rate:6.2f} GB/s{extra}")


def against_raw(
    refs: RawReferences,
    subjects: dict[str, Callable[[], dict[str, Any]]],
    rounds: int,
) -> dict[str, Any]:
    """Raw configurations, then the subjects, round after round.

    Each subject is held to the raw configuration with the best median. The
    likely best one brackets each subject (it runs right before and after
    it), and a subject's ratio is to the mean of those two runs: ratios of
    runs made tens of seconds apart mean little on this disk. Where another
    configuration has the best median, that ratio is scaled by the two
    medians (the bracket's over the best's), so the subject is still held to
    the best; the ratio to the best one's run of the same round is kept too.
    """
    raw = refs.runners()
    bracket = refs.likely_best()
    plan = schedule(rounds, list(raw), list(subjects), bracket=bracket)
    trail: list[list[tuple[str, dict[str, Any] | None]]] = []
    runs, failures = run_rounds(
        plan, {**raw, **subjects}, on_result=_log_run, trail=trail
    )
    rates = [[(n, _values([res], "gbps")[0]) for n, res in row] for row in trail]
    # each configuration's run among the references (the bracket's first):
    # like against like, whatever the subjects' runs beside it did
    raw_gbps = {k: _values(runs[k], "gbps") for k in raw}
    best = best_reference(raw_gbps)
    out: dict[str, Any] = {
        "rounds": rounds,
        "order": plan,
        "bytes": refs.total_bytes,
        "prealloc_bytes": refs.prealloc_bytes,
        "raw": {k: {"gbps": spread(raw_gbps[k]), "runs": runs[k]} for k in raw},
        "best_raw": best,
        "bracket": bracket,
        "raw_gbps": spread(raw_gbps[best])["median"] if best else None,
        "subjects": {},
        "failures": failures,
        "trail": rates,  # every run in the order it ran, GB/s
    }
    for name in subjects:
        vals = _values(runs[name], "gbps")
        same_round = versus_best(vals, raw_gbps)
        # the bracket's median over the best's: 1 where the bracket is the best
        scale = 1.0 if best == bracket else _median_over(raw_gbps, bracket, best)
        # a round whose bracket runs failed (or a bracket that never ran:
        # fio without io_uring) keeps its ratio to the best's run of the round
        per_round = [
            s if r is None or scale is None else r * scale
            for r, s in zip(
                bracketed_ratios(rates, name, bracket),
                same_round["ratios"],
                strict=True,
            )
        ]
        out["subjects"][name] = {
            "gbps": spread(vals),
            "best": best,
            "ratios": per_round,
            "ratio": spread(per_round),
            "bracket_scale": None if best == bracket else scale,
            "ratio_same_round": same_round["ratio"],
            "write_us_median": spread(_values(runs[name], "write", "us_median")),
            "verify_ok": all(
                r["verify"]["ok"] for r in runs[name] if r and "verify" in r
            ),
            "runs": runs[name],
        }
    return out


def _median_over(
    values: dict[str, list[float | None]], top: str, bottom: str | None
) -> float | None:
    """The median of `top`'s values over `bottom`'s (None: either has none)."""
    a = spread(values[top])["median"]
    b = spread(values[bottom])["median"] if bottom is not None else None
    return a / b if a and b else None


def _values(runs: Sequence[dict[str, Any] | None], *keys: str) -> list[float | None]:
    """One figure from each round's run (None where the run failed)."""
    out: list[float | None] = []
    for r in runs:
        v: Any = r
        for k in keys:
            v = None if v is None else v.get(k)
        out.append(None if v is None else float(v))
    return out


def bench_ceiling(
    producer: Producer, refs: RawReferences, args: argparse.Namespace
) -> dict[str, Any]:
    """(a): mesowriter and a frame size off the 4096-byte grid vs best raw."""
    shape = (args.size, args.size)
    odd = (args.odd_size, args.odd_size)
    frames = refs.total_bytes // (math.prod(shape) * 2)
    odd_frames = max(8, refs.total_bytes // (math.prod(odd) * 2))
    subjects = {
        "mesowriter": mesowriter_runner(
            producer,
            StreamJob(
                str(refs.scratch / "mesowriter.ome.tiff"),
                shape,
                frames,
                write_depth=args.write_depth,
            ),
        ),
        "mesowriter_odd": mesowriter_runner(
            producer,
            StreamJob(
                str(refs.scratch / "mesowriter-odd.ome.tiff"),
                odd,
                odd_frames,
                write_depth=args.write_depth,
            ),
        ),
    }
    out = against_raw(refs, subjects, args.rounds)
    out["frame"] = {"shape": list(shape), "frames": frames}
    out["odd_frame"] = {"shape": list(odd), "frames": odd_frames}
    out["write_depth"] = args.write_depth or DEFAULT_WRITE_DEPTH
    meso = out["subjects"]["mesowriter"]
    # the figures other sections and older readers of results.json use
    out["mesowriter_gbps"] = meso["gbps"]["median"]
    out["ratio"] = meso["ratio"]["median"]
    return out


def bench_depths(
    producer: Producer, refs: RawReferences, args: argparse.Namespace
) -> dict[str, Any]:
    """(depth): the same stream at each write_depth, against the same raw runs."""
    shape = (args.size, args.size)
    frames = refs.total_bytes // (math.prod(shape) * 2)
    subjects = {
        f"write_depth_{d}": mesowriter_runner(
            producer,
            StreamJob(
                str(refs.scratch / f"depth{d}.ome.tiff"), shape, frames, write_depth=d
            ),
        )
        for d in args.depths
    }
    out = against_raw(refs, subjects, args.rounds)
    out["depths"] = list(args.depths)
    out["frame"] = {"shape": list(shape), "frames": frames}
    return out


def memory_of_worst_round(a: dict[str, Any]) -> dict[str, Any]:
    """(f) from (a): the mesowriter run with the most dirty pages over baseline."""
    runs = [r for r in a["subjects"]["mesowriter"]["runs"] if r is not None]
    if not runs:
        return {}

    def over(r: dict[str, Any]) -> int:
        m = r["memory"]
        return (m["peak_dirty_bytes"] or 0) - (m["baseline_dirty_bytes"] or 0)

    m = max(runs, key=over)["memory"]
    return {
        "mesowriter_peak_dirty_bytes": m["peak_dirty_bytes"],
        "mesowriter_baseline_dirty_bytes": m["baseline_dirty_bytes"],
        "mesowriter_peak_rss_bytes_by_pid": m["peak_rss_bytes_by_pid"],
        "mesowriter_peak_rss_total_bytes": m["peak_rss_total_bytes"],
        "mesowriter_peak_rss_anon_bytes": m["peak_rss_anon_bytes"],
        "mesowriter_dirty_series": m["dirty_series"],
    }


# -- (h): the pipeline ceiling, ring + worker with a sink that keeps nothing ----------
def bench_pipeline(
    producer: Producer, args: argparse.Namespace, ring_bytes: int
) -> dict[str, Any]:
    """Ring + worker (the "discard" sink) vs a bare copy of the same frames.

    The copies go into ring-sized memory, ordinary and shared, slot after
    slot, in the producer process. The discard stream's name lives in a
    folder of its own (tmpfs where there is one), since the worker still
    writes its journal, report and sidecar beside it; the folder is removed.
    """
    from mesowriter._ring import RingLayout

    folder = Path(
        tempfile.mkdtemp(prefix="mesowriter-pipeline-", dir=args.pipeline_dir)
    )
    out: dict[str, Any] = {"folder": str(folder), "sizes": {}}
    try:
        for edge in args.pipeline_sizes:
            shape = (edge, edge)
            nbytes = edge * edge * 2
            frames = max(8, int(args.pipeline_gib * GIB) // nbytes)
            slots = RingLayout.plan(
                ring_bytes=ring_bytes, shape=shape, dtype=np.dtype(np.uint16)
            ).n_slots
            job = StreamJob(
                str(folder / f"discard-{edge}"), shape, frames, kind="discard"
            )
            runners: dict[str, Callable[[], dict[str, Any]]] = {
                "copy_ordinary": functools.partial(
                    producer.copy, CopyJob(shape, frames, slots, "ordinary")
                ),
                "copy_shared": functools.partial(
                    producer.copy, CopyJob(shape, frames, slots, "shared")
                ),
                "ring_worker": mesowriter_runner(producer, job, verify=False),
            }
            _log(f"  {edge}x{edge}: {frames} frames, ring of {slots} slots")
            plan = schedule(
                args.rounds, ["copy_ordinary", "copy_shared"], ["ring_worker"]
            )
            runs, failures = run_rounds(plan, runners, on_result=_log_run)
            meso = _values(runs["ring_worker"], "gbps_committed")
            shared = _values(runs["copy_shared"], "gbps")
            ordinary = _values(runs["copy_ordinary"], "gbps")
            out["sizes"][f"{edge}x{edge}"] = {
                "shape": list(shape),
                "frames": frames,
                "slots": slots,
                "order": plan,
                "ring_worker_gbps": spread(meso),
                "copy_shared_gbps": spread(shared),
                "copy_ordinary_gbps": spread(ordinary),
                "ratio_shared": spread(ratios(meso, shared)),
                "ratio_ordinary": spread(ratios(meso, ordinary)),
                "write_us_median": spread(
                    _values(runs["ring_worker"], "write", "us_median")
                ),
                "write_us_p99": spread(_values(runs["ring_worker"], "write", "us_p99")),
                "copy_us_median": spread(
                    _values(runs["copy_shared"], "copy", "us_median")
                ),
                "copy_us_p99": spread(_values(runs["copy_shared"], "copy", "us_p99")),
                "ring_high_water": [
                    r["report"]["ring_high_water"] if r else None
                    for r in runs["ring_worker"]
                ],
                "runs": {k: [_slim(r) for r in v] for k, v in runs.items()},
                "failures": failures,
            }
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    return out


def _slim(r: dict[str, Any] | None) -> dict[str, Any] | None:
    """A run without its time series (the pipeline's are not plotted)."""
    return None if r is None else {k: v for k, v in r.items() if k != "series"}


def _remove_stream_files(path: str) -> None:
    for p in (path, *companion_paths(path)):
        Path(p).unlink(missing_ok=True)


def _verify(path: str, frames: int) -> dict[str, Any]:
    """Read first, middle and last frame back; their index stamps must match."""
    import tifffile

    problems = []
    with tifffile.TiffFile(path) as tf:
        n = len(tf.pages)
        if n != frames:
            problems.append(f"{n} pages, want {frames}")
        for k in sorted({0, frames // 2, frames - 1}):
            if k < n:
                got = read_index(tf.pages[k].asarray())
                if got != k:
                    problems.append(f"page {k} carries index {got}")
    return {"pages": n, "ok": not problems, "problems": problems}


def bench_paced_cost(
    scratch: Path, shape: tuple[int, int], fps: float, frames: int
) -> dict[str, Any]:
    """(d): time in Stream.write with the ring never full, vs bare memcpy."""
    cam = SyntheticCamera(
        name="paced",
        shape=shape,
        frames=frames,
        fps=fps,
        policy="block",
        memcpy_alongside=True,
    )
    res = run_cameras([cam], scratch)[0]
    _remove_stream_files(res["path"])
    keys = (
        "write_cost_mean_s",
        "write_cost_median_s",
        "write_cost_p99_s",
        "write_cost_max_s",
        "bare_memcpy_s",
        "bare_memcpy_ring_s",
        "memcpy_alongside_mean_s",
        "memcpy_alongside_median_s",
        "fps_sent",
    )
    out = {k: res[k] for k in keys}
    out["blocked_seconds"] = res["report"]["blocked_seconds"]
    out["frames_dropped"] = res["report"]["frames_dropped"]
    # Target ratio: against the same copy into ring-sized memory timed next to
    # each write (same load); quiet-machine copies are kept for reference.
    out["ratio_mean"] = res["write_cost_mean_s"] / res["memcpy_alongside_mean_s"]
    out["ratio_median"] = res["write_cost_median_s"] / res["memcpy_alongside_median_s"]
    out["ratio_mean_quiet_ring"] = res["write_cost_mean_s"] / res["bare_memcpy_ring_s"]
    out["ratio_mean_warm_buffer"] = res["write_cost_mean_s"] / res["bare_memcpy_s"]
    return out


# -- (b) peers ---------------------------------------------------------------------
def bench_peers(
    scratch: Path, shape: tuple[int, int], frames: int, names: Sequence[str]
) -> list[dict[str, Any]]:
    """Each peer on the same frames from this (the acquisition) process."""
    src = peers.make_frames(shape, np.uint16)
    out = []
    for name in names:
        peers._warm_up(name, str(scratch))
        try:
            r = peers.run_peer(name, scratch, frames, src, fresh_frames=False)
            r["verify"] = peers.verify_output(r["paths"][0], frames, check_stamps=False)
        except Exception as exc:
            r = {"name": name, "error": repr(exc), "traceback": traceback.format_exc()}
        for p in r.get("paths", []):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(p)
        out.append(r)
        _log(
            f"  {name:<24} "
            + (
                f"{r['gbps_durable']:.2f} GB/s durable, peak dirty "
                f"{(r['peak_dirty_bytes'] or 0) / MIB:.0f} MiB"
                if "error" not in r
                else r["error"]
            )
        )
    return out


# -- (e) video ---------------------------------------------------------------------
def bench_video(size: int, frames: int) -> dict[str, Any]:
    """Each working codec: encoder in-process vs 1, 2, N writer processes."""
    from benchmarks.video_bench import format_rows, run_video_bench

    sizes = sorted({(size, size), (512, 512)}, reverse=True)
    rows = run_video_bench(sizes=sizes, frames=frames)
    _log(format_rows(rows))
    return {"frames": frames, "rows": rows}


# -- the suite ---------------------------------------------------------------------
def _fio_note(args: argparse.Namespace) -> dict[str, Any]:
    """Whether fio ran, and if not why (the table says so)."""
    if args.no_fio:
        return {"ran": False, "note": "fio skipped (--no-fio)"}
    exe = fio_path()
    if exe is None:
        return {
            "ran": False,
            "note": "fio skipped: not installed (apt-get install -y fio)",
        }
    return {"ran": True, "path": exe, "iodepth": args.fio_depth}


def _section(name: str, results: dict[str, Any], fn: Callable[[], Any]) -> Any:
    _log(f"[{name}] ...")
    t0 = time.perf_counter()
    try:
        value = fn()
    except Exception as exc:
        results.setdefault("errors", {})[name] = traceback.format_exc()
        _log(f"[{name}] FAILED: {exc!r}")
        return None
    _log(f"[{name}] done in {time.perf_counter() - t0:.1f} s")
    return value


def run_suite(args: argparse.Namespace) -> dict[str, Any]:
    shape = (args.size, args.size)
    frame_nbytes = args.size * args.size * 2
    frames = max(8, int(args.gib * GIB) // frame_nbytes)
    peer_frames = max(8, int(args.peer_gib * GIB) // frame_nbytes)
    results: dict[str, Any] = {
        "command": " ".join(["python -m mesowriter bench", *args.argv]),
        "started": time.strftime("%Y-%m-%d %H:%M:%S"),
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(),
        },
        "frame": {"shape": list(shape), "dtype": "uint16", "bytes": frame_nbytes},
        "frames": frames,
        "peer_frames": peer_frames,
    }
    scratch_root = Path(args.dir) if args.dir else RESULTS / "scratch"
    scratch_root.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix="bench-", dir=scratch_root))
    only = set(args.only)
    producer: Producer | None = None
    try:
        if only & {"a", "f", "h", "depth"}:
            producer = _section(
                "producer process", results, lambda: Producer(args.ring_mib * MIB)
            )
        refs = RawReferences(
            scratch,
            frames * frame_nbytes,
            tiff_reserved_bytes(shape, frames),
            args.raw_chunk_mib * MIB,
            tuple(args.raw_in_flight),
            None if args.no_fio or fio_path() is None else args.fio_depth,
        )
        results["fio"] = _fio_note(args)
        if producer is not None:
            prod = producer  # narrowed, for the closures below
            planned: list[tuple[str, str, bool, Callable[[], Any]]] = [
                (
                    "a",
                    "a mesowriter vs raw configurations",
                    bool(only & {"a", "f"}),
                    lambda: bench_ceiling(prod, refs, args),
                ),
                (
                    "depth",
                    "depth write_depth sweep",
                    "depth" in only,
                    lambda: bench_depths(prod, refs, args),
                ),
                (
                    "h",
                    "h pipeline ceiling (discard sink)",
                    "h" in only,
                    lambda: bench_pipeline(prod, args, args.ring_mib * MIB),
                ),
            ]
            for key, title, wanted, fn in planned:
                value = _section(title, results, fn) if wanted else None
                if value:
                    results[key] = value
            if "a" in results:
                results["f"] = memory_of_worst_round(results["a"])
        if "d" in only:
            disk = (results.get("a", {}).get("raw_gbps") or 1.0) * 1e9
            fps = min(100.0, 0.5 * disk / frame_nbytes)
            d = _section(
                "d acquisition-side cost",
                results,
                lambda: bench_paced_cost(scratch, shape, fps, args.cost_frames),
            )
            if d:
                results["d"] = d
        if "b" in only:
            peers.warm_guest_memory(min(peer_frames * frame_nbytes, 4 * GIB))
            b = _section(
                "b peers",
                results,
                lambda: bench_peers(scratch, shape, peer_frames, args.peers),
            )
            if b:
                meso = results.get("a", {}).get("mesowriter_gbps")
                for r in b:
                    if meso and "gbps_durable" in r:
                        r["ratio_mesowriter_over_peer"] = meso / r["gbps_durable"]
                results["b"] = b
                f = results.setdefault("f", {})
                f["peers"] = {
                    r["name"]: {
                        "peak_dirty_bytes": r.get("peak_dirty_bytes"),
                        "peak_rss_bytes": r.get("peak_rss_bytes"),
                        "peak_rss_anon_bytes": r.get("peak_rss_anon_bytes"),
                    }
                    for r in b
                }
        if "c" in only:
            from benchmarks import democam

            c = _section(
                "c DemoCamera",
                results,
                lambda: democam.run(args.democam_size, args.democam_frames, scratch),
            )
            if c:
                disk_gbps = results.get("a", {}).get("raw_gbps")
                fb = args.democam_size**2 * 2
                disk_fps = disk_gbps * 1e9 / fb if disk_gbps else float("inf")
                # the disk ceiling binds only past what the buffers absorb
                ceiling = min(c["nothing"]["fps"], disk_fps)
                c["disk_fps"] = disk_fps if disk_gbps else None
                c["reference_fps"] = ceiling
                if ceiling > 0:
                    c["ratio_attach"] = c["mesowriter_attach"]["fps"] / ceiling
                    c["ratio_relay"] = c["mesowriter_relay"]["fps"] / ceiling
                    results["c"] = c
                else:  # not even a do-nothing handler ran drop-free
                    results.setdefault("errors", {})["c DemoCamera"] = (
                        "no drop-free rate for the do-nothing handler: no reference"
                    )
        if "s" in only:
            from benchmarks import starts

            st = _section(
                "s starts and relay",
                results,
                lambda: starts.run(
                    scratch,
                    rounds=args.rounds,
                    quick=args.quick,
                    disk=(results.get("a") or {}).get("raw_gbps"),
                ),
            )
            if st:
                results["s"] = st
        if "g" in only:
            from benchmarks.ome_scale import measure_stream_finalise

            g = _section(
                "g finalise 100k frames",
                results,
                lambda: measure_stream_finalise(args.finalise_frames, str(scratch)),
            )
            if g:
                results["g"] = g
        if "e" in only:
            e = _section(
                "e video",
                results,
                lambda: bench_video(args.video_size, args.video_frames),
            )
            if e:
                results["e"] = e
    finally:
        if producer is not None:
            producer.close()
        shutil.rmtree(scratch, ignore_errors=True)
        with contextlib.suppress(OSError):
            scratch_root.rmdir()
    return results


# -- output ------------------------------------------------------------------------
def summary_rows(res: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    """(section, measured, target, verdict) rows for the table."""
    rows: list[tuple[str, str, str, str]] = []

    def verdict(key: str, value: float, check: dict[str, Any] | None = None) -> str:
        """PASS/MISS against the target; ERROR if the file read back wrong."""
        if check is not None and not check.get("ok", False):
            return "ERROR"
        _, op, lim = TARGETS[key]
        ok = value >= lim if op == ">=" else value <= lim
        return "PASS" if ok else "MISS"

    if "a" in res:
        rows.extend(_ceiling_rows("a", res["a"], verdict))
    if "depth" in res:
        rows.extend(_ceiling_rows("depth", res["depth"], None))
    for r in res.get("b", []):
        if "ratio_mesowriter_over_peer" in r:
            rows.append(
                (
                    f"b vs {r['name']}",
                    f"{r['gbps_durable']:.2f} GB/s durable; mesowriter "
                    f"{r['ratio_mesowriter_over_peer']:.1f}x",
                    ">= 3x",
                    verdict("b", r["ratio_mesowriter_over_peer"], r.get("verify")),
                )
            )
        else:
            rows.append((f"b vs {r['name']}", r.get("error", "?"), ">= 3x", "ERROR"))
    if "c" in res:
        c = res["c"]
        rows.append(
            (
                "c DemoCamera",
                f"attach {c['mesowriter_attach']['fps']:.0f} fps, relay "
                f"{c['mesowriter_relay']['fps']:.0f} fps, nothing "
                f"{c['nothing']['fps']:.0f} fps; ratio {c['ratio_attach']:.2f}",
                ">= 0.85",
                verdict("c", c["ratio_attach"]),
            )
        )
    if "d" in res:
        d = res["d"]
        rows.append(
            (
                "d acquisition cost",
                f"write {d['write_cost_mean_s'] * 1e3:.3f} ms (median "
                f"{d['write_cost_median_s'] * 1e3:.3f}) vs memcpy into "
                f"ring-sized memory beside it "
                f"{d['memcpy_alongside_mean_s'] * 1e3:.3f} ms (median "
                f"{d['memcpy_alongside_median_s'] * 1e3:.3f}) = "
                f"{d['ratio_mean']:.2f}x mean, {d['ratio_median']:.2f}x median "
                f"(quiet machine: ring-sized {d['bare_memcpy_ring_s'] * 1e3:.3f}"
                f" ms = {d['ratio_mean_quiet_ring']:.2f}x, one warm buffer "
                f"{d['bare_memcpy_s'] * 1e3:.3f} ms = "
                f"{d['ratio_mean_warm_buffer']:.2f}x)",
                "<= 1.2x",
                verdict("d", d["ratio_mean"]),
            )
        )
    if "s" in res:
        rows += _start_rows(res["s"], verdict)
    if "g" in res:
        g = res["g"]
        rows.append(
            (
                "g finalise",
                f"{g['frames_written']} frames: close {g['close_seconds']:.2f} s, "
                f"writer +{g['worker_peak_extra_mb']:.0f} MB, "
                f"OME-XML {g['xml_mb']:.1f} MB",
                "<= 10 s, <= 500 MB",
                "PASS"
                if verdict("g", g["close_seconds"]) == "PASS"
                and verdict("g_mb", g["worker_peak_extra_mb"]) == "PASS"
                else "MISS",
            )
        )
    if "e" in res:
        by_key: dict[tuple[str, int, str], list[str]] = {}
        for r in res["e"]["rows"]:
            if "error" in r:
                continue
            key = (r["codec"], r["bits"], "x".join(str(v) for v in r["size"]))
            label = "in-process" if r["mode"] == "in-process" else f"{r['streams']}"
            by_key.setdefault(key, []).append(f"{label}: {r['total_fps']:.0f}")
        for (codec, bits, size), parts in by_key.items():
            rows.append(
                (
                    f"e video {codec} {bits}-bit {size}",
                    "fps " + ", ".join(parts) + " (streams: total fps)",
                    "-",
                    "info",
                )
            )
    for size, h in res.get("h", {}).get("sizes", {}).items():
        rows.append(
            (
                f"h pipeline {size}",
                f"ring + worker (discard) {_sp(h['ring_worker_gbps'])} GB/s vs copy "
                f"into ring-sized shared memory {_sp(h['copy_shared_gbps'])} = "
                f"{_sp(h['ratio_shared'])} (ordinary memory "
                f"{_sp(h['copy_ordinary_gbps'])} GB/s = {_sp(h['ratio_ordinary'])}); "
                f"Stream.write median {_sp(h['write_us_median'], 1)} us, p99 "
                f"{_sp(h['write_us_p99'], 1)} us vs copy median "
                f"{_sp(h['copy_us_median'], 1)} us, p99 {_sp(h['copy_us_p99'], 1)} us",
                ">= 0.8",
                verdict("h", h["ratio_shared"]["median"])
                if h["ratio_shared"]["median"] is not None
                else "ERROR",
            )
        )
    if "f" in res and res["f"].get("mesowriter_peak_dirty_bytes") is not None:
        f = res["f"]
        # the writer's own dirty pages: the system's peak over its baseline
        dirty = (
            f["mesowriter_peak_dirty_bytes"]
            - (f.get("mesowriter_baseline_dirty_bytes") or 0)
        ) / MIB
        peer_d = ", ".join(
            f"{k} {(v['peak_dirty_bytes'] or 0) / MIB:.0f}"
            for k, v in f.get("peers", {}).items()
        )
        rows.append(
            (
                "f memory",
                f"peak dirty {dirty:.0f} MiB over baseline (peers, system peak: "
                f"{peer_d or '-'}); RSS of all processes "
                f"{f['mesowriter_peak_rss_total_bytes'] / MIB:.0f} MiB (the shared "
                f"ring counted in each process mapping it), private "
                f"{(f['mesowriter_peak_rss_anon_bytes'] or 0) / MIB:.0f} MiB",
                "<= 256 MiB",
                verdict("f", dirty),
            )
        )
    for name in res.get("errors", {}):
        rows.append((name, "failed (see results.json errors)", "-", "ERROR"))
    return rows


def _sp(s: dict[str, Any], digits: int = 2) -> str:
    """A spread as 'median (min-max)'; 'n/a' when every run failed."""
    if s.get("median") is None:
        return "n/a"
    f = f"{{:.{digits}f}}"
    med, lo, hi = (f.format(s[k]) for k in ("median", "min", "max"))
    return med if s["n"] == 1 else f"{med} ({lo}-{hi})"


def _writer_label(section: str, a: dict[str, Any], name: str) -> str:
    """'mesowriter 2048x2048 (write_depth 4)', 'mesowriter write depth 8'."""
    frame = {"mesowriter": a.get("frame"), "mesowriter_odd": a.get("odd_frame")}
    shape = (frame.get(name) or {}).get("shape")
    if shape is None:
        return f"mesowriter {name.replace('_', ' ')}"
    label = f"mesowriter {'x'.join(map(str, shape))}"
    return label + (f" (write_depth {a['write_depth']})" if section == "a" else "")


def _pairing(a: dict[str, Any], m: dict[str, Any]) -> str:
    """How a writer's per-round ratio was paired (see `against_raw`)."""
    bracket = a.get("bracket")
    if bracket is None:  # results written before brackets
        return "(run of the same round)"
    said = f"(to the {bracket} runs right before and after it"
    if m.get("bracket_scale") is not None:
        said += f", x {m['bracket_scale']:.2f}: its median over the best's"
        same = m.get("ratio_same_round") or {}
        if same.get("median") is not None:
            said += f"; to the best's run of the same round {_sp(same)}"
    return said + ")"


def _ceiling_rows(
    section: str, a: dict[str, Any], verdict: Callable[..., str] | None
) -> list[tuple[str, str, str, str]]:
    """Rows of (a) or the depth sweep: each raw configuration, then each
    writer against the best one (``verdict`` None: information only)."""
    rows: list[tuple[str, str, str, str]] = []
    n = a["rounds"]
    for name, r in a["raw"].items():
        best = " (best)" if name == a["best_raw"] else ""
        rows.append(
            (
                f"{section} raw {name}{best}",
                f"{_sp(r['gbps'])} GB/s, median (min-max) of {n} rounds",
                "-",
                "info",
            )
        )
    for name, m in a["subjects"].items():
        label = _writer_label(section, a, name)
        ratio = m["ratio"]
        check = None if m["verify_ok"] else {"ok": False}
        rows.append(
            (
                f"{section} {label}",
                f"{_sp(m['gbps'])} GB/s durable; / {m['best']} = "
                f"{_sp(ratio)} {_pairing(a, m)}; Stream.write median "
                f"{_sp(m['write_us_median'], 0)} us",
                ">= 0.9" if verdict else "-",
                "ERROR"
                if ratio["median"] is None
                else verdict("a", ratio["median"], check)
                if verdict
                else "info",
            )
        )
    return rows


def write_outputs(res: dict[str, Any], out: Path) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    made = _plots(res, out)
    for r in res.get("b", []):
        r.pop("series", None)
        r.pop("frame_times", None)
    rows = summary_rows(res)
    res["summary"] = [
        dict(zip(("section", "measured", "target", "verdict"), r, strict=True))
        for r in rows
    ]
    (out / "results.json").write_text(json.dumps(res, indent=1, default=str))
    md = [
        f"Command: `{res['command']}` ({res['started']}, "
        f"{res['machine']['cpus']} CPUs)",
        "",
        "| section | measured | target | verdict |",
        "| --- | --- | --- | --- |",
        *(f"| {a} | {b} | {c} | {d} |" for a, b, c, d in rows),
        "",
    ]
    (out / "results.md").write_text("\n".join(md))
    return [out / "results.json", out / "results.md", *made]


def _plots(res: dict[str, Any], out: Path) -> list[Path]:
    """throughput.png: every writer's durable GB/s (median, min-max) against
    the raw configurations as lines; throughput_series.png: (a)'s runs over
    time from their first write; ring_fill.png, dirty_pages.png, pipeline.png.
    """
    made: list[Path] = []
    ceiling = res.get("a") or res.get("depth")
    rows: list[tuple[str, dict[str, Any]]] = []
    for sec in ("a", "depth"):
        for name, m in res.get(sec, {}).get("subjects", {}).items():
            rows.append((_writer_label(sec, res[sec], name), m["gbps"]))
    for r in res.get("b", []):
        if "gbps_durable" in r:  # one run each: its point has no spread
            rows.append((f"{r['name']} (b, 1 run)", spread([r["gbps_durable"]])))
    if rows and ceiling:
        made.append(
            plots.plot_points(
                rows,
                out / "throughput.png",
                references={k: v["gbps"] for k, v in ceiling["raw"].items()},
                best=ceiling["best_raw"],
                title="durable GB/s of each writer against the raw configurations",
            )
        )
    dirty: dict[str, list[tuple[float, float]]] = {}
    if "a" in res:
        a = res["a"]
        meso = [r for r in a["subjects"]["mesowriter"]["runs"] if r is not None]
        # a window of about 1/20 of a run: smooth, yet no sliver for short runs
        window = max(0.05, max((r["seconds"] for r in meso), default=1.0) / 20)
        groups = {
            f"mesowriter {'x'.join(map(str, a['frame']['shape']))}": [
                plots.rate_from_cumulative(
                    [(0.0, 0.0), *((p[0], float(p[3])) for p in r["series"])], window
                )
                for r in meso
            ]
        }
        best_pwrite = best_reference(
            {
                k: v["gbps"]["values"]
                for k, v in a["raw"].items()
                if k.startswith("pwrite")
            }
        )
        for name, raw in a["raw"].items():
            if name in (best_pwrite, "pwrite_x1"):
                groups[f"raw {name} (completed requests)"] = [
                    plots.rate_from_cumulative(_cumulative(r["completions"]), window)
                    for r in raw["runs"]
                    if r is not None and r.get("completions")
                ]
        made.append(
            plots.plot_rate_rounds(
                groups,
                out / "throughput_series.png",
                title=f"(a) every round, {a['bytes'] / GIB:.1f} GiB each: "
                "mesowriter durable (committed) vs raw",
                hlines={f"best raw ({a['best_raw']}), median": a["raw_gbps"] * 1e9}
                if a["raw_gbps"]
                else None,
            )
        )
        made.append(
            plots.plot_ring_fill(
                {
                    f"round {k + 1}": [(p[0], p[4] * 100.0) for p in r["series"]]
                    for k, r in enumerate(meso)
                },
                out / "ring_fill.png",
                capacity=100.0,
                unit="% of slots",
            )
        )
    f_series = res.get("f", {}).get("mesowriter_dirty_series")
    if f_series:
        dirty["mesowriter"] = [(t, float(v)) for t, v in f_series]
    for r in res.get("b", []):
        if "series" in r:
            dirty[r["name"]] = plots.peer_traces(r, 0.5)[0]
    if dirty:
        made.append(plots.plot_dirty_pages(dirty, out / "dirty_pages.png"))
    if "h" in res:
        made.append(
            plots.plot_points(
                [
                    (f"{size} {label}", h[key])
                    for size, h in res["h"]["sizes"].items()
                    for key, label in (
                        ("copy_ordinary_gbps", "copy, ordinary memory"),
                        ("copy_shared_gbps", "copy, shared memory"),
                        ("ring_worker_gbps", "ring + worker (discard)"),
                    )
                ],
                out / "pipeline.png",
                title="(h) bytes handed on per second, no disk",
            )
        )
    return made


def _cumulative(completions: Sequence[Sequence[float]]) -> list[tuple[float, float]]:
    """(t, bytes done by t) from (t, bytes) request completions."""
    out = [(0.0, 0.0)]
    for t, n in completions:
        out.append((float(t), out[-1][1] + float(n)))
    return out


def print_table(res: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title="mesowriter bench")
    for col in ("section", "measured", "target", "verdict"):
        table.add_column(col)
    colours = {"PASS": "green", "MISS": "red", "ERROR": "red"}
    for a, b, c, d in summary_rows(res):
        style = colours.get(d)
        table.add_row(a, b, c, f"[{style}]{d}[/]" if style else d)
    Console().print(table)


def parse_only(value: str) -> set[str]:
    """`--only`: section letters ('ad') and/or names ('depth'), comma-separated.

    Names are matched whole first, so 'depth' is the sweep, not d+e+p+t+h.
    """
    out: set[str] = set()
    for token in (t.strip() for t in value.split(",")):
        if token in NAMED_SECTIONS:
            out.add(token)
        elif token and set(token) <= set(SECTIONS):
            out |= set(token)
        elif token:
            raise argparse.ArgumentTypeError(
                f"{token!r}: use letters from {SECTIONS!r} or one of {NAMED_SECTIONS}"
            )
    return out


def _ints(value: str) -> tuple[int, ...]:
    try:
        out = tuple(int(v) for v in value.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r}: want e.g. '1,2,4'") from None
    if not out or min(out) < 1:
        raise argparse.ArgumentTypeError(f"{value!r}: positive whole numbers")
    return out


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="mesowriter bench",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ap.add_argument(
        "--quick",
        action="store_true",
        help="small, fast run (256 MiB, 512x512 DemoCamera)",
    )
    ap.add_argument(
        "--gib",
        type=float,
        default=8.0,
        help="bytes per run in (a) and depth, GiB: several seconds at disk "
        "speed, so the 1 GiB ring is a small part of each run",
    )
    ap.add_argument(
        "--peer-gib",
        type=float,
        default=None,
        help="bytes per peer in (b), GiB (default: 4, below this machine's "
        "dirty limit; --quick: --gib)",
    )
    ap.add_argument("--size", type=int, default=2048, help="frame edge (uint16)")
    ap.add_argument("--ring-mib", type=int, default=1024)
    ap.add_argument(
        "--dir",
        default=None,
        help="scratch parent on the disk under test "
        "(default benchmarks/results/scratch; removed after)",
    )
    ap.add_argument("--out", default=str(RESULTS))
    ap.add_argument(
        "--only",
        default=SECTIONS,
        type=parse_only,
        help="sections to run: letters and/or names, comma-separated, e.g. "
        f"'ad', 'depth', 'a,depth' (names: {', '.join(NAMED_SECTIONS)})",
    )
    ap.add_argument(
        "--rounds",
        type=int,
        default=5,
        help="alternating rounds in (a), (h) and depth (at least 3 for figures; "
        "5 by default: this disk swings 2x from minute to minute)",
    )
    ap.add_argument(
        "--write-depth",
        type=int,
        default=None,
        help=f"mesowriter's write_depth in (a) (default: the service's, "
        f"{DEFAULT_WRITE_DEPTH})",
    )
    ap.add_argument(
        "--depths",
        type=_ints,
        default=(1, 2, 4, 8),
        help="write_depth values for the depth section, e.g. '1,2,4,8'",
    )
    ap.add_argument(
        "--raw-in-flight",
        type=_ints,
        default=(1, 4, 8),
        help="O_DIRECT pwrite requests in flight, one raw configuration each",
    )
    ap.add_argument("--raw-chunk-mib", type=int, default=64, help="raw request size")
    ap.add_argument("--fio-depth", type=int, default=16, help="fio's iodepth")
    ap.add_argument("--no-fio", action="store_true", help="leave fio out of (a)")
    ap.add_argument(
        "--odd-size", type=int, default=1000, help="(a)'s frame edge off the 4 KiB grid"
    )
    ap.add_argument(
        "--pipeline-gib", type=float, default=4.0, help="bytes per run in (h), GiB"
    )
    ap.add_argument(
        "--pipeline-sizes",
        type=_ints,
        default=(2048, 512, 256),
        help="frame edges (uint16) in (h)",
    )
    ap.add_argument(
        "--pipeline-dir",
        default="/dev/shm" if os.path.isdir("/dev/shm") else None,
        help="folder for (h)'s dummy stream and its companion files "
        "(default: tmpfs, so nothing reaches a disk)",
    )
    ap.add_argument("--peers", nargs="*", default=list(peers.PEERS))
    ap.add_argument("--cost-frames", type=int, default=300)
    ap.add_argument("--democam-size", type=int, default=2048)
    ap.add_argument("--democam-frames", type=int, default=500)
    ap.add_argument("--finalise-frames", type=int, default=100_000)
    ap.add_argument("--video-size", type=int, default=1024)
    ap.add_argument("--video-frames", type=int, default=150)
    ap.add_argument(
        "--strict", action="store_true", help="exit 1 when a target is missed"
    )
    return ap


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    args.argv = argv
    if args.quick:
        defaults = build_parser().parse_args([])
        for key, small in (
            ("gib", 0.25),
            ("size", 1024),
            ("ring_mib", 128),
            ("cost_frames", 100),
            ("democam_size", 512),
            ("democam_frames", 200),
            ("video_size", 256),
            ("video_frames", 60),
            ("finalise_frames", 5_000),
            ("pipeline_gib", 0.5),
            ("rounds", 3),
        ):
            if getattr(args, key) == getattr(defaults, key):
                setattr(args, key, small)
    if args.peer_gib is None:
        args.peer_gib = args.gib if args.quick else 4.0
    if args.rounds < 1:
        raise SystemExit("--rounds must be at least 1")
    res = run_suite(args)
    made = write_outputs(res, Path(args.out))
    print_table(res)
    for p in made:
        print("wrote", p)
    if res.get("errors"):
        return 2
    if args.strict and any(r[3] == "MISS" for r in summary_rows(res)):
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
