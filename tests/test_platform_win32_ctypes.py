"""The ctypes layer (`Win32Api`) on Linux, against a kernel32 of C callbacks.

Each kernel32 function is replaced by a real C function pointer (a ctypes
callback built from the same signature table `Win32Api` declares), so every
argument goes through ctypes' C marshalling: strings, integers, pointers to
our structures and the byte buffers. What this cannot check is Windows
itself (the calling convention, what kernel32 really does).
"""

from __future__ import annotations

import ctypes
import mmap
from typing import Any

import pytest

from mesowriter._platform import _win32 as w
from mesowriter._platform._base import PAGE, buffer_address


class FakeKernel32:
    """C-callable stand-ins for kernel32; `impl` holds the Python behaviour."""

    def __init__(self) -> None:
        self.last_error = 0
        self.seen: dict[str, tuple[Any, ...]] = {}
        self.file = bytearray(b"0123456789")
        self._keep: list[Any] = []
        for name, (restype, argtypes) in w.SIGNATURES.items():
            impl = getattr(self, f"_{name}")
            # HANDLE results go back as intptr: a callback's c_void_p result
            # is taken as such by ctypes on every platform.
            proto = ctypes.CFUNCTYPE(
                ctypes.c_ssize_t if restype is w.HANDLE else restype, *argtypes
            )
            fn = proto(self._record(name, impl))
            self._keep.append(fn)
            setattr(self, name, fn)

    def _record(self, name: str, impl: Any) -> Any:
        def call(*args: Any) -> Any:
            self.seen[name] = args
            return impl(*args)

        return call

    def fail(self, code: int) -> int:
        self.last_error = code
        return 0

    def _CreateFileW(self, path: str, access: int, share: int, sa: Any, disp: int,
                     flags: int, template: Any) -> int:  # fmt: skip
        if path.endswith("missing"):
            self.last_error = w.ERROR_FILE_NOT_FOUND
            return -1  # INVALID_HANDLE_VALUE
        return 0x1234

    def _CloseHandle(self, handle: int) -> int:
        return 1

    def _WriteFile(self, handle: int, buf: int, n: int, written: Any, ov: Any) -> int:
        o = ov.contents
        offset = (o.OffsetHigh << 32) | o.Offset
        self.seen["write"] = (offset, ctypes.string_at(buf, n), buf)
        written.contents.value = n
        return 1

    def _ReadFile(self, handle: int, buf: int, n: int, got: Any, ov: Any) -> int:
        offset = ov.contents.Offset
        if offset >= len(self.file):
            return self.fail(w.ERROR_HANDLE_EOF)
        data = bytes(self.file[offset : offset + n])
        ctypes.memmove(buf, data, len(data))
        got.contents.value = len(data)
        return 1

    def _FlushFileBuffers(self, handle: int) -> int:
        return self.fail(5) if handle == 0xBAD else 1

    def _SetFileInformationByHandle(self, h: int, cls: int, data: int, n: int) -> int:
        self.seen["set_info"] = (cls, ctypes.c_int64.from_address(data).value, n)
        return 1

    def _GetFileInformationByHandleEx(self, h: int, cls: int, data: int, n: int) -> int:
        if h == 0xBAD:
            return self.fail(w.ERROR_INVALID_PARAMETER)
        info = w.FILE_STORAGE_INFO.from_address(data)
        info.LogicalBytesPerSector = 4096
        info.PhysicalBytesPerSectorForPerformance = 65536
        return 1

    def _GetFileInformationByHandle(self, h: int, info: Any) -> int:
        i = info.contents
        i.dwFileAttributes = w.FILE_ATTRIBUTE_REPARSE_POINT
        i.dwVolumeSerialNumber = 0xCAFE
        i.nFileIndexHigh, i.nFileIndexLow = 2, 3
        i.nNumberOfLinks = 1
        return 1

    def _GetFileSizeEx(self, h: int, size: Any) -> int:
        size.contents.value = 5 << 40
        return 1

    def _DeviceIoControl(self, h: int, code: int, *rest: Any) -> int:
        return 1 if code == w.FSCTL_SET_SPARSE else self.fail(1)

    def _LockFileEx(self, h: int, flags: int, r: int, lo: int, hi: int, ov: Any) -> int:
        offset = (ov.contents.OffsetHigh << 32) | ov.contents.Offset
        self.seen["lock"] = (flags, offset, (hi << 32) | lo)
        return self.fail(w.ERROR_LOCK_VIOLATION) if h == 0xBAD else 1

    def _UnlockFileEx(self, h: int, r: int, lo: int, hi: int, ov: Any) -> int:
        return 1

    def _GetVolumePathNameW(self, path: str, out: Any, n: int) -> int:
        root = ctypes.create_unicode_buffer("D:\\")
        ctypes.memmove(
            ctypes.cast(out, ctypes.c_void_p).value, root, ctypes.sizeof(root)
        )
        return 1

    def _GetDiskFreeSpaceW(self, root: str, spc: Any, bps: Any, f: Any, t: Any) -> int:
        self.seen["root"] = (root,)
        bps.contents.value = 512
        return 1

    def _SetConsoleCtrlHandler(self, handler: Any, add: int) -> int:
        self.seen["console_result"] = (handler(w.CTRL_CLOSE_EVENT),)
        return 1


@pytest.fixture
def k() -> FakeKernel32:
    return FakeKernel32()


@pytest.fixture
def api(k: FakeKernel32) -> w.Win32Api:
    return w.Win32Api(k, lambda: k.last_error)


def test_create_file_and_its_failure(api: w.Win32Api, k: FakeKernel32) -> None:
    assert api.create_file("C:\\a.tif", w.GENERIC_READ, 3, w.CREATE_NEW, 0x80) == 0x1234
    assert k.seen["CreateFileW"][:5] == ("C:\\a.tif", w.GENERIC_READ, 3, None, 1)
    with pytest.raises(FileNotFoundError) as info:
        api.create_file("C:\\missing", w.GENERIC_READ, 3, w.OPEN_EXISTING, 0)
    assert info.value.filename == "C:\\missing" and info.value.winerror == 2  # type: ignore[attr-defined]


def test_write_passes_the_buffer_itself_and_a_64_bit_offset(
    api: w.Win32Api, k: FakeKernel32
) -> None:
    buf = mmap.mmap(-1, PAGE)
    buf[:5] = b"frame"
    view = memoryview(buf)
    assert api.write_file(0x1234, view, (3 << 32) + PAGE) == PAGE
    offset, data, address = k.seen["write"]
    assert offset == (3 << 32) + PAGE and data[:5] == b"frame"
    assert address == buffer_address(view)  # no copy: alignment is kept
    assert api.write_file(0x1234, memoryview(b"readonly"), 0) == 8


def test_read_and_end_of_file(api: w.Win32Api) -> None:
    assert api.read_file(0x1234, 4, 2) == b"2345"
    assert api.read_file(0x1234, 100, 8) == b"89"
    assert api.read_file(0x1234, 4, 50) == b""  # ERROR_HANDLE_EOF


def test_information_calls(api: w.Win32Api, k: FakeKernel32) -> None:
    api.set_allocation_size(0x1234, 78 << 30)
    assert k.seen["set_info"] == (w.FILE_ALLOCATION_INFO_CLASS, 78 << 30, 8)
    api.set_end_of_file(0x1234, 12345)
    assert k.seen["set_info"] == (w.FILE_END_OF_FILE_INFO_CLASS, 12345, 8)
    info = api.file_info(0x1234)
    assert info.attributes == w.FILE_ATTRIBUTE_REPARSE_POINT
    assert info.file_id == (0xCAFE, (2 << 32) | 3)
    assert api.file_size(0x1234) == 5 << 40
    api.set_sparse(0x1234)
    api.flush_file_buffers(0x1234)
    with pytest.raises(PermissionError):
        api.flush_file_buffers(0xBAD)


def test_sector_size_from_storage_info_or_the_volume(
    api: w.Win32Api, k: FakeKernel32
) -> None:
    assert api.sector_size(0x1234, "C:\\a.tif") == 4096  # logical, not physical
    assert api.sector_size(0xBAD, "D:\\data\\a.tif") == 512
    assert k.seen["root"] == ("D:\\",)


def test_lock_flags_offsets_and_violation(api: w.Win32Api, k: FakeKernel32) -> None:
    assert api.lock(0x1234, 1 << 62, 1, exclusive=True)
    flags = w.LOCKFILE_FAIL_IMMEDIATELY | w.LOCKFILE_EXCLUSIVE_LOCK
    assert k.seen["lock"] == (flags, 1 << 62, 1)
    assert not api.lock(0xBAD, 1 << 62, 1, exclusive=False)
    assert k.seen["lock"][0] == w.LOCKFILE_FAIL_IMMEDIATELY
    api.unlock(0x1234, 1 << 62, 1)


def test_console_handler_round_trip_through_c(api: w.Win32Api, k: FakeKernel32) -> None:
    events: list[int] = []

    def routine(event: int) -> int:
        events.append(event)
        return 1

    handler = api.console_handler(routine)
    api.set_console_ctrl_handler(handler, True)
    assert events == [w.CTRL_CLOSE_EVENT] and k.seen["console_result"] == (1,)
