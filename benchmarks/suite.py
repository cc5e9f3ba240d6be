"""`make bench`: mesowriter against the disk, its peers and a bare memcpy.

Sections (see README "Benchmarks"):

a. sustained end-to-end GB/s: a producer process (synthetic camera, frames
   as fast as the writer takes them, policy "block") through a WriterService
   to a durable file (O_DIRECT, fsync at close), timed from the first
   `Stream.write` to `Stream.close()` returning; against a raw O_DIRECT
   write of the same bytes into the same folder, before and after.
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

Writes benchmarks/results/results.json, results.md and PNG plots.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import shutil
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks import peers, plots  # noqa: E402
from benchmarks._raw import raw_odirect_write  # noqa: E402
from benchmarks._sampling import MemorySampler  # noqa: E402
from mesowriter._spec import companion_paths  # noqa: E402
from mesowriter.synthetic import SyntheticCamera, read_index, run_cameras  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
GIB = 1 << 30
MIB = 1 << 20
SECTIONS = "abcdefg"
TARGETS = {
    "a": ("mesowriter / raw O_DIRECT", ">=", 0.9),
    "b": ("mesowriter / slowest-to-fastest peer", ">=", 3.0),
    "c": ("attach fps / min(do-nothing fps, disk fps)", ">=", 0.85),
    "d": ("Stream.write / bare memcpy", "<=", 1.2),
    "f": ("peak dirty pages (MiB) during mesowriter", "<=", 256.0),
    "g": ("close() of a 100 000-frame stream (s)", "<=", 10.0),
    "g_mb": ("writer memory added by that close (MB)", "<=", 500.0),
}


def _log(msg: str) -> None:
    print(msg, flush=True)


# -- (a) (d) (f): mesowriter from a producer process ------------------------------
def bench_mesowriter(
    scratch: Path, shape: tuple[int, int], frames: int, ring_bytes: int
) -> dict[str, Any]:
    """One synthetic camera process as fast as the writer goes; memory sampled."""
    cam = SyntheticCamera(
        name="mesowriter",
        shape=shape,
        frames=frames,
        fps=None,
        policy="block",
        ring_bytes=ring_bytes,
    )
    with MemorySampler(interval=0.1, include_children=True) as sampler:
        res = run_cameras([cam], scratch)[0]
    rep = res["report"]
    if rep["frames_written"] != frames or rep["error"]:
        raise RuntimeError(f"mesowriter run incomplete: {rep}")
    res["verify"] = _verify(res["path"], frames)
    nbytes = frames * cam.frame_nbytes
    res["pixel_bytes"] = nbytes
    res["gbps"] = nbytes / res["seconds"] / 1e9
    res["peak_dirty_bytes"] = sampler.peak_dirty_bytes
    res["baseline_dirty_bytes"] = sampler.baseline_dirty_bytes
    res["peak_rss_bytes_by_pid"] = {
        str(k): v for k, v in sampler.peak_rss_bytes.items()
    }
    res["peak_rss_total_bytes"] = sampler.peak_rss_total_bytes
    res["peak_rss_anon_bytes"] = sampler.peak_rss_anon_bytes
    res["sampler_series"] = sampler.series
    _remove_stream_files(res["path"])
    return res


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
    try:
        if only & set("adf"):
            raw_path = scratch / "raw.bin"

            # The raw writer gets the same request size the worker uses at
            # most (whole frames up to 64 MiB), so neither side is handicapped.
            from mesowriter._worker import BATCH_BYTES as MAX_BATCH_BYTES

            chunk = max(1, MAX_BATCH_BYTES // frame_nbytes) * frame_nbytes

            def raw() -> dict[str, Any]:
                r = raw_odirect_write(raw_path, frames * frame_nbytes, chunk)
                raw_path.unlink()
                return r

            r1 = _section("a raw O_DIRECT (before)", results, raw)
            m = _section(
                "a mesowriter",
                results,
                lambda: bench_mesowriter(scratch, shape, frames, args.ring_mib * MIB),
            )
            r2 = _section("a raw O_DIRECT (after)", results, raw)
            raws = [r for r in (r1, r2) if r]
            if raws and m:
                raw_gbps = sum(r["gbps"] for r in raws) / len(raws)
                results["a"] = {
                    "bytes": frames * frame_nbytes,
                    "mesowriter_gbps": m["gbps"],
                    "raw_gbps": raw_gbps,
                    "raw_runs_gbps": [r["gbps"] for r in raws],
                    "ratio": m["gbps"] / raw_gbps,
                    "verify": m["verify"],
                    "ring_high_water": m["report"]["ring_high_water"],
                    "ring_slots": m["report"]["ring_slots"],
                    "blocked_seconds": m["report"]["blocked_seconds"],
                    "direct_io": m["report"]["sink"].get("direct_io"),
                    "acq_cost_unblocked_mean_s": m["write_cost_unblocked_mean_s"],
                }
                results["f"] = {
                    "mesowriter_peak_dirty_bytes": m["peak_dirty_bytes"],
                    "mesowriter_baseline_dirty_bytes": m["baseline_dirty_bytes"],
                    "mesowriter_peak_rss_bytes_by_pid": m["peak_rss_bytes_by_pid"],
                    "mesowriter_peak_rss_total_bytes": m["peak_rss_total_bytes"],
                    "mesowriter_peak_rss_anon_bytes": m["peak_rss_anon_bytes"],
                }
                results["_mesowriter_run"] = m
        if "d" in only:
            disk = results.get("a", {}).get("raw_gbps", 1.0) * 1e9
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
        a = res["a"]
        rows.append(
            (
                "a end-to-end",
                f"{a['mesowriter_gbps']:.2f} GB/s vs raw {a['raw_gbps']:.2f} GB/s "
                f"= {a['ratio']:.2f}",
                ">= 0.9",
                verdict("a", a["ratio"], a.get("verify")),
            )
        )
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


def write_outputs(res: dict[str, Any], out: Path) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    made = _plots(res, out)
    run = res.pop("_mesowriter_run", None)
    if run is not None:
        res.setdefault("a", {})["series_columns"] = run["series_columns"]
        res["a"]["series"] = run["series"]
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
    made: list[Path] = []
    run = res.get("_mesowriter_run")
    raw_bps = res.get("a", {}).get("raw_gbps", 0.0) * 1e9 or None
    rate: dict[str, list[tuple[float, float]]] = {}
    dirty: dict[str, list[tuple[float, float]]] = {}
    if run is not None:
        cum = [(p[0], float(p[3])) for p in run["series"]]
        rate["mesowriter (durable, written)"] = plots.rate_from_cumulative(cum, 0.5)
        made.append(
            plots.plot_ring_fill(
                {"mesowriter": [(p[0], p[4] * 100.0) for p in run["series"]]},
                out / "ring_fill.png",
                capacity=100.0,
                unit="% of slots",
            )
        )
        dirty["mesowriter"] = [
            (s["t"], float(s["dirty_bytes"]))
            for s in run["sampler_series"]
            if s.get("dirty_bytes") is not None
        ]
    for r in res.get("b", []):
        if "series" not in r:
            continue
        dirty[r["name"]], rate[f"{r['name']} (accepted)"] = plots.peer_traces(r, 0.5)
        # What a buffered writer accepts is not on disk: its mean durable rate
        # (bytes over time to fsync) as a flat segment beside it.
        if r.get("seconds_durable"):
            bps = r["bytes"] / r["seconds_durable"]
            rate[f"{r['name']} (durable, mean)"] = [
                (0.0, bps),
                (r["seconds_durable"], bps),
            ]
    if rate:
        made.append(
            plots.plot_throughput(rate, out / "throughput.png", ceiling_bps=raw_bps)
        )
    if dirty:
        made.append(plots.plot_dirty_pages(dirty, out / "dirty_pages.png"))
    return made


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
    ap.add_argument("--gib", type=float, default=4.0, help="bytes for (a), GiB")
    ap.add_argument(
        "--peer-gib",
        type=float,
        default=None,
        help="bytes per peer in (b), GiB (default: --gib)",
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
    ap.add_argument("--only", default=SECTIONS, help="sections to run, e.g. 'ad'")
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
        ):
            if getattr(args, key) == getattr(defaults, key):
                setattr(args, key, small)
    if args.peer_gib is None:
        args.peer_gib = args.gib
    bad = set(args.only) - set(SECTIONS)
    if bad:
        raise SystemExit(f"--only takes letters from {SECTIONS!r}, not {sorted(bad)}")
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
