"""The platform layer's shared half: everything that is the same on every OS.

`_posix` and `_windows` supply only the calls that differ; the decisions
around them (alignment, when to fall back to buffered writes, which errors
are worth retrying, how a wait over many objects is split, how a Windows
path becomes a long path) live here, so that the Linux test suite exercises
them for every platform.
"""

from __future__ import annotations

import errno
import mmap
import ntpath
import os
import secrets
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Sequence
from contextlib import suppress
from multiprocessing import Pipe, connection
from typing import Any, Literal, TypeVar

import numpy as np

Mode = Literal["create", "overwrite", "resume"]
MODES: tuple[Mode, ...] = ("create", "overwrite", "resume")
Buffer = Any  # anything exporting a contiguous buffer (bytes, mmap, memoryview)

PAGE = 4096
DEFAULT_SYNC_EVERY = 32 << 20
NAME_MAX = 255  # bytes of one name (Linux, macOS); Windows counts 255 UTF-16 units
MAX_PATH = 260
# CreateDirectoryW refuses paths of MAX_PATH - 12 characters and more (room
# for an 8.3 name), so the prefix is needed from there on, not only at 260.
LONG_PATH_FROM = MAX_PATH - 12
O_BINARY: int = getattr(os, "O_BINARY", 0)  # Windows: no CRLF translation
O_NOFOLLOW: int = getattr(os, "O_NOFOLLOW", 0)

# Windows errors another program causes for a moment: ERROR_ACCESS_DENIED
# (also a file whose deletion is pending), ERROR_SHARING_VIOLATION (a viewer
# or an antivirus scanner has it open), ERROR_LOCK_VIOLATION.
TRANSIENT_WINERRORS = frozenset({5, 32, 33})
RETRY_FIRST_DELAY = 0.005
RETRY_MAX_DELAY = 0.25

# errno values meaning "this filesystem cannot do that": a fallback, not a failure.
UNSUPPORTED_ERRNOS = frozenset(
    {errno.EOPNOTSUPP, errno.ENOTSUP, errno.ENOSYS, errno.EINVAL, errno.ENOTTY}
)
# The same from Windows: ERROR_INVALID_FUNCTION, ERROR_NOT_SUPPORTED,
# ERROR_INVALID_PARAMETER.
UNSUPPORTED_WINERRORS = frozenset({1, 50, 87})
DISK_FULL_WINERRORS = frozenset({39, 112})  # ERROR_HANDLE_DISK_FULL, ERROR_DISK_FULL

T = TypeVar("T")


class FileLockedError(OSError):
    """Another handle or process owns the file (it holds the owner lock)."""


def locked_error(path: str) -> FileLockedError:
    return FileLockedError(
        errno.EBUSY,
        f"{path} is already open for writing by another writer (its lock is held)",
        path,
    )


def winerror(exc: BaseException) -> int | None:
    """The Windows error code of an OSError (None elsewhere, or none given)."""
    code = getattr(exc, "winerror", None)
    return code if isinstance(code, int) else None


def is_transient(exc: BaseException) -> bool:
    """An error another program causes for a moment (never true on POSIX)."""
    return isinstance(exc, OSError) and winerror(exc) in TRANSIENT_WINERRORS


def is_unsupported(exc: OSError) -> bool:
    """The filesystem cannot do this (so do without), as opposed to a failure."""
    code = winerror(exc)
    if code is not None:
        return code in UNSUPPORTED_WINERRORS
    return exc.errno in UNSUPPORTED_ERRNOS


def is_disk_full(exc: OSError) -> bool:
    return exc.errno in (errno.ENOSPC, errno.EDQUOT) or (
        winerror(exc) in DISK_FULL_WINERRORS
    )


def replaced_error(path: str) -> OSError:
    return OSError(errno.EBUSY, f"{path} was replaced while it was opened", path)


def disk_full_error(path: str, nbytes: int, exc: OSError) -> OSError:
    return OSError(
        errno.ENOSPC,
        f"no room to reserve {nbytes / 2**30:.2f} GiB for {path} ({exc.strerror})",
        path,
    )


# -- retries ---------------------------------------------------------------------------
def retry_transient(
    op: Callable[[], T],
    *,
    what: str,
    path: str,
    timeout: float,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> T:
    """Run `op`, retrying with backoff while it fails for a transient reason.

    A viewer or a virus scanner opening a sidecar for a moment must not fail
    a run; one that keeps it open for `timeout` seconds gets an error that
    names the file, so the user knows which program to close.
    """
    deadline = clock() + timeout
    delay = RETRY_FIRST_DELAY
    while True:
        try:
            return op()
        except OSError as exc:
            if not is_transient(exc):
                raise
            remaining = deadline - clock()
            if remaining <= 0:
                raise OSError(
                    exc.errno,
                    f"{what} {path} failed for {timeout:g} s: another program "
                    f"keeps the file open ({exc.strerror})",
                    path,
                ) from exc
            sleep(min(delay, remaining))
            delay = min(delay * 2, RETRY_MAX_DELAY)


# -- alignment -------------------------------------------------------------------------
def direct_alignment(sector: int | None) -> int | None:
    """The alignment direct writes use on a volume, or None for buffered writes.

    At least a page: ring slots and file layouts are page-aligned, so every
    sector size up to 4096 divides it. An unknown sector size is taken as
    512/4096 (every common disk); a larger one is a volume our page-aligned
    layout cannot serve without the page cache.
    """
    if sector is None or sector <= 0:
        return PAGE
    if sector > PAGE or sector & (sector - 1):
        return None
    return PAGE


def buffer_address(view: memoryview) -> int:
    """The address of a buffer's first byte (read-only buffers too)."""
    if not len(view):
        return 0
    return int(np.frombuffer(view, dtype=np.uint8).ctypes.data)


def is_aligned(view: memoryview, offset: int, alignment: int) -> bool:
    """Whether offset, length and address are multiples of `alignment`."""
    return not (
        offset % alignment or len(view) % alignment or buffer_address(view) % alignment
    )


def check_aligned(view: memoryview, offset: int, alignment: int) -> None:
    """Raise ValueError unless offset, length and address are multiples."""
    if offset % alignment or len(view) % alignment:
        raise ValueError(
            f"direct writes need offset and length in multiples of {alignment} "
            f"bytes (got offset {offset}, length {len(view)})"
        )
    if buffer_address(view) % alignment:
        raise ValueError(f"direct writes need a buffer aligned to {alignment} bytes")


def byte_view(buf: Buffer) -> memoryview:
    view = memoryview(buf)
    return view if view.format == "B" and view.ndim == 1 else view.cast("B")


# -- names -----------------------------------------------------------------------------
def truncate_name(name: str, max_bytes: int) -> str:
    """`name` cut to at most `max_bytes` UTF-8 bytes, never inside a character."""
    data = name.encode("utf-8", "surrogateescape")
    if len(data) <= max_bytes:
        return name
    return data[:max_bytes].decode("utf-8", "ignore")


def temp_leaf(name: str, token: str) -> str:
    """`.<name>.<token>.tmp`, short enough for NAME_MAX.

    The token makes the name unpredictable, so nobody can plant a symbolic
    link there in advance; the name still tells whose temporary file it is.
    """
    suffix = f".{token}.tmp"
    return f".{truncate_name(name, NAME_MAX - 1 - len(suffix))}{suffix}"


def long_path(path: str) -> str:
    """The `\\\\?\\` form of a long absolute Windows path; other paths unchanged.

    Win32 calls refuse paths of MAX_PATH characters and more unless they
    carry this prefix (or the machine opted in to long paths). The prefix
    also turns off Win32's normalisation, so the path is normalised here:
    separators become backslashes and `.`/`..` are resolved. Relative and
    drive-relative paths are left alone (the caller makes them absolute).
    """
    if len(path) < LONG_PATH_FROM or path.startswith(("\\\\?\\", "\\\\.\\")):
        return path
    norm = ntpath.normpath(path)
    drive, rest = ntpath.splitdrive(norm)
    if not rest.startswith("\\"):
        return path  # relative or "C:relative"
    if drive.startswith("\\\\"):  # \\server\share -> \\?\UNC\server\share
        return "\\\\?\\UNC\\" + norm[2:]
    if len(drive) == 2 and drive[1] == ":":
        return "\\\\?\\" + norm
    return path


_RESERVED = frozenset(
    {"CON", "PRN", "AUX", "NUL", "CONIN$", "CONOUT$"}
    | {f"{dev}{n}" for dev in ("COM", "LPT") for n in "123456789\u00b9\u00b2\u00b3"}
)


def reserved_name(path: str) -> str | None:
    """The first component of a Windows path that names a device, else None.

    `NUL.ome.tiff` or a folder `aux` opens a device on Windows, not a file:
    the frames would vanish. A name counts up to its first dot, without
    trailing spaces (Windows ignores both).
    """
    _, rest = ntpath.splitdrive(path)
    for part in rest.replace("/", "\\").split("\\"):
        if part.split(".", 1)[0].rstrip(" ").upper() in _RESERVED:
            return part
    return None


# -- transparent huge pages ----------------------------------------------------------
THP_SHMEM_MODES = frozenset({"always", "within_size", "advise", "force"})


def thp_shmem_allows(setting: str) -> bool:
    """Whether shmem_enabled's selected mode ("a [b] c") gives huge pages on request."""
    start, end = setting.find("["), setting.find("]")
    if start < 0 or end < start:
        return False
    return setting[start + 1 : end] in THP_SHMEM_MODES


# -- waiting on many objects ----------------------------------------------------------
WaitFn = Callable[[list[Any], float | None], list[Any]]


def _connection_wait(objects: list[Any], timeout: float | None) -> list[Any]:
    return list(connection.wait(objects, timeout))


def wait_grouped(
    objects: Sequence[Any],
    timeout: float | None = None,
    *,
    group_size: int | None,
    wait: WaitFn | None = None,
) -> list[Any]:
    """`wait` over any number of objects where one OS wait takes `group_size`.

    Small sets are one call. Larger ones are split into groups of
    `group_size - 1`, each waited by a helper thread together with a "stop"
    pipe of its own; the first group with something ready (or the timeout)
    rings every stop pipe, every helper returns, and all that was ready by
    then is returned in the order of `objects`.
    """
    wait = wait or _connection_wait
    items = list(objects)
    if group_size is None or len(items) <= group_size:
        return wait(items, timeout)
    if group_size < 2:
        raise ValueError("group_size must leave room for the stop pipe")
    per_group = group_size - 1
    groups = [items[i : i + per_group] for i in range(0, len(items), per_group)]
    # One stop pipe per helper: on Windows a wait is an overlapped read on
    # each pipe, and two threads' reads on one pipe would race for its byte.
    stops = [Pipe(duplex=False) for _ in groups]
    ready: list[Any] = []
    errors: list[BaseException] = []
    done = threading.Event()
    lock = threading.Lock()

    def helper(group: list[Any], stop: Any) -> None:
        try:
            found = [o for o in wait([*group, stop], timeout) if o is not stop]
        except BaseException as exc:
            with lock:
                errors.append(exc)
        else:
            with lock:
                ready.extend(found)
            if not found:
                return
        done.set()

    threads = [
        threading.Thread(target=helper, args=(group, stop_r), daemon=True)
        for group, (stop_r, _) in zip(groups, stops, strict=True)
    ]
    try:
        for thread in threads:
            thread.start()
        done.wait(timeout)
    finally:
        for _, stop_w in stops:
            stop_w.send_bytes(b"x")
        for thread in threads:
            if thread.ident is not None:
                thread.join()
        for pair in stops:
            for end in pair:
                end.close()
    if errors:
        raise errors[0]
    found_ids = {id(o) for o in ready}
    return [o for o in items if id(o) in found_ids]


# -- the aligned file ------------------------------------------------------------------
class AlignedFileBase(ABC):
    """A data file with an unbuffered pixel path and a buffered metadata path.

    Pixel writes bypass the page cache (direct I/O) so gigabytes of dirty
    pages never pile up and stall; headers, IFDs and XML of any size go
    through a second, buffered handle. Where the filesystem refuses direct
    I/O, pixels go through the cache too, synced and dropped every
    `sync_every` bytes so dirty pages stay bounded. Subclasses open the
    handles and make the calls; the decisions are made here.
    """

    path: str
    direct: bool
    alignment: int
    locked: bool

    def __init__(
        self,
        path: str,
        *,
        mode: Mode,
        direct: bool = True,
        sync_every: int = DEFAULT_SYNC_EVERY,
    ) -> None:
        if mode not in MODES:
            raise ValueError(f"unknown mode {mode!r}; use one of {MODES}")
        self.path = os.fspath(path)
        self.sync_every = int(sync_every)
        self.direct = False
        # Constant for the file's life, so a layout computed from it at open
        # stays valid should direct I/O be given up later.
        self.alignment = PAGE
        self.locked = False
        self._unsynced = 0
        self._closed = False
        self._fallback_lock = threading.Lock()
        self.flush_lock = threading.Lock()  # a flush and its error, or a sync
        self._open(mode, direct)

    # -- what each platform provides ---------------------------------------------------
    @abstractmethod
    def _open(self, mode: Mode, direct: bool) -> None:
        """Open, refuse links, lock, truncate (overwrite), then try direct I/O."""

    @abstractmethod
    def _write_direct(self, view: memoryview, offset: int) -> int: ...

    @abstractmethod
    def _write_buffered(self, view: memoryview, offset: int) -> int: ...

    @abstractmethod
    def _refuses_direct(self, exc: OSError) -> bool:
        """Whether a failed direct write means "no direct I/O here"."""

    @abstractmethod
    def _drop_direct(self) -> None:
        """Send pixel writes through the buffered handle from now on."""

    @abstractmethod
    def _flush_dirty(self) -> None:
        """Write out (and, where possible, drop) cached pixels: bounded dirt."""

    @abstractmethod
    def _read_some(self, n: int, offset: int) -> bytes:
        """One read through the buffered handle (b"" at the end of the file)."""

    @abstractmethod
    def sync(self) -> None: ...

    @abstractmethod
    def reserve(self, offset: int, length: int) -> None: ...

    @abstractmethod
    def make_sparse(self) -> None: ...

    @abstractmethod
    def truncate(self, length: int) -> None: ...

    @abstractmethod
    def size(self) -> int: ...

    @abstractmethod
    def _close_handles(self) -> None: ...

    # -- shared logic ------------------------------------------------------------------
    def pwrite(self, buf: Buffer, offset: int) -> int:
        """Write all of `buf` at `offset` (aligned offset, length and address
        when `direct`); return its length."""
        view = byte_view(buf)
        if not self.direct:
            self._write_all(self._write_buffered, view, offset)
            self._bound_dirty(len(view))
            return len(view)
        check_aligned(view, offset, self.alignment)
        try:
            self._write_all(self._write_direct, view, offset)
        except OSError as exc:
            if not self._refuses_direct(exc):
                raise
            # The filesystem accepted direct I/O at open, not at the write.
            # Several I/O threads may learn it at once: one switches.
            with self._fallback_lock:
                if self.direct:
                    self._drop_direct()
                    self.direct = False
            return self.pwrite(view, offset)
        return len(view)

    def pread(self, n: int, offset: int) -> bytes:
        """Up to `n` bytes at `offset` (fewer only at the end of the file)."""
        parts: list[bytes] = []
        got = 0
        while got < n:
            part = self._read_some(n - got, offset + got)
            if not part:
                break
            parts.append(part)
            got += len(part)
        return b"".join(parts)

    def pwrite_meta(self, data: Buffer, offset: int) -> None:
        """Write bytes at any offset and length through the page cache."""
        self._write_all(self._write_buffered, byte_view(data), offset)

    @staticmethod
    def _write_all(
        write: Callable[[memoryview, int], int], view: memoryview, offset: int
    ) -> None:
        done = 0
        while done < len(view):
            n = write(view[done:], offset + done)
            if n <= 0:
                raise OSError(errno.EIO, "a write made no progress")
            done += n

    lost_writes: OSError | None = None  # a flush of cached pixels failed

    def _bound_dirty(self, nbytes: int) -> None:
        self._unsynced += nbytes
        if self._unsynced >= self.sync_every:
            self._unsynced = 0
            # Written pages may be lost, and Linux reports that to one call:
            # a sync after the flush would succeed over them. A commit syncs
            # under the same lock and then looks at `lost_writes`.
            with self.flush_lock:
                try:
                    self._flush_dirty()
                except OSError as exc:
                    self.lost_writes = exc
                    raise

    def _reserve_failed(self, exc: OSError, length: int) -> None:
        """Decide what a failed reservation means: ENOSPC, nothing, or raise."""
        if is_disk_full(exc):
            raise disk_full_error(self.path, length, exc) from exc
        if not is_unsupported(exc):
            raise exc

    def close(self) -> None:
        """Close both handles (idempotent); this releases the lock."""
        if self._closed:
            return
        self._closed = True
        self._close_handles()

    def __enter__(self: T) -> T:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- deprecated names, kept while the current TIFF sink uses them ------------------
    def pwrite_tail(self, data: Buffer, offset: int) -> None:
        """Deprecated: `pwrite_meta` then `sync`."""
        self.pwrite_meta(data, offset)
        self.sync()

    def allocate(self, length: int) -> None:
        """Deprecated: `reserve(0, length)`."""
        self.reserve(0, length)


# -- file operations shared by every platform ------------------------------------------
class PlatformBase:
    """Module-level operations of the platform layer; subclasses fill in the OS.

    One instance, made at import, backs the functions `_platform` exports.
    """

    #: Objects one OS wait can take (None: no limit).
    wait_group_size: int | None = None
    #: How shared libraries end, and the variable the loader of a process
    #: started later searches for them.
    shared_library_suffix = ".so"
    library_path_var = "LD_LIBRARY_PATH"
    #: Where the Linux-only facts live (tests point them elsewhere).
    shm_dir = "/dev/shm"

    def __init__(
        self,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self._clock = clock
        self._sleep = sleep

    # -- hooks with a portable default -------------------------------------------------
    def os_path(self, path: str) -> str:
        """The path to hand to the OS."""
        return os.fspath(path)

    def check_file_name(self, path: str) -> None:
        """Raise ValueError for a name this OS cannot hold as a file."""

    def fsync_dir(self, folder: str) -> None:
        """Make the names in `folder` durable."""

    def shm_available_bytes(self) -> int | None:
        return None

    def stale_shared_memory(self, magic: int, *, prefix: str = "psm_") -> list[str]:
        return []

    def remove_shared_memory(self, name: str) -> None:
        return None

    def advise_huge_pages(self, buf: mmap.mmap) -> bool:
        return False

    # -- shared ------------------------------------------------------------------------
    def add_library_folder(self, folder: str) -> None:
        """Let processes started from now on load shared libraries from
        `folder` (the loader reads its variable only at start); idempotent."""
        var = self.library_path_var
        parts = [p for p in os.environ.get(var, "").split(os.pathsep) if p]
        if folder not in parts:
            os.environ[var] = os.pathsep.join([folder, *parts])

    def temp_sibling(self, path: str) -> str:
        """An unpredictable temporary name in `path`'s folder."""
        folder, name = os.path.split(os.fspath(path))
        return os.path.join(folder, temp_leaf(name, secrets.token_hex(8)))

    def open_exclusive(self, path: str, mode: int = 0o644) -> int:
        """Create a new file (never an existing one, never through a link)."""
        flags = os.O_RDWR | os.O_CREAT | os.O_EXCL | O_NOFOLLOW | O_BINARY
        return os.open(self.os_path(path), flags, mode)

    def replace(self, src: str, dst: str, *, timeout: float = 2.0) -> None:
        """os.replace, retried while another program holds either file."""
        retry_transient(
            lambda: os.replace(self.os_path(src), self.os_path(dst)),
            what="replacing",
            path=os.fspath(dst),
            timeout=timeout,
            clock=self._clock,
            sleep=self._sleep,
        )

    def unlink(
        self, path: str, *, missing_ok: bool = True, timeout: float = 2.0
    ) -> None:
        """os.unlink, retried while another program holds the file."""

        def op() -> None:
            try:
                os.unlink(self.os_path(path))
            except FileNotFoundError:
                if not missing_ok:
                    raise

        retry_transient(
            op,
            what="removing",
            path=os.fspath(path),
            timeout=timeout,
            clock=self._clock,
            sleep=self._sleep,
        )

    def atomic_write(self, path: str, data: Buffer | Iterable[bytes]) -> None:
        """Replace `path` with `data` so a reader or a crash sees old or new, whole.

        The temporary sibling is created exclusively under a random name (a
        link planted there is never written through), synced, renamed onto
        `path` (which replaces a link at `path` rather than following it),
        and the folder is synced so the new name survives a power cut. On
        any failure the temporary file is removed and the error raised.
        """
        path = os.fspath(path)
        fd, tmp = self._create_temp(path)
        try:
            with os.fdopen(fd, "wb", buffering=1 << 20) as fh:
                if isinstance(data, (bytes, bytearray, memoryview)):
                    fh.write(data)
                else:
                    for chunk in data:
                        fh.write(chunk)
                fh.flush()
                os.fsync(fh.fileno())
            self.replace(tmp, path)
        except BaseException:
            with suppress(OSError):
                self.unlink(tmp)
            raise
        self.fsync_dir(os.path.dirname(path) or os.curdir)

    def _create_temp(self, path: str, attempts: int = 3) -> tuple[int, str]:
        for _ in range(attempts):
            tmp = self.temp_sibling(path)
            try:
                return self.open_exclusive(tmp), tmp
            except FileExistsError:
                continue  # something sits at a random name: draw another
        raise FileExistsError(
            errno.EEXIST, f"no free temporary name beside {path}", path
        )

    def wait_any(self, objects: list[Any], timeout: float | None = None) -> list[Any]:
        """multiprocessing.connection.wait for any number of objects."""
        return wait_grouped(objects, timeout, group_size=self.wait_group_size)
