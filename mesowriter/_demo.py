"""`make demo`: a real DemoCamera burst through mesowriter, then the report."""

from __future__ import annotations

import datetime as dt
import os
import time
from pathlib import Path

from mesowriter._report import StreamReport


def run_demo(
    out_dir: str | os.PathLike[str] = "demo-output",
    *,
    frames: int = 300,
    size: int = 2048,
    on_acquisition_thread: bool = True,
) -> tuple[list[StreamReport], float]:
    """Acquire `frames` size x size uint16 frames at full speed; return reports.

    Uses Micro-Manager's DemoCamera (mm-test-adapters) with FastImage on, so
    the camera is as fast as it gets and the writer is what is being shown.
    """
    import useq
    from pymmcore_plus import CMMCorePlus

    from mesowriter.handlers import CustomWriter

    core = CMMCorePlus()
    core.loadSystemConfiguration()
    core.setProperty("Camera", "OnCameraCCDXSize", size)
    core.setProperty("Camera", "OnCameraCCDYSize", size)
    core.setProperty("Camera", "PixelType", "16bit")
    core.setProperty("Camera", "FastImage", 1)
    core.setExposure(1)
    core.setCircularBufferMemoryFootprint(2048)
    out = Path(out_dir).absolute()
    out.mkdir(parents=True, exist_ok=True)
    target = out / "demo.ome.tiff"
    seq = useq.MDASequence(
        time_plan=useq.TIntervalLoops(interval=dt.timedelta(0), loops=frames)
    )
    writer = CustomWriter(target, overwrite=True)
    try:
        t0 = time.perf_counter()
        if on_acquisition_thread:
            with writer.attach(core):
                core.mda.run(seq)
        else:
            core.mda.run(seq, output=writer)
        elapsed = time.perf_counter() - t0
    finally:
        writer.close()
        core.unloadAllDevices()
    return list(writer.reports.values()), elapsed
