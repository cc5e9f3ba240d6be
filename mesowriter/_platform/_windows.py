"""Windows: unbuffered writes, allocation without zeros, locks, console events.

Everything here goes through a `Win32Api` object (ctypes over kernel32 on
Windows, a recording fake in the Linux tests), so importing this module on
any OS loads no DLL.

Why not the C runtime: `os.ftruncate` (`_chsize_s`) writes zeros to grow a
file (78 GiB of them before the first frame of a 10 000-frame 2048x2048
run); `os.open` has no FILE_FLAG_NO_BUFFERING, so every frame would go
through the system cache.
"""

from __future__ import annotations

import errno
import ntpath
import os
import sys
import time
import traceback
from collections.abc import Callable
from functools import cache
from typing import Any

from mesowriter._platform import _win32 as w
from mesowriter._platform._base import (
    LONG_PATH_FROM,
    AlignedFileBase,
    Mode,
    PlatformBase,
    direct_alignment,
    locked_error,
    long_path,
    replaced_error,
    reserved_name,
    winerror,
)
from mesowriter._platform._win32 import Win32Api

#: The owner lock is one byte here, far beyond any real end of file, so it
#: never covers data: Windows locks are mandatory, and readers (viewers,
#: `mesowriter inspect`) must never be blocked by a running writer.
LOCK_SENTINEL = 1 << 62
#: WriteFile takes a 32-bit length; larger writes go in pieces of this size
#: (a multiple of every supported alignment).
MAX_IO = 1 << 30
_SHARE = w.FILE_SHARE_READ | w.FILE_SHARE_WRITE  # our two handles, readers
_SHARING_ERRORS = (w.ERROR_SHARING_VIOLATION, w.ERROR_LOCK_VIOLATION)
_DISPOSITION = {
    "create": w.CREATE_NEW,
    "overwrite": w.OPEN_ALWAYS,
    "resume": w.OPEN_EXISTING,
}
CONSOLE_EVENTS = {
    w.CTRL_C_EVENT: "CTRL_C",
    w.CTRL_BREAK_EVENT: "CTRL_BREAK",
    w.CTRL_CLOSE_EVENT: "CTRL_CLOSE",
    w.CTRL_LOGOFF_EVENT: "CTRL_LOGOFF",
    w.CTRL_SHUTDOWN_EVENT: "CTRL_SHUTDOWN",
}


@cache
def default_api() -> Win32Api:
    return Win32Api.load()


def windows_os_path(path: str, full_path: Callable[[str], str] = ntpath.abspath) -> str:
    """`path`, or its `\\\\?\\` form when its absolute form is too long for Win32."""
    path = os.fspath(path)
    if path.startswith(("\\\\?\\", "\\\\.\\")):
        return path
    full = full_path(path)
    return path if len(full) < LONG_PATH_FROM else long_path(full)


class WindowsAlignedFile(AlignedFileBase):
    """Two CreateFileW handles: one buffered (metadata, reads, the lock), one
    with FILE_FLAG_NO_BUFFERING for pixels.

    Not FILE_FLAG_WRITE_THROUGH: it makes every write wait for the drive's
    own cache (FUA, or a whole-cache flush on drives without FUA), per
    frame, on the hot path, yet buys no guarantee the writer relies on: what
    must be durable is made so, in batches, by `sync()` (FlushFileBuffers)
    before a durable record vouches for it, as on Linux.
    """

    _handle: int | None = None  # buffered: metadata, reads, truncation, the lock
    _pixel_handle: int | None = None  # unbuffered, or _handle after a fallback

    #: The Win32 calls; None: kernel32 itself. Tests bind a fake with `using`.
    _api: Win32Api | None = None
    _reserved = 0  # the allocation size set so far

    @classmethod
    def using(cls, api: Win32Api) -> type[WindowsAlignedFile]:
        """This class with its Win32 calls made through `api`."""
        return type(cls.__name__, (cls,), {"_api": api})

    @property
    def api(self) -> Win32Api:
        return self._api if self._api is not None else default_api()

    def _create(self, target: str, disposition: int, flags: int) -> int:
        try:
            return self.api.create_file(
                target,
                w.GENERIC_READ | w.GENERIC_WRITE,
                _SHARE,
                disposition,
                w.FILE_ATTRIBUTE_NORMAL | w.FILE_FLAG_OPEN_REPARSE_POINT | flags,
            )
        except OSError as exc:
            if winerror(exc) in _SHARING_ERRORS:  # opened elsewhere without sharing
                raise locked_error(self.path) from exc
            raise

    def _open(self, mode: Mode, direct: bool) -> None:
        api = self.api
        target = windows_os_path(self.path)
        self._handle = self._pixel_handle = self._create(target, _DISPOSITION[mode], 0)
        try:
            info = api.file_info(self._handle)
            if info.attributes & w.FILE_ATTRIBUTE_REPARSE_POINT:
                raise OSError(
                    errno.ELOOP,
                    f"{self.path} is a link (reparse point); refusing to follow it",
                    self.path,
                )
            if info.attributes & w.FILE_ATTRIBUTE_DIRECTORY:
                raise IsADirectoryError(errno.EISDIR, "is a folder", self.path)
            if not api.lock(self._handle, LOCK_SENTINEL, 1, exclusive=True):
                raise locked_error(self.path)
            self.locked = True
            if mode == "overwrite":
                api.set_end_of_file(self._handle, 0)
            if direct:
                self._open_direct(target, info)
        except BaseException:
            self._close_handles()
            raise

    def _open_direct(self, target: str, info: w.FileInfo) -> None:
        assert self._handle is not None
        alignment = direct_alignment(self.api.sector_size(self._handle, target))
        if alignment is None:
            return  # sectors larger than a page: buffered, bounded
        try:
            handle = self._create(target, w.OPEN_EXISTING, w.FILE_FLAG_NO_BUFFERING)
        except OSError as exc:
            if winerror(exc) == w.ERROR_INVALID_PARAMETER:
                return  # a redirector without unbuffered I/O
            raise
        if self.api.file_info(handle).file_id != info.file_id:
            self.api.close_handle(handle)
            raise replaced_error(self.path)
        self._pixel_handle = handle
        self.direct = True
        self.alignment = alignment

    def _write_direct(self, view: memoryview, offset: int) -> int:
        assert self._pixel_handle is not None
        return self.api.write_file(self._pixel_handle, view[:MAX_IO], offset)

    def _write_buffered(self, view: memoryview, offset: int) -> int:
        assert self._handle is not None
        return self.api.write_file(self._handle, view[:MAX_IO], offset)

    def _refuses_direct(self, exc: OSError) -> bool:
        return winerror(exc) == w.ERROR_INVALID_PARAMETER

    _retired_handle: Any = None  # the unbuffered handle after a fallback

    def _drop_direct(self) -> None:
        # Closed at close, not here: another I/O thread may be writing
        # through it, and a closed handle's value can be reused.
        if self._pixel_handle != self._handle and self._pixel_handle is not None:
            self._retired_handle = self._pixel_handle
        self._pixel_handle = self._handle

    def _flush_dirty(self) -> None:
        self.sync()  # the cache manager then drops clean pages as it needs

    def _read_some(self, n: int, offset: int) -> bytes:
        assert self._handle is not None
        return self.api.read_file(self._handle, min(n, MAX_IO), offset)

    def sync(self) -> None:
        """FlushFileBuffers once: it flushes the file's cached data and
        metadata, whichever handle wrote them, and the drive's cache."""
        assert self._handle is not None
        self.api.flush_file_buffers(self._handle)

    def reserve(self, offset: int, length: int) -> None:
        """Set the allocation size: clusters reserved, no zeros written, the
        size unchanged. Never lowered: below the end of file that would cut
        the file. Windows frees what is unused when the last handle closes."""
        assert self._handle is not None
        end = offset + length
        if length <= 0 or end <= self._reserved:
            return
        if end <= self.api.file_size(self._handle):
            return
        try:
            self.api.set_allocation_size(self._handle, end)
        except OSError as exc:
            self._reserve_failed(exc, length)
            return
        self._reserved = end

    def make_sparse(self) -> None:
        """FSCTL_SET_SPARSE: writing far past the end then leaves a hole
        instead of zero-filling up to the valid data length. Does nothing
        where the filesystem has no sparse files (FAT, exFAT)."""
        assert self._handle is not None
        try:
            self.api.set_sparse(self._handle)
        except OSError as exc:
            self._reserve_failed(exc, 0)

    def truncate(self, length: int) -> None:
        assert self._handle is not None
        self.api.set_end_of_file(self._handle, length)
        self._reserved = min(self._reserved, length)

    def size(self) -> int:
        assert self._handle is not None
        return self.api.file_size(self._handle)

    def _close_handles(self) -> None:
        pixel, handle = self._pixel_handle, self._handle
        self._pixel_handle = self._handle = None
        if pixel is not None and pixel != handle:
            self.api.close_handle(pixel)
        if self._retired_handle is not None:
            self.api.close_handle(self._retired_handle)
            self._retired_handle = None
        if handle is not None:
            if self.locked:
                try:
                    self.api.unlock(handle, LOCK_SENTINEL, 1)
                except OSError:
                    pass  # closing the handle releases it too
            self.api.close_handle(handle)


class WindowsPlatform(PlatformBase):
    """Windows."""

    wait_group_size = 63  # WaitForMultipleObjects takes 64 handles
    shared_library_suffix = ".dll"
    library_path_var = "PATH"

    def __init__(
        self,
        *,
        api: Win32Api | None = None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        super().__init__(clock=clock, sleep=sleep)
        self._api = api
        self._handlers: list[Any] = []  # installed routines, kept from the GC
        self._dll_folders: dict[str, Any] = {}  # add_dll_directory entries, kept

    def add_library_folder(self, folder: str) -> None:
        """PATH for processes started later; add_dll_directory for this one
        (Python 3.8+ no longer searches PATH for extension modules' DLLs)."""
        super().add_library_folder(folder)
        if folder not in self._dll_folders:
            add = getattr(os, "add_dll_directory")  # noqa: B009 - Windows only
            self._dll_folders[folder] = add(folder)

    @property
    def api(self) -> Win32Api:
        return self._api if self._api is not None else default_api()

    def os_path(self, path: str) -> str:
        return windows_os_path(path)

    def check_file_name(self, path: str) -> None:
        name = reserved_name(os.fspath(path))
        if name is not None:
            raise ValueError(
                f"{path}: {name!r} names a device on Windows, not a file; "
                "choose another name"
            )

    def probe_lock(self, path: str) -> bool:
        """Try a shared lock on the sentinel byte from a fresh handle."""
        api = self.api
        try:
            handle = api.create_file(
                windows_os_path(path),
                w.GENERIC_READ,
                _SHARE | w.FILE_SHARE_DELETE,
                w.OPEN_EXISTING,
                w.FILE_ATTRIBUTE_NORMAL,
            )
        except FileNotFoundError:
            return False
        except OSError as exc:
            if winerror(exc) in _SHARING_ERRORS:
                return True  # held open without sharing: as owned as can be
            raise
        try:
            if not api.lock(handle, LOCK_SENTINEL, 1, exclusive=False):
                return True
            api.unlock(handle, LOCK_SENTINEL, 1)
            return False
        finally:
            api.close_handle(handle)

    def install_shutdown_handler(
        self, callback: Callable[[str], None]
    ) -> Callable[[], None]:
        """Console control events (Ctrl-C, Ctrl-Break, close, logoff,
        shutdown) call `callback("CTRL_CLOSE")` etc. on the thread Windows
        starts for them. The routine returns TRUE only after the callback:
        for close, logoff and shutdown Windows ends the process when it
        returns (or after its own timeout, about 5 s for close), so open
        streams are finalised first. After Ctrl-C and Ctrl-Break the
        process goes on; the callback decides what happens next.
        """
        api = self.api

        def routine(event: int) -> int:
            reason = CONSOLE_EVENTS.get(event)
            if reason is None:
                return 0  # not ours: the next handler (or the default) decides
            try:
                callback(reason)
            except SystemExit:
                pass  # an exit asked for on this thread: Windows ends us anyway
            except BaseException:
                traceback.print_exc(file=sys.stderr)
            return 1

        handler = api.console_handler(routine)
        api.set_console_ctrl_handler(handler, True)
        self._handlers.append(handler)

        def uninstall() -> None:
            if handler in self._handlers:
                self._handlers.remove(handler)
                api.set_console_ctrl_handler(handler, False)

        return uninstall
