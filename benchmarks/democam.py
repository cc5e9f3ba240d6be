"""(c) The real DemoCamera through pymmcore-plus: highest drop-free frame rate.

Method: a burst (sequenced) MDA of N frames with FastImage on, so the camera
is as fast as the machine lets it be. A run is drop-free when every frame
reached the handler and MMCore's circular buffer did not overflow
(pymmcore-plus raises MemoryError then; caught and recorded). The rate is
(received - 1) / (last frame time - first frame time), taken at the handler.
Starting at 1 ms exposure, the exposure is raised step by step until a run is
drop-free; that run's rate is the highest drop-free rate of the ladder.
"""

from __future__ import annotations

import datetime as dt
import os
import time
from pathlib import Path
from typing import Any

from mesowriter._spec import companion_paths

# Steps of a quarter millisecond where the DemoCamera's 2048x2048 burst
# meets a disk of a few GB/s (1-3 ms: about 470-250 fps here); whole
# milliseconds reported the step below the highest drop-free rate, 15% under
# it (2026-12-02: overflow at 2 ms, 260 fps; drop-free at 3 ms, 249 fps).
EXPOSURES_MS = (
    *(1.0 + k / 4 for k in range(9)),  # 1.0, 1.25, ..., 3.0
    3.5,
    4.0,
    5.0,
    6.0,
    10.0,
    20.0,
)
MODES = ("nothing", "mesowriter_attach", "mesowriter_relay")


def _core(size: int, buffer_mb: int) -> Any:
    from mesowriter._demo import fast_democam

    return fast_democam(size, buffer_mb)


def burst_once(
    core: Any, mode: str, frames: int, exposure_ms: float, out_dir: str
) -> dict[str, Any]:
    """One burst of `frames` through `mode`; rate and drop accounting."""
    import useq

    from mesowriter.handlers import CustomWriter

    core.setExposure(exposure_ms)
    seq = useq.MDASequence(
        time_plan=useq.TIntervalLoops(interval=dt.timedelta(0), loops=frames)
    )
    times: list[float] = []

    def count(*_args: Any) -> None:
        times.append(time.perf_counter())

    error = None
    writer = None
    dropped = 0
    events = core.mda.events
    events.frameReady.connect(count)
    try:
        if mode == "nothing":
            core.mda.run(seq)
        else:
            writer = CustomWriter(
                Path(out_dir) / f"democam-{mode}.ome.tiff",
                overwrite=True,
                ring_bytes=512 << 20,
            )
            if mode == "mesowriter_attach":
                with writer.attach(core):
                    core.mda.run(seq)
            else:
                core.mda.run(seq, output=writer)
    except Exception as exc:  # MemoryError("Buffer overflowed") and writer errors
        error = repr(exc)
    finally:
        events.frameReady.disconnect(count)
        if writer is not None:
            try:
                writer.close()  # raises the run's error, if any: this try failed
            except Exception as exc:
                error = error or repr(exc)
            dropped = sum(r.frames_dropped for r in writer.reports.values())
            for r in writer.reports.values():
                for p in (r.path, *companion_paths(r.path)):
                    Path(p).unlink(missing_ok=True)
    got = len(times)
    fps = (got - 1) / (times[-1] - times[0]) if got > 1 else 0.0
    ok = error is None and got == frames and dropped == 0
    return {
        "mode": mode,
        "exposure_ms": exposure_ms,
        "frames": frames,
        "received": got,
        "writer_dropped": dropped,
        "error": error,
        "drop_free": ok,
        "fps": fps,
    }


def highest_drop_free(
    mode: str, *, size: int, frames: int, out_dir: str, buffer_mb: int = 1024
) -> dict[str, Any]:
    """Walk the exposure ladder until a burst is drop-free; return all tries."""
    core = _core(size, buffer_mb)
    tries = []
    best = None
    try:
        for exp in EXPOSURES_MS:
            r = burst_once(core, mode, frames, exp, out_dir)
            tries.append(r)
            if r["drop_free"]:
                best = r
                break
            if r["error"] and "MemoryError" not in r["error"]:
                break  # a failure, not an overflow: a slower camera will not help
    finally:
        core.unloadAllDevices()
    return {
        "mode": mode,
        "size": size,
        "frames": frames,
        "fps": best["fps"] if best else 0.0,
        "gbps": (best["fps"] if best else 0.0) * size * size * 2 / 1e9,
        "exposure_ms": best["exposure_ms"] if best else None,
        "tries": tries,
    }


def run(size: int, frames: int, out_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """All modes, in order: nothing, mesowriter on the acquisition thread, relay."""
    return {
        m: highest_drop_free(m, size=size, frames=frames, out_dir=os.fspath(out_dir))
        for m in MODES
    }
