"""Shared fixtures: the real DemoCamera, synthetic frames, and a leak check."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

SHM = Path("/dev/shm")


def _shm_blocks() -> set[str]:
    if not SHM.is_dir():
        return set()
    return {p.name for p in SHM.iterdir() if p.name.startswith(("psm_", "wnsm_"))}


@pytest.fixture(scope="session", autouse=True)
def no_shared_memory_left_behind() -> Iterator[None]:
    """Fails the session if any shared-memory block outlives the suite."""
    before = _shm_blocks()
    yield
    deadline = time.monotonic() + 3.0  # rings are released on background threads
    while (leaked := _shm_blocks() - before) and time.monotonic() < deadline:
        time.sleep(0.05)
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
    monkeypatch.delenv("MESOWRITER_OPENH264_LIBRARY", raising=False)
    os.environ.setdefault("OPENCV_LOG_LEVEL", "ERROR")
