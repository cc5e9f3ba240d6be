"""The video sink writes real files that OpenCV reads back as expected."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest

from mesowriter._spec import StreamSpec, VideoOptions
from mesowriter.sinks._base import FrameBatch, ResumeState, SlotFrame
from mesowriter.sinks._video import VideoResumeError, VideoSink
from mesowriter.video import (
    CodecFallbackWarning,
    ToneMap,
    VideoEncodeError,
    check_video_request,
    configure_opencv_codec,
    resolve_codec,
)
from mesowriter.video._codecs import probe
from mesowriter.video._openh264 import find_openh264
from tests.conftest import fake_openh264, video_fourcc
from tests.conftest import read_video as _read

H, W = 64, 96


def _batch(frames: list[np.ndarray], start: int = 0) -> FrameBatch:
    slots = []
    for i, f in enumerate(frames):
        view = f.view()
        view.setflags(write=False)  # ring views are read-only
        slots.append(SlotFrame(index=start + i, pixels=view, metadata=b"{}"))
    return FrameBatch(frames=slots, span=memoryview(b""), slot_stride=0)


def _spec(path: Path, frame: np.ndarray, **opts: Any) -> StreamSpec:
    return StreamSpec(
        stream_id=0,
        path=str(path),
        kind="video",
        shape=frame.shape,
        dtype=frame.dtype.str,
        video=VideoOptions(**opts),
    )


def _write(path: Path, frames: list[np.ndarray], **opts: Any) -> dict[str, Any]:
    sink = VideoSink(_spec(path, frames[0], **opts))
    VideoSink.check(sink.spec)
    sink.open()
    try:
        sink.submit(_batch(frames))
        assert sink.drain() == list(range(len(frames)))  # encoded = committed
    finally:
        report = sink.close("done")
    return report


def _smooth(n: int, dtype: Any = np.uint8, top: int = 255) -> list[np.ndarray]:
    """Gradients that move a little per frame: easy for lossy codecs."""
    y, x = np.mgrid[0:H, 0:W]
    frames = []
    for k in range(n):
        f = 0.5 + 0.45 * np.sin((x + 2 * k) / 15.0) * np.cos(y / 11.0)
        frames.append(np.round(f * top).astype(dtype))
    return frames


@pytest.mark.parametrize(
    ("name", "fourcc", "tolerance"),
    [("a.mp4", "mp4v", 4.0), ("a.avi", "MJPG", 3.0)],
)
def test_lossy_round_trip_gray(
    tmp_path: Path, name: str, fourcc: str, tolerance: float
) -> None:
    frames = _smooth(5)
    report = _write(tmp_path / name, frames, fourcc=fourcc, fps=10.0)
    assert report["codec"] == fourcc and not report["fell_back"]
    assert report["frames_encoded"] == 5
    assert report["file_bytes"] == os.path.getsize(tmp_path / name) > 0
    back = _read(tmp_path / name)
    assert len(back) == 5
    for sent, got in zip(frames, back, strict=True):
        err = np.abs(got[..., 0].astype(float) - sent).mean()
        assert err < tolerance


def test_lossy_round_trip_is_not_a_tautology(tmp_path: Path) -> None:
    # Same check against the wrong frame must fail: the bound has teeth.
    frames = _smooth(5)
    _write(tmp_path / "a.avi", frames, fourcc="MJPG")
    back = _read(tmp_path / "a.avi")
    assert np.abs(back[0][..., 0].astype(float) - frames[0][::-1]).mean() > 10


def test_rgb_frames_become_bgr(tmp_path: Path) -> None:
    rgb = np.zeros((H, W, 3), np.uint8)
    rgb[..., 0] = 200  # red
    _write(tmp_path / "c.avi", [rgb] * 3, fourcc="MJPG", is_color=True)
    back = _read(tmp_path / "c.avi")
    assert len(back) == 3
    b, g, r = back[1].reshape(-1, 3).mean(axis=0)
    assert r > 180 and b < 20 and g < 20


def test_ffv1_16bit_is_bit_exact(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    frames = [rng.integers(0, 65536, (H, W), dtype=np.uint16) for _ in range(4)]
    report = _write(tmp_path / "l.mkv", frames, fourcc="FFV1", lossless=True)
    assert report["codec"] == "FFV1" and report["tone_map"].startswith("none")
    back = _read(tmp_path / "l.mkv", raw=True)
    assert len(back) == 4
    for sent, got in zip(frames, back, strict=True):
        assert got.dtype == np.uint16
        np.testing.assert_array_equal(got, sent)


def test_fixed_mapping_keeps_brightness_ratio() -> None:
    ramp = np.tile(np.arange(W, dtype=np.float64), (H, 1)) / (W - 1)
    dim = np.round(ramp * 1000).astype(np.uint16)
    bright = dim * 2
    tone = ToneMap(np.uint16, bit_depth=12)
    a, b = tone(dim), tone(bright)
    assert a.dtype == np.uint8
    assert b.mean() / a.mean() == pytest.approx(2.0, rel=0.02)
    assert b.max() == round(2000 * 255 / 4095)
    # Per-frame normalisation stretches each frame to 0..255: ratio lost.
    norm = ToneMap(np.uint16, per_frame_normalize=True)
    na, nb = norm(dim), norm(bright)
    assert na.max() == nb.max() == 255
    assert nb.mean() / na.mean() == pytest.approx(1.0, abs=0.02)


def test_display_range_clips_and_rounds() -> None:
    tone = ToneMap("uint16", display_range=(100, 1100))
    f = np.array([[0, 100, 600, 1100, 65535]], np.uint16)
    np.testing.assert_array_equal(tone(f), [[0, 0, 128, 255, 255]])
    ftone = ToneMap("float32", display_range=(-1.0, 1.0))
    g = np.array([[-5.0, -1.0, 0.0, 1.0, 3.0]], np.float32)
    np.testing.assert_array_equal(ftone(g), [[0, 0, 128, 255, 255]])
    itone = ToneMap("int16", display_range=(-1000, 1000))
    h = np.array([[-32768, -1000, 0, 1000, 32767]], np.int16)
    np.testing.assert_array_equal(itone(h), [[0, 0, 128, 255, 255]])


@pytest.mark.parametrize(
    ("dtype", "rng_"),
    [
        ("uint16", (0, 4095)),
        ("uint16", (100, 1100)),
        ("uint16", (99.5, 300.25)),
        ("int16", (-300, 5000)),
        ("uint8", (10, 60)),
        ("int8", (-20, 20.5)),
    ],
)
def test_every_code_maps_exactly(dtype: str, rng_: tuple[float, float]) -> None:
    info = np.iinfo(dtype)
    codes = np.arange(info.min, info.max + 1).astype(dtype).reshape(-1, 256)
    low, high = rng_
    want = np.clip(np.rint((codes.astype(float) - low) * 255 / (high - low)), 0, 255)
    np.testing.assert_array_equal(ToneMap(dtype, display_range=rng_)(codes), want)


def test_uint8_passes_through() -> None:
    f = np.arange(256, dtype=np.uint8).reshape(16, 16)
    assert ToneMap(np.uint8)(f) is f


def test_h264_falls_back_with_one_warning(tmp_path: Path) -> None:
    if probe("avc1", ".mp4", is_color=False) or probe("avc1", ".mp4", is_color=True):
        pytest.skip("this OpenCV build has an H.264 encoder")
    frames = _smooth(3)
    with pytest.warns(CodecFallbackWarning, match="'mp4v'") as caught:
        report = _write(tmp_path / "h.mp4", frames, fourcc="H264")
    assert len(caught) == 1
    assert report["codec"] == "mp4v" and report["fell_back"]
    assert report["requested_fourcc"] == "H264" and report["fallback_reason"]
    assert len(_read(tmp_path / "h.mp4")) == 3


def test_resolve_without_fallback_does_not_warn() -> None:
    choice = resolve_codec("x.avi", "MJPG", is_color=False)
    assert (choice.used, choice.fell_back, choice.reason) == ("MJPG", False, None)


@pytest.mark.parametrize(
    ("path", "fourcc", "lossless", "match"),
    [
        ("a.mp4", "ZZZZ", False, "unknown fourcc"),
        ("a.mp4", "mp4", False, "4-character"),
        ("a.xyz", "mp4v", False, "not a video container"),
        ("a.tif", "MJPG", False, "not a video container"),
        ("a.mp4", "FFV1", False, "cannot go into"),
        ("a.mkv", "mp4v", True, "lossless"),
        ("a.mp4", "FFV1", True, "cannot go into"),
    ],
)
def test_bad_requests(path: str, fourcc: str, lossless: bool, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        check_video_request(path, fourcc, lossless)


def test_good_requests_pass() -> None:
    check_video_request("a.MKV", "FFV1", True)
    check_video_request("a.mp4", "avc1", False)
    check_video_request("a.avi", "XVID", False)


def test_spec_checks(tmp_path: Path) -> None:
    rgb = np.zeros((H, W, 3), np.uint8)
    with pytest.raises(ValueError, match="is_color"):
        VideoSink.check(_spec(tmp_path / "a.avi", rgb, fourcc="MJPG"))
    rgb16 = np.zeros((H, W, 3), np.uint16)
    with pytest.raises(ValueError, match="grayscale only"):
        VideoSink.check(
            _spec(
                tmp_path / "a.mkv", rgb16, fourcc="FFV1", lossless=True, is_color=True
            )
        )
    with pytest.raises(ValueError, match="cannot write"):
        VideoSink.check(_spec(tmp_path / "a.avi", np.zeros((4, 4), np.float64)))


def test_existing_file_and_resume_are_refused(tmp_path: Path) -> None:
    frame = np.zeros((H, W), np.uint8)
    (tmp_path / "e.avi").write_bytes(b"keep")
    with pytest.raises(FileExistsError):
        VideoSink(_spec(tmp_path / "e.avi", frame, fourcc="MJPG")).open()
    assert (tmp_path / "e.avi").read_bytes() == b"keep"
    with pytest.raises(VideoResumeError):
        VideoSink(_spec(tmp_path / "r.avi", frame, fourcc="MJPG")).open(ResumeState(5))


def test_bad_frame_raises_not_skipped(tmp_path: Path) -> None:
    frame = np.zeros((H, W), np.uint16)
    sink = VideoSink(_spec(tmp_path / "b.mkv", frame, fourcc="FFV1", lossless=True))
    sink.open()
    with pytest.raises(ValueError, match="frame 0"):  # would abort libavcodec
        sink.write(_batch([np.zeros((H, W), np.uint8)]))
    sink.write(_batch([frame]))
    sink.write(_batch([frame], start=5))  # frames 1-4 refused upstream: a gap
    with pytest.raises(VideoEncodeError, match="out of order"):
        sink.write(_batch([frame], start=5))  # but never a frame twice
    assert sink.close("error")["frames_encoded"] == 2


def test_configure_is_idempotent(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, loader_env: str
) -> None:
    lib = fake_openh264(tmp_path)
    monkeypatch.setenv(loader_env, "/somewhere")
    monkeypatch.setenv("MESOWRITER_OPENH264_LIBRARY", str(tmp_path))
    first = configure_opencv_codec()
    env_after_first = dict(os.environ)
    assert configure_opencv_codec() == first == str(lib.resolve())
    assert dict(os.environ) == env_after_first
    assert os.environ[loader_env].split(os.pathsep).count(str(tmp_path.resolve())) == 1
    assert os.environ["OPENH264_LIBRARY"] == first
    monkeypatch.setenv("MESOWRITER_OPENH264_LIBRARY", str(tmp_path / "missing"))
    with pytest.warns(RuntimeWarning, match="names no OpenH264"):
        assert configure_opencv_codec() is None


def test_openh264_lookup_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ours = fake_openh264(tmp_path / "ours").resolve()
    legacy = fake_openh264(tmp_path / "legacy").resolve()
    folder = fake_openh264(tmp_path / "folder").resolve()
    monkeypatch.setenv("MESOWRITER_VIDEO_CODECS_DIR", str(folder.parent))
    assert find_openh264() == folder
    monkeypatch.setenv("MESOFIELD_OPENH264_LIBRARY", str(legacy))  # a file
    assert find_openh264() == legacy
    monkeypatch.setenv("MESOFIELD_OPENH264_LIBRARY", str(legacy.parent))  # a folder
    assert find_openh264() == legacy
    monkeypatch.setenv("MESOWRITER_OPENH264_LIBRARY", str(ours))
    assert find_openh264() == ours
    # a stale path is named and skipped, not allowed to hide the next one
    monkeypatch.setenv("MESOWRITER_OPENH264_LIBRARY", str(tmp_path / "gone"))
    with pytest.warns(RuntimeWarning, match="MESOWRITER_OPENH264_LIBRARY"):
        assert find_openh264() == legacy


def test_h264_that_falls_back_to_ffv1_keeps_16bit(tmp_path: Path) -> None:
    if probe("H264", ".mkv", is_color=False) or probe("H264", ".mkv", is_color=True):
        pytest.skip("this OpenCV build has an H.264 encoder")
    frames = [np.full((H, W), 4095 - k, np.uint16) for k in range(3)]
    frames[0][0, :] = np.arange(W)
    with pytest.warns(CodecFallbackWarning, match="'FFV1'"):
        report = _write(tmp_path / "h.mkv", frames, fourcc="H264")
    assert report["codec"] == "FFV1" and report["lossless"]
    for sent, got in zip(frames, _read(tmp_path / "h.mkv", raw=True), strict=True):
        np.testing.assert_array_equal(got, sent)


def test_service_stream_with_empty_fourcc_takes_the_default(
    tmp_path: Path, service: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    frame = np.arange(H * W, dtype=np.uint16).reshape(H, W)
    raw = service.open_stream(
        tmp_path / "d.mkv", shape=(H, W), dtype="uint16", video=VideoOptions(fourcc="")
    )
    raw.write(frame)
    assert raw.close().sink["codec"] == "FFV1"
    np.testing.assert_array_equal(_read(tmp_path / "d.mkv", raw=True)[0], frame)
    monkeypatch.setenv("MESOFIELD_FOURCC", "mp4v")
    env = service.open_stream(
        tmp_path / "e.avi", shape=(H, W), dtype="uint8", video=VideoOptions(fourcc="")
    )
    env.write(_smooth(1)[0])
    assert env.close().sink["codec"] == "mp4v"
    assert video_fourcc(tmp_path / "e.avi") == "FMP4"


class _RefusingWriter:
    def __init__(self, result: Any) -> None:
        self.result = result

    def write(self, frame: np.ndarray) -> bool:
        if isinstance(self.result, Exception):
            raise self.result
        return bool(self.result)

    def release(self) -> None:
        pass


@pytest.mark.parametrize("result", [False, cv2.error("encoder gave up")])
def test_encoder_refusal_raises(tmp_path: Path, result: Any) -> None:
    frame = np.zeros((H, W), np.uint8)
    sink = VideoSink(_spec(tmp_path / "f.avi", frame, fourcc="MJPG"))
    sink.open()
    sink.write(_batch([frame]))
    real, sink._writer = sink._writer, _RefusingWriter(result)
    with pytest.raises(VideoEncodeError, match="frame 1"):
        sink.write(_batch([frame], start=1))
    real.release()
    assert sink.close("error")["frames_encoded"] == 1
