"""The bench's acquisition process: one WriterService, kept across rounds.

::

    bench (this process)            producer (spawned)           writer worker
    raw O_DIRECT runs, fio   --job-->  Stream.write loop  --ring-->  sink
    sampler (dirty pages)    <-result- (timings, series)            (disk or
                                       bare copies                   discard)

Sections (a) and (h) time mesowriter as a camera program uses it: from a
process of its own, writing into a `Stream` while the writer process drains
the ring. The producer and its service live across rounds, so the ring pool
is created and touched once (about 1 s a GiB here), not before every round,
and each round finds the same warm memory. The bare copies that (h) holds
the pipeline against run in the same process, on the same frames. Jobs and
results cross the pipe as plain dicts; pixels never do.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import time
import traceback
from dataclasses import asdict, dataclass
from multiprocessing import connection
from typing import Any

import numpy as np

__all__ = ["CopyJob", "Producer", "ProducerFailed", "StreamJob"]

_POLL = 0.001  # s between looks at the commit cursor once every frame is sent


@dataclass(frozen=True)
class StreamJob:
    """Frames as fast as the service takes them (policy "block") into `path`.

    ``kind`` None lets the name choose the sink; "discard" keeps nothing.
    ``write_depth`` None takes the service's default.
    """

    path: str
    shape: tuple[int, ...]
    frames: int
    dtype: str = "uint16"
    kind: str | None = None
    write_depth: int | None = None
    sample_every: float = 0.02  # s; a few property reads, off the write call


@dataclass(frozen=True)
class CopyJob:
    """The same frames copied with ``np.copyto`` into ``slots`` slots of
    "ordinary" (anonymous) or "shared" (shared-memory) memory, in turn, as a
    ring's slots are filled: the floor of any shared-memory hand-off."""

    shape: tuple[int, ...]
    frames: int
    slots: int
    memory: str = "shared"
    dtype: str = "uint16"


class ProducerFailed(RuntimeError):
    """The producer process raised (its traceback is in the message) or died."""


class Producer:
    """A spawned producer with its own `WriterService(ring_bytes=...)`."""

    def __init__(self, ring_bytes: int, *, timeout: float = 1800.0) -> None:
        ctx = mp.get_context("spawn")
        self._conn, child = ctx.Pipe()
        self._timeout = timeout
        self._proc = ctx.Process(
            target=_serve, args=(child, ring_bytes), name="bench-producer"
        )
        self._proc.start()
        child.close()
        hello = self._receive()
        self.pid: int = hello["pid"]
        self.workers: list[int] = hello["workers"]

    def stream(self, job: StreamJob) -> dict[str, Any]:
        return self._ask("stream", asdict(job))

    def copy(self, job: CopyJob) -> dict[str, Any]:
        return self._ask("copy", asdict(job))

    def _ask(self, kind: str, job: dict[str, Any]) -> dict[str, Any]:
        self._conn.send((kind, job))
        return self._receive()

    def _receive(self) -> dict[str, Any]:
        """The next reply; ProducerFailed if it is an error or the process died."""
        ready = connection.wait([self._conn, self._proc.sentinel], self._timeout)
        if self._conn not in ready or not self._conn.poll():
            code = self._proc.exitcode
            raise ProducerFailed(
                f"bench producer gave no answer (exit code {code}, "
                f"timeout {self._timeout} s)"
            )
        msg: dict[str, Any] = self._conn.recv()
        if "error" in msg:
            raise ProducerFailed(f"{msg['error']}\n{msg['traceback']}")
        return msg

    def close(self) -> None:
        """Stop the producer (its service closes, its rings are released)."""
        if self._proc.is_alive():
            try:
                self._conn.send(None)
            except OSError:
                pass
            self._proc.join(timeout=60)
        if self._proc.is_alive():
            self._proc.terminate()
            self._proc.join()
        self._conn.close()

    def __enter__(self) -> Producer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# -- in the producer process -----------------------------------------------------------
def _serve(conn: Any, ring_bytes: int) -> None:
    try:
        from mesowriter import WriterService

        targets = _CopyTargets()
        with WriterService(
            ring_bytes=ring_bytes, workers=1, handle_signals=False
        ) as service:
            service.pool.warm()  # touched now, never inside a timed run
            conn.send({"pid": os.getpid(), "workers": service.workers})
            while (msg := conn.recv()) is not None:
                kind, job = msg
                try:
                    if kind == "stream":
                        reply = _run_stream(service, StreamJob(**_tuples(job)))
                    else:
                        reply = _run_copy(targets, CopyJob(**_tuples(job)))
                except Exception as exc:
                    reply = {"error": repr(exc), "traceback": traceback.format_exc()}
                conn.send(reply)
        targets.close()
    except BaseException as exc:  # tell the bench rather than die silently
        conn.send({"error": repr(exc), "traceback": traceback.format_exc()})


def _tuples(job: dict[str, Any]) -> dict[str, Any]:
    return {k: tuple(v) if isinstance(v, list) else v for k, v in job.items()}


def _cost_stats(costs: np.ndarray[Any, Any]) -> dict[str, float]:
    """Per-frame seconds as microseconds: the hot path's median and tail."""
    us = costs * 1e6
    return {
        "us_median": float(np.median(us)),
        "us_p99": float(np.quantile(us, 0.99)),
        "us_mean": float(us.mean()),
        "us_max": float(us.max()),
    }


def _run_stream(service: Any, job: StreamJob) -> dict[str, Any]:
    """One stream, timed from the first `write` to the file closed (durable).

    After the last frame the producer polls the commit cursor (1 ms), so the
    time at which every frame was committed is known apart from `close`
    (finalisation, sidecar, report): the pipeline section uses the former.
    """
    import msgspec

    from mesowriter.synthetic import make_frames, stamp_index

    srcs = make_frames(job.shape, job.dtype)
    n = job.frames
    nbytes = srcs[0].nbytes
    stream = service.open_stream(
        job.path,
        shape=job.shape,
        dtype=job.dtype,
        frames=n,
        overwrite=True,
        kind=job.kind,
        write_depth=job.write_depth,
    )
    costs = np.zeros(n)
    series: list[list[float]] = []

    def sample(now: float) -> None:
        series.append(
            [
                now - t0,
                stream.frames_received,
                stream.frames_written,
                stream.bytes_written,
                stream.ring_fill,
            ]
        )

    t0 = t_sample = time.perf_counter()
    for i in range(n):
        buf = srcs[i % len(srcs)]
        stamp_index(buf, i)
        t = time.perf_counter()
        stream.write(buf, {"i": i})
        done = time.perf_counter()
        costs[i] = done - t
        if done - t_sample >= job.sample_every:
            t_sample = done
            sample(done)
    t_sent = time.perf_counter()
    while stream.frames_written < n and stream.error is None:
        time.sleep(_POLL)
        now = time.perf_counter()
        if now - t_sample >= job.sample_every:
            t_sample = now
            sample(now)
    t_committed = time.perf_counter()
    report = stream.close(check=False)
    t_closed = time.perf_counter()
    series.append([t_closed - t0, n, report.frames_written, report.bytes_written, 0.0])
    total = n * nbytes
    return {
        "path": job.path,
        "kind": job.kind or "",
        "shape": list(job.shape),
        "frames": n,
        "frame_nbytes": nbytes,
        "bytes": total,
        "write_depth": job.write_depth,
        "seconds_sending": t_sent - t0,
        "seconds_committed": t_committed - t0,
        "seconds": t_closed - t0,
        "gbps": total / (t_closed - t0) / 1e9,
        "gbps_committed": total / (t_committed - t0) / 1e9,
        "write": _cost_stats(costs),
        "series_columns": ["t", "received", "written", "bytes", "ring_fill"],
        "series": series,
        "report": msgspec.to_builtins(report),
    }


class _CopyTargets:
    """Ring-sized destinations, made and touched once, reused by every job."""

    def __init__(self) -> None:
        self._blocks: dict[str, tuple[np.ndarray[Any, Any], Any]] = {}

    def get(self, memory: str, nbytes: int) -> np.ndarray[Any, Any]:
        """A flat uint8 array of at least `nbytes`, every page touched."""
        held = self._blocks.get(memory)
        if held is not None and held[0].size >= nbytes:
            return held[0]
        self.release(memory)
        shm = None
        if memory == "shared":
            from multiprocessing import shared_memory

            shm = shared_memory.SharedMemory(create=True, size=nbytes)
            assert shm.buf is not None
            flat = np.ndarray((nbytes,), np.uint8, shm.buf)
        elif memory == "ordinary":
            flat = np.empty(nbytes, np.uint8)
        else:
            raise ValueError(f"memory is 'shared' or 'ordinary', not {memory!r}")
        flat[::4096] = 0  # fault in: a cold page copies ten times slower
        self._blocks[memory] = (flat, shm)
        return flat

    def release(self, memory: str) -> None:
        """Free one destination (numpy's view first: shared memory refuses to
        close while a view of it exists)."""
        held = self._blocks.pop(memory, None)
        if held is None:
            return
        flat, shm = held
        del flat, held
        if shm is not None:
            shm.close()
            shm.unlink()

    def close(self) -> None:
        for memory in list(self._blocks):
            self.release(memory)


def _run_copy(targets: _CopyTargets, job: CopyJob) -> dict[str, Any]:
    """The bare copy, slot after slot, each slot already written once."""
    from mesowriter.synthetic import make_frames, stamp_index

    srcs = make_frames(job.shape, job.dtype)
    nbytes = srcs[0].nbytes
    flat = targets.get(job.memory, job.slots * nbytes)
    slots = (
        flat[: job.slots * nbytes]
        .view(srcs[0].dtype)
        .reshape((job.slots, *srcs[0].shape))
    )
    for k in range(job.slots):  # as in a running ring: every slot seen before
        np.copyto(slots[k], srcs[k % len(srcs)])
    costs = np.zeros(job.frames)
    t0 = time.perf_counter()
    for i in range(job.frames):
        buf = srcs[i % len(srcs)]
        stamp_index(buf, i)
        t = time.perf_counter()
        np.copyto(slots[i % job.slots], buf)
        costs[i] = time.perf_counter() - t
    seconds = time.perf_counter() - t0
    del slots
    total = job.frames * nbytes
    return {
        "memory": job.memory,
        "shape": list(job.shape),
        "frames": job.frames,
        "slots": job.slots,
        "bytes": total,
        "seconds": seconds,
        "gbps": total / seconds / 1e9,
        "copy": _cost_stats(costs),
    }
