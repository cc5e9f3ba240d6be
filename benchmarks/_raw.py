"""Baselines: what the disk and the CPU can do with no writer in the way.

``raw_odirect_write`` (1 or several requests in flight) and ``fio_write``
are the ceilings any writer can hope for on this disk: a disk that needs
several requests in flight to reach its speed makes a one-request reference
a flattering one, so the bench compares against the best of them.
``bare_memcpy_cost`` is the least the acquisition side must pay per frame to
hand it off (one copy into a warm shared buffer).
"""

from __future__ import annotations

import contextlib
import errno
import json
import mmap
import os
import shutil
import subprocess
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

__all__ = [
    "ODirectUnsupportedError",
    "bare_memcpy_cost",
    "fio_path",
    "fio_write",
    "page_aligned_array",
    "raw_odirect_write",
    "source_buffers",
]

_ALIGN = 4096  # safe for 512 B logical and 4 KiB physical sectors


class ODirectUnsupportedError(OSError):
    """The file system refused O_DIRECT (tmpfs, some overlay or network FS)."""


def page_aligned_array(shape: tuple[int, ...], dtype: Any) -> np.ndarray:
    """Return a zeroed, already faulted-in array backed by an anonymous mmap.

    Anonymous mmap memory is page aligned, which O_DIRECT needs; touching it
    up front keeps page-fault cost out of the timed region.
    """
    dt = np.dtype(dtype)
    nbytes = int(np.prod(shape)) * dt.itemsize
    buf = mmap.mmap(-1, max(nbytes, 1))
    arr = np.frombuffer(buf, dtype=dt, count=int(np.prod(shape))).reshape(shape)
    arr.fill(0)
    return arr


def source_buffers(count: int, nbytes: int) -> list[memoryview]:
    """``count`` page-aligned buffers of ``nbytes``, faulted in, for raw writes.

    Allocated once per bench run and reused by every raw configuration and
    round: a first touch of guest memory runs at under 1 GB/s here, which
    would otherwise be paid (untimed, but slowly) before every run.
    """
    if count <= 0 or nbytes <= 0 or nbytes % _ALIGN:
        raise ValueError(f"need count > 0 and nbytes a positive multiple of {_ALIGN}")
    buf = mmap.mmap(-1, count * nbytes)
    view = np.frombuffer(buf, dtype=np.uint8)
    view[:] = np.resize(np.arange(251, dtype=np.uint8), view.size)  # fault in
    del view  # an exported numpy view would pin buf
    mv = memoryview(buf)
    return [mv[k * nbytes : (k + 1) * nbytes] for k in range(count)]


def raw_odirect_write(
    path: str | os.PathLike[str],
    total_bytes: int,
    chunk_bytes: int = 8 << 20,
    *,
    in_flight: int = 1,
    prealloc_bytes: int | None = None,
    buffers: Sequence[memoryview] | None = None,
) -> dict[str, Any]:
    """Write ``total_bytes`` with O_DIRECT pwrite and fsync; return the timing.

    ``in_flight`` requests of ``chunk_bytes`` are outstanding at once, each
    on a thread around ``os.pwrite`` (which releases the GIL), taking the
    next chunk in file order: one request at a time understates a disk that
    needs several to reach its speed. The file is preallocated with
    ``posix_fallocate`` to ``prealloc_bytes`` (default: the bytes written;
    pass the size a writer under test reserves, so both pay the same extent
    conversion), untimed and reported as ``seconds_fallocate``. A tail that
    is not a multiple of 4096 is written padded and the file truncated back.
    Time runs from the first write to the fsync's return. Returns ``{"bytes",
    "seconds", "gbps", "completions": [(t, bytes), ...], ...}`` with GB/s in
    decimal units (1e9). ``buffers`` (one per request in flight, see
    ``source_buffers``) are the sources; otherwise they are made here.
    Raises ``ODirectUnsupportedError`` when the file system rejects O_DIRECT.
    """
    if total_bytes <= 0:
        raise ValueError("total_bytes must be positive")
    if chunk_bytes <= 0 or chunk_bytes % _ALIGN:
        raise ValueError(f"chunk_bytes must be a positive multiple of {_ALIGN}")
    if in_flight < 1:
        raise ValueError("in_flight must be at least 1")
    if buffers is not None and (
        len(buffers) < in_flight or any(len(b) < chunk_bytes for b in buffers)
    ):
        raise ValueError(f"need {in_flight} buffers of at least {chunk_bytes} bytes")
    o_direct = getattr(os, "O_DIRECT", None)
    if o_direct is None:
        raise ODirectUnsupportedError(errno.ENOTSUP, "O_DIRECT unavailable here")

    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | o_direct
    try:
        fd = os.open(path, flags, 0o644)
    except OSError as e:
        if e.errno in (errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP):
            raise ODirectUnsupportedError(
                e.errno, f"file system rejects O_DIRECT: {path} ({e.strerror})"
            ) from e
        raise

    sources = list(buffers[:in_flight]) if buffers is not None else None
    if sources is None:
        sources = source_buffers(in_flight, chunk_bytes)
    padded_total = -(-total_bytes // _ALIGN) * _ALIGN
    chunks = -(-padded_total // chunk_bytes)
    lock = threading.Lock()
    taken = 0
    completions: list[tuple[float, int]] = []

    def writer(src: memoryview, t0: float) -> None:
        nonlocal taken
        while True:
            with lock:
                k = taken
                taken += 1
            if k >= chunks:
                return
            offset = k * chunk_bytes
            n = min(chunk_bytes, padded_total - offset)
            written = os.pwrite(fd, src[:n], offset)
            if written != n:  # O_DIRECT short writes are not resumable mid-block
                raise OSError(errno.EIO, f"short O_DIRECT write {written} != {n}")
            with lock:
                completions.append((time.perf_counter() - t0, n))

    try:
        t0 = time.perf_counter()
        os.posix_fallocate(fd, 0, max(padded_total, prealloc_bytes or 0))
        t_alloc = time.perf_counter() - t0

        t0 = time.perf_counter()
        if in_flight == 1:
            writer(sources[0], t0)
        else:
            with ThreadPoolExecutor(in_flight, thread_name_prefix="raw-io") as pool:
                for f in [pool.submit(writer, s, t0) for s in sources]:
                    f.result()
        t_write = time.perf_counter() - t0
        if padded_total != total_bytes:
            os.ftruncate(fd, max(total_bytes, prealloc_bytes or 0))
        os.fsync(fd)
        seconds = time.perf_counter() - t0
    except OSError as e:
        if e.errno == errno.EINVAL:
            raise ODirectUnsupportedError(
                e.errno, f"O_DIRECT write rejected (alignment or FS): {path}"
            ) from e
        raise
    finally:
        os.close(fd)
        if buffers is None:
            for s in sources:
                s.release()
    return {
        "name": f"raw_odirect_x{in_flight}",
        "bytes": total_bytes,
        "chunk_bytes": chunk_bytes,
        "in_flight": in_flight,
        "seconds": seconds,
        "seconds_write": t_write,
        "seconds_fallocate": t_alloc,
        "gbps": total_bytes / seconds / 1e9,
        "completions": sorted(completions),
    }


def fio_path() -> str | None:
    """The fio executable, or None (then the bench notes that it skipped fio)."""
    return shutil.which("fio")


def fio_write(
    path: str | os.PathLike[str],
    total_bytes: int,
    *,
    block_bytes: int = 64 << 20,
    iodepth: int = 16,
    prealloc_bytes: int | None = None,
    engine: str = "io_uring",
) -> dict[str, Any]:
    """The same sequential O_DIRECT write done by fio: a reference no Python
    writer can flatter (``iodepth`` requests in flight through io_uring).

    The file is laid out with fallocate to ``prealloc_bytes`` (as
    ``raw_odirect_write`` does) and fio writes ``total_bytes`` rounded down
    to whole blocks from offset 0, then fsyncs (``end_fsync``, which fio
    counts in its runtime). GB/s are fio's bytes over fio's runtime (ms).
    Raises ``RuntimeError`` with fio's message if it fails.
    """
    exe = fio_path()
    if exe is None:
        raise FileNotFoundError("fio is not installed")
    io_bytes = total_bytes - total_bytes % block_bytes or block_bytes
    cmd = [
        exe,
        "--name=mesowriter-bench",
        f"--filename={os.fspath(path)}",
        "--rw=write",
        f"--bs={block_bytes}",
        f"--iodepth={iodepth}",
        f"--ioengine={engine}",
        "--direct=1",
        f"--filesize={max(io_bytes, prealloc_bytes or 0)}",
        f"--io_size={io_bytes}",
        "--fallocate=native",
        "--end_fsync=1",
        "--output-format=json",
    ]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - t0
    job: dict[str, Any] = {}
    with contextlib.suppress(ValueError, LookupError):
        # fio may print notes before its JSON
        job = json.loads(proc.stdout[proc.stdout.index("{") :])["jobs"][0]
    if proc.returncode != 0 or not job or job.get("error"):
        raise RuntimeError(
            f"fio failed (exit {proc.returncode}): "
            f"{(proc.stderr or proc.stdout).strip()[-500:]}"
        )
    written = int(job["write"]["io_bytes"])
    seconds = int(job["write"]["runtime"]) / 1e3
    return {
        "name": f"fio_{engine}_qd{iodepth}",
        "bytes": written,
        "chunk_bytes": block_bytes,
        "in_flight": iodepth,
        "seconds": seconds,
        "seconds_wall": wall,
        "gbps": written / seconds / 1e9 if seconds > 0 else 0.0,
        "command": " ".join(cmd),
    }


def bare_memcpy_cost(
    shape: tuple[int, ...] = (2048, 2048),
    dtype: Any = np.uint16,
    repeats: int = 50,
) -> float:
    """Return seconds per frame of ``np.copyto`` into a warm page-aligned buffer.

    This is the acquisition-side floor of any shared-memory hand-off: the
    camera frame has to be copied once into the ring slot.
    """
    if repeats <= 0:
        raise ValueError("repeats must be positive")
    src = np.empty(shape, dtype=dtype)
    src.reshape(-1)[:] = np.resize(np.arange(251).astype(src.dtype), src.size)
    dst = page_aligned_array(shape, dtype)
    for _ in range(3):  # warm caches and TLB
        np.copyto(dst, src)
    t0 = time.perf_counter()
    for _ in range(repeats):
        np.copyto(dst, src)
    return (time.perf_counter() - t0) / repeats
