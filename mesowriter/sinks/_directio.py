"""A file written at page-aligned offsets without filling the page cache.

Buffered writers let gigabytes of dirty pages pile up and then stall on the
flush; direct I/O from page-aligned shared memory runs at the disk's own
speed. Where the filesystem refuses O_DIRECT (tmpfs, some network mounts) or
the OS has none, we fall back to buffered writes that are synced and dropped
from the cache every `sync_every` bytes, so dirty pages stay bounded.
"""

from __future__ import annotations

import errno
import mmap
import os
import sys
from contextlib import suppress

from mesowriter._ring import PAGE

DEFAULT_SYNC_EVERY = 32 * 1024 * 1024
_F_NOCACHE = 48  # macOS fcntl: no caching for this descriptor


class AlignedFile:
    """pwrite of page-aligned buffers at page-aligned offsets."""

    def __init__(
        self,
        path: str,
        *,
        mode: str,
        direct: bool = True,
        sync_every: int = DEFAULT_SYNC_EVERY,
    ) -> None:
        """`mode` is "create" (must not exist), "overwrite" or "resume"."""
        flags = os.O_RDWR | getattr(os, "O_BINARY", 0)
        if mode == "create":
            flags |= os.O_CREAT | os.O_EXCL
        elif mode == "overwrite":
            flags |= os.O_CREAT | os.O_TRUNC
        elif mode != "resume":
            raise ValueError(f"unknown mode {mode!r}")
        self.path = path
        self.sync_every = sync_every
        self._unsynced = 0
        self.direct = False
        self.fd = -1
        if direct and hasattr(os, "O_DIRECT"):
            try:
                self.fd = os.open(path, flags | os.O_DIRECT, 0o644)
                self.direct = True
            except OSError as exc:
                if exc.errno != errno.EINVAL:
                    raise
        if self.fd < 0:
            self.fd = os.open(path, flags, 0o644)
            if direct and sys.platform == "darwin":
                with suppress(OSError):
                    import fcntl

                    fcntl.fcntl(self.fd, _F_NOCACHE, 1)
                    self.direct = True
        # Unaligned tails (the final OME-XML) go through the page cache.
        self._buffered_fd = os.open(path, os.O_RDWR | getattr(os, "O_BINARY", 0))

    def pwrite(
        self, buf: memoryview | bytes | bytearray | mmap.mmap, offset: int
    ) -> int:
        """Write all of `buf` (page-aligned memory, page-multiple length)."""
        view = memoryview(buf).cast("B")
        if self.direct and (offset % PAGE or len(view) % PAGE):
            raise ValueError("direct writes need page-aligned offset and length")
        try:
            self._write_all(self.fd, view, offset)
        except OSError as exc:
            if not (self.direct and exc.errno == errno.EINVAL):
                raise
            self._drop_direct()  # the filesystem accepted O_DIRECT at open only
            self._write_all(self.fd, view, offset)
        if not self.direct:
            self._bound_dirty(len(view))
        return len(view)

    def pwrite_tail(self, data: bytes, offset: int) -> None:
        """Write unaligned bytes through the page cache, then make them durable."""
        self._write_all(self._buffered_fd, memoryview(data), offset)
        os.fsync(self._buffered_fd)

    @staticmethod
    def _write_all(fd: int, view: memoryview, offset: int) -> None:
        done = 0
        while done < len(view):
            n = _pwrite(fd, view[done:], offset + done)
            if n <= 0:
                raise OSError(errno.EIO, "write returned no progress")
            done += n

    def _drop_direct(self) -> None:
        os.close(self.fd)
        self.fd = os.open(self.path, os.O_RDWR | getattr(os, "O_BINARY", 0))
        self.direct = False

    def _bound_dirty(self, nbytes: int) -> None:
        self._unsynced += nbytes
        if self._unsynced >= self.sync_every:
            self._unsynced = 0
            os.fsync(self.fd)
            if hasattr(os, "posix_fadvise"):
                os.posix_fadvise(self.fd, 0, 0, os.POSIX_FADV_DONTNEED)

    def allocate(self, length: int) -> None:
        """Reserve disk blocks up to `length` (fewer fragments, early ENOSPC)."""
        if hasattr(os, "posix_fallocate"):
            try:
                os.posix_fallocate(self.fd, 0, length)
                return
            except OSError as exc:
                if exc.errno not in (errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS):
                    raise
        if os.fstat(self.fd).st_size < length:
            os.ftruncate(self.fd, length)

    def truncate(self, length: int) -> None:
        os.ftruncate(self.fd, length)

    def size(self) -> int:
        return os.fstat(self.fd).st_size

    def sync(self) -> None:
        os.fsync(self.fd)

    def close(self) -> None:
        for name in ("fd", "_buffered_fd"):
            fd = getattr(self, name)
            if fd >= 0:
                setattr(self, name, -1)
                os.close(fd)


def _pwrite(fd: int, data: memoryview, offset: int) -> int:
    """os.pwrite where it exists; seek + write elsewhere (one writer per fd)."""
    if hasattr(os, "pwrite"):
        return os.pwrite(fd, data, offset)
    os.lseek(fd, offset, os.SEEK_SET)  # pragma: no cover - Windows
    return os.write(fd, data)  # pragma: no cover - Windows
