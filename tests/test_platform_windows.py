"""The Windows implementation, on Linux, against a fake Win32 API.

`FakeWin32` stands where `Win32Api` (ctypes over kernel32) stands on
Windows: it keeps each handle on an ordinary file, records every call, and
behaves as Windows does where our logic depends on it: unbuffered handles
refuse I/O that is not sector-aligned (ERROR_INVALID_PARAMETER), byte-range
locks are mandatory and per handle, CREATE_NEW fails on an existing name,
FILE_FLAG_OPEN_REPARSE_POINT opens a link itself, and the allocation size
is separate from the end of file.
"""

from __future__ import annotations

import ctypes
import errno
import mmap
import os
import stat
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from multiprocessing import Pipe
from pathlib import Path
from typing import Any

import pytest

from mesowriter._platform import FileLockedError, _base, _win32
from mesowriter._platform import _windows as win
from mesowriter._platform._base import PAGE, buffer_address
from mesowriter._platform._win32 import FileInfo, win_error
from mesowriter._platform._windows import (
    LOCK_SENTINEL,
    WindowsAlignedFile,
    WindowsPlatform,
    windows_os_path,
)
from tests.conftest import FakeClock


@dataclass
class Handle:
    fd: int
    path: str
    access: int
    share: int
    flags: int
    reparse: bool
    file_id: tuple[int, int]


@dataclass
class FakeWin32:
    sector: int | None = 512
    refuse_unbuffered_open: bool = False
    refuse_unbuffered_writes: bool = False
    disk_free: int | None = None
    supports_sparse: bool = True
    sharing_violation_on_open: bool = False
    calls: list[tuple[Any, ...]] = field(default_factory=list)
    handles: dict[int, Handle] = field(default_factory=dict)
    locks: list[tuple[int, tuple[int, int], int, int, bool]] = field(
        default_factory=list
    )
    allocation: dict[tuple[int, int], int] = field(default_factory=dict)
    sparse: set[tuple[int, int]] = field(default_factory=set)
    console_handlers: list[Any] = field(default_factory=list)
    _next: int = 100

    def _h(self, handle: int) -> Handle:
        assert handle in self.handles, f"unknown or closed handle {handle}"
        return self.handles[handle]

    def names(self) -> list[str]:
        return [c[0] for c in self.calls]

    # -- handles ---------------------------------------------------------------------
    def create_file(
        self, path: str, access: int, share: int, disposition: int, flags: int
    ) -> int:
        self.calls.append(("CreateFileW", path, access, share, disposition, flags))
        if self.sharing_violation_on_open:
            raise win_error(_win32.ERROR_SHARING_VIOLATION, path)
        exists = os.path.lexists(path)
        if disposition == _win32.CREATE_NEW and exists:
            raise win_error(_win32.ERROR_FILE_EXISTS, path)
        if disposition == _win32.OPEN_EXISTING and not exists:
            raise win_error(_win32.ERROR_FILE_NOT_FOUND, path)
        if flags & _win32.FILE_FLAG_NO_BUFFERING and self.refuse_unbuffered_open:
            raise win_error(_win32.ERROR_INVALID_PARAMETER, path)
        reparse = os.path.islink(path) and bool(
            flags & _win32.FILE_FLAG_OPEN_REPARSE_POINT
        )
        if reparse:
            fd = os.open(path, os.O_PATH | os.O_NOFOLLOW)
        else:
            fd = os.open(path, os.O_RDWR | (0 if exists else os.O_CREAT), 0o644)
        st = os.fstat(fd)
        file_id = (st.st_dev, st.st_ino)
        for other in self.handles.values():  # share modes, both ways
            if other.file_id == file_id and (
                _denied(other.share, access) or _denied(share, other.access)
            ):
                os.close(fd)
                raise win_error(_win32.ERROR_SHARING_VIOLATION, path)
        handle = self._next
        self._next += 1
        self.handles[handle] = Handle(fd, path, access, share, flags, reparse, file_id)
        return handle

    def close_handle(self, handle: int) -> None:
        self.calls.append(("CloseHandle", handle))
        h = self.handles.pop(handle)
        self.locks = [lk for lk in self.locks if lk[0] != handle]
        os.close(h.fd)

    def file_info(self, handle: int) -> FileInfo:
        h = self._h(handle)
        st = os.fstat(h.fd)
        attributes = _win32.FILE_ATTRIBUTE_NORMAL
        if h.reparse:
            attributes |= _win32.FILE_ATTRIBUTE_REPARSE_POINT
        if stat.S_ISDIR(st.st_mode):
            attributes |= _win32.FILE_ATTRIBUTE_DIRECTORY
        return FileInfo(attributes, h.file_id)

    # -- data ------------------------------------------------------------------------
    def _check_unbuffered(self, h: Handle, view: memoryview, offset: int) -> None:
        if not h.flags & _win32.FILE_FLAG_NO_BUFFERING:
            return
        sector = self.sector or 512
        if self.refuse_unbuffered_writes or any(
            x % sector for x in (offset, len(view), buffer_address(view))
        ):
            raise win_error(_win32.ERROR_INVALID_PARAMETER)

    def _check_locks(self, handle: int, offset: int, length: int) -> None:
        h = self._h(handle)
        for owner, file_id, start, n, _ in self.locks:
            if owner != handle and file_id == h.file_id:
                if offset < start + n and start < offset + length:
                    raise win_error(_win32.ERROR_LOCK_VIOLATION)

    def write_file(self, handle: int, view: memoryview, offset: int) -> int:
        h = self._h(handle)
        self.calls.append(("WriteFile", handle, offset, len(view), any(view)))
        self._check_unbuffered(h, view, offset)
        self._check_locks(handle, offset, len(view))
        return os.pwrite(h.fd, view, offset)

    def read_file(self, handle: int, n: int, offset: int) -> bytes:
        self.calls.append(("ReadFile", handle, offset, n))
        self._check_locks(handle, offset, n)
        return os.pread(self._h(handle).fd, n, offset)

    def flush_file_buffers(self, handle: int) -> None:
        self.calls.append(("FlushFileBuffers", handle))
        self._h(handle)

    # -- size and allocation -------------------------------------------------------
    def file_size(self, handle: int) -> int:
        return os.fstat(self._h(handle).fd).st_size

    def set_end_of_file(self, handle: int, length: int) -> None:
        self.calls.append(("SetEndOfFile", handle, length))
        os.ftruncate(self._h(handle).fd, length)

    def set_allocation_size(self, handle: int, size: int) -> None:
        self.calls.append(("SetAllocation", handle, size))
        h = self._h(handle)
        if self.disk_free is not None and size > self.disk_free:
            raise win_error(_win32.ERROR_DISK_FULL)
        if size < self.file_size(handle):  # as NTFS: the end of file follows
            os.ftruncate(h.fd, size)
        self.allocation[h.file_id] = size

    def set_sparse(self, handle: int) -> None:
        self.calls.append(("FSCTL_SET_SPARSE", handle))
        if not self.supports_sparse:
            raise win_error(1)  # ERROR_INVALID_FUNCTION: FAT, exFAT
        self.sparse.add(self._h(handle).file_id)

    def sector_size(self, handle: int, path: str) -> int | None:
        self._h(handle)
        return self.sector

    # -- locks -------------------------------------------------------------------------
    def lock(self, handle: int, offset: int, length: int, *, exclusive: bool) -> bool:
        self.calls.append(("LockFileEx", handle, offset, length, exclusive))
        h = self._h(handle)
        for _, file_id, start, n, excl in self.locks:
            overlap = offset < start + n and start < offset + length
            if file_id == h.file_id and overlap and (excl or exclusive):
                return False  # even for the same handle, as Windows
        self.locks.append((handle, h.file_id, offset, length, exclusive))
        return True

    def unlock(self, handle: int, offset: int, length: int) -> None:
        self.calls.append(("UnlockFileEx", handle, offset, length))
        self.locks = [
            lk for lk in self.locks if not (lk[0] == handle and lk[2] == offset)
        ]

    # -- console -----------------------------------------------------------------------
    def console_handler(self, fn: Callable[[int], int]) -> Callable[[int], int]:
        return fn

    def set_console_ctrl_handler(self, handler: Any, add: bool) -> None:
        self.calls.append(("SetConsoleCtrlHandler", handler, add))
        if add:
            self.console_handlers.append(handler)
        else:
            self.console_handlers.remove(handler)


def _denied(share: int, access: int) -> bool:
    """Whether a handle's share mode refuses another handle's access."""
    if access & _win32.GENERIC_WRITE and not share & _win32.FILE_SHARE_WRITE:
        return True
    return bool(access & _win32.GENERIC_READ and not share & _win32.FILE_SHARE_READ)


def aligned(nbytes: int, fill: int) -> mmap.mmap:
    buf = mmap.mmap(-1, nbytes)
    buf[:] = bytes([fill]) * nbytes
    return buf


def open_file(
    api: FakeWin32, path: Path, mode: str = "create", **kwargs: Any
) -> WindowsAlignedFile:
    cls = WindowsAlignedFile.using(api)  # type: ignore[arg-type]
    return cls(str(path), mode=mode, **kwargs)  # type: ignore[arg-type]


# -- unbuffered writes and alignment --
@pytest.mark.parametrize("sector", [512, 4096])
def test_no_buffering_with_sector_alignment(tmp_path: Path, sector: int) -> None:
    api = FakeWin32(sector=sector)
    f = open_file(api, tmp_path / "a.tif")
    assert f.direct and f.alignment == PAGE
    creates = [c for c in api.calls if c[0] == "CreateFileW"]
    assert len(creates) == 2
    meta_flags, pixel_flags = creates[0][5], creates[1][5]
    assert not meta_flags & _win32.FILE_FLAG_NO_BUFFERING
    assert pixel_flags & _win32.FILE_FLAG_NO_BUFFERING
    assert not pixel_flags & _win32.FILE_FLAG_WRITE_THROUGH
    assert all(c[5] & _win32.FILE_FLAG_OPEN_REPARSE_POINT for c in creates)
    assert all(
        c[3] == _win32.FILE_SHARE_READ | _win32.FILE_SHARE_WRITE for c in creates
    )
    f.pwrite(aligned(2 * PAGE, 5), PAGE)  # the fake refuses unaligned I/O...
    with pytest.raises(ValueError):
        f.pwrite(aligned(PAGE, 1), 512)  # ...and we refuse before it sees it
    with pytest.raises(ValueError):
        f.pwrite(memoryview(aligned(2 * PAGE, 1))[512 : 512 + PAGE], 0)
    f.pwrite_meta(b"II+\0", 0)  # metadata: any offset, through the cache
    assert f.direct  # no write was refused, so none fell back
    writes = [c for c in api.calls if c[0] == "WriteFile"]
    pixel_handle = f._pixel_handle
    assert [(c[1] == pixel_handle, c[2], c[3]) for c in writes] == [
        (True, PAGE, 2 * PAGE),
        (False, 0, 4),
    ]
    f.close()
    data = (tmp_path / "a.tif").read_bytes()
    assert data[:4] == b"II+\0" and data[PAGE:] == b"\5" * (2 * PAGE)


def test_sectors_larger_than_a_page_fall_back_to_buffered(tmp_path: Path) -> None:
    api = FakeWin32(sector=8192)
    with open_file(api, tmp_path / "a.tif", sync_every=3 * PAGE) as f:
        assert not f.direct
        creates = [c for c in api.calls if c[0] == "CreateFileW"]
        assert len(creates) == 1  # no unbuffered handle at all
        f.pwrite(b"x" * 100, 3)  # unaligned is fine when buffered
        f.pwrite(aligned(2 * PAGE, 1), PAGE)
        assert "FlushFileBuffers" not in api.names()
        f.pwrite(aligned(PAGE, 2), 3 * PAGE)  # past sync_every: bounded dirt
        assert api.names().count("FlushFileBuffers") == 1


def test_unbuffered_refused_at_open_or_at_the_first_write(tmp_path: Path) -> None:
    api = FakeWin32(refuse_unbuffered_open=True)
    with open_file(api, tmp_path / "a.tif") as f:
        assert not f.direct
    api = FakeWin32(refuse_unbuffered_writes=True)
    with open_file(api, tmp_path / "b.tif") as f:
        assert f.direct
        unbuffered = f._pixel_handle
        assert f.pwrite(aligned(PAGE, 7), PAGE) == PAGE
        assert not f.direct and f._pixel_handle == f._handle
        # kept open until close: another I/O thread may still write through it
        assert ("CloseHandle", unbuffered) not in api.calls
        f.pwrite(b"tail", 2 * PAGE)
    assert ("CloseHandle", unbuffered) in api.calls
    assert (tmp_path / "b.tif").read_bytes()[PAGE:] == b"\7" * PAGE + b"tail"


def test_large_writes_go_in_pieces(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(win, "MAX_IO", 2 * PAGE)  # WriteFile's 4 GiB, scaled down
    api = FakeWin32()
    with open_file(api, tmp_path / "a.tif") as f:
        f.pwrite(aligned(5 * PAGE, 3), 0)
        assert f.pread(5 * PAGE, 0) == b"\3" * (5 * PAGE)
    writes = [(c[2], c[3]) for c in api.calls if c[0] == "WriteFile"]
    assert writes == [(0, 2 * PAGE), (2 * PAGE, 2 * PAGE), (4 * PAGE, PAGE)]
    reads = [(c[2], c[3]) for c in api.calls if c[0] == "ReadFile"]
    assert reads[0] == (0, 2 * PAGE) and len(reads) >= 3


# -- preallocation, sparse files, sync --
def test_reserve_sets_the_allocation_and_writes_nothing(tmp_path: Path) -> None:
    api = FakeWin32()
    path = tmp_path / "a.tif"
    f = open_file(api, path)
    before = len(api.calls)
    frames = 10_000 * (2048 * 2048 * 2 + PAGE)  # the 78 GiB run of the issue
    f.reserve(0, frames)
    new = api.calls[before:]
    assert [c for c in new if c[0] == "WriteFile"] == []  # not one zero written
    assert ("SetAllocation", f._handle, frames) in new
    assert f.size() == 0 and path.stat().st_size == 0  # the size did not move
    assert path.stat().st_blocks == 0
    f.reserve(0, frames // 2)  # never lowered: that would cut the file
    f.reserve(PAGE, 10)
    assert [c[0] for c in api.calls[before:]].count("SetAllocation") == 1
    f.allocate(frames + PAGE)  # the deprecated name
    assert api.calls[-1] == ("SetAllocation", f._handle, frames + PAGE)
    f.pwrite(aligned(PAGE, 1), 0)
    assert f.size() == PAGE
    f.close()


def test_reserve_on_a_full_or_unsupporting_volume(tmp_path: Path) -> None:
    api = FakeWin32(disk_free=1 << 30)
    path = tmp_path / "a.tif"
    with open_file(api, path) as f:
        with pytest.raises(OSError) as info:
            f.reserve(0, 2 << 30)
        assert info.value.errno == errno.ENOSPC and str(path) in str(info.value)
        f.reserve(0, 1 << 29)  # what fits is still reserved
        assert api.allocation[api._h(f._handle).file_id] == 1 << 29

    class NoAllocation(FakeWin32):
        def set_allocation_size(self, handle: int, size: int) -> None:
            raise win_error(_win32.ERROR_INVALID_PARAMETER)

    with open_file(NoAllocation(), tmp_path / "b.tif") as f:
        f.reserve(0, 1 << 30)  # a filesystem without it: nothing, silently


def test_make_sparse_issues_fsctl_set_sparse(tmp_path: Path) -> None:
    api = FakeWin32()
    with open_file(api, tmp_path / "a.tif") as f:
        f.make_sparse()
        assert ("FSCTL_SET_SPARSE", f._handle) in api.calls
        assert api._h(f._handle).file_id in api.sparse
    api = FakeWin32(supports_sparse=False)
    with open_file(api, tmp_path / "b.tif") as f:
        f.make_sparse()  # exFAT: nothing to do, no error
        assert "FSCTL_SET_SPARSE" in api.names()


def test_sync_flushes_file_buffers_and_truncate_sets_the_end(tmp_path: Path) -> None:
    api = FakeWin32()
    with open_file(api, tmp_path / "a.tif") as f:
        f.pwrite(aligned(2 * PAGE, 1), 0)
        f.sync()
        assert api.calls[-1] == ("FlushFileBuffers", f._handle)
        f.pwrite_tail(b"<xml/>", 2 * PAGE)  # deprecated: pwrite_meta + sync
        assert api.calls[-1] == ("FlushFileBuffers", f._handle)
        f.truncate(2 * PAGE + 6)
        assert f.size() == 2 * PAGE + 6
        assert f.pread(100, 2 * PAGE) == b"<xml/>"


# -- the owner lock --
def test_lock_is_a_sentinel_byte_far_beyond_the_end(tmp_path: Path) -> None:
    api = FakeWin32()
    path = tmp_path / "a.tif"
    f = open_file(api, path)
    assert ("LockFileEx", f._handle, LOCK_SENTINEL, 1, True) in api.calls
    assert LOCK_SENTINEL >= 1 << 62
    f.pwrite(aligned(PAGE, 1), 0)
    assert f.size() == PAGE  # the lock never extended the file
    # a reader elsewhere is never blocked: locks are mandatory on Windows,
    # but the sentinel covers no data
    reader = api.create_file(
        str(path),
        _win32.GENERIC_READ,
        _win32.FILE_SHARE_READ | _win32.FILE_SHARE_WRITE,
        _win32.OPEN_EXISTING,
        0,
    )
    assert api.read_file(reader, PAGE, 0) == b"\1" * PAGE
    api.close_handle(reader)
    platform = WindowsPlatform(api=api)  # type: ignore[arg-type]
    assert platform.probe_lock(str(path))
    with pytest.raises(FileLockedError, match=r"a\.tif"):
        open_file(api, path, "resume")
    handle = f._handle
    f.close()
    assert ("UnlockFileEx", handle, LOCK_SENTINEL, 1) in api.calls
    assert not platform.probe_lock(str(path))
    assert not platform.probe_lock(str(tmp_path / "missing"))
    open_file(api, path, "resume").close()
    assert api.handles == {}  # every handle closed


def test_overwrite_truncates_only_after_locking(tmp_path: Path) -> None:
    api = FakeWin32()
    path = tmp_path / "a.tif"
    path.write_bytes(b"precious frames")
    owner = open_file(api, path, "resume")
    with pytest.raises(FileLockedError):
        open_file(api, path, "overwrite")
    assert path.read_bytes() == b"precious frames"
    assert "SetEndOfFile" not in api.names()
    owner.close()
    api.calls.clear()
    with open_file(api, path, "overwrite") as f:
        names = api.names()
        assert names.index("LockFileEx") < names.index("SetEndOfFile")
        assert f.size() == 0


def test_a_file_held_without_sharing_is_locked(tmp_path: Path) -> None:
    api = FakeWin32(sharing_violation_on_open=True)
    with pytest.raises(FileLockedError, match=r"a\.tif"):
        open_file(api, tmp_path / "a.tif")
    assert WindowsPlatform(api=api).probe_lock(str(tmp_path / "a.tif"))  # type: ignore[arg-type]


def test_links_are_refused_never_followed(tmp_path: Path) -> None:
    api = FakeWin32()
    victim = tmp_path / "victim"
    victim.write_bytes(b"precious")
    link = tmp_path / "link.tif"
    link.symlink_to(victim)
    with pytest.raises(FileExistsError):
        open_file(api, link, "create")
    for mode in ("overwrite", "resume"):
        with pytest.raises(OSError) as info:
            open_file(api, link, mode)
        assert info.value.errno == errno.ELOOP and "reparse point" in str(info.value)
    assert victim.read_bytes() == b"precious"
    assert "SetEndOfFile" not in api.names() and "LockFileEx" not in api.names()
    assert api.handles == {}


def test_create_refuses_an_existing_file(tmp_path: Path) -> None:
    path = tmp_path / "a.tif"
    path.write_bytes(b"old")
    with pytest.raises(FileExistsError):
        open_file(FakeWin32(), path, "create")
    assert path.read_bytes() == b"old"


def test_long_names_reach_the_api_with_the_prefix(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[str] = []
    monkeypatch.setattr(win, "windows_os_path", lambda p: seen.append(p) or p)
    with open_file(FakeWin32(), tmp_path / "a.tif"):
        pass
    assert seen == [str(tmp_path / "a.tif")]  # every open goes through os_path
    long = "C:\\data\\" + "run" * 90 + ".ome.tiff"
    assert windows_os_path(long) == "\\\\?\\" + long
    assert windows_os_path("run.tif", lambda p: "C:\\" + "d" * 300 + "\\" + p) == (
        "\\\\?\\C:\\" + "d" * 300 + "\\run.tif"
    )
    assert windows_os_path("run.tif", lambda p: "C:\\data\\" + p) == "run.tif"


def test_reserved_names_are_refused_on_windows_only() -> None:
    with pytest.raises(ValueError, match="device"):
        WindowsPlatform().check_file_name("C:\\data\\nul.ome.tiff")
    WindowsPlatform().check_file_name("C:\\data\\null.ome.tiff")


# -- retries --
def test_replace_retries_sharing_violations_then_names_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, clock: FakeClock
) -> None:
    platform = WindowsPlatform(api=FakeWin32(), clock=clock, sleep=clock.sleep)  # type: ignore[arg-type]
    src, dst = tmp_path / "tmp", tmp_path / "run_report.json"
    src.write_bytes(b"new")
    failures = iter([32, 33, 5])
    real_replace = os.replace

    def viewer_holds_it(a: str, b: str) -> None:
        code = next(failures, None)
        if code is not None:
            raise win_error(code, b)
        real_replace(a, b)

    monkeypatch.setattr(os, "replace", viewer_holds_it)
    platform.replace(str(src), str(dst))
    assert dst.read_bytes() == b"new" and len(clock.sleeps) == 3

    def always_held(a: str, b: str) -> None:
        raise win_error(_win32.ERROR_SHARING_VIOLATION, b)

    monkeypatch.setattr(os, "replace", always_held)
    clock.now, clock.sleeps = 100.0, []
    with pytest.raises(OSError, match="run_report") as info:
        platform.replace(str(src), str(dst), timeout=1.5)
    assert clock.now == pytest.approx(101.5) and info.value.errno == errno.EACCES

    def missing(a: str, b: str) -> None:
        raise win_error(_win32.ERROR_FILE_NOT_FOUND, a)

    monkeypatch.setattr(os, "replace", missing)
    clock.sleeps = []
    with pytest.raises(FileNotFoundError):
        platform.replace(str(src), str(dst))
    assert clock.sleeps == []  # not transient: raised at once


def test_unlink_retries_a_pending_delete(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, clock: FakeClock
) -> None:
    platform = WindowsPlatform(api=FakeWin32(), clock=clock, sleep=clock.sleep)  # type: ignore[arg-type]
    path = tmp_path / "journal.ndjson"
    path.write_bytes(b"x")
    failures = iter([_win32.ERROR_ACCESS_DENIED, _win32.ERROR_SHARING_VIOLATION])
    real_unlink = os.unlink

    def scanner_holds_it(p: str) -> None:
        code = next(failures, None)
        if code is not None:
            raise win_error(code, p)
        real_unlink(p)

    monkeypatch.setattr(os, "unlink", scanner_holds_it)
    platform.unlink(str(path))
    assert not path.exists() and len(clock.sleeps) == 2


# -- console control events --
@pytest.mark.parametrize(
    ("event", "reason"),
    [
        (0, "CTRL_C"),
        (1, "CTRL_BREAK"),
        (2, "CTRL_CLOSE"),
        (5, "CTRL_LOGOFF"),
        (6, "CTRL_SHUTDOWN"),
    ],
)
def test_console_events_call_the_callback_and_return_true(
    event: int, reason: str
) -> None:
    api = FakeWin32()
    platform = WindowsPlatform(api=api)  # type: ignore[arg-type]
    reasons: list[str] = []
    uninstall = platform.install_shutdown_handler(reasons.append)
    (routine,) = api.console_handlers
    assert routine(event) == 1 and reasons == [reason]
    assert routine(3) == 0 and reasons == [reason]  # not an event we handle
    uninstall()
    uninstall()
    assert api.console_handlers == []
    assert api.names().count("SetConsoleCtrlHandler") == 2


def test_console_routine_returns_only_after_the_callback(
    capsys: pytest.CaptureFixture[str],
) -> None:
    api = FakeWin32()
    platform = WindowsPlatform(api=api)  # type: ignore[arg-type]
    release = threading.Event()
    entered = threading.Event()

    def finalise(reason: str) -> None:
        entered.set()
        release.wait(10)
        raise RuntimeError("finalising failed")  # still handled, still TRUE

    platform.install_shutdown_handler(finalise)
    results: list[int] = []
    thread = threading.Thread(target=lambda: results.append(api.console_handlers[0](2)))
    thread.start()  # Windows runs the routine on a thread of its own
    assert entered.wait(10)
    thread.join(0.2)
    assert thread.is_alive() and results == []  # the process is kept alive
    release.set()
    thread.join(10)
    assert results == [1]
    assert "finalising failed" in capsys.readouterr().err


# -- waits over more than 63 objects --
def test_windows_wait_is_grouped_by_63(monkeypatch: pytest.MonkeyPatch) -> None:
    sizes: list[int] = []
    real_wait = _base._connection_wait

    def capped_wait(objects: list[Any], timeout: float | None) -> list[Any]:
        assert len(objects) <= 63, "WaitForMultipleObjects would refuse this"
        sizes.append(len(objects))
        return real_wait(objects, timeout)

    monkeypatch.setattr(_base, "_connection_wait", capped_wait)
    pipes = [Pipe(duplex=False) for _ in range(150)]
    try:
        pipes[140][1].send_bytes(b"x")
        readers = [r for r, _ in pipes]
        ready = WindowsPlatform().wait_any(readers, 10)
        assert ready == [readers[140]]
        assert len(sizes) == 3 and max(sizes) == 63
    finally:
        for r, w in pipes:
            r.close()
            w.close()


# -- the ctypes layer itself --
def test_win32_structures_have_the_windows_sizes() -> None:
    pointer = ctypes.sizeof(ctypes.c_void_p)
    assert ctypes.sizeof(_win32.OVERLAPPED) == (32 if pointer == 8 else 20)
    assert ctypes.sizeof(_win32.BY_HANDLE_FILE_INFORMATION) == 52
    assert ctypes.sizeof(_win32.FILE_STORAGE_INFO) == 28
    off = _win32._overlapped((5 << 32) | 7)
    assert (off.Offset, off.OffsetHigh) == (7, 5)


def test_win_error_maps_codes_as_python_does() -> None:
    assert isinstance(win_error(_win32.ERROR_FILE_EXISTS, "x"), FileExistsError)
    assert isinstance(win_error(_win32.ERROR_FILE_NOT_FOUND), FileNotFoundError)
    exc = win_error(_win32.ERROR_SHARING_VIOLATION, "x")
    assert isinstance(exc, PermissionError) and _base.winerror(exc) == 32
    assert _base.is_transient(exc) and not _base.is_transient(
        OSError(errno.EACCES, "x")
    )
    assert win_error(_win32.ERROR_DISK_FULL).errno == errno.ENOSPC


def test_library_folders_reach_path_and_the_dll_search(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    added: list[str] = []
    monkeypatch.setattr(os, "add_dll_directory", added.append, raising=False)
    monkeypatch.setenv("PATH", "system")
    platform = WindowsPlatform()
    assert platform.shared_library_suffix == ".dll"
    for _ in range(2):
        platform.add_library_folder("codecs")
    assert os.environ["PATH"].split(os.pathsep) == ["codecs", "system"]
    assert added == ["codecs"]


def test_prepare_output_path_refuses_device_names_on_windows(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from mesowriter import _paths

    monkeypatch.setattr(_paths, "check_file_name", WindowsPlatform().check_file_name)
    with pytest.raises(ValueError, match="device"):
        _paths.prepare_output_path(tmp_path / "aux.ome.tiff", overwrite=False)
    assert _paths.prepare_output_path(tmp_path / "run.ome.tiff", overwrite=False)
