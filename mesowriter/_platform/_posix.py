"""Linux and macOS: O_DIRECT / F_NOCACHE, flock, fallocate, signals, /dev/shm."""

from __future__ import annotations

import ctypes
import errno
import fcntl
import mmap
import os
import signal
import stat
import struct
import sys
import threading
from collections.abc import Callable
from contextlib import suppress
from typing import Any

from mesowriter._platform._base import (
    O_NOFOLLOW,
    AlignedFileBase,
    Mode,
    PlatformBase,
    direct_alignment,
    is_unsupported,
    locked_error,
    replaced_error,
    thp_shmem_allows,
)

MACOS = sys.platform == "darwin"
_O_DIRECT: int | None = getattr(os, "O_DIRECT", None)
_F_NOCACHE: int | None = getattr(fcntl, "F_NOCACHE", 48 if MACOS else None)
_F_FULLFSYNC: int | None = getattr(fcntl, "F_FULLFSYNC", 51 if MACOS else None)
_F_PREALLOCATE = 42  # macOS: reserve blocks past the end, size unchanged
_F_ALLOCATEALL, _F_PEOFPOSMODE = 4, 3
_FLOCK_UNSUPPORTED = frozenset(
    {errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL}
)
SHUTDOWN_SIGNALS = ("SIGTERM", "SIGHUP")


def _load_fallocate() -> Callable[[int, int, int, int], int] | None:
    """Linux fallocate(2) (mode 0: allocate, size grows). Not posix_fallocate:
    where the filesystem has no fallocate, glibc's posix_fallocate writes a
    byte into every block instead, the very zero-writing we avoid."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        fn = getattr(libc, "fallocate64", None) or libc.fallocate
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]
    fn.restype = ctypes.c_int
    return fn  # type: ignore[no-any-return]


_fallocate = _load_fallocate()


def _reserve_blocks(fd: int, offset: int, length: int) -> None:
    """Reserve blocks for [offset, offset + length) without writing; OSError
    (errno set) when the filesystem refuses."""
    if _fallocate is not None:
        while _fallocate(fd, 0, offset, length) != 0:
            err = ctypes.get_errno()
            if err != errno.EINTR:
                raise OSError(err, os.strerror(err))
    elif MACOS:
        extra = offset + length - os.fstat(fd).st_size
        if extra > 0:
            fstore = struct.pack("=Iiqqq", _F_ALLOCATEALL, _F_PEOFPOSMODE, 0, extra, 0)
            fcntl.fcntl(fd, _F_PREALLOCATE, fstore)
    elif hasattr(os, "posix_fallocate"):  # the BSDs: native, never emulated
        os.posix_fallocate(fd, offset, length)
    else:
        raise OSError(errno.EOPNOTSUPP, "no way to reserve blocks here")


def _sector_size(st_dev: int) -> int | None:
    """The logical block size of the disk holding a file (Linux sysfs), or None."""
    base = f"/sys/dev/block/{os.major(st_dev)}:{os.minor(st_dev)}"
    for candidate in (f"{base}/queue", f"{base}/../queue"):  # disk, partition
        with suppress(OSError, ValueError):
            with open(f"{candidate}/logical_block_size", encoding="ascii") as fh:
                return int(fh.read())
    return None


_datasync: Callable[[int], None] = getattr(os, "fdatasync", os.fsync)


def _flock(fd: int, path: str) -> bool:
    """Take the owner lock: exclusive, never waiting. False where the
    filesystem has no locks (then the file is written unlocked)."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        raise locked_error(path) from None
    except OSError as exc:
        if exc.errno in _FLOCK_UNSUPPORTED:
            return False
        raise
    return True


def _open_nofollow(path: str, flags: int) -> int:
    try:
        return os.open(path, flags | O_NOFOLLOW, 0o644)
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.EMLINK) and os.path.islink(path):
            raise OSError(
                errno.ELOOP, f"{path} is a symbolic link; refusing to follow it", path
            ) from exc
        raise


class PosixAlignedFile(AlignedFileBase):
    """flock-owned file; pixels through O_DIRECT (Linux) or F_NOCACHE (macOS)."""

    _fd = -1  # the buffered descriptor: metadata, reads, the lock
    _pixel_fd = -1  # the direct descriptor, or _fd after a fallback

    def _open(self, mode: Mode, direct: bool) -> None:
        flags = os.O_RDWR
        if mode == "create":
            flags |= os.O_CREAT | os.O_EXCL
        elif mode == "overwrite":
            flags |= os.O_CREAT  # truncated only once the lock is ours
        self._fd = self._pixel_fd = _open_nofollow(self.path, flags)
        try:
            st = os.fstat(self._fd)
            if not stat.S_ISREG(st.st_mode):
                raise OSError(
                    errno.EINVAL, f"{self.path} is not a regular file", self.path
                )
            self.locked = _flock(self._fd, self.path)
            if mode == "overwrite":
                os.ftruncate(self._fd, 0)
            if direct:
                self._open_direct(st)
        except BaseException:
            self._close_handles()
            raise

    def _open_direct(self, st: os.stat_result) -> None:
        alignment = direct_alignment(_sector_size(st.st_dev))
        if alignment is None:
            return
        if _O_DIRECT is not None:
            try:
                fd = _open_nofollow(self.path, os.O_RDWR | _O_DIRECT)
            except OSError as exc:
                if exc.errno == errno.EINVAL:  # tmpfs before Linux 6.6, some FUSE
                    return
                raise
        elif _F_NOCACHE is not None:
            fd = _open_nofollow(self.path, os.O_RDWR)
            try:
                fcntl.fcntl(fd, _F_NOCACHE, 1)
            except OSError:
                os.close(fd)
                return
        else:
            return
        again = os.fstat(fd)
        if (again.st_dev, again.st_ino) != (st.st_dev, st.st_ino):
            os.close(fd)
            raise replaced_error(self.path)
        self._pixel_fd = fd
        self.direct = True
        self.alignment = alignment

    def _write_direct(self, view: memoryview, offset: int) -> int:
        return os.pwrite(self._pixel_fd, view, offset)

    def _write_buffered(self, view: memoryview, offset: int) -> int:
        return os.pwrite(self._fd, view, offset)

    def _refuses_direct(self, exc: OSError) -> bool:
        return exc.errno == errno.EINVAL

    _retired_fd = -1  # the direct descriptor after a fallback, closed at close

    def _drop_direct(self) -> None:
        # Not closed here: another I/O thread may be about to write through
        # it, and a closed number can be reused by an unrelated file.
        if self._pixel_fd != self._fd:
            self._retired_fd = self._pixel_fd
        self._pixel_fd = self._fd

    def _flush_dirty(self) -> None:
        # Written out, not forced through the drive cache: this bounds dirty
        # pages; durability is sync()'s job.
        _datasync(self._fd)
        if hasattr(os, "posix_fadvise"):
            os.posix_fadvise(self._fd, 0, 0, os.POSIX_FADV_DONTNEED)

    def _read_some(self, n: int, offset: int) -> bytes:
        return os.pread(self._fd, n, offset)

    def sync(self) -> None:
        """Data and the metadata to read it, durable: one call covers both
        descriptors (the cache and the size belong to the file, not to one)."""
        if _F_FULLFSYNC is not None:
            try:  # macOS fsync leaves data in the drive's cache
                fcntl.fcntl(self._fd, _F_FULLFSYNC)
                return
            except OSError:
                pass  # not on this filesystem (network mounts): plain fsync
            os.fsync(self._fd)
        else:
            _datasync(self._fd)

    def reserve(self, offset: int, length: int) -> None:
        """Reserve blocks without writing (the size grows on Linux); ENOSPC
        raised, an unsupported filesystem ignored."""
        if length <= 0:
            return
        try:
            _reserve_blocks(self._fd, offset, length)
        except OSError as exc:
            self._reserve_failed(exc, length)

    def make_sparse(self) -> None:
        """Nothing to do: POSIX filesystems leave holes where nothing was written."""

    def truncate(self, length: int) -> None:
        os.ftruncate(self._fd, length)

    def size(self) -> int:
        return os.fstat(self._fd).st_size

    def _close_handles(self) -> None:
        pixel, meta = self._pixel_fd, self._fd
        self._pixel_fd = self._fd = -1
        if pixel >= 0 and pixel != meta:
            os.close(pixel)
        if self._retired_fd >= 0:
            os.close(self._retired_fd)
            self._retired_fd = -1
        if meta >= 0:
            os.close(meta)  # releases the flock


class PosixPlatform(PlatformBase):
    """Linux and macOS."""

    shared_library_suffix = ".dylib" if MACOS else ".so"
    library_path_var = "DYLD_LIBRARY_PATH" if MACOS else "LD_LIBRARY_PATH"

    proc_dir = "/proc"
    thp_shmem_path = "/sys/kernel/mm/transparent_hugepage/shmem_enabled"

    def probe_lock(self, path: str) -> bool:
        """Whether a live AlignedFile owns `path` (a shared flock would wait).

        Follows a link at `path`: this only asks, it changes nothing.
        """
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
        except FileNotFoundError:
            return False
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        except OSError as exc:
            if exc.errno in _FLOCK_UNSUPPORTED:
                return False
            raise
        finally:
            os.close(fd)  # also drops our shared lock at once
        return False

    def fsync_dir(self, folder: str) -> None:
        """fsync the folder: a new or renamed name is durable only then."""
        try:
            fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
        except PermissionError:
            return  # a folder we may write but not read: nothing we can do
        try:
            os.fsync(fd)
        except OSError as exc:
            if not is_unsupported(exc):
                raise
        finally:
            os.close(fd)

    def install_shutdown_handler(
        self, callback: Callable[[str], None]
    ) -> Callable[[], None]:
        """SIGTERM and SIGHUP call `callback("SIGTERM")`/`("SIGHUP")`.

        A handler installed before ours is called after the callback. A
        signal that is ignored (SIGHUP under `nohup`) stays ignored: the user
        asked for the process to outlive its terminal. Python runs signal
        handlers on the main thread only, so elsewhere nothing is installed.
        """
        if threading.current_thread() is not threading.main_thread():
            return lambda: None
        installed: dict[signal.Signals, tuple[Any, Any]] = {}
        for name in SHUTDOWN_SIGNALS:
            sig = getattr(signal, name, None)
            if sig is None:
                continue
            previous = signal.getsignal(sig)
            if previous == signal.SIG_IGN:
                continue

            def handler(signum: int, frame: Any, previous: Any = previous) -> None:
                callback(signal.Signals(signum).name)
                if callable(previous):
                    previous(signum, frame)

            signal.signal(sig, handler)
            installed[sig] = (previous, handler)

        def uninstall() -> None:
            if threading.current_thread() is not threading.main_thread():
                return
            for sig, (previous, handler) in list(installed.items()):
                if signal.getsignal(sig) is handler:  # not replaced since
                    signal.signal(sig, signal.SIG_DFL if previous is None else previous)
            installed.clear()

        return uninstall

    def shm_available_bytes(self) -> int | None:
        """Free room in /dev/shm (Linux), where POSIX shared memory lives."""
        if not os.path.isdir(self.shm_dir):
            return None
        st = os.statvfs(self.shm_dir)
        return st.f_bavail * st.f_frsize

    def stale_shared_memory(self, magic: int, *, prefix: str = "psm_") -> list[str]:
        """Blocks (named `prefix`...) that start with `magic` and that no
        living process maps (Linux /proc); [] where that cannot be known.

        Only blocks of our own user are considered unless we are root:
        another user's processes' maps may be unreadable to us.
        """
        shm, proc = self.shm_dir, self.proc_dir
        if not (os.path.isdir(shm) and os.path.isdir(proc)):
            return []
        want = magic.to_bytes(8, "little")
        uid = os.geteuid()
        candidates = []
        for name in os.listdir(shm):
            if not name.startswith(prefix):
                continue
            try:
                fd = os.open(
                    os.path.join(shm, name), os.O_RDONLY | os.O_NONBLOCK | O_NOFOLLOW
                )
            except OSError:
                continue
            try:
                st = os.fstat(fd)
                head = os.pread(fd, 8, 0) if stat.S_ISREG(st.st_mode) else b""
            except OSError:
                continue
            finally:
                os.close(fd)
            if head == want and (uid == 0 or st.st_uid == uid):
                candidates.append(name)
        if not candidates:
            return []
        in_use: set[str] = set()
        for pid in os.listdir(proc):
            if not pid.isdigit():
                continue
            try:
                with open(
                    os.path.join(proc, pid, "maps"), encoding="utf-8", errors="replace"
                ) as fh:
                    maps = fh.read()
            except OSError:
                continue
            in_use.update(n for n in candidates if f"{shm}/{n}" in maps)
        return [n for n in candidates if n not in in_use]

    def remove_shared_memory(self, name: str) -> None:
        """shm_unlink by name; a block already gone is no error."""
        import _posixshmem  # CPython's own, as multiprocessing.shared_memory uses

        with suppress(FileNotFoundError):
            _posixshmem.shm_unlink("/" + name.lstrip("/"))

    def advise_huge_pages(self, buf: mmap.mmap) -> bool:
        """madvise(MADV_HUGEPAGE) where shmem gets huge pages on request:
        fewer TLB misses when copying hundreds of MB per second."""
        advice = getattr(mmap, "MADV_HUGEPAGE", None)
        if advice is None:
            return False
        try:
            with open(self.thp_shmem_path, encoding="ascii") as fh:
                setting = fh.read()
        except OSError:
            return False
        if not thp_shmem_allows(setting):
            return False
        try:
            buf.madvise(advice)
        except (OSError, ValueError):
            return False
        return True
