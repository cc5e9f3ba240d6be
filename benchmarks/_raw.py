"""Baselines: what the disk and the CPU can do with no writer in the way.

``raw_odirect_write`` is the ceiling any writer can hope for on this disk;
``bare_memcpy_cost`` is the least the acquisition side must pay per frame to
hand it off (one copy into a warm shared buffer).
"""

from __future__ import annotations

import errno
import mmap
import os
import time
from typing import Any

import numpy as np

__all__ = [
    "ODirectUnsupportedError",
    "bare_memcpy_cost",
    "page_aligned_array",
    "raw_odirect_write",
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


def raw_odirect_write(
    path: str | os.PathLike[str],
    total_bytes: int,
    chunk_bytes: int = 8 << 20,
) -> dict[str, Any]:
    """Write ``total_bytes`` with O_DIRECT pwrite and fsync; return the timing.

    The file is preallocated with ``posix_fallocate`` (not timed, reported as
    ``seconds_fallocate``) so the timed loop measures the disk, not extent
    allocation. A tail that is not a multiple of 4096 is written padded and
    the file truncated back. Returns ``{"bytes", "seconds", "gbps", ...}``
    with GB/s in decimal units (1e9). Raises ``ODirectUnsupportedError`` when
    the file system rejects O_DIRECT.
    """
    if total_bytes <= 0:
        raise ValueError("total_bytes must be positive")
    if chunk_bytes <= 0 or chunk_bytes % _ALIGN:
        raise ValueError(f"chunk_bytes must be a positive multiple of {_ALIGN}")
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

    buf = mmap.mmap(-1, chunk_bytes)
    view = np.frombuffer(buf, dtype=np.uint8)
    view[:] = np.resize(np.arange(251, dtype=np.uint8), chunk_bytes)  # fault in
    del view  # an exported buffer would stop buf.close()
    padded_total = -(-total_bytes // _ALIGN) * _ALIGN
    mv = memoryview(buf)
    try:
        t0 = time.perf_counter()
        os.posix_fallocate(fd, 0, padded_total)
        t_alloc = time.perf_counter() - t0

        offset = 0
        t0 = time.perf_counter()
        while offset < padded_total:
            n = min(chunk_bytes, padded_total - offset)
            written = os.pwrite(fd, mv[:n], offset)
            if written != n:  # O_DIRECT short writes are not resumable mid-block
                raise OSError(errno.EIO, f"short O_DIRECT write {written} != {n}")
            offset += n
        t_write = time.perf_counter() - t0
        if padded_total != total_bytes:
            os.ftruncate(fd, total_bytes)
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
        mv.release()
        buf.close()
    return {
        "name": "raw_odirect",
        "bytes": total_bytes,
        "chunk_bytes": chunk_bytes,
        "seconds": seconds,
        "seconds_write": t_write,
        "seconds_fallocate": t_alloc,
        "gbps": total_bytes / seconds / 1e9,
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
