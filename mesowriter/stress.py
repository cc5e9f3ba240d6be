"""`mesowriter stress`: soak, several cameras at once, and a burst over disk speed.

Every scenario runs synthetic cameras (one process each, policy "drop", so a
writer that falls behind shows up as dropped frame indices, never as a
slower camera) and returns a JSON-ready dict with the cameras' reports, a
memory trace and `ok`. Memory is sampled from this process: RSS of this
process and all its descendants (cameras and their writer workers) and the
system's dirty page cache, about once a second.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgspec
import psutil

from mesowriter._report import StreamReport
from mesowriter.synthetic import Burst, SyntheticCamera, run_cameras

MIB = 1 << 20
Message = Callable[[dict[str, Any]], None]

MULTI_CAMERAS = (
    ("mesoscope", (2048, 2048), 100.0),
    ("pupil", (480, 640), 60.0),
    ("behaviour", (1024, 1280), 30.0),
)


def _dirty_bytes() -> int | None:
    try:
        with open("/proc/meminfo", "rb") as fh:
            for line in fh:
                if line.startswith(b"Dirty:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


class _MemoryTrace:
    """RSS of this process tree and dirty pages, sampled from progress callbacks."""

    def __init__(self, every: float = 1.0) -> None:
        self.every = every
        self.t0 = time.perf_counter()
        self._last = -every
        self.points: list[dict[str, Any]] = []
        self._me = psutil.Process()

    def maybe_sample(self) -> None:
        t = time.perf_counter() - self.t0
        if t - self._last < self.every:
            return
        self._last = t
        rss = anon = 0
        for p in [self._me, *self._me.children(recursive=True)]:
            try:
                mi = p.memory_info()
            except psutil.Error:
                continue
            rss += mi.rss
            anon += mi.rss - getattr(mi, "shared", 0)
        self.points.append(
            {
                "t": t,
                "rss_bytes": rss,
                "anon_bytes": anon,
                "dirty_bytes": _dirty_bytes(),
            }
        )

    def summary(self) -> dict[str, Any]:
        """Growth = mean anon RSS of the last quarter minus the second quarter."""
        pts = self.points
        dirty = [p["dirty_bytes"] for p in pts if p["dirty_bytes"] is not None]
        out: dict[str, Any] = {
            "samples": len(pts),
            "peak_rss_bytes": max((p["rss_bytes"] for p in pts), default=0),
            "peak_dirty_bytes": max(dirty, default=None),
        }
        if len(pts) >= 8:
            q = len(pts) // 4
            early = sum(p["anon_bytes"] for p in pts[q : 2 * q]) / q
            late = sum(p["anon_bytes"] for p in pts[-q:]) / q
            out["anon_growth_bytes"] = late - early
            out["rss_flat"] = late - early < max(32 * MIB, 0.05 * early)
        return out


def _run(
    cameras: list[SyntheticCamera],
    out_dir: str | Path,
    on_message: Message | None,
    timeout: float | None = None,
) -> dict[str, Any]:
    _check_disk(cameras, out_dir)
    trace = _MemoryTrace()

    def relay(msg: dict[str, Any]) -> None:
        trace.maybe_sample()
        if on_message is not None:
            on_message(msg)

    results = run_cameras(cameras, out_dir, on_message=relay, timeout=timeout)
    trace.maybe_sample()
    mem = trace.summary()
    dropped = sum(r["report"]["frames_dropped"] for r in results)
    errors = [
        f"{r['camera']['name']}: {problem}"
        for r in results
        for problem in msgspec.convert(r["report"], StreamReport).problems()
    ]
    return {
        "cameras": results,
        "memory": mem,
        "memory_trace": trace.points,
        "frames_dropped": dropped,
        "errors": errors,
        "ok": dropped == 0 and not errors and mem.get("rss_flat", True),
    }


def _check_disk(cameras: list[SyntheticCamera], out_dir: str | Path) -> None:
    """Refuse, before any camera starts, a run the disk cannot hold."""
    import shutil

    need = 0.0
    for cam in cameras:
        # a burst "as fast as possible" is counted at 1000 fps
        need += (cam.planned_frames(unpaced_fps=1000.0) or 0) * cam.frame_nbytes
    folder = Path(out_dir)
    while not folder.exists():
        folder = folder.parent
    free = shutil.disk_usage(folder).free
    if need > 0.9 * free:
        raise ValueError(
            f"this run writes about {need / 1e9:.1f} GB but {folder} has "
            f"{free / 1e9:.1f} GB free; lower the frame size, rate or duration"
        )


def soak(
    out_dir: str | Path,
    *,
    minutes: float = 10.0,
    fps: float = 100.0,
    size: int = 512,
    on_message: Message | None = None,
) -> dict[str, Any]:
    """One camera at a set rate for `minutes`; memory must not grow.

    What a soak tests is growth per frame over a long run (60 000 frames at
    the defaults), not bandwidth: 512x512 keeps ten minutes at 100 fps to
    about 31 GB of disk (2048x2048 would need about 500 GB).
    """
    cam = SyntheticCamera(
        name="soak",
        shape=(size, size),
        fps=fps,
        duration=minutes * 60.0,
        ring_bytes=1 << 30,
    )
    return _run([cam], out_dir, on_message)


def multi(
    out_dir: str | Path,
    *,
    seconds: float = 30.0,
    scale: float = 1.0,
    on_message: Message | None = None,
) -> dict[str, Any]:
    """Mesoscope 2048x2048 @ 100, pupil 640x480 @ 60, behaviour 1280x1024 @ 30.

    `scale` < 1 shrinks every frame edge (for quick checks on small disks).
    """
    cams = [
        SyntheticCamera(
            name=name,
            shape=(max(8, int(h * scale)), max(8, int(w * scale))),
            fps=fps,
            duration=seconds,
            jitter=0.1,
            ring_bytes=(1 << 30) if name == "mesoscope" else 256 * MIB,
            seed=k,
        )
        for k, (name, (h, w), fps) in enumerate(MULTI_CAMERAS)
    ]
    return _run(cams, out_dir, on_message)


def burst(
    out_dir: str | Path,
    *,
    size: int = 2048,
    base_fps: float = 20.0,
    burst_fps: float = 1000.0,
    fill: float = 0.6,
    ring_mib: int = 1024,
    seconds: float = 5.0,
    on_message: Message | None = None,
) -> dict[str, Any]:
    """A burst at `burst_fps` (2048x2048 @ 1000 fps = 8.4 GB/s, above this
    disk's speed) long enough to fill about `fill` of the ring; the ring must
    absorb it with no drop, then drain during the slower base rate."""
    frame = size * size * 2
    burst_frames = max(2, int(fill * ring_mib * MIB / frame))
    burst_frames = min(burst_frames, int(burst_fps * max(0.1, seconds - 2.0)))
    cam = SyntheticCamera(
        name="burst",
        shape=(size, size),
        fps=base_fps,
        duration=seconds,
        bursts=(Burst(start=1.0, seconds=burst_frames / burst_fps, fps=burst_fps),),
        ring_bytes=ring_mib * MIB,
    )
    res = _run([cam], out_dir, on_message)
    rep = res["cameras"][0]["report"]
    reached = res["cameras"][0]["bursts"][0]
    res["burst"] = {
        "burst_fps": burst_fps,
        "burst_frames": burst_frames,
        "burst_gbps": burst_fps * frame / 1e9,
        "reached_frames": reached["frames"],
        "reached_fps": reached["fps"],
        "reached_gbps": (reached["fps"] or 0.0) * frame / 1e9,
        "ring_slots": rep["ring_slots"],
        "ring_high_water": rep["ring_high_water"],
        "high_water_fraction": rep["ring_high_water"] / max(rep["ring_slots"], 1),
    }
    return res
