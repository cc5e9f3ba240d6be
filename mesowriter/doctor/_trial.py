"""A short real run: the planned frames through `WriterService`, read back.

Figures about a disk say nothing of the path a frame really takes (ring,
writer process, sink, OME-XML at close). So the doctor writes a few hundred
frames of the planned shape, paced at the planned rate (or faster, for a
slow camera), into the user's folder, and reads them back with tifffile as
analysis code will (`tifffile.memmap`, which needs contiguous pixels),
comparing every pixel.
Each frame is one of a few random frames with its index stamped in its
first pixel, so a frame out of place or written twice is found too.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from mesowriter._report import StreamReport
from mesowriter._service import WriterService
from mesowriter.doctor._plan import Plan

BANK = 4  # distinct random frames, cycled
STAMP_MODULO = 127  # the index stamp fits every writable dtype (int8 too)
TRIAL_SECONDS = 3.0
MIN_FRAMES, MAX_FRAMES = 50, 300
MIN_FRAMES_ANY = 10  # even for frames so large that TRIAL_BYTES holds fewer
MAX_STREAMS = 4
TRIAL_BYTES = 1 << 30  # all streams together: seconds, not minutes, to read back
TRIAL_RING_BYTES = 256 << 20


@dataclass
class Trial:
    """What the trial run did and found (`problems` empty when all was well)."""

    streams: int
    frames: int
    ring_bytes: int
    paced_fps: float = 0.0
    seconds: float = 0.0
    fps: float = 0.0
    throughput_gbps: float = 0.0
    blocked_seconds: float = 0.0
    ring_high_water: int = 0
    ring_slots: int = 0
    direct_io: bool | None = None
    frames_written: int = 0
    frames_read_back: int = 0
    frames_mismatched: int = 0
    problems: list[str] = field(default_factory=list)

    def figures(self) -> dict[str, Any]:
        return dict(self.__dict__)


def trial_size(plan: Plan, room: int) -> tuple[int, int]:
    """(streams, frames per stream): a few seconds, a few hundred frames, at
    most `TRIAL_BYTES` unless that is under `MIN_FRAMES_ANY` frames, and
    never more than `room` bytes (0 frames: not even `MIN_FRAMES_ANY` fit)."""
    streams = min(plan.streams, MAX_STREAMS)
    per_frame = plan.frame_bytes * streams
    frames = min(MAX_FRAMES, max(MIN_FRAMES, round(plan.fps * TRIAL_SECONDS)))
    frames = min(
        frames, max(TRIAL_BYTES // per_frame, MIN_FRAMES_ANY), room // per_frame
    )
    return streams, frames if frames >= MIN_FRAMES_ANY else 0


def trial_fps(plan: Plan) -> float:
    """The planned rate, or faster where that would take more than a few
    seconds (a faster run only makes the check harder)."""
    return max(plan.fps, MIN_FRAMES / TRIAL_SECONDS)


def run_trial(plan: Plan, workdir: str, streams: int, frames: int) -> Trial:
    """Write, close, read back and compare; the files stay for the caller to remove."""
    ring = max(min(plan.ring_bytes, TRIAL_RING_BYTES), 8 * plan.frame_bytes)
    trial = Trial(streams, frames, ring, paced_fps=trial_fps(plan))
    bank = _bank(plan)
    paths = [os.path.join(workdir, f"trial-{k}.ome.tiff") for k in range(streams)]
    try:
        reports = _write(plan, paths, frames, ring, bank, trial)
    except (OSError, ValueError, RuntimeError, MemoryError) as exc:
        # WriterError and FrameRejected are RuntimeError/ValueError
        trial.problems.append(f"the run failed: {type(exc).__name__}: {exc}")
        return trial
    _account(trial, reports)
    for path in paths:
        _read_back(trial, path, frames, bank)
    return trial


def _bank(plan: Plan) -> list[np.ndarray]:
    rng = np.random.default_rng(13)
    dtype = np.dtype(plan.dtype)
    if dtype.kind == "f":
        return [rng.random(plan.shape).astype(dtype) for _ in range(BANK)]
    info = np.iinfo(dtype)
    return [
        rng.integers(info.min, info.max, plan.shape, dtype=dtype, endpoint=True)
        for _ in range(BANK)
    ]


def _stamped(bank: list[np.ndarray], i: int) -> np.ndarray:
    """Frame i: bank frame i % BANK, its first pixel set to i % STAMP_MODULO."""
    frame = bank[i % BANK]
    frame.flat[0] = i % STAMP_MODULO
    return frame


def _metadata(i: int, t0: float) -> dict[str, Any]:
    """Metadata the size of a pymmcore-plus frame's, so the sidecar is real-sized."""
    ms = (time.perf_counter() - t0) * 1000
    return {
        "format": "frame-dict",
        "version": "1.0",
        "runner_time_ms": round(ms, 3),
        "camera_device": "Doctor",
        "exposure_ms": 1.0,
        "pixel_size_um": 1.0,
        "camera_metadata": {
            "Camera": "Doctor",
            "ElapsedTime-ms": f"{ms:.2f}",
            "ImageNumber": str(i),
            "PixelType": "GRAY16",
        },
    }


def _write(
    plan: Plan,
    paths: list[str],
    frames: int,
    ring: int,
    bank: list[np.ndarray],
    trial: Trial,
) -> list[StreamReport]:
    """Frames paced at the planned rate, each to every stream, as a rig sends them."""
    with WriterService(
        ring_bytes=ring, workers=len(paths), pool_bytes=ring * len(paths)
    ) as svc:
        opened = [
            svc.open_stream(p, shape=plan.shape, dtype=plan.dtype, frames=frames)
            for p in paths
        ]
        t0 = last = time.perf_counter()
        for i in range(frames):
            frame, meta = _stamped(bank, i), _metadata(i, t0)
            for stream in opened:
                stream.write(frame, meta)
            last = time.perf_counter()
            delay = t0 + (i + 1) / trial.paced_fps - last
            if delay > 0:
                time.sleep(delay)
        trial.seconds = last - t0
        trial.fps = (
            (frames - 1) / trial.seconds if frames > 1 and trial.seconds else 0.0
        )
        return [stream.close(check=False) for stream in opened]


def _account(trial: Trial, reports: list[StreamReport]) -> None:
    for r in reports:
        name = os.path.basename(r.path)
        trial.problems += [f"{name}: {p}" for p in r.problems()]
        trial.frames_written += r.frames_written
        trial.blocked_seconds += r.blocked_seconds
        trial.ring_high_water = max(trial.ring_high_water, r.ring_high_water)
        trial.ring_slots = r.ring_slots
        direct = r.sink.get("direct_io")
        trial.direct_io = (
            bool(direct)
            if trial.direct_io is None
            else (trial.direct_io and bool(direct))
        )
    trial.throughput_gbps = sum(r.throughput_gbps for r in reports)


def _read_back(trial: Trial, path: str, frames: int, bank: list[np.ndarray]) -> None:
    """`tifffile.memmap` the file and compare every frame with what was sent."""
    import tifffile

    name = os.path.basename(path)
    try:
        mm = tifffile.memmap(path, mode="r")
    except (OSError, ValueError) as exc:
        trial.problems.append(f"{name}: tifffile.memmap failed: {exc}")
        return
    try:
        if mm.shape[0] != frames or tuple(mm.shape[1:]) != bank[0].shape:
            trial.problems.append(
                f"{name}: tifffile reads shape {mm.shape}, expected "
                f"{(frames, *bank[0].shape)}"
            )
        n = min(frames, mm.shape[0])
        bad = sum(not np.array_equal(mm[i], _stamped(bank, i)) for i in range(n))
        trial.frames_read_back += n
        trial.frames_mismatched += bad
        if bad:
            trial.problems.append(f"{name}: {bad} of {n} frames differ from those sent")
    finally:
        del mm  # the mapping must close before the file is removed (Windows)
