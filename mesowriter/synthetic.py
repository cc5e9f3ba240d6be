"""Synthetic cameras: frame producers for tests, benchmarks and `mesowriter stress`.

Each camera runs in its own process (spawn), as a real acquisition program
would, and owns its own WriterService and stream. It paces frames to a rate
with optional jitter and bursts (pacing sleeps are the camera's behaviour,
never on the write path); `fps=None` means as fast as the writer accepts.

Frame index encoding (checked by `read_index`): the first 8 bytes of every
frame hold the frame index as a little-endian uint32 followed by
``index ^ 0xA5A5A5A5`` as a little-endian uint32. For uint16 frames that is
the first four pixels: ``[i & 0xFFFF, i >> 16, c & 0xFFFF, c >> 16]`` with
``c = i ^ 0xA5A5A5A5``. The other pixels are a ramp that shifts with
``i % 4``, so a reader that swapped frames would also see it.

The parent gets JSON-only messages through a queue (no pixels, no pickled
objects of ours): "ready" (pids), "progress" (about 4 Hz), "result" or
"error" (with the child's traceback). `run_cameras` raises in the parent when
a camera failed or died.
"""

from __future__ import annotations

import math
import multiprocessing as mp
import os
import queue as _queue
import random
import time
import traceback
from array import array
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "Burst",
    "SyntheticCamera",
    "read_index",
    "run_camera",
    "run_cameras",
    "stamp_index",
]

_CHECK = 0xA5A5A5A5
_DISTINCT = 4
_PROGRESS_EVERY = 0.25


@dataclass(frozen=True)
class Burst:
    """From `start` s after the first frame, `seconds` long, run at `fps`.

    `fps=None` inside a burst means as fast as the writer accepts.
    """

    start: float
    seconds: float
    fps: float | None = None


@dataclass(frozen=True)
class SyntheticCamera:
    """What one synthetic camera produces and where it goes.

    Give `frames` or `duration` (or both: whichever ends first). `jitter` is
    the largest deviation of one frame interval, as a fraction of it
    (uniform). `policy` is the writer's full-ring policy: "drop" shows lost
    frames, "block" measures throughput. `memcpy_alongside` also times a bare
    copy of each frame into ring-sized memory next to its write, so the
    write's cost can be compared under the same load (benchmarks only).
    """

    name: str = "camera"
    shape: tuple[int, ...] = (512, 512)
    dtype: str = "uint16"
    fps: float | None = None
    frames: int | None = None
    duration: float | None = None
    jitter: float = 0.0
    bursts: tuple[Burst, ...] = ()
    suffix: str = ".ome.tiff"
    ring_bytes: int = 256 << 20
    policy: str = "drop"
    direct_io: bool = True
    metadata: bool = True
    video_fourcc: str | None = None
    seed: int = 0
    memcpy_alongside: bool = False
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.frames is None and self.duration is None:
            raise ValueError(f"camera {self.name!r}: give frames or duration")
        if self.frames is not None and self.frames < 0:
            raise ValueError(f"camera {self.name!r}: frames must be >= 0")
        if self.fps is not None and self.fps <= 0:
            raise ValueError(f"camera {self.name!r}: fps must be positive or None")
        if not 0 <= self.jitter < 1:
            raise ValueError(f"camera {self.name!r}: jitter must be in [0, 1)")
        if np.dtype(self.dtype).itemsize * math.prod(self.shape) < 8:
            raise ValueError(f"camera {self.name!r}: a frame must hold >= 8 bytes")

    @property
    def frame_nbytes(self) -> int:
        return int(np.dtype(self.dtype).itemsize * math.prod(self.shape))

    def planned_frames(self, unpaced_fps: float | None = None) -> int | None:
        """Frames this camera will send: `frames`, or what `duration` at its
        rate holds (a burst replaces the base rate for its length).

        A burst "as fast as the writer goes" counts at `unpaced_fps`; without
        one, such a camera has no honest total (None).
        """
        if self.duration is None or not self.fps:
            return self.frames
        total = self.duration * self.fps
        for b in self.bursts:
            fps = b.fps if b.fps is not None else unpaced_fps
            if fps is None:
                return self.frames
            total += b.seconds * (fps - self.fps)
        return int(total) if self.frames is None else min(self.frames, int(total))

    def rate_at(self, t: float) -> float | None:
        """Frames per second wanted `t` s after the first frame."""
        for b in self.bursts:
            if b.start <= t < b.start + b.seconds:
                return b.fps
        return self.fps

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["shape"] = list(self.shape)
        return d

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> SyntheticCamera:
        d = dict(d)
        d["shape"] = tuple(d["shape"])
        d["bursts"] = tuple(Burst(**b) for b in d.get("bursts", ()))
        return cls(**d)


# -- the index encoding -----------------------------------------------------
def stamp_index(frame: np.ndarray, index: int) -> None:
    """Write `index` into the first 8 bytes of `frame` (see module doc)."""
    head = frame.reshape(-1).view(np.uint8)[:8]
    head[:] = np.array([index, index ^ _CHECK], dtype="<u4").view(np.uint8)


def read_index(frame: np.ndarray) -> int:
    """Return the index stamped by `stamp_index`; ValueError if it is not one."""
    raw = np.ascontiguousarray(frame).reshape(-1).view(np.uint8)[:8]
    i, c = (int(v) for v in raw.view("<u4"))
    if i ^ _CHECK != c:
        raise ValueError(f"frame carries no valid index stamp ({i:#x}, {c:#x})")
    return i


def make_frames(shape: tuple[int, ...], dtype: str, n: int = _DISTINCT) -> list[Any]:
    """`n` distinct ramps, generated once so generation is never timed."""
    dt = np.dtype(dtype)
    top = int(np.iinfo(dt).max) + 1 if dt.kind in "ui" else 1 << 16
    base = np.add.outer(np.arange(shape[0]), np.arange(shape[1]))
    out = []
    for k in range(n):
        f = ((base + 97 * k) % top).astype(dt)
        if len(shape) == 3:
            f = np.repeat(f[:, :, None], shape[2], axis=2)
        out.append(np.ascontiguousarray(f))
    return out


# -- one camera, in the current process ----------------------------------------
def run_camera(
    cam: SyntheticCamera,
    out_dir: str | os.PathLike[str],
    *,
    send: Callable[[dict[str, Any]], None] | None = None,
    go: Any = None,
) -> dict[str, Any]:
    """Produce `cam`'s frames into a new WriterService; return a JSON report.

    `send` receives "ready" and "progress" messages; `go` (an Event) is
    waited on after the stream is open so several cameras start together.
    The report holds the StreamReport, the time spent in `Stream.write`
    per frame (mean, median, p99, max), how late the pacing ran, a
    throughput/ring-fill time series and the bare memcpy cost of one frame
    measured in this process.
    """
    import msgspec

    from mesowriter import VideoOptions, WriterService

    emit = send or (lambda _msg: None)
    path = str(Path(out_dir) / f"{cam.name}{cam.suffix}")
    frames = make_frames(cam.shape, cam.dtype)
    slots = _ring_slots(frames[0], cam.ring_bytes)
    # Bench (d) only: bare copies on a quiet machine, into one warm buffer
    # and into ring-sized memory, of the frames this camera sends.
    memcpy = _timed_copies(frames, 1, 20) if cam.memcpy_alongside else None
    memcpy_ring = _timed_copies(frames, slots, 40) if cam.memcpy_alongside else None
    video = (
        VideoOptions(fourcc=cam.video_fourcc, fps=cam.fps or 30.0)
        if cam.video_fourcc
        else None
    )
    rng = random.Random(cam.seed)
    costs = array("d")
    alongside = array("d")
    series: list[list[float]] = []
    late = 0.0
    in_burst: list[list[float]] = [[] for _ in cam.bursts]  # send times
    with (
        (
            _CopyTarget(frames[0], slots) if cam.memcpy_alongside else nullcontext()
        ) as beside,
        WriterService(
            ring_bytes=cam.ring_bytes,
            workers=1,
            policy=cam.policy,
            handle_signals=False,
        ) as service,
    ):
        stream = service.open_stream(
            path,
            shape=cam.shape,
            dtype=cam.dtype,
            frames=cam.frames if cam.duration is None else None,
            overwrite=True,
            video=video,
            direct_io=cam.direct_io,
        )
        emit({"type": "ready", "pid": os.getpid(), "workers": service.workers})
        if go is not None:
            go.wait()
        i = 0
        limit = cam.frames if cam.frames is not None else -1
        t0 = time.perf_counter()
        t_next = t0
        t_report = t0
        while i != limit:
            now = time.perf_counter()
            if cam.duration is not None and now - t0 >= cam.duration:
                break
            if t_next > now:
                time.sleep(t_next - now)  # the camera's own frame interval
            else:
                late = max(late, now - t_next)
            buf = frames[i % _DISTINCT]
            stamp_index(buf, i)
            meta = {"i": i, "camera": cam.name} if cam.metadata else None
            # The second read of a frame finds it in cache: the bare copy
            # goes first on even frames and second on odd ones.
            if beside is not None and i % 2 == 0:
                alongside.append(beside.copy_in(i, buf))
            t = time.perf_counter()
            stream.write(buf, meta)
            done = time.perf_counter()
            costs.append(done - t)
            if beside is not None and i % 2 == 1:
                alongside.append(beside.copy_in(i, buf))
            for b, seen in zip(cam.bursts, in_burst, strict=True):
                if b.start <= t - t0 < b.start + b.seconds:
                    seen.append(t - t0)
            i += 1
            rate = cam.rate_at(done - t0)
            if rate is None:
                t_next = done
            else:
                period = 1.0 / rate
                if cam.jitter:
                    period *= 1.0 + rng.uniform(-cam.jitter, cam.jitter)
                t_next = max(t_next + period, done - 1.0)  # no catch-up storms
            if done - t_report >= _PROGRESS_EVERY:
                t_report = done
                point = [
                    done - t0,
                    stream.frames_received,
                    stream.frames_written,
                    stream.bytes_written,
                    stream.ring_fill,
                    stream.frames_dropped,
                ]
                series.append(point)
                emit(_progress(cam, point, service.workers))
        t_last = time.perf_counter()
        report = stream.close(check=False)
        t_closed = time.perf_counter()
    c = np.frombuffer(costs, dtype=np.float64) if len(costs) else np.zeros(1)
    nbytes = report.bytes_written
    elapsed = t_closed - t0
    return {
        "camera": cam.to_json(),
        "path": path,
        "pid": os.getpid(),
        "frames_sent": i,
        "seconds_sending": t_last - t0,
        "seconds": elapsed,
        "fps_sent": i / (t_last - t0) if t_last > t0 else 0.0,
        "gbps_durable": nbytes / elapsed / 1e9 if elapsed > 0 else 0.0,
        "write_cost_mean_s": float(c.mean()),
        "write_cost_median_s": float(np.median(c)),
        "write_cost_p99_s": float(np.quantile(c, 0.99)),
        "write_cost_max_s": float(c.max()),
        "write_cost_unblocked_mean_s": max(
            0.0, (float(c.sum()) - report.blocked_seconds) / max(i, 1)
        ),
        "bare_memcpy_s": memcpy,
        "bare_memcpy_ring_s": memcpy_ring,
        "memcpy_alongside_mean_s": _mean(alongside),
        "memcpy_alongside_median_s": _median(alongside),
        "pacing_late_max_s": late,
        "bursts": [_burst_reached(times) for times in in_burst],
        "series_columns": ["t", "received", "written", "bytes", "ring_fill", "drops"],
        "series": series,
        "report": msgspec.to_builtins(report),
    }


def _progress(
    cam: SyntheticCamera, p: list[float], workers: list[int]
) -> dict[str, Any]:
    total = cam.planned_frames()
    return {
        "type": "progress",
        "name": cam.name,
        "t": p[0],
        "frames": int(p[1]),
        "written": int(p[2]),
        "bytes": int(p[3]),
        "ring_fill": p[4],
        "drops": int(p[5]),
        "total": total,
        "duration": cam.duration,
        "frame_nbytes": cam.frame_nbytes,
        "workers": workers,
    }


def _ring_slots(frame: np.ndarray, ring_bytes: int) -> int:
    """Frames a ring of `ring_bytes` holds (as FrameRing.plan, without extras)."""
    return max(2, min(ring_bytes // frame.nbytes, 4096))


class _CopyTarget:
    """`slots` frames of page-aligned shared memory, every page touched, to
    time a bare copy: one slot is a warm buffer, many are a ring, whose next
    slot is never in cache."""

    def __init__(self, frame: np.ndarray, slots: int) -> None:
        from multiprocessing import shared_memory

        self.slots = slots
        self.shm = shared_memory.SharedMemory(create=True, size=slots * frame.nbytes)
        assert self.shm.buf is not None
        self.block = np.ndarray((slots, *frame.shape), frame.dtype, self.shm.buf)
        self.block.reshape(-1).view(np.uint8)[::4096] = 0

    def copy_in(self, i: int, frame: np.ndarray) -> float:
        """Seconds to copy `frame` into slot i (mod slots)."""
        t = time.perf_counter()
        np.copyto(self.block[i % self.slots], frame)
        return time.perf_counter() - t

    def __enter__(self) -> _CopyTarget:
        return self

    def __exit__(self, *exc: object) -> None:
        del self.block
        self.shm.close()
        self.shm.unlink()


def _timed_copies(srcs: list[np.ndarray], slots: int, repeats: int) -> float:
    """Mean seconds of a bare copy of the camera's frames into `slots` slots,
    after every slot has been written once (as in a running ring)."""
    with _CopyTarget(srcs[0], slots) as target:
        for k in range(slots):
            target.copy_in(k, srcs[k % len(srcs)])
        n = max(repeats, slots)
        return sum(target.copy_in(k, srcs[k % len(srcs)]) for k in range(n)) / n


def _burst_reached(times: list[float]) -> dict[str, Any]:
    """The rate a burst really reached (the copy may not keep up with it)."""
    span = times[-1] - times[0] if len(times) > 1 else 0.0
    return {
        "frames": len(times),
        "seconds": span,
        "fps": (len(times) - 1) / span if span > 0 else None,
    }


def _mean(values: array[float]) -> float | None:
    return float(np.mean(values)) if len(values) else None


def _median(values: array[float]) -> float | None:
    return float(np.median(values)) if len(values) else None


# -- several cameras, one process each -------------------------------------------
def _child(spec: dict[str, Any], out_dir: str, q: Any, go: Any) -> None:
    name = spec.get("name", "camera")

    def send(msg: dict[str, Any]) -> None:
        msg.setdefault("name", name)
        q.put(msg)

    try:
        result = run_camera(SyntheticCamera.from_json(spec), out_dir, send=send, go=go)
        send({"type": "result", "result": result})
    except BaseException as exc:
        send({"type": "error", "error": repr(exc), "traceback": traceback.format_exc()})


class CameraFailed(RuntimeError):
    """A synthetic camera process raised or died; the child's traceback is here."""


def run_cameras(
    cameras: Sequence[SyntheticCamera],
    out_dir: str | os.PathLike[str],
    *,
    on_message: Callable[[dict[str, Any]], None] | None = None,
    timeout: float | None = None,
) -> list[dict[str, Any]]:
    """Run each camera in its own spawned process; return their reports in order.

    All cameras open their streams first, then start together. `on_message`
    sees every "ready"/"progress" message as it arrives (for live displays
    and memory samplers). Raises CameraFailed if any camera failed.
    """
    names = [c.name for c in cameras]
    if len(set(names)) != len(names):
        raise ValueError(f"camera names must be unique: {names}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    go = ctx.Event()
    procs = {
        c.name: ctx.Process(
            target=_child,
            args=(c.to_json(), str(out), q, go),
            name=f"synthetic-{c.name}",
        )
        for c in cameras
    }
    for p in procs.values():
        p.start()
    results: dict[str, dict[str, Any]] = {}
    errors: list[str] = []
    failed: set[str] = set()
    ready: set[str] = set()
    deadline = None if timeout is None else time.monotonic() + timeout
    try:
        while len(results) + len(errors) < len(procs):
            if deadline is not None and time.monotonic() > deadline:
                raise CameraFailed(f"synthetic cameras still running after {timeout} s")
            try:
                msg = q.get(timeout=0.2)
            except _queue.Empty:
                dead = [
                    n
                    for n, p in procs.items()
                    if not p.is_alive()
                    and n not in results
                    and n not in failed
                    and q.empty()
                ]
                if dead:
                    failed.update(dead)
                    errors.extend(
                        f"{n}: process exited with code {procs[n].exitcode} "
                        "without a report"
                        for n in dead
                    )
                    go.set()
                continue
            kind = msg.get("type")
            if kind == "ready":
                ready.add(msg["name"])
                if ready == set(procs):
                    go.set()
            elif kind == "result":
                results[msg["name"]] = msg["result"]
            elif kind == "error" and msg["name"] not in failed:
                failed.add(msg["name"])
                errors.append(f"{msg['name']}: {msg['error']}\n{msg['traceback']}")
                go.set()
            if on_message is not None and kind in ("ready", "progress"):
                on_message(msg)
    finally:
        go.set()
        for p in procs.values():
            p.join(timeout=30)
            if p.is_alive():
                p.terminate()
                p.join()
        q.close()
        q.join_thread()
    if errors:
        raise CameraFailed("synthetic camera failed:\n" + "\n".join(errors))
    return [results[n] for n in names]
