"""The kernel32 calls the Windows layer makes, through ctypes, and nothing else.

Each method is one Win32 call: argument packing in, an OSError carrying
`winerror` out. All decisions live in `_windows` (which tests drive with a
fake of this class on Linux). Importing this module loads no DLL; only
`Win32Api.load()` does, on Windows.
"""

from __future__ import annotations

import ctypes
import errno
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from mesowriter._platform._base import buffer_address

GENERIC_READ = 0x80000000
GENERIC_WRITE = 0x40000000
FILE_SHARE_READ, FILE_SHARE_WRITE, FILE_SHARE_DELETE = 0x1, 0x2, 0x4
CREATE_NEW, OPEN_EXISTING, OPEN_ALWAYS = 1, 3, 4
FILE_ATTRIBUTE_DIRECTORY = 0x10
FILE_ATTRIBUTE_NORMAL = 0x80
FILE_ATTRIBUTE_REPARSE_POINT = 0x400
FILE_FLAG_WRITE_THROUGH = 0x80000000
FILE_FLAG_NO_BUFFERING = 0x20000000
FILE_FLAG_OPEN_REPARSE_POINT = 0x00200000
LOCKFILE_FAIL_IMMEDIATELY, LOCKFILE_EXCLUSIVE_LOCK = 0x1, 0x2
FSCTL_SET_SPARSE = 0x000900C4
FILE_ALLOCATION_INFO_CLASS = 5  # FILE_INFO_BY_HANDLE_CLASS.FileAllocationInfo
FILE_END_OF_FILE_INFO_CLASS = 6  # FileEndOfFileInfo
FILE_STORAGE_INFO_CLASS = 16  # FileStorageInfo (Windows 8 and later)
CTRL_C_EVENT, CTRL_BREAK_EVENT, CTRL_CLOSE_EVENT = 0, 1, 2
CTRL_LOGOFF_EVENT, CTRL_SHUTDOWN_EVENT = 5, 6

ERROR_FILE_NOT_FOUND, ERROR_PATH_NOT_FOUND, ERROR_ACCESS_DENIED = 2, 3, 5
ERROR_SHARING_VIOLATION, ERROR_LOCK_VIOLATION, ERROR_HANDLE_EOF = 32, 33, 38
ERROR_FILE_EXISTS, ERROR_INVALID_PARAMETER, ERROR_ALREADY_EXISTS = 80, 87, 183
ERROR_DISK_FULL = 112

_ERRNO = {
    1: errno.EINVAL,
    ERROR_FILE_NOT_FOUND: errno.ENOENT,
    ERROR_PATH_NOT_FOUND: errno.ENOENT,
    ERROR_ACCESS_DENIED: errno.EACCES,
    ERROR_SHARING_VIOLATION: errno.EACCES,
    ERROR_LOCK_VIOLATION: errno.EACCES,
    39: errno.ENOSPC,
    50: errno.EOPNOTSUPP,
    ERROR_FILE_EXISTS: errno.EEXIST,
    ERROR_INVALID_PARAMETER: errno.EINVAL,
    ERROR_DISK_FULL: errno.ENOSPC,
    ERROR_ALREADY_EXISTS: errno.EEXIST,
}


def win_error(code: int, filename: str | None = None) -> OSError:
    """An OSError for a Win32 error code: errno (and so the subclass, e.g.
    FileExistsError) mapped from it, `winerror` set, as Python does."""
    format_error = getattr(ctypes, "FormatError", None)
    message = format_error(code).strip() if format_error else f"Windows error {code}"
    exc = OSError(_ERRNO.get(code, errno.EIO), message, filename)
    setattr(exc, "winerror", code)  # noqa: B010 - not a declared attribute off Windows
    return exc


# Fixed-width types, not ctypes.wintypes: there DWORD is C `unsigned long`,
# 4 bytes on Windows but 8 on Linux, and the layouts are tested on Linux.
DWORD = ULONG = ctypes.c_uint32
BOOL = ctypes.c_int32
HANDLE = ctypes.c_void_p
LPCWSTR = ctypes.c_wchar_p
LPWSTR = ctypes.POINTER(ctypes.c_wchar)  # an output buffer, filled in place


class FILETIME(ctypes.Structure):
    _fields_ = [("dwLowDateTime", DWORD), ("dwHighDateTime", DWORD)]


class OVERLAPPED(ctypes.Structure):
    # The Offset/OffsetHigh pair shares a union with a pointer: on 64-bit
    # Windows the struct is 32 bytes, as declared here.
    _fields_ = [
        ("Internal", ctypes.c_size_t),
        ("InternalHigh", ctypes.c_size_t),
        ("Offset", DWORD),
        ("OffsetHigh", DWORD),
        ("hEvent", HANDLE),
    ]


class BY_HANDLE_FILE_INFORMATION(ctypes.Structure):
    _fields_ = [
        ("dwFileAttributes", DWORD),
        ("ftCreationTime", FILETIME),
        ("ftLastAccessTime", FILETIME),
        ("ftLastWriteTime", FILETIME),
        ("dwVolumeSerialNumber", DWORD),
        ("nFileSizeHigh", DWORD),
        ("nFileSizeLow", DWORD),
        ("nNumberOfLinks", DWORD),
        ("nFileIndexHigh", DWORD),
        ("nFileIndexLow", DWORD),
    ]


class FILE_STORAGE_INFO(ctypes.Structure):
    _fields_ = [
        ("LogicalBytesPerSector", ULONG),
        ("PhysicalBytesPerSectorForAtomicity", ULONG),
        ("PhysicalBytesPerSectorForPerformance", ULONG),
        ("FileSystemEffectivePhysicalBytesPerSectorForAtomicity", ULONG),
        ("Flags", ULONG),
        ("ByteOffsetForSectorAlignment", ULONG),
        ("ByteOffsetForPartitionAlignment", ULONG),
    ]


_FUNCTYPE = getattr(ctypes, "WINFUNCTYPE", ctypes.CFUNCTYPE)  # stdcall on Windows
HANDLER_ROUTINE = _FUNCTYPE(BOOL, DWORD)
_H, _D, _B, _P = HANDLE, DWORD, BOOL, ctypes.c_void_p
_PD, _POV = ctypes.POINTER(DWORD), ctypes.POINTER(OVERLAPPED)
INVALID_HANDLE_VALUE = ctypes.c_void_p(-1).value

#: name -> (restype, argtypes) of every kernel32 function used.
SIGNATURES: dict[str, tuple[Any, list[Any]]] = {
    "CreateFileW": (_H, [LPCWSTR, _D, _D, _P, _D, _D, _H]),
    "CloseHandle": (_B, [_H]),
    "WriteFile": (_B, [_H, _P, _D, _PD, _POV]),
    "ReadFile": (_B, [_H, _P, _D, _PD, _POV]),
    "FlushFileBuffers": (_B, [_H]),
    "SetFileInformationByHandle": (_B, [_H, ctypes.c_int, _P, _D]),
    "GetFileInformationByHandleEx": (_B, [_H, ctypes.c_int, _P, _D]),
    "GetFileInformationByHandle": (
        _B,
        [_H, ctypes.POINTER(BY_HANDLE_FILE_INFORMATION)],
    ),
    "GetFileSizeEx": (_B, [_H, ctypes.POINTER(ctypes.c_int64)]),
    "DeviceIoControl": (_B, [_H, _D, _P, _D, _P, _D, _PD, _POV]),
    "LockFileEx": (_B, [_H, _D, _D, _D, _D, _POV]),
    "UnlockFileEx": (_B, [_H, _D, _D, _D, _POV]),
    "GetVolumePathNameW": (_B, [LPCWSTR, LPWSTR, _D]),
    "GetDiskFreeSpaceW": (_B, [LPCWSTR, _PD, _PD, _PD, _PD]),
    "SetConsoleCtrlHandler": (_B, [HANDLER_ROUTINE, _B]),
}


@dataclass(frozen=True)
class FileInfo:
    attributes: int
    file_id: tuple[int, int]  # (volume serial number, file index): one file


def _overlapped(offset: int) -> OVERLAPPED:
    """An OVERLAPPED that carries a 64-bit file offset (synchronous handle)."""
    ov = OVERLAPPED()
    ov.Offset = offset & 0xFFFFFFFF
    ov.OffsetHigh = offset >> 32
    return ov


class Win32Api:
    """kernel32 through ctypes; `kernel32` and `last_error` are injectable."""

    def __init__(self, kernel32: Any, last_error: Callable[[], int]) -> None:
        self._k = kernel32
        self._last_error = last_error
        for name, (restype, argtypes) in SIGNATURES.items():
            fn = getattr(kernel32, name)
            fn.restype = restype
            fn.argtypes = argtypes

    @classmethod
    def load(cls) -> Win32Api:
        """kernel32 itself (Windows only)."""
        windll = getattr(ctypes, "WinDLL")  # noqa: B009 - absent off Windows
        get_last_error = getattr(ctypes, "get_last_error")  # noqa: B009
        return cls(windll("kernel32", use_last_error=True), get_last_error)

    def _error(self, filename: str | None = None) -> OSError:
        return win_error(self._last_error(), filename)

    def _check(self, ok: int, filename: str | None = None) -> None:
        if not ok:
            raise self._error(filename)

    # -- handles -------------------------------------------------------------------
    def create_file(
        self, path: str, access: int, share: int, disposition: int, flags: int
    ) -> int:
        handle = self._k.CreateFileW(
            path, access, share, None, disposition, flags, None
        )
        if handle is None or handle == INVALID_HANDLE_VALUE:
            raise self._error(path)
        return int(handle)

    def close_handle(self, handle: int) -> None:
        self._check(self._k.CloseHandle(handle))

    def file_info(self, handle: int) -> FileInfo:
        info = BY_HANDLE_FILE_INFORMATION()
        self._check(self._k.GetFileInformationByHandle(handle, ctypes.byref(info)))
        index = (info.nFileIndexHigh << 32) | info.nFileIndexLow
        return FileInfo(info.dwFileAttributes, (info.dwVolumeSerialNumber, index))

    # -- data ----------------------------------------------------------------------
    def write_file(self, handle: int, view: memoryview, offset: int) -> int:
        """One WriteFile at `offset`; the caller keeps `view` under 4 GiB."""
        written = DWORD(0)
        ov = _overlapped(offset)
        ok = self._k.WriteFile(
            handle,
            buffer_address(view),
            len(view),
            ctypes.byref(written),
            ctypes.byref(ov),
        )
        self._check(ok)
        return int(written.value)

    def read_file(self, handle: int, n: int, offset: int) -> bytes:
        """One ReadFile at `offset`; b"" at or past the end of the file."""
        buf = ctypes.create_string_buffer(n)
        got = DWORD(0)
        ov = _overlapped(offset)
        if not self._k.ReadFile(handle, buf, n, ctypes.byref(got), ctypes.byref(ov)):
            code = self._last_error()
            if code == ERROR_HANDLE_EOF:
                return b""
            raise win_error(code)
        return buf.raw[: got.value]

    def flush_file_buffers(self, handle: int) -> None:
        self._check(self._k.FlushFileBuffers(handle))

    # -- size and allocation -------------------------------------------------------
    def file_size(self, handle: int) -> int:
        size = ctypes.c_int64(0)
        self._check(self._k.GetFileSizeEx(handle, ctypes.byref(size)))
        return int(size.value)

    def _set_info(self, handle: int, info_class: int, value: int) -> None:
        data = ctypes.c_int64(value)  # FILE_END_OF_FILE_INFO / FILE_ALLOCATION_INFO
        ok = self._k.SetFileInformationByHandle(
            handle, info_class, ctypes.byref(data), ctypes.sizeof(data)
        )
        self._check(ok)

    def set_end_of_file(self, handle: int, length: int) -> None:
        self._set_info(handle, FILE_END_OF_FILE_INFO_CLASS, length)

    def set_allocation_size(self, handle: int, size: int) -> None:
        """Reserve clusters; neither the size nor the valid data length moves."""
        self._set_info(handle, FILE_ALLOCATION_INFO_CLASS, size)

    def set_sparse(self, handle: int) -> None:
        returned = DWORD(0)
        ok = self._k.DeviceIoControl(
            handle, FSCTL_SET_SPARSE, None, 0, None, 0, ctypes.byref(returned), None
        )
        self._check(ok)

    def sector_size(self, handle: int, path: str) -> int | None:
        """The volume's logical sector size (the unit of unbuffered I/O)."""
        info = FILE_STORAGE_INFO()
        if self._k.GetFileInformationByHandleEx(
            handle, FILE_STORAGE_INFO_CLASS, ctypes.byref(info), ctypes.sizeof(info)
        ):
            return int(info.LogicalBytesPerSector)
        # Redirectors that lack FileStorageInfo still answer for their volume.
        root = ctypes.create_unicode_buffer(32768)
        if not self._k.GetVolumePathNameW(path, root, len(root)):
            return None
        sectors, size, free, total = (DWORD(0) for _ in range(4))
        if not self._k.GetDiskFreeSpaceW(
            root.value,
            ctypes.byref(sectors),
            ctypes.byref(size),
            ctypes.byref(free),
            ctypes.byref(total),
        ):
            return None
        return int(size.value)

    # -- locks ---------------------------------------------------------------------
    def lock(self, handle: int, offset: int, length: int, *, exclusive: bool) -> bool:
        """Try to lock a byte range at once: False if another handle holds it."""
        flags = LOCKFILE_FAIL_IMMEDIATELY | (
            LOCKFILE_EXCLUSIVE_LOCK if exclusive else 0
        )
        ov = _overlapped(offset)
        if self._k.LockFileEx(
            handle, flags, 0, length & 0xFFFFFFFF, length >> 32, ctypes.byref(ov)
        ):
            return True
        code = self._last_error()
        if code == ERROR_LOCK_VIOLATION:
            return False
        raise win_error(code)

    def unlock(self, handle: int, offset: int, length: int) -> None:
        ov = _overlapped(offset)
        ok = self._k.UnlockFileEx(
            handle, 0, length & 0xFFFFFFFF, length >> 32, ctypes.byref(ov)
        )
        self._check(ok)

    # -- console -------------------------------------------------------------------
    def console_handler(self, fn: Callable[[int], int]) -> Any:
        """`fn` as a HandlerRoutine; keep the result referenced while installed."""
        return HANDLER_ROUTINE(fn)

    def set_console_ctrl_handler(self, handler: Any, add: bool) -> None:
        self._check(self._k.SetConsoleCtrlHandler(handler, add))
