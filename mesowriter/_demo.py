"""`make demo`: a real DemoCamera burst through mesowriter, then the report."""

from __future__ import annotations

import datetime as dt
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from mesowriter._report import StreamReport


def fast_democam(size: int, buffer_mb: int) -> Any:
    """The DemoCamera as fast as it goes: size x size uint16, FastImage on."""
    from pymmcore_plus import CMMCorePlus

    core = CMMCorePlus()
    core.loadSystemConfiguration()
    core.setProperty("Camera", "OnCameraCCDXSize", size)
    core.setProperty("Camera", "OnCameraCCDYSize", size)
    core.setProperty("Camera", "PixelType", "16bit")
    # FastImage re-sends one generated image; without one it sends zeros, so
    # generate a real picture first (the demo's file should show something).
    core.setProperty("Camera", "Mode", "Artificial Waves")
    core.snapImage()
    core.setProperty("Camera", "FastImage", 1)
    core.setCircularBufferMemoryFootprint(buffer_mb)
    return core


def run_demo(
    out_dir: str | os.PathLike[str] = "demo-output",
    *,
    frames: int = 300,
    size: int = 2048,
    on_acquisition_thread: bool = True,
    on_progress: Callable[[dict[str, Any]], None] | None = None,
) -> tuple[list[StreamReport], float]:
    """Acquire `frames` size x size uint16 frames at full speed; return reports.

    `on_progress` gets a "progress" dict about 4 times a second (from a
    watcher thread, never the acquisition thread). Uses Micro-Manager's
    DemoCamera (mm-test-adapters) with FastImage on, so the camera is as
    fast as it gets and the writer is what is being shown.
    """
    import useq

    from mesowriter.handlers import CustomWriter

    core = fast_democam(size, buffer_mb=2048)
    core.setExposure(1)
    out = Path(out_dir).absolute()
    out.mkdir(parents=True, exist_ok=True)
    target = out / "demo.ome.tiff"
    seq = useq.MDASequence(
        time_plan=useq.TIntervalLoops(interval=dt.timedelta(0), loops=frames)
    )
    writer = CustomWriter(target, overwrite=True)
    done = threading.Event()
    t0 = time.perf_counter()
    watcher = None
    if on_progress is not None:
        watcher = threading.Thread(
            target=_watch,
            args=(writer, frames, size * size * 2, t0, done, on_progress),
            daemon=True,
        )
        watcher.start()
    try:
        if on_acquisition_thread:
            with writer.attach(core):
                core.mda.run(seq)
        else:
            core.mda.run(seq, output=writer)
        elapsed = time.perf_counter() - t0
    finally:
        done.set()
        if watcher is not None:
            watcher.join()
        writer.close()
        core.unloadAllDevices()
    if on_progress is not None:  # the final figures, from the reports
        for key, r in writer.reports.items():
            on_progress(
                {
                    "type": "progress",
                    "final": True,
                    "name": f"demo {key}",
                    "t": time.perf_counter() - t0,
                    "frames": r.frames_received,
                    "written": r.frames_written,
                    "bytes": r.bytes_written,
                    "ring_fill": 0.0,
                    "drops": r.frames_dropped,
                    "total": frames,
                    "seconds": r.seconds,
                }
            )
    return list(writer.reports.values()), elapsed


def _watch(
    writer: Any,
    total: int,
    frame_nbytes: int,
    t0: float,
    done: threading.Event,
    emit: Callable[[dict[str, Any]], None],
) -> None:
    """Report the writer's live stream figures until the run is over."""
    while not done.wait(0.25):
        for key, stream in list(writer._streams.items()):
            try:
                msg = {
                    "type": "progress",
                    "name": f"demo {key}",
                    "t": time.perf_counter() - t0,
                    "frames": stream.frames_received,
                    "written": stream.frames_written,
                    "bytes": stream.frames_written * frame_nbytes,
                    "ring_fill": stream.ring_fill,
                    "drops": stream.frames_dropped,
                    "total": total,
                }
            except Exception:  # the stream closed under us: the run is ending
                continue
            emit(msg)
