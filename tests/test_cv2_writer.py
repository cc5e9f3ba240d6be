"""CV2Writer: legacy video handler and direct mode, encoding in writer processes.

Everything runs for real: DemoCamera through pymmcore-plus, spawned writer
processes, files read back with cv2 (and tifffile for the dual-stream run).
"""

from __future__ import annotations

import json
import threading
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tifffile
import useq

import mesowriter
from mesowriter import CustomWriter, WriterService
from mesowriter.handlers import CV2Writer
from mesowriter.video import CodecFallbackWarning, ToneMap
from mesowriter.video._codecs import probe
from tests.conftest import fake_openh264, video_fourcc
from tests.conftest import read_video as _read

H, W = 48, 64


def _gray(frame: np.ndarray) -> np.ndarray:
    return frame[..., 0] if frame.ndim == 3 else frame


def _smooth(k: int, shape: tuple[int, int] = (H, W), top: int = 255) -> np.ndarray:
    y, x = np.mgrid[0 : shape[0], 0 : shape[1]]
    f = 0.5 + 0.45 * np.sin((x + 2 * k) / 15.0) * np.cos(y / 11.0)
    return np.rint(f * top).astype(np.uint8 if top <= 255 else np.uint16)


@pytest.fixture
def shared() -> Any:
    with WriterService(ring_bytes=16 << 20, workers=1, max_workers=3) as svc:
        yield svc


# -- construction ---------------------------------------------------------------
@pytest.mark.parametrize(
    ("name", "kwargs", "match"),
    [
        ("a.mp4", {"fourcc": "ZZZZ"}, "unknown fourcc"),
        ("a.txt", {"fourcc": "mp4v"}, "not a video container"),
        ("a.mp4", {"fourcc": "MJPG"}, "cannot go into a .mp4"),
        ("a.mp4", {"fourcc": "mp4v", "lossless": True}, "lossless"),
        ("a.mp4", {"lossless": True}, "lossless video needs a .mkv or .avi"),
        ("a.txt", {}, "not a video container"),
        ("a.mkv", {"fourcc": "FFV1", "lossless": True, "display_range": (0, 9)}, "raw"),
        ("a.avi", {"fourcc": "MJPG", "fps": 0}, "fps"),
    ],
)
def test_bad_requests_fail_at_construction(
    tmp_path: Path, name: str, kwargs: dict[str, Any], match: str
) -> None:
    with pytest.raises(ValueError, match=match):
        CV2Writer(tmp_path / name, **kwargs)
    assert list(tmp_path.iterdir()) == []  # nothing written, nothing started


def test_public_name() -> None:
    assert mesowriter.CV2Writer is CV2Writer


def test_fallback_warns_once_in_parent_and_report_says_so(
    tmp_path: Path, shared: WriterService
) -> None:
    if probe("avc1", ".mp4", is_color=False) or probe("avc1", ".mp4", is_color=True):
        pytest.skip("this OpenCV build has an H.264 encoder")
    path = tmp_path / "f.mp4"
    with pytest.warns(CodecFallbackWarning, match="'mp4v'") as caught:
        writer = CV2Writer(path, fourcc="H264", service=shared)
        writer.begin(W, H, is_color=False)
        for k in range(5):
            writer.add_frame(_smooth(k))
        report = writer.finish()
    assert len(caught) == 1  # at construction; not again at open
    assert "tried as 'avc1'" in str(caught[0].message)  # H.264's tag in .mp4
    assert writer.codec.used == "mp4v" and writer.codec.fell_back
    sink = report.sink
    assert (sink["codec"], sink["requested_fourcc"]) == ("mp4v", "H264")
    assert sink["fell_back"] and "H264" in sink["fallback_reason"]
    on_disk = json.loads(Path(f"{path}_report.json").read_bytes())
    assert on_disk["sink"]["codec"] == "mp4v"
    assert len(_read(path)) == 5


def test_service_video_stream_warns_in_parent(
    tmp_path: Path, shared: WriterService
) -> None:
    if probe("H264", ".mkv", is_color=False) or probe("H264", ".mkv", is_color=True):
        pytest.skip("this OpenCV build has an H.264 encoder")
    with pytest.warns(CodecFallbackWarning, match="'FFV1'"):
        stream = shared.open_stream(
            tmp_path / "s.mkv",
            shape=(H, W),
            dtype="uint8",
            video=mesowriter.VideoOptions(fourcc="H264"),
        )
    stream.write(_smooth(0))
    report = stream.close()
    assert report.sink["codec"] == "FFV1" and report.sink["fell_back"]


# -- direct mode ----------------------------------------------------------------
def test_direct_mode_sidecar_and_bgr_pass_through(
    tmp_path: Path, shared: WriterService
) -> None:
    path = tmp_path / "pupil.avi"
    writer = CV2Writer(path, fps=20, fourcc="MJPG", service=shared)
    writer.begin(W, H)  # is_color=True: frames are BGR as OpenCV cameras give
    sent = []
    for k in range(6):
        frame = np.zeros((H, W, 3), np.uint8)
        frame[..., 0] = 200  # blue
        frame[..., 2] = _smooth(k) // 4  # a little red
        sent.append(frame)
        t0 = time.time()
        assert writer.add_frame(frame, {"exposure": 2.5, "k": k}) is True
        assert t0 <= time.time()
    extra = {"subject": "m1", "trials": np.int64(3), "rois": [1, 2]}
    report = writer.finish(extra_metadata=extra)
    assert report.ok and report.frames_written == 6
    assert report.sink["codec"] == "MJPG" and not report.sink["fell_back"]

    data = json.loads(Path(f"{path}_frame_metadata.json").read_bytes())
    # as the legacy finish() wrote it: {"frame_metadatas": {...}, **extra}
    assert set(data) == {"frame_metadatas", "subject", "trials", "rois"}
    assert (data["subject"], data["trials"], data["rois"]) == ("m1", 3, [1, 2])
    assert list(data["frame_metadatas"]) == ["p0"]
    records = data["frame_metadatas"]["p0"]
    assert [r["index"] for r in records] == list(range(6))
    assert [r["k"] for r in records] == list(range(6))
    assert all(r["exposure"] == 2.5 for r in records)
    stamps = [r["timestamp"] for r in records]
    assert stamps == sorted(stamps) and abs(stamps[0] - time.time()) < 60
    assert writer.frame_metadatas == {"p0": records}

    back = _read(path)
    assert len(back) == 6
    for want, got in zip(sent, back, strict=True):
        # channel order kept: blue stays blue (a swap would put 200 in red)
        diff = np.abs(got.astype(int) - want.astype(int))
        assert diff.mean() < 3, diff.mean()


def test_direct_mode_closed_without_finish_keeps_its_sidecar(
    tmp_path: Path, shared: WriterService
) -> None:
    # close() without finish(): the worker wrote the sidecar from the
    # journal and removed it; nothing may rewrite that sidecar emptier.
    path = tmp_path / "nofinish.avi"
    writer = CV2Writer(path, fps=20, fourcc="MJPG", service=shared)
    writer.begin(W, H, is_color=False)
    for k in range(5):
        assert writer.add_frame(np.full((H, W), 10 * k, np.uint8), {"k": k})
    writer.close()
    data = json.loads(Path(f"{path}_frame_metadata.json").read_bytes())
    assert [r["k"] for r in data["frame_metadatas"]["p0"]] == list(range(5))
    assert not list(tmp_path.glob("*journal*"))
    assert len(_read(path)) == 5


def test_direct_mode_checks_frames(tmp_path: Path, shared: WriterService) -> None:
    writer = CV2Writer(tmp_path / "d.avi", fourcc="MJPG", service=shared)
    with pytest.raises(RuntimeError, match="before begin"):
        writer.add_frame(np.zeros((H, W), np.uint8))
    writer.begin(W, H, is_color=False)
    with pytest.raises(ValueError, match="does not fit"):
        writer.add_frame(np.zeros((H + 1, W), np.uint8))
    writer.add_frame(np.zeros((H, W), np.uint8))
    with pytest.raises(mesowriter.FrameRejected):
        writer.add_frame(np.zeros((H, W), np.uint16))  # dtype fixed by frame 0
    with pytest.raises(mesowriter.WriterError, match="not written"):
        writer.finish()
    assert writer.reports["p0"].drops["rejected"] == [1]
    assert len(_read(tmp_path / "d.avi")) == 1


def test_a_refused_frame_leaves_the_rest_of_the_video(
    tmp_path: Path, shared: WriterService
) -> None:
    writer = CV2Writer(tmp_path / "gap.avi", fourcc="MJPG", service=shared)
    writer.begin(W, H, is_color=False)
    writer.add_frame(np.zeros((H, W), np.uint8))
    with pytest.raises(mesowriter.FrameRejected):
        writer.add_frame(np.zeros((H, W), np.uint16))  # refused: index 1
    for k in range(5):
        writer.add_frame(np.full((H, W), 10 * k, np.uint8), {"k": k})
    with pytest.raises(mesowriter.WriterError, match=r"1 frame\(s\) not written"):
        writer.finish()
    report = writer.reports["p0"]
    assert report.frames_written == 6 and report.dropped_indices == [1]
    assert len(_read(tmp_path / "gap.avi")) == 6
    records = json.loads(
        Path(f"{tmp_path / 'gap.avi'}_frame_metadata.json").read_bytes()
    )
    assert [r["index"] for r in records["frame_metadatas"]["p0"]] == [0, 2, 3, 4, 5, 6]


def test_16bit_fixed_mapping_through_the_pipeline(
    tmp_path: Path, shared: WriterService
) -> None:
    # FFV1 on the 8-bit mapped frames is lossless: the mapping is seen exactly.
    path = tmp_path / "m.mkv"
    writer = CV2Writer(path, fourcc="FFV1", bit_depth=12, service=shared)
    writer.begin(W, H, is_color=False, dtype=np.uint16)
    dim = (_smooth(0).astype(np.uint16) * 8) + 100  # ~100 .. 2140 of 4095
    bright = dim * 2
    for frame in (dim, bright):
        writer.add_frame(frame)
    report = writer.finish()
    assert "0..4095" in report.sink["tone_map"]
    got = [_gray(f).astype(float) for f in _read(path)]
    tone = ToneMap(np.uint16, bit_depth=12)
    np.testing.assert_array_equal(got[0], tone(dim))
    np.testing.assert_array_equal(got[1], tone(bright))
    ratio = got[1].mean() / got[0].mean()
    assert abs(ratio - 2.0) < 0.02  # a per-frame stretch would give ~1.0


def test_lossless_16bit_is_bit_exact(tmp_path: Path, shared: WriterService) -> None:
    path = tmp_path / "l.mkv"
    rng = np.random.default_rng(3)
    frames = [rng.integers(0, 65536, (H, W), dtype=np.uint16) for _ in range(4)]
    writer = CV2Writer(path, fourcc="FFV1", lossless=True, service=shared)
    writer.begin(W, H, is_color=False)
    for f in frames:
        writer.add_frame(f)
    report = writer.finish()
    assert report.sink["lossless"] and report.sink["tone_map"].startswith("none")
    back = _read(path, raw=True)
    assert len(back) == 4
    for sent, got in zip(frames, back, strict=True):
        assert got.dtype == np.uint16
        np.testing.assert_array_equal(got, sent)


# -- handler mode with the DemoCamera -----------------------------------------------
def _grab(core: Any) -> list[np.ndarray]:
    frames: list[np.ndarray] = []
    core.mda.events.frameReady.connect(lambda img, *a: frames.append(img.copy()))
    return frames


@pytest.mark.parametrize("pixel_type", ["8bit", "16bit"])
def test_handler_mode_democam(tmp_path: Path, core: Any, pixel_type: str) -> None:
    core.setProperty("Camera", "PixelType", pixel_type)
    if pixel_type == "16bit":
        core.setProperty("Camera", "BitDepth", "12")
    sent = _grab(core)
    path = tmp_path / "run.mkv"
    seq = useq.MDASequence(time_plan={"interval": 0, "loops": 5})
    with CV2Writer(path, fourcc="FFV1", ring_bytes=16 << 20) as writer:
        core.mda.run(seq, output=writer)
        report = writer.reports["p0"]
    assert report.ok and report.frames_written == 5
    # FFV1 keeps both as they came: 8-bit passed through, 12-bit in 16 raw
    # (not mapped through the camera's 12 bits, which the summary gives)
    assert report.sink["lossless"] and report.sink["tone_map"].startswith("none")
    back = [_gray(f) for f in _read(path, raw=True)]
    assert len(back) == 5
    for want, got in zip(sent, back, strict=True):
        assert got.dtype == want.dtype
        np.testing.assert_array_equal(got, want)
    data = json.loads(Path(f"{path}_frame_metadata.json").read_bytes())
    assert len(data["p0"]) == 5
    assert data["p0"][0]["camera_metadata"]["Camera"] == "Camera"


def test_handler_lossy_codec_within_tolerance(tmp_path: Path, core: Any) -> None:
    core.setProperty("Camera", "PixelType", "8bit")
    core.setProperty("Camera", "Mode", "Artificial Waves")
    sent = _grab(core)
    path = tmp_path / "run.avi"
    writer = CV2Writer(path, fourcc="MJPG", ring_bytes=16 << 20)
    try:
        with writer.attach(core):
            core.mda.run(useq.MDASequence(time_plan={"interval": 0, "loops": 4}))
    finally:
        writer.close()
    back = [_gray(f) for f in _read(path)]
    assert len(back) == 4
    for want, got in zip(sent, back, strict=True):
        diff = np.abs(got.astype(int) - want.astype(int))
        assert diff.mean() < 4, diff.mean()


def test_positions_one_file_each(tmp_path: Path, core: Any) -> None:
    path = tmp_path / "pos.mp4"
    seq = useq.MDASequence(
        stage_positions=[(0, 0, 0), (10, 10, 0)],
        time_plan={"interval": 0, "loops": 3},
    )
    with CV2Writer(path, fourcc="mp4v", ring_bytes=32 << 20) as writer:
        with writer.attach(core):
            core.mda.run(seq)
        pids = {r.path: r for r in writer.reports.values()}
    for key in ("p0", "p1"):
        file = tmp_path / f"pos_{key}.mp4"
        assert str(file) in pids
        assert len(_read(file)) == 3
        assert not Path(f"{file}_frame_metadata.json").exists()
    combined = json.loads(Path(f"{path}_frame_metadata.json").read_bytes())
    assert sorted(combined) == ["p0", "p1"]
    assert [len(v) for v in combined.values()] == [3, 3]
    assert not path.exists()


# -- several streams ------------------------------------------------------------------
def test_parallel_video_streams_get_a_process_each(
    tmp_path: Path, shared: WriterService
) -> None:
    writers = [
        CV2Writer(tmp_path / f"v{i}.avi", fourcc="MJPG", service=shared)
        for i in range(3)
    ]
    barrier = threading.Barrier(3)
    errors: list[BaseException] = []

    def run(writer: CV2Writer) -> None:
        try:
            barrier.wait()
            writer.begin(W, H, is_color=False, dtype=np.uint8)  # opens concurrently
            barrier.wait()
            for k in range(8):
                writer.add_frame(_smooth(k))
            barrier.wait()  # all three open at once before any closes
        except BaseException as exc:  # surfaced below, in this thread
            errors.append(exc)
            barrier.abort()

    threads = [threading.Thread(target=run, args=(w,)) for w in writers]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert not errors, errors
    owners = {s.worker.process.pid for s in shared.streams}
    assert len(shared.streams) == 3 and len(owners) == 3
    for i, writer in enumerate(writers):
        assert writer.finish().frames_written == 8
        assert len(_read(tmp_path / f"v{i}.avi")) == 8


def test_dual_stream_democam_tiff_and_pupil_video(tmp_path: Path, core: Any) -> None:
    """A DemoCamera to OME-TIFF while a pupil camera thread writes video."""
    seq = useq.MDASequence(time_plan={"interval": 0.01, "loops": 20})
    done = threading.Event()
    pupil_frames: list[int] = []
    pupil_error: list[BaseException] = []
    with WriterService(ring_bytes=32 << 20, workers=2) as service:
        tiff = CustomWriter(tmp_path / "scope.ome.tiff", service=service)
        pupil = CV2Writer(
            tmp_path / "pupil.avi", fps=30, fourcc="MJPG", service=service
        )

        def pupil_loop() -> None:
            try:
                pupil.begin(640, 480, is_color=False, dtype=np.uint8)
                k = 0
                while not done.is_set() or k < 10:
                    pupil.add_frame(_smooth(k, (480, 640)))
                    k += 1
                    time.sleep(0.005)  # a camera's frame interval, not a wait
                pupil.finish({"camera": "pupil"})
                pupil_frames.append(k)
            except BaseException as exc:
                pupil_error.append(exc)

        thread = threading.Thread(target=pupil_loop)
        thread.start()
        try:
            with tiff.attach(core):
                core.mda.run(seq)
        finally:
            done.set()
            thread.join(60)
        assert not pupil_error, pupil_error
        assert tiff.reports["p0"].ok and pupil.reports["p0"].ok
    n = pupil_frames[0]
    assert len(_read(tmp_path / "pupil.avi")) == n
    assert pupil.reports["p0"].frames_written == n
    with tifffile.TiffFile(tmp_path / "scope.ome.tiff") as tf:
        assert len(tf.pages) == 20
    side = json.loads((tmp_path / "pupil.avi_frame_metadata.json").read_bytes())
    assert len(side["frame_metadatas"]["p0"]) == n and side["camera"] == "pupil"


def test_no_warning_for_available_codec(tmp_path: Path, shared: WriterService) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        writer = CV2Writer(tmp_path / "ok.avi", fourcc="MJPG", service=shared)
        writer.begin(W, H, is_color=False)
        writer.add_frame(_smooth(0))
        assert writer.finish().sink["codec"] == "MJPG"


# -- default codec, environment, OpenH264 --------------------------------------------
def _record(writer: CV2Writer, frames: list[np.ndarray]) -> mesowriter.StreamReport:
    writer.begin(W, H, is_color=False)
    for frame in frames:
        writer.add_frame(frame)
    return writer.finish()


@pytest.mark.parametrize(
    ("ext", "codec", "tag"),
    [
        (".mp4", "mp4v", "FMP4"),
        (".mov", "mp4v", "FMP4"),
        (".avi", "MJPG", "MJPG"),
        (".mkv", "FFV1", "FFV1"),
    ],
)
def test_default_is_the_portable_codec_without_warning(
    tmp_path: Path, shared: WriterService, ext: str, codec: str, tag: str
) -> None:
    path = tmp_path / f"d{ext}"
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # as pytest's filterwarnings, made sure
        writer = CV2Writer(path, service=shared)  # mesofield's default: None
        report = _record(writer, [_smooth(k) for k in range(3)])
    assert writer.codec.used == codec and not writer.codec.fell_back
    assert (report.sink["codec"], report.sink["fell_back"]) == (codec, False)
    assert video_fourcc(path) == tag
    assert len(_read(path)) == 3


def test_none_and_empty_fourcc_mean_the_default(tmp_path: Path) -> None:
    for fourcc in (None, ""):
        assert CV2Writer(tmp_path / "a.avi", fourcc=fourcc).codec.used == "MJPG"


def test_env_fourcc_is_the_default_and_an_argument_beats_it(
    tmp_path: Path, shared: WriterService, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The shared service's worker started before the variable was set: the
    # codec must be pinned in this process, not read again by the worker.
    monkeypatch.setenv("MESOFIELD_FOURCC", "MJPG")
    path = tmp_path / "env.mkv"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        report = _record(CV2Writer(path, service=shared), [_smooth(0), _smooth(1)])
    assert report.sink["codec"] == "MJPG" and not report.sink["fell_back"]
    assert video_fourcc(path) == "MJPG" and len(_read(path)) == 2
    assert CV2Writer(tmp_path / "arg.mkv", fourcc="FFV1").codec.used == "FFV1"
    # lossless forces FFV1 whatever the environment says
    assert CV2Writer(tmp_path / "l.mkv", lossless=True).codec.used == "FFV1"


def test_mesowriter_fourcc_wins_over_mesofield_fourcc(
    tmp_path: Path, shared: WriterService, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MESOFIELD_FOURCC", "MJPG")
    monkeypatch.setenv("MESOWRITER_FOURCC", "FFV1")
    path = tmp_path / "both.avi"
    report = _record(CV2Writer(path, service=shared), [_smooth(0)])
    assert report.sink["codec"] == "FFV1" and video_fourcc(path) == "FFV1"


@pytest.mark.parametrize(
    ("value", "why"),
    [("H265", "unknown fourcc"), ("mp4", "4-character"), ("MJPG", "cannot go into")],
)
def test_bad_env_fourcc_warns_once_and_uses_the_portable_codec(
    tmp_path: Path,
    shared: WriterService,
    monkeypatch: pytest.MonkeyPatch,
    value: str,
    why: str,
) -> None:
    monkeypatch.setenv("MESOFIELD_FOURCC", value)
    path = tmp_path / "bad.mp4"
    with pytest.warns(CodecFallbackWarning, match="MESOFIELD_FOURCC") as caught:
        writer = CV2Writer(path, service=shared)
        report = _record(writer, [_smooth(k) for k in range(3)])
    assert len(caught) == 1
    assert why in str(caught[0].message) and "'mp4v'" in str(caught[0].message)
    sink = report.sink
    assert (sink["codec"], sink["requested_fourcc"], sink["fell_back"]) == (
        "mp4v",
        value,
        True,
    )
    assert "MESOFIELD_FOURCC" in sink["fallback_reason"]
    assert video_fourcc(path) == "FMP4" and len(_read(path)) == 3


def test_env_h264_is_tried_as_avc1_and_falls_back_once(
    tmp_path: Path, shared: WriterService, monkeypatch: pytest.MonkeyPatch
) -> None:
    if probe("avc1", ".mp4", is_color=False) or probe("avc1", ".mp4", is_color=True):
        pytest.skip("this OpenCV build has an H.264 encoder")
    monkeypatch.setenv("MESOWRITER_FOURCC", "H264")
    path = tmp_path / "h.mp4"
    with pytest.warns(CodecFallbackWarning) as caught:
        report = _record(CV2Writer(path, service=shared), [_smooth(0)])
    assert len(caught) == 1
    text = str(caught[0].message)
    assert "tried as 'avc1'" in text and "MESOWRITER_FOURCC" in text
    assert (report.sink["codec"], report.sink["requested_fourcc"]) == ("mp4v", "H264")
    assert report.sink["fell_back"] and video_fourcc(path) == "FMP4"


def test_mesofield_openh264_variable_reaches_the_worker(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, loader_env: str
) -> None:
    lib = fake_openh264(tmp_path / "codecs")
    monkeypatch.setenv("MESOFIELD_OPENH264_LIBRARY", str(lib))
    # Workers inherit the environment at spawn: start the service after.
    with WriterService(ring_bytes=16 << 20, workers=1) as svc:
        writer = CV2Writer(tmp_path / "o.avi", service=svc)
        report = _record(writer, [_smooth(0)])
    assert report.sink["openh264_library"] == str(lib.resolve())


# -- 16-bit into FFV1: raw by default -------------------------------------------------
def _ramp12(k: int) -> np.ndarray:
    """A 12-bit ramp from 0 to 4095, rolled by a different amount per frame."""
    ramp = np.arange(H * W, dtype=np.int64) * 4095 // (H * W - 1)
    return np.roll(ramp, 37 * k).astype(np.uint16).reshape(H, W)


def _assert_raw(path: Path, sent: list[np.ndarray]) -> None:
    back = _read(path, raw=True)
    assert len(back) == len(sent)
    for want, got in zip(sent, back, strict=True):
        assert got.dtype == np.uint16 and got.max() == 4095  # mapped: about 16
        np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize(
    ("name", "fourcc"), [("r.mkv", None), ("r.avi", "FFV1"), ("h.mkv", "H264")]
)
def test_16bit_into_ffv1_is_raw_in_direct_mode(
    tmp_path: Path, shared: WriterService, name: str, fourcc: str | None
) -> None:
    """No flag needed; an H.264 request that fell back to FFV1 included."""
    path = tmp_path / name
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", CodecFallbackWarning)  # H264 only
        writer = CV2Writer(path, fourcc=fourcc, service=shared)
    if writer.codec.used != "FFV1":
        pytest.skip("this OpenCV build has an H.264 encoder")
    sent = [_ramp12(k) for k in range(4)]
    report = _record(writer, sent)
    assert report.sink["tone_map"] == "none (16-bit lossless)"
    assert report.sink["lossless"]
    _assert_raw(path, sent)


def test_16bit_into_ffv1_is_raw_in_handler_mode(
    tmp_path: Path, shared: WriterService
) -> None:
    """mesofield's mock producer; a 12-bit camera in the summary changes nothing."""
    path = tmp_path / "h.mkv"
    seq = useq.MDASequence(time_plan={"interval": 0, "loops": 3})
    summary = {
        "image_infos": [
            {"pixel_format": "Mono12", "plane_shape": [H, W], "dtype": "uint16"}
        ]
    }
    writer = CV2Writer(path, service=shared)
    sent = [_ramp12(k) for k in range(3)]
    writer.sequenceStarted(seq, summary)
    for event, frame in zip(seq, sent, strict=True):
        writer.frameReady(frame, event, {"k": int(event.index["t"])})
    writer.sequenceFinished(seq)
    report = writer.reports["p0"]
    assert report.ok and report.sink["tone_map"] == "none (16-bit lossless)"
    _assert_raw(path, sent)
    data = json.loads(Path(f"{path}_frame_metadata.json").read_bytes())
    assert [r["k"] for r in data["p0"]] == [0, 1, 2]
