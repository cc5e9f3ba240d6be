"""The platform layer on this machine (POSIX): real files, processes, signals.

The Windows implementation is tested against a fake Win32 API in
test_platform_windows.py; the platform-independent logic (retries, grouped
waits, long paths) is tested here and there.
"""

from __future__ import annotations

import errno
import mmap
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from multiprocessing import Pipe, resource_tracker, shared_memory
from pathlib import Path

import pytest

from mesowriter import _platform
from mesowriter._platform import (
    AlignedFile,
    FileLockedError,
    _base,
    _posix,
    atomic_write,
    open_exclusive,
    probe_lock,
    temp_sibling,
)
from mesowriter._platform._base import PAGE, retry_transient, wait_grouped
from mesowriter._platform._posix import PosixPlatform
from tests.conftest import FakeClock

pytestmark = pytest.mark.skipif(os.name != "posix", reason="POSIX implementation")
REPO = Path(__file__).resolve().parents[1]
O_DIRECT_FLAG = getattr(os, "O_DIRECT", 0)


def _fs_type(path: Path) -> str:
    """The filesystem type of the mount holding `path` (Linux /proc/self/mounts)."""
    best, kind = "", ""
    with open("/proc/self/mounts", encoding="utf-8") as fh:
        for line in fh:
            _, mount, fstype, *_ = line.split()
            if str(path).startswith(mount) and len(mount) > len(best):
                best, kind = mount, fstype
    return kind


@pytest.fixture
def disk_dir(tmp_path: Path) -> Path:
    """A folder on a real disk filesystem, where O_DIRECT works."""
    if not os.path.exists("/proc/self/mounts") or not O_DIRECT_FLAG:
        pytest.skip("needs Linux O_DIRECT")
    if _fs_type(tmp_path) in ("tmpfs", "overlay", "ramfs", ""):
        pytest.skip(f"{tmp_path} is not on a disk")
    return tmp_path


@pytest.fixture
def shm_dir() -> Iterator[Path]:
    folder = Path("/dev/shm")
    if not folder.is_dir():
        pytest.skip("needs /dev/shm")
    path = folder / f"mesowriter-test-{os.getpid()}-{time.monotonic_ns()}"
    path.mkdir()
    yield path
    for child in path.iterdir():
        child.unlink()
    path.rmdir()


def aligned(nbytes: int, fill: int) -> mmap.mmap:
    buf = mmap.mmap(-1, nbytes)
    buf[:] = bytes([fill]) * nbytes
    return buf


def fd_flags(fd: int) -> int:
    with open(f"/proc/self/fdinfo/{fd}", encoding="ascii") as fh:
        for line in fh:
            if line.startswith("flags:"):
                return int(line.split()[1], 8)
    raise AssertionError("no flags line")


def run_child(code: str, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(code), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=REPO,
    )


# -- direct I/O and its fallback --
def test_direct_io_on_the_real_disk(disk_dir: Path) -> None:
    path = str(disk_dir / "a.bin")
    with AlignedFile(path, mode="create") as f:
        assert f.direct and f.alignment == PAGE
        assert fd_flags(f._pixel_fd) & O_DIRECT_FLAG
        assert not fd_flags(f._fd) & O_DIRECT_FLAG  # the metadata handle is cached
        assert f.pwrite(aligned(2 * PAGE, 7), PAGE) == 2 * PAGE
        f.pwrite_meta(b"head", 0)
        with pytest.raises(ValueError, match="multiples"):
            f.pwrite(aligned(PAGE, 1), 100)  # unaligned offset
        with pytest.raises(ValueError, match="multiples"):
            f.pwrite(aligned(PAGE, 1)[:100], 0)  # unaligned length
        with pytest.raises(ValueError, match="aligned"):
            f.pwrite(memoryview(aligned(2 * PAGE, 1))[8 : 8 + PAGE], 0)  # address
        assert f.direct  # refusing a bad call is not a reason to give up
        f.sync()
        assert f.size() == 3 * PAGE
        assert f.pread(6, 0) == b"head\0\0"
        assert f.pread(10, 3 * PAGE - 4) == b"\7" * 4  # short at the end
    data = Path(path).read_bytes()
    assert data[PAGE:] == b"\7" * (2 * PAGE)


def test_tmpfs_writes_whether_or_not_it_takes_o_direct(shm_dir: Path) -> None:
    # tmpfs refuses O_DIRECT before Linux 6.6 and accepts it since
    path = str(shm_dir / "a.bin")
    with AlignedFile(path, mode="create") as f:
        f.pwrite(aligned(PAGE, 3), 0)
        assert f.direct == bool(fd_flags(f._pixel_fd) & O_DIRECT_FLAG)
    assert Path(path).read_bytes() == b"\3" * PAGE


def test_fallback_when_o_direct_is_refused_at_open(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_open = os.open

    def refusing_open(path: str, flags: int, mode: int = 0o777) -> int:
        if flags & O_DIRECT_FLAG:
            raise OSError(errno.EINVAL, "Invalid argument")
        return real_open(path, flags, mode)

    flushes: list[int] = []
    monkeypatch.setattr(os, "open", refusing_open)
    monkeypatch.setattr(_posix, "_O_DIRECT", O_DIRECT_FLAG or 0x4000)
    monkeypatch.setattr(_posix, "_datasync", lambda fd: flushes.append(fd))
    path = str(tmp_path / "a.bin")
    with AlignedFile(path, mode="create", sync_every=3 * PAGE) as f:
        assert not f.direct and f.alignment == PAGE
        f.pwrite(b"x" * 100, 5)  # no alignment needed without direct I/O
        f.pwrite(b"y" * (2 * PAGE), PAGE)
        assert flushes == []
        f.pwrite(b"z" * PAGE, 3 * PAGE)  # 3 pages + 100 bytes: bounded here
        assert len(flushes) == 1
    data = Path(path).read_bytes()
    assert data[5:105] == b"x" * 100 and data[3 * PAGE :] == b"z" * PAGE


def test_fallback_when_the_first_direct_write_is_refused(
    disk_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = str(disk_dir / "a.bin")
    f = AlignedFile(path, mode="create")
    assert f.direct
    direct_fd = f._pixel_fd
    real_pwrite = os.pwrite

    def refusing_pwrite(fd: int, data: memoryview, offset: int) -> int:
        if fd == direct_fd:
            raise OSError(errno.EINVAL, "Invalid argument")
        return real_pwrite(fd, data, offset)

    monkeypatch.setattr(os, "pwrite", refusing_pwrite)
    assert f.pwrite(aligned(PAGE, 9), PAGE) == PAGE
    assert not f.direct and f._pixel_fd == f._fd
    f.pwrite(b"tail", 2 * PAGE)  # unaligned is fine from now on
    f.close()
    f.close()  # idempotent
    assert Path(path).read_bytes()[PAGE:] == b"\x09" * PAGE + b"tail"


def test_direct_false_is_buffered(tmp_path: Path) -> None:
    with AlignedFile(str(tmp_path / "a.bin"), mode="create", direct=False) as f:
        assert not f.direct
        assert not fd_flags(f._pixel_fd) & O_DIRECT_FLAG


# -- reserve, sparse, truncate --
def test_reserve_allocates_without_writing(disk_dir: Path) -> None:
    path = str(disk_dir / "a.bin")
    with AlignedFile(path, mode="create") as f:
        f.pwrite(aligned(PAGE, 1), 0)
        f.reserve(PAGE, 64 << 20)
        st = os.stat(path)
        assert st.st_blocks * 512 >= 64 << 20  # the blocks are ours
        assert f.size() == PAGE + (64 << 20)  # fallocate grows the size
        assert f.pread(PAGE, 32 << 20) == bytes(PAGE)  # unwritten reads as zeros
        f.make_sparse()  # nothing to do on POSIX, and no error
        f.truncate(PAGE)
        assert f.size() == PAGE


def test_reserve_beyond_the_disk_is_enospc_naming_the_file(shm_dir: Path) -> None:
    # tmpfs checks the request against its size before allocating anything
    path = str(shm_dir / "big.bin")
    with AlignedFile(path, mode="create") as f:
        with pytest.raises(OSError) as info:
            f.reserve(0, 1 << 50)
        assert info.value.errno == errno.ENOSPC
        assert path in str(info.value)


def test_reserve_on_a_filesystem_without_it_does_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_fallocate(fd: int, offset: int, length: int) -> None:
        raise OSError(errno.EOPNOTSUPP, "Operation not supported")

    monkeypatch.setattr(_posix, "_reserve_blocks", no_fallocate)
    with AlignedFile(str(tmp_path / "a.bin"), mode="create") as f:
        f.reserve(0, 1 << 30)
        assert f.size() == 0
        f.allocate(1 << 20)  # the deprecated name
        assert f.size() == 0


# -- the owner lock --
def test_second_open_in_this_process_is_locked_out(tmp_path: Path) -> None:
    path = str(tmp_path / "a.bin")
    owner = AlignedFile(path, mode="create")
    for mode in ("resume", "overwrite"):
        with pytest.raises(FileLockedError, match=str(tmp_path)):
            AlignedFile(path, mode=mode)  # type: ignore[arg-type]
    assert probe_lock(path)
    owner.close()
    assert not probe_lock(path)
    AlignedFile(path, mode="resume").close()


def test_aliases_of_a_locked_file_are_locked_out(tmp_path: Path) -> None:
    real = tmp_path / "real"
    real.mkdir()
    path = real / "a.bin"
    (tmp_path / "alias").symlink_to(real)  # the same file through a linked folder
    _touch(path)
    os.link(path, real / "b.bin")
    with AlignedFile(str(path), mode="resume"):
        with pytest.raises(FileLockedError):
            AlignedFile(str(tmp_path / "alias" / "a.bin"), mode="resume")
        with pytest.raises(FileLockedError):
            AlignedFile(str(real / "b.bin"), mode="resume")  # a hard link
        assert probe_lock(str(tmp_path / "alias" / "a.bin"))


def _touch(path: Path) -> Path:
    path.write_bytes(b"")
    return path


HOLD_LOCK = """
    import sys, time
    from mesowriter._platform import AlignedFile
    f = AlignedFile(sys.argv[1], mode=sys.argv[2])
    print("ready", flush=True)
    time.sleep(60)
"""

TRY_LOCK = """
    import sys
    from mesowriter._platform import AlignedFile, FileLockedError
    try:
        AlignedFile(sys.argv[1], mode="overwrite").close()
    except FileLockedError as exc:
        print("locked", exc)
    else:
        print("free")
"""


def test_another_process_is_locked_out_until_the_owner_is_killed(
    tmp_path: Path,
) -> None:
    path = str(tmp_path / "a.bin")
    owner = run_child(HOLD_LOCK, path, "create")
    try:
        assert owner.stdout is not None
        assert owner.stdout.readline().strip() == "ready"
        Path(path).write_bytes(b"data")  # written around the (advisory) lock
        other = run_child(TRY_LOCK, path)
        out, err = other.communicate(timeout=60)
        assert out.startswith("locked") and path in out, err
        assert Path(path).read_bytes() == b"data"  # overwrite left it intact
        assert probe_lock(path)
        with pytest.raises(FileLockedError):
            AlignedFile(path, mode="resume")
    finally:
        owner.send_signal(signal.SIGKILL)
        owner.communicate(timeout=60)
    assert not probe_lock(path)  # the lock died with its process
    with AlignedFile(path, mode="overwrite") as f:
        assert f.size() == 0


def test_probe_lock_of_a_missing_or_free_file(tmp_path: Path) -> None:
    assert not probe_lock(str(tmp_path / "missing"))
    free = _touch(tmp_path / "free")
    assert not probe_lock(str(free))
    AlignedFile(str(free), mode="resume").close()  # the probe left no lock


def test_overwrite_truncates_only_once_locked(tmp_path: Path) -> None:
    path = tmp_path / "a.bin"
    path.write_bytes(b"keep")
    with AlignedFile(str(path), mode="resume") as owner:
        with pytest.raises(FileLockedError):
            AlignedFile(str(path), mode="overwrite")
        assert owner.pread(4, 0) == b"keep"
    with AlignedFile(str(path), mode="overwrite") as f:
        assert f.size() == 0


def test_create_refuses_an_existing_file_and_a_planted_link(tmp_path: Path) -> None:
    existing = tmp_path / "a.bin"
    existing.write_bytes(b"old")
    with pytest.raises(FileExistsError):
        AlignedFile(str(existing), mode="create")
    assert existing.read_bytes() == b"old"
    victim = tmp_path / "victim"
    victim.write_bytes(b"precious")
    link = tmp_path / "link.bin"
    link.symlink_to(victim)
    with pytest.raises(FileExistsError):
        AlignedFile(str(link), mode="create")
    dangling = tmp_path / "dangling.bin"
    dangling.symlink_to(tmp_path / "would-be-created")
    with pytest.raises(FileExistsError):
        AlignedFile(str(dangling), mode="create")
    assert not (tmp_path / "would-be-created").exists()
    for mode in ("overwrite", "resume"):
        with pytest.raises(OSError) as info:
            AlignedFile(str(link), mode=mode)  # type: ignore[arg-type]
        assert info.value.errno == errno.ELOOP and "symbolic link" in str(info.value)
    assert victim.read_bytes() == b"precious"


def test_unknown_mode_and_non_regular_files(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="mode"):
        AlignedFile(str(tmp_path / "a"), mode="append")  # type: ignore[arg-type]
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    with pytest.raises(OSError, match="not a regular file"):
        AlignedFile(str(fifo), mode="resume")


# -- atomic files --
def test_open_exclusive_creates_only_new_files(tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_bytes(b"precious")
    (tmp_path / "link").symlink_to(victim)
    for name in ("victim", "link"):
        with pytest.raises(FileExistsError):
            open_exclusive(str(tmp_path / name))
    fd = open_exclusive(str(tmp_path / "new"))
    os.write(fd, b"\n")
    os.close(fd)
    assert (tmp_path / "new").read_bytes() == b"\n"
    assert victim.read_bytes() == b"precious"


def test_temp_sibling_is_unpredictable_and_short_enough(tmp_path: Path) -> None:
    path = str(tmp_path / "run.ome.tiff")
    a, b = temp_sibling(path), temp_sibling(path)
    assert a != b
    assert os.path.dirname(a) == str(tmp_path)
    long_name = "é" * 200 + ".ome.tiff"  # 409 bytes of UTF-8
    c = os.path.basename(temp_sibling(str(tmp_path / long_name)))
    assert len(c.encode()) <= 255
    c.encode("utf-8")  # not cut inside a character
    fd = open_exclusive(str(tmp_path / c))  # and the OS takes it
    os.close(fd)


def test_atomic_write_replaces_a_link_at_the_final_name(tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_bytes(b"precious")
    final = tmp_path / "report.json"
    final.symlink_to(victim)
    atomic_write(str(final), b"new")
    assert not final.is_symlink() and final.read_bytes() == b"new"
    assert victim.read_bytes() == b"precious"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.json", "victim"]


def test_atomic_write_never_writes_through_a_link_at_a_temp_name(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    victim = tmp_path / "victim"
    victim.write_bytes(b"precious")
    final = tmp_path / "report.json"
    tokens = iter(["a" * 16, "b" * 16])
    monkeypatch.setattr(_base.secrets, "token_hex", lambda n: next(tokens))
    planted = tmp_path / f".report.json.{'a' * 16}.tmp"
    planted.symlink_to(victim)  # an attacker who guessed the first name
    atomic_write(str(final), [b"ne", b"w"])
    assert final.read_bytes() == b"new"
    assert victim.read_bytes() == b"precious"
    assert planted.is_symlink()  # left alone, and no other temporary file
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [planted.name, "report.json", "victim"]
    )
    # every name taken: an error, still nothing written through
    monkeypatch.setattr(_base.secrets, "token_hex", lambda n: "a" * 16)
    with pytest.raises(FileExistsError):
        atomic_write(str(final), b"newer")
    assert final.read_bytes() == b"new" and victim.read_bytes() == b"precious"


def test_atomic_write_failure_leaves_the_old_file_and_no_temp(tmp_path: Path) -> None:
    final = tmp_path / "sidecar.json"
    final.write_bytes(b"old")

    def chunks() -> object:
        yield b"half"
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        atomic_write(str(final), chunks())  # type: ignore[arg-type]
    assert final.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["sidecar.json"]


def test_atomic_write_syncs_the_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    synced: list[str] = []
    platform = PosixPlatform()
    monkeypatch.setattr(platform, "fsync_dir", synced.append)
    platform.atomic_write(str(tmp_path / "a"), b"x")
    assert synced == [str(tmp_path)]
    PosixPlatform().fsync_dir(str(tmp_path))  # the real one runs


# -- retries --
def sharing_violation(path: str) -> PermissionError:
    exc = PermissionError(errno.EACCES, "The process cannot access the file", path)
    exc.winerror = 32  # type: ignore[attr-defined]
    return exc


def test_retry_until_the_other_program_lets_go(clock: FakeClock) -> None:
    attempts: list[float] = []

    def op() -> str:
        attempts.append(clock())
        if len(attempts) < 4:
            raise sharing_violation("x")
        return "done"

    out = retry_transient(
        op, what="replacing", path="x", timeout=2.0, clock=clock, sleep=clock.sleep
    )
    assert out == "done" and len(attempts) == 4
    assert clock.sleeps == sorted(clock.sleeps) and clock.sleeps[1] > clock.sleeps[0]


def test_retry_gives_up_after_the_timeout_naming_the_file(clock: FakeClock) -> None:
    calls = 0

    def op() -> None:
        nonlocal calls
        calls += 1
        raise sharing_violation("/data/run_report.json")

    with pytest.raises(PermissionError, match=r"run_report\.json") as info:
        retry_transient(
            op,
            what="replacing",
            path="/data/run_report.json",
            timeout=2.0,
            clock=clock,
            sleep=clock.sleep,
        )
    assert clock.now - 100.0 == pytest.approx(2.0)  # bounded, and used in full
    assert max(clock.sleeps) <= _base.RETRY_MAX_DELAY
    assert 5 < calls < 40
    assert "another program" in str(info.value)


def test_other_errors_are_not_retried(clock: FakeClock) -> None:

    def op() -> None:
        raise PermissionError(errno.EACCES, "read-only")  # no winerror: POSIX

    with pytest.raises(PermissionError, match="read-only"):
        retry_transient(
            op, what="removing", path="x", timeout=2.0, clock=clock, sleep=clock.sleep
        )
    assert clock.sleeps == []


def test_replace_and_unlink_retry_transient_errors(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, clock: FakeClock
) -> None:
    platform = PosixPlatform(clock=clock, sleep=clock.sleep)
    src, dst = tmp_path / "src", tmp_path / "dst"
    src.write_bytes(b"new")
    real_replace, real_unlink = os.replace, os.unlink
    busy = {"replace": 2, "unlink": 3}

    def flaky(name: str, real: object) -> object:
        def call(*args: str) -> None:
            if busy[name]:
                busy[name] -= 1
                raise sharing_violation(args[-1])
            real(*args)  # type: ignore[operator]

        return call

    monkeypatch.setattr(os, "replace", flaky("replace", real_replace))
    monkeypatch.setattr(os, "unlink", flaky("unlink", real_unlink))
    platform.replace(str(src), str(dst))
    assert dst.read_bytes() == b"new" and not src.exists()
    platform.unlink(str(dst))
    assert not dst.exists() and len(clock.sleeps) == 5
    platform.unlink(str(dst))  # missing is fine by default
    with pytest.raises(FileNotFoundError):
        platform.unlink(str(dst), missing_ok=False)


# -- waiting on many objects --
def test_wait_grouped_over_many_pipes() -> None:
    pipes = [Pipe(duplex=False) for _ in range(120)]
    readers = [r for r, _ in pipes]
    threads_before = threading.active_count()
    try:
        for i in (5, 77, 119):
            pipes[i][1].send_bytes(b"x")
        ready = wait_grouped(readers, 5.0, group_size=3)
        assert ready == [readers[5], readers[77], readers[119]]
        for i in (5, 77, 119):
            readers[i].recv_bytes()
        t0 = time.monotonic()
        assert wait_grouped(readers, 0.2, group_size=3) == []
        assert 0.15 < time.monotonic() - t0 < 5
        # something that becomes ready later, with no timeout at all
        timer = threading.Timer(0.2, pipes[64][1].send_bytes, args=(b"y",))
        timer.start()
        assert wait_grouped(readers, None, group_size=3) == [readers[64]]
        timer.join()
        assert threading.active_count() == threads_before  # helpers all gone
        assert _platform.wait_any(readers, 1.0) == [readers[64]]  # no cap here
    finally:
        for r, w in pipes:
            r.close()
            w.close()


def test_wait_grouped_mixes_pipes_and_process_sentinels() -> None:
    if not hasattr(os, "pidfd_open"):
        pytest.skip("needs pidfd_open")
    child = run_child("import time; time.sleep(0.3)")
    sentinel = os.pidfd_open(child.pid)  # readable once the process is gone
    pipes = [Pipe(duplex=False) for _ in range(10)]
    try:
        objects = [r for r, _ in pipes] + [sentinel]
        assert wait_grouped(objects, 30, group_size=4) == [sentinel]
    finally:
        child.communicate(timeout=30)
        os.close(sentinel)
        for r, w in pipes:
            r.close()
            w.close()


# -- long paths and reserved names (pure functions, Windows strings) --
@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("C:\\data\\run.ome.tiff", "C:\\data\\run.ome.tiff"),  # short: unchanged
        ("C:\\" + "d" * 300, "\\\\?\\C:\\" + "d" * 300),
        (
            "C:/" + "d" * 150 + "/" + "e" * 150,
            "\\\\?\\C:\\" + "d" * 150 + "\\" + "e" * 150,
        ),
        ("C:\\x\\..\\" + "d" * 300, "\\\\?\\C:\\" + "d" * 300),
        ("C:\\.\\" + "d" * 300, "\\\\?\\C:\\" + "d" * 300),
        ("\\\\server\\share\\" + "d" * 300, "\\\\?\\UNC\\server\\share\\" + "d" * 300),
        ("\\\\?\\C:\\" + "d" * 300, "\\\\?\\C:\\" + "d" * 300),  # already prefixed
        ("d" * 300, "d" * 300),  # relative: made absolute by the caller
        ("C:" + "d" * 300, "C:" + "d" * 300),  # drive-relative likewise
    ],
)
def test_long_path(path: str, expected: str) -> None:
    assert _base.long_path(path) == expected


def test_long_path_threshold() -> None:
    short = "C:\\" + "d" * (_base.LONG_PATH_FROM - 4)
    assert len(short) == _base.LONG_PATH_FROM - 1 and _base.long_path(short) == short
    assert _base.long_path(short + "d").startswith("\\\\?\\")


@pytest.mark.parametrize(
    ("path", "reserved"),
    [
        ("C:\\data\\NUL.ome.tiff", "NUL.ome.tiff"),
        ("C:\\data\\con", "con"),
        ("C:\\aux\\run.tif", "aux"),
        ("C:\\data\\COM1 .tif", "COM1 .tif"),
        ("C:\\data\\lpt9.txt", "lpt9.txt"),
        ("C:\\data\\console.tif", None),
        ("C:\\data\\nul_run.tif", None),
        ("C:\\data\\COM10.tif", None),
        ("/home/lab/run.tif", None),
    ],
)
def test_reserved_names(path: str, reserved: str | None) -> None:
    assert _base.reserved_name(path) == reserved


def test_posix_paths_are_handed_over_unchanged(tmp_path: Path) -> None:
    long = str(tmp_path / ("d" * 200) / ("e" * 200))
    assert _platform.os_path(long) == long
    _platform.check_file_name(str(tmp_path / "NUL.tif"))  # a fine name here


# -- shutdown signals --
SHUTDOWN_CHILD = """
    import sys, threading, time
    from mesowriter._platform import install_shutdown_handler
    got = threading.Event()
    reasons = []
    def callback(reason):
        reasons.append(reason)
        got.set()
    uninstall = install_shutdown_handler(callback)
    if sys.argv[1] == "uninstalled":
        uninstall()
    print("ready", flush=True)
    deadline = time.monotonic() + 30
    while not got.is_set() and time.monotonic() < deadline:
        time.sleep(0.01)
    print("finalised", *reasons, flush=True)
    sys.exit(0)
"""


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP])
def test_shutdown_handler_fires_and_the_process_exits_cleanly(
    sig: signal.Signals,
) -> None:
    child = run_child(SHUTDOWN_CHILD, "installed")
    assert child.stdout is not None
    assert child.stdout.readline().strip() == "ready"
    child.send_signal(sig)
    out, err = child.communicate(timeout=60)
    assert child.returncode == 0, err
    assert out.split() == ["finalised", sig.name]


def test_uninstalled_shutdown_handler_restores_the_default() -> None:
    child = run_child(SHUTDOWN_CHILD, "uninstalled")
    assert child.stdout is not None
    assert child.stdout.readline().strip() == "ready"
    child.send_signal(signal.SIGTERM)
    child.communicate(timeout=60)
    assert child.returncode == -signal.SIGTERM


def test_shutdown_handler_chains_keeps_ignored_and_needs_the_main_thread() -> None:
    calls: list[str] = []
    before_term = signal.signal(signal.SIGTERM, lambda s, f: calls.append("previous"))
    before_hup = signal.signal(signal.SIGHUP, signal.SIG_IGN)  # as under nohup
    try:
        uninstall = _platform.install_shutdown_handler(calls.append)
        assert signal.getsignal(signal.SIGHUP) == signal.SIG_IGN
        signal.getsignal(signal.SIGTERM)(signal.SIGTERM, None)  # type: ignore[operator]
        assert calls == ["SIGTERM", "previous"]
        uninstall()
        signal.getsignal(signal.SIGTERM)(signal.SIGTERM, None)  # type: ignore[operator]
        assert calls == ["SIGTERM", "previous", "previous"]
        result: list[object] = []
        thread = threading.Thread(
            target=lambda: result.append(_platform.install_shutdown_handler(print))
        )
        thread.start()
        thread.join()
        assert callable(result[0]) and signal.getsignal(signal.SIGTERM) is not print
    finally:
        signal.signal(signal.SIGTERM, before_term)
        signal.signal(signal.SIGHUP, before_hup)


# -- shared memory --
MAGIC = 0x5445535450534D4D


@pytest.mark.skipif(not os.path.isdir("/proc"), reason="needs Linux /proc")
def test_stale_shared_memory_is_found_and_removed() -> None:
    block = shared_memory.SharedMemory(create=True, size=PAGE)
    other = shared_memory.SharedMemory(create=True, size=PAGE)  # no magic
    name = block.name
    try:
        assert block.buf is not None
        block.buf[:8] = MAGIC.to_bytes(8, "little")
        assert name not in _platform.stale_shared_memory(MAGIC)  # mapped here
        resource_tracker.unregister(f"/{name}", "shared_memory")
        block.close()  # now nobody maps it: what a killed process group leaves
        assert _platform.stale_shared_memory(MAGIC) == [name]
        _platform.remove_shared_memory(name)
        assert not os.path.exists(f"/dev/shm/{name}")
        _platform.remove_shared_memory(name)  # gone already: no error
        assert _platform.stale_shared_memory(MAGIC) == []
    finally:
        other.close()
        other.unlink()
    free = _platform.shm_available_bytes()
    assert free is not None and free == _shm_free()


def _shm_free() -> int:
    st = os.statvfs("/dev/shm")
    return st.f_bavail * st.f_frsize


def test_huge_page_setting_is_parsed() -> None:
    allows = _base.thp_shmem_allows
    assert allows("always within_size [advise] never deny force")
    assert allows("[always] within_size advise never deny force")
    assert allows("always [within_size] advise never deny force")
    assert allows("always within_size advise never deny [force]")
    assert not allows("always within_size advise [never] deny force")
    assert not allows("always within_size advise never [deny] force")
    assert not allows("")


@pytest.mark.skipif(not hasattr(mmap, "MADV_HUGEPAGE"), reason="no MADV_HUGEPAGE")
def test_advise_huge_pages_follows_the_machine(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    platform = PosixPlatform()
    block = shared_memory.SharedMemory(create=True, size=4 << 20)
    try:
        buf = block._mmap  # type: ignore[attr-defined]
        setting = Path(platform.thp_shmem_path)
        expected = setting.exists() and _base.thp_shmem_allows(setting.read_text())
        assert platform.advise_huge_pages(buf) == expected
        fake = tmp_path / "shmem_enabled"
        fake.write_text("always within_size [advise] never deny force\n")
        monkeypatch.setattr(platform, "thp_shmem_path", str(fake))
        assert platform.advise_huge_pages(buf)
        address = _base.buffer_address(memoryview(buf))
        assert "hg" in _vm_flags(address)  # the kernel marked the mapping
        fake.write_text("always within_size advise [never] deny force\n")
        assert not platform.advise_huge_pages(buf)
    finally:
        block.close()
        block.unlink()


def _vm_flags(address: int) -> list[str]:
    with open("/proc/self/smaps", encoding="ascii", errors="replace") as fh:
        inside = False
        for line in fh:
            head = line.split()[0]
            if "-" in head and not head.endswith(":"):
                start, end = (int(x, 16) for x in head.split("-"))
                inside = start <= address < end
            elif inside and head == "VmFlags:":
                return line.split()[1:]
    raise AssertionError("mapping not found")
