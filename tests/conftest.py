"""Shared fixtures: the real DemoCamera, synthetic frames, and a leak check."""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

SHM = Path("/dev/shm")


def _shm_blocks() -> set[str]:
    if not SHM.is_dir():
        return set()
    return {p.name for p in SHM.iterdir() if p.name.startswith(("psm_", "wnsm_"))}


def _mapped_by_others(names: set[str]) -> set[str]:
    """Blocks that processes outside this test run map (another program on
    the machine, e.g. a second test run): not ours to account for."""
    import psutil

    me = psutil.Process()
    ours = {me.pid} | {c.pid for c in me.children(recursive=True)}
    found: set[str] = set()
    for proc in psutil.process_iter():
        if proc.pid in ours:
            continue
        try:
            with open(
                f"/proc/{proc.pid}/maps", encoding="utf-8", errors="replace"
            ) as fh:
                maps = fh.read()
        except OSError:
            continue
        found |= {n for n in names if f"/dev/shm/{n}" in maps}
    return found


@pytest.fixture(scope="session", autouse=True)
def no_shared_memory_left_behind() -> Iterator[None]:
    """Fails the session if any shared-memory block outlives the suite.

    The handlers' shared service keeps a warm pool until it is idle or the
    interpreter exits; it is closed here first, as at exit.
    """
    before = _shm_blocks()
    yield
    from mesowriter._service import _close_all

    _close_all("completed")
    deadline = time.monotonic() + 3.0
    while (leaked := _shm_blocks() - before) and time.monotonic() < deadline:
        time.sleep(0.05)
    leaked -= _mapped_by_others(leaked)
    assert not leaked, f"shared memory left behind: {sorted(leaked)}"


def index_frame(i: int, shape: tuple[int, ...], dtype: str = "uint16") -> np.ndarray:
    """A frame that carries its own index: every pixel = i + row (mod dtype)."""
    info = np.iinfo(np.dtype(dtype))
    rows = np.arange(shape[0], dtype=np.int64)[:, None]
    values = (i * 7 + rows + np.zeros(shape[:2], np.int64)) % (int(info.max) + 1)
    frame = values.astype(dtype)
    if len(shape) == 3:
        frame = np.repeat(frame[:, :, None], shape[2], axis=2)
    return frame


def write_until_the_error(stream: Any, shape: tuple[int, ...]) -> Any:
    """Write ten frames, wait for their commit, then write on until the
    stream's error reaches `write`: the WriterError raised (its traceback
    from the worker in `__cause__`), checked by the caller."""
    from mesowriter import WriterError

    for i in range(10):
        stream.write(index_frame(i, shape), {"i": i})
    deadline = time.monotonic() + 30
    while stream.frames_written < 10 and stream.error is None:  # a commit
        assert time.monotonic() < deadline
        time.sleep(0.01)
    with pytest.raises(WriterError, match="Input/output error") as info:
        for i in range(10, 400):
            stream.write(index_frame(i, shape), {"i": i})
            time.sleep(0.002)
    assert "Traceback" in str(info.value.__cause__)
    return info.value


def read_video(path: str | os.PathLike[str], raw: bool = False) -> list[np.ndarray]:
    """Every frame cv2 decodes from `path` (raw: no conversion to BGR)."""
    import cv2

    params = [cv2.CAP_PROP_CONVERT_RGB, 0] if raw else []
    cap = cv2.VideoCapture(str(path), cv2.CAP_FFMPEG, params)
    assert cap.isOpened(), path
    out = []
    while True:
        ok, frame = cap.read()
        if not ok:
            break
        out.append(frame)
    cap.release()
    return out


@pytest.fixture
def core() -> Iterator[object]:
    """Micro-Manager's DemoCamera through pymmcore-plus, small frames."""
    from pymmcore_plus import CMMCorePlus

    mmc = CMMCorePlus()
    mmc.loadSystemConfiguration()
    mmc.setProperty("Camera", "OnCameraCCDXSize", 256)
    mmc.setProperty("Camera", "OnCameraCCDYSize", 192)
    mmc.setExposure(1)
    mmc.setCircularBufferMemoryFootprint(256)
    yield mmc
    mmc.unloadAllDevices()


@pytest.fixture
def service() -> Iterator[object]:
    from mesowriter import WriterService

    with WriterService(ring_bytes=32 << 20, workers=1) as svc:
        yield svc


# Variables that change which codec or OpenH264 a writer gets: a developer's
# own settings must not change what the tests see.
CODEC_ENV = (
    "MESOWRITER_OPENH264_LIBRARY",
    "MESOFIELD_OPENH264_LIBRARY",
    "MESOWRITER_VIDEO_CODECS_DIR",
    "MESOWRITER_FOURCC",
    "MESOFIELD_FOURCC",
)


class FakeClock:
    """A monotonic clock that moves only when slept on (retry tests)."""

    def __init__(self) -> None:
        self.now = 100.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture(autouse=True)
def _no_stray_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in CODEC_ENV:
        monkeypatch.delenv(var, raising=False)
    os.environ.setdefault("OPENCV_LOG_LEVEL", "ERROR")


@pytest.fixture
def loader_env(monkeypatch: pytest.MonkeyPatch) -> str:
    """Restores what `configure_opencv_codec` writes into os.environ.

    Returns the loader path variable of this platform.
    """
    var = {"win32": "PATH", "darwin": "DYLD_LIBRARY_PATH"}.get(
        sys.platform, "LD_LIBRARY_PATH"
    )
    monkeypatch.setenv(var, os.environ.get(var, ""))
    monkeypatch.delenv("OPENH264_LIBRARY", raising=False)
    return var


def fake_openh264(folder: Path) -> Path:
    """An empty file named as this platform's OpenH264 library."""
    names = {"win32": "openh264-1.8.0-win64.dll", "darwin": "libopenh264.dylib"}
    folder.mkdir(parents=True, exist_ok=True)
    lib = folder / names.get(sys.platform, "libopenh264.so.7")
    lib.write_bytes(b"")
    return lib


def video_fourcc(path: str | os.PathLike[str]) -> str:
    """The codec tag a decoder reports for `path` (mp4v reads back as FMP4)."""
    import cv2

    cap = cv2.VideoCapture(str(path), cv2.CAP_FFMPEG)
    code = int(cap.get(cv2.CAP_PROP_FOURCC))
    cap.release()
    return "".join(chr((code >> (8 * i)) & 0xFF) for i in range(4)).upper()
