"""(s) Starting and relaying: mesowriter is never the slow part of a run.

Measured with the real DemoCamera through pymmcore-plus, in alternating
rounds (every mode once per round), median and min-max over rounds:

- open: `open_stream` + `close` pairs on a running service with a free warm
  ring (512x512 uint16): open time p50 and p99; the first open of the new
  service (which also starts its writer process) is reported apart; the
  bench's own heap is frozen meanwhile (`gc.freeze`), so that a full
  collection of it is not counted as an open's;
- short: a 50-frame 512x512 MDA, timed from `core.mda.run` to its return
  (the writer made beforehand, as labs do): mesowriter on the acquisition
  thread (`attach`) against pymmcore-plus's own default,
  `output="run.ome.tiff"` (ome-writers on the acquisition thread); and
  `output=writer` (relay thread) against a do-nothing handler on the same
  relay thread;
- paced: 2048x2048 frames at an exposure that keeps the camera at half the
  disk's speed or less (the best raw configuration of (a) when it ran, else
  a 1 GiB O_DIRECT write measured here; 6 ms at the least),
  `output=writer` against the do-nothing handler;
- positions: a 4-position MDA: frames written and MMCore buffer overflows,
  mesowriter against the do-nothing handler;
- cameras: two DemoCameras through Multi Camera (512x512, paced the same
  way: both cameras together at half the disk's speed or less), events per
  second with mesowriter writing both (acquisition thread) against the same
  cameras with no writer, and one camera with no writer for reference.
"""

from __future__ import annotations

import contextlib
import gc
import os
import statistics
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

CONFIG_2CAM = Path(__file__).resolve().parents[1] / "tests" / "multicam.cfg"


class _Nothing:
    """A handler that does nothing (the ceiling of the relay thread)."""

    def frameReady(self, *args: Any) -> None:
        return None


def _spread(values: list[float]) -> dict[str, Any]:
    return {
        "median": statistics.median(values),
        "min": min(values),
        "max": max(values),
        "values": values,
    }


def _core(size: int, exposure: float, fast: bool, config: str | None = None) -> Any:
    from pymmcore_plus import CMMCorePlus

    core = CMMCorePlus()
    core.loadSystemConfiguration(config) if config else core.loadSystemConfiguration()
    cams = ["Camera", "Camera2"] if config else ["Camera"]
    for cam in cams:
        core.setProperty(cam, "OnCameraCCDXSize", size)
        core.setProperty(cam, "OnCameraCCDYSize", size)
        if fast:
            core.setProperty(cam, "FastImage", 1)
    core.setExposure(exposure)
    core.setCircularBufferMemoryFootprint(2000)
    return core


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def _timed_run(core: Any, seq: Any, mode: str, path: Path) -> dict[str, Any]:
    """One MDA through `mode`: rate from run() to its return, and losses."""
    from mesowriter import CustomWriter

    writer = None
    overflow = False
    if mode in ("attach", "relay"):
        writer = CustomWriter(path, overwrite=True)  # made before the clock
    t0 = time.perf_counter()
    try:
        with _quiet():
            if mode == "attach":
                assert writer is not None
                with writer.attach(core):
                    core.mda.run(seq)
            elif mode == "relay":
                core.mda.run(seq, output=writer)
            elif mode == "nothing":
                core.mda.run(seq, output=_Nothing())
            elif mode == "ome-writers":
                core.mda.run(seq, output=str(path))
    except MemoryError:
        overflow = True
    seconds = time.perf_counter() - t0
    n = sum(1 for _ in seq)
    out: dict[str, Any] = {"fps": n / seconds, "seconds": seconds}
    out["overflow"] = overflow or bool(core.isBufferOverflowed())
    if writer is not None:
        reports = list(writer.reports.values())
        out["written"] = sum(r.frames_written for r in reports)
        out["dropped"] = sum(r.frames_dropped for r in reports)
        with contextlib.suppress(Exception):
            writer.close()
    return out


def _rounds(
    rounds: int, modes: list[str], run: Callable[[str, int], dict[str, Any]]
) -> dict[str, Any]:
    per: dict[str, list[dict[str, Any]]] = {m: [] for m in modes}
    for r in range(rounds):
        order = modes[r % len(modes) :] + modes[: r % len(modes)]
        for mode in order:
            per[mode].append(run(mode, r))
    return {
        m: {"fps": _spread([x["fps"] for x in runs]), "runs": runs}
        for m, runs in per.items()
    }


def _ratio(res: dict[str, Any], a: str, b: str) -> dict[str, Any]:
    """Per-round ratio a / b (the rounds alternate, so each pair met the
    same machine)."""
    ra = [x["fps"] for x in res[a]["runs"]]
    rb = [x["fps"] for x in res[b]["runs"]]
    return _spread([x / y for x, y in zip(ra, rb, strict=True)])


def measure_opens(scratch: Path, n: int = 100) -> dict[str, Any]:
    frame = np.zeros((512, 512), np.uint16)
    times: list[float] = []
    # A full collection of this process's heap (the bench's results: 44-100
    # ms here) can land on any call; it is the caller's, not open_stream's.
    # The heap as it is now is frozen, so only what the opens allocate is
    # collected, and full collections during the loop are counted.
    full: list[int] = []

    def count(phase: str, info: dict[str, Any]) -> None:
        if phase == "stop" and info["generation"] == 2:
            full.append(len(times))

    gc.collect()
    gc.freeze()
    gc.callbacks.append(count)
    try:
        cold: list[float] = []
        _open_close_loop(scratch, n, frame, times, cold)
    finally:
        gc.callbacks.remove(count)
        gc.unfreeze()
    ms = sorted(t * 1e3 for t in times)
    return {
        "n": n,
        "p50_ms": ms[len(ms) // 2],
        "p99_ms": ms[min(len(ms) - 1, int(len(ms) * 0.99))],
        "max_ms": ms[-1],
        "first_open_ms": cold[0] * 1e3,  # a new service: its writer starts too
        "times_ms": [round(t * 1e3, 2) for t in times],  # in order
        "full_collections_at": full,  # open indices
    }


def _open_close_loop(
    scratch: Path, n: int, frame: Any, times: list[float], cold: list[float]
) -> None:
    from mesowriter import WriterService

    with WriterService(ring_bytes=256 << 20) as svc:
        svc.pool.warm()
        # The first open of a new service also starts its writer process:
        # reported apart; the target is for opens on a running service.
        t0 = time.perf_counter()
        first = svc.open_stream(
            scratch / "cold.ome.tif", shape=(512, 512), dtype="uint16"
        )
        cold.append(time.perf_counter() - t0)
        first.write(frame)
        first.close()
        for p in scratch.glob("cold.ome.tif*"):
            p.unlink()
        for i in range(n):
            path = scratch / f"open{i}.ome.tif"
            t0 = time.perf_counter()
            stream = svc.open_stream(path, shape=(512, 512), dtype="uint16")
            times.append(time.perf_counter() - t0)
            stream.write(frame)
            stream.close()
            for p in scratch.glob(f"open{i}.ome.tif*"):
                p.unlink()


def disk_gbps(folder: Path, nbytes: int = 1 << 30) -> float:
    """The folder's O_DIRECT write speed, 4 requests of 64 MiB in flight."""
    from benchmarks._raw import raw_odirect_write

    path = folder / "disk-speed.raw"
    try:
        return float(raw_odirect_write(path, nbytes, 64 << 20, in_flight=4)["gbps"])
    finally:
        with contextlib.suppress(OSError):
            path.unlink()


def paced_exposure_ms(
    frame_bytes: int, cameras: int, gbps: float, floor: float
) -> float:
    """The exposure that keeps `cameras` cameras at half `gbps` or less."""
    return max(floor, 1e3 * cameras * frame_bytes / (0.5 * gbps * 1e9))


def run(
    scratch: Path,
    rounds: int = 5,
    quick: bool = False,
    disk: float | None = None,
) -> dict[str, Any]:
    """`disk`: the folder's write speed in GB/s, if (a) measured it."""
    import useq

    import mesowriter

    seq_: Any = useq.MDASequence  # (takes plain dicts; the stubs say otherwise)

    out: dict[str, Any] = {"rounds": rounds}
    work = Path(tempfile.mkdtemp(prefix="starts-", dir=scratch))
    mesowriter.shared_service().prewarm()
    out["open"] = measure_opens(work, 30 if quick else 100)

    core = _core(512, 1.0, fast=False)
    seq = seq_(time_plan={"interval": 0, "loops": 50})
    _timed_run(core, seq, "attach", work / "warm.ome.tif")  # the service warms
    short = _rounds(
        rounds,
        ["attach", "ome-writers", "relay", "nothing"],
        lambda m, r: _timed_run(core, seq, m, work / f"short-{m}-{r}.ome.tif"),
    )
    short["ratio_attach_over_default"] = _ratio(short, "attach", "ome-writers")
    short["ratio_relay_over_nothing"] = _ratio(short, "relay", "nothing")
    out["short"] = short

    positions = seq_(
        stage_positions=[useq.Position(x=10.0 * i, y=0.0, z=0.0) for i in range(4)],
        time_plan={"interval": 0, "loops": 25},
    )
    out["positions"] = _rounds(
        max(2, rounds // 2),
        ["relay", "attach", "nothing"],
        lambda m, r: _timed_run(core, positions, m, work / f"pos-{m}-{r}.ome.tif"),
    )
    core.unloadAllDevices()

    size = 1024 if quick else 2048
    if disk is None:
        disk = disk_gbps(work, (256 << 20) if quick else (1 << 30))
        out["disk_gbps_source"] = "measured here (1 GiB, O_DIRECT, 4 in flight)"
    else:
        out["disk_gbps_source"] = "(a), best raw configuration"
    out["disk_gbps"] = disk
    floor = float(os.environ.get("MESOWRITER_BENCH_PACED_MS", "6"))
    exposure = paced_exposure_ms(size * size * 2, 1, disk, floor)
    big = _core(size, exposure, fast=True)
    paced = seq_(time_plan={"interval": 0, "loops": 100 if quick else 300})
    out["paced"] = _rounds(
        max(3, rounds // 2 + 1),
        ["relay", "nothing", "attach"],
        lambda m, r: _timed_run(big, paced, m, work / f"paced-{m}-{r}.ome.tif"),
    )
    out["paced"]["exposure_ms"] = exposure
    out["paced"]["size"] = size
    out["paced"]["ratio_relay_over_nothing"] = _ratio(out["paced"], "relay", "nothing")
    big.unloadAllDevices()

    seq2 = seq_(time_plan={"interval": 0, "loops": 100})
    cam_exposure = paced_exposure_ms(512 * 512 * 2, 2, disk, 2.0)
    out["cameras_exposure_ms"] = cam_exposure
    one = _core(512, cam_exposure, fast=True)
    two = _core(512, cam_exposure, fast=True, config=str(CONFIG_2CAM))
    cams = {
        "one, nothing": (one, "nothing"),
        "two, nothing": (two, "nothing"),
        "two, attach": (two, "attach"),
    }
    out["cameras"] = _rounds(
        max(3, rounds // 2 + 1),
        list(cams),
        lambda m, r: _timed_run(
            cams[m][0], seq2, cams[m][1], work / f"cams-{r}.ome.tif"
        ),
    )
    # mesowriter writing both cameras against the same two cameras with no
    # writer: the cost of the second file (the Multi Camera device itself
    # makes the DemoCamera produce the two images one after the other)
    out["cameras"]["ratio_two_over_one"] = _ratio(
        out["cameras"], "two, attach", "two, nothing"
    )
    one.unloadAllDevices()
    two.unloadAllDevices()
    for p in sorted(work.rglob("*"), reverse=True):
        p.unlink() if p.is_file() else p.rmdir()
    work.rmdir()
    return out
