"""The video sink: a worker encodes ring frames into one .mp4/.avi/.mkv/.mov.

Encoding goes through OpenCV's FFmpeg `VideoWriter`, which takes only 8-bit
gray or BGR frames, or 16-bit gray for FFV1. So uint16 gray frames go into
FFV1 unchanged (bit-exact) and every other frame is tone-mapped with one
fixed mapping per file (see `mesowriter.video`).

A video cannot be resumed: containers are finalised only at close (an
unfinalised .mp4 has no index and is unreadable) and OpenCV cannot append,
so a replacement worker gets `VideoResumeError` rather than a file that
silently starts over or misses frames.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, ClassVar

import msgspec
import numpy as np
import numpy.typing as npt

from mesowriter._spec import StreamSpec, VideoOptions
from mesowriter.sinks._base import FrameBatch, ResumeState, SynchronousSink
from mesowriter.video import (
    CodecChoice,
    VideoEncodeError,
    check_video_request,
    choose_codec,
    codec_family,
    configure_opencv_codec,
    container_of,
)
from mesowriter.video._codecs import open_writer, probe

VIDEO_SUFFIXES = (".mp4", ".avi", ".mkv", ".mov")


class VideoResumeError(RuntimeError):
    """A video stream cannot be continued by a replacement worker."""


@dataclass(frozen=True)
class _Layout:
    height: int
    width: int
    channels: int  # 1 (gray), 3 (RGB) or 4 (BGRA), as the camera delivers
    depth16: bool  # lossless 16-bit gray, written without tone mapping


def stores_raw_16bit(opts: VideoOptions, dtype: npt.DTypeLike, channels: int) -> bool:
    """True when uint16 gray frames go into the file unchanged (CV_16U).

    FFV1 keeps 16-bit gray losslessly, so mapping such frames to 8 bits would
    only throw data away: that is done only when asked for, by a
    display_range, bit_depth or per-frame stretch. `lossless` always keeps
    raw values. `opts.fourcc` must be the codec resolved, not the request.
    """
    if np.dtype(dtype) != np.uint16 or channels != 1:
        return False
    if opts.lossless:
        return True
    return (
        opts.fourcc is not None
        and codec_family(opts.fourcc) == "ffv1"
        and opts.display_range is None
        and opts.bit_depth is None
        and not opts.per_frame_normalize
    )


def _layout(spec: StreamSpec, opts: VideoOptions) -> _Layout:
    """Validate frame shape/dtype against the options; explain any refusal."""
    shape, dtype = tuple(spec.shape), np.dtype(spec.dtype)
    if len(shape) == 2:
        channels = 1
    elif len(shape) == 3 and shape[2] in (3, 4):
        channels = shape[2]
    else:
        raise ValueError(
            f"video frames must be (h, w) gray or (h, w, 3|4) colour, got {shape}"
        )
    if channels > 1 and not opts.is_color:
        raise ValueError(
            f"frames of shape {shape} are colour: set VideoOptions(is_color=True)"
        )
    if dtype.name not in ("uint8", "int8", "uint16", "int16", "int32", "float32"):
        raise ValueError(f"cannot write {dtype} frames to video")
    if opts.lossless:
        if dtype.name not in ("uint8", "uint16"):
            raise ValueError(f"lossless video takes uint8 or uint16, not {dtype}")
        if dtype == np.uint16 and channels > 1:
            raise ValueError("lossless 16-bit video is grayscale only")
        if opts.display_range is not None or opts.per_frame_normalize:
            raise ValueError("lossless video stores raw values: drop display_range")
    depth16 = stores_raw_16bit(opts, dtype, channels)
    if opts.color_order not in ("RGB", "BGR"):
        raise ValueError(f"color_order must be RGB or BGR, not {opts.color_order!r}")
    if opts.fps <= 0:
        raise ValueError(f"fps must be positive, got {opts.fps}")
    return _Layout(int(shape[0]), int(shape[1]), channels, depth16)


class VideoSink(SynchronousSink):
    """Writes one stream to a video file through OpenCV."""

    kind: ClassVar[str] = "video"
    suffixes: ClassVar[tuple[str, ...]] = VIDEO_SUFFIXES
    cpu_bound: ClassVar[bool] = True  # encoding takes a core per stream

    def __init__(self, spec: StreamSpec) -> None:
        super().__init__(spec)
        self.opts = spec.video or VideoOptions()
        self.layout = _layout(spec, self.opts)
        self.choice: CodecChoice | None = None
        self.frames_encoded = 0
        self._last_index = -1
        self._writer: Any = None
        self._opened = False  # the file is ours to measure
        self._tone: Any = None  # ToneMap, or None for 16-bit lossless
        self.openh264: str | None = None  # the library this process found

    @classmethod
    def check(cls, spec: StreamSpec) -> None:
        opts = spec.video or VideoOptions()
        check_video_request(spec.path, opts.fourcc or None, opts.lossless)
        _layout(spec, opts)

    @classmethod
    def prepare(cls, spec: StreamSpec) -> StreamSpec:
        """Resolve the codec in the user's process and pin it in the spec.

        A worker's warning would only reach its stderr; resolved here, the
        `CodecFallbackWarning` reaches the user before the first frame, and
        the worker (probing the same build) opens exactly the codec chosen.
        An empty fourcc is the default codec (environment, else portable).
        """
        opts = spec.video or VideoOptions()
        choice, _ = _settle(spec, opts)
        pinned = msgspec.structs.replace(
            opts,
            fourcc=choice.used,
            requested_fourcc=opts.requested_fourcc or choice.requested,
            fallback_reason=opts.fallback_reason or choice.reason,
        )
        return msgspec.structs.replace(spec, video=pinned)

    @classmethod
    def inspect(cls, path: str) -> dict[str, Any]:
        from mesowriter._inspect import inspect_video

        return inspect_video(path)

    def open(self, resume: ResumeState | None = None) -> None:
        if resume is not None:
            raise VideoResumeError(
                f"cannot resume {self.spec.path!r} at frame {resume.committed}: video "
                "containers cannot be appended to; the stream ends here"
            )
        from mesowriter.video._tonemap import ToneMap

        self.openh264 = configure_opencv_codec()
        path, opts = self.spec.path, self.opts
        if not os.path.isdir(os.path.dirname(os.path.abspath(path))):
            raise FileNotFoundError(f"folder for {path!r} does not exist")
        if os.path.exists(path) and not self.spec.overwrite:
            raise FileExistsError(f"{path!r} exists and overwrite is False")
        self.choice, self.layout = _settle(self.spec, opts)
        lay = self.layout
        if not lay.depth16:
            lossless = opts.lossless  # 8-bit lossless: identity, whatever the depth
            self._tone = ToneMap(
                self.spec.dtype,
                bit_depth=None if lossless else opts.bit_depth,
                display_range=opts.display_range,
                per_frame_normalize=opts.per_frame_normalize,
            )
        writer = open_writer(
            path,
            self.choice.used,
            opts.fps,
            (lay.width, lay.height),
            is_color=self.choice.is_color,
            depth16=lay.depth16,
        )
        if not writer.isOpened():  # type: ignore[attr-defined]
            raise VideoEncodeError(
                f"OpenCV could not open {path!r} with {self.choice.used!r}"
            )
        self._writer = writer
        self._opened = True

    def _prepare(self, pixels: np.ndarray) -> np.ndarray:
        """The frame exactly as the writer must receive it."""
        from mesowriter.video._tonemap import to_bgr

        lay = self.layout
        if lay.depth16:
            out = pixels
            want: tuple[tuple[int, ...], np.dtype] = (
                (lay.height, lay.width),
                np.dtype(np.uint16),
            )
        else:
            out = self._tone(pixels)
            bgr_already = lay.channels == 3 and self.opts.color_order == "BGR"
            if not bgr_already and (
                lay.channels > 1 or (self.choice is not None and self.choice.is_color)
            ):
                out = to_bgr(out)
            want = (
                (lay.height, lay.width, 3)
                if self.choice is not None and self.choice.is_color
                else (lay.height, lay.width),
                np.dtype(np.uint8),
            )
        # A mismatched frame can abort the whole process inside libavcodec.
        if (out.shape, out.dtype) != want:
            raise VideoEncodeError(
                f"internal: prepared frame {out.shape} {out.dtype}, writer wants "
                f"{want[0]} {want[1]}"
            )
        return out

    def write(self, batch: FrameBatch) -> None:
        """Encode each frame (the encoded size is known at close only)."""
        import cv2

        if self._writer is None:
            raise VideoEncodeError("write() before open() or after close()")
        for frame in batch.frames:
            pixels = frame.pixels
            if pixels.shape != tuple(self.spec.shape) or pixels.dtype != np.dtype(
                self.spec.dtype
            ):
                from mesowriter._errors import FrameRejected

                raise FrameRejected(
                    f"frame {frame.index}: {pixels.shape} {pixels.dtype}, stream "
                    f"is {tuple(self.spec.shape)} {self.spec.dtype}"
                )
            # Indices are the stream's receipt order: a frame refused or
            # dropped before the ring leaves a gap (in the report), but a frame
            # repeated or out of order would corrupt the video.
            if frame.index <= self._last_index:
                raise VideoEncodeError(
                    f"frame {frame.index} arrived after frame {self._last_index}: "
                    "out of order"
                )
            out = self._prepare(pixels)
            try:
                ok = self._writer.write(out)
            except cv2.error as exc:
                raise VideoEncodeError(
                    f"encoder failed on frame {frame.index}"
                ) from exc
            if ok is False:  # cv2 5 reports per-frame failure
                raise VideoEncodeError(f"encoder refused frame {frame.index}")
            self.frames_encoded += 1
            self._last_index = frame.index

    def close(
        self, reason: str, records: Iterator[tuple[int, bytes]] | None = None
    ) -> dict[str, Any]:
        """Finalise the container and report what was really encoded.

        OpenCV cannot flush a container mid-stream: .mkv/.avi stay readable
        up to roughly the last frames if the worker dies, .mp4/.mov only once
        closed here.
        """
        if self._writer is not None:
            self._writer.release()
            self._writer = None
        path, choice = self.spec.path, self.choice
        # Lossless: FFV1 given the frames as they came (raw 16-bit, or 8-bit
        # passed through), whether or not `lossless=True` was asked for.
        lossless = self.layout.depth16 or (
            choice is not None
            and codec_family(choice.used) == "ffv1"
            and bool(self._tone is not None and self._tone.identity)
        )
        return {
            "codec": choice.used if choice else None,
            "requested_fourcc": self.opts.requested_fourcc or self.opts.fourcc,
            "fell_back": self.opts.fallback_reason is not None
            or (choice.fell_back if choice else False),
            "fallback_reason": self.opts.fallback_reason
            or (choice.reason if choice else None),
            "container": container_of(path),
            "fps": self.opts.fps,
            "frames_encoded": self.frames_encoded,
            "file_bytes": os.path.getsize(path) if self._opened else 0,
            "tone_map": "none (16-bit lossless)"
            if self.layout.depth16
            else (self._tone.description if self._tone else None),
            "lossless": lossless,
            "openh264_library": self.openh264,
            "close_reason": reason,
        }


def _settle(spec: StreamSpec, opts: VideoOptions) -> tuple[CodecChoice, _Layout]:
    """The codec this build gives `spec`, and the frame layout that follows.

    Whether uint16 frames stay 16-bit depends on the codec resolved (a
    request that fell back to FFV1 gets them raw too), so the layout is
    settled after the codec, and a 16-bit writer probed when it changed.
    """
    lay = _layout(spec, opts)
    size = (lay.width, lay.height)
    choice = choose_codec(
        spec.path,
        opts.fourcc or None,
        lossless=opts.lossless,
        is_color=opts.is_color,
        depth16=lay.depth16,
        size=size,
    )
    final = _layout(spec, msgspec.structs.replace(opts, fourcc=choice.used))
    ext = container_of(spec.path)
    if final.depth16 and not lay.depth16:
        if not probe(choice.used, ext, is_color=False, depth16=True, size=size):
            raise VideoEncodeError(
                f"cannot open a 16-bit {choice.used!r} writer for {spec.path!r} "
                "in this OpenCV build; pass bit_depth or display_range for 8-bit"
            )
    return choice, final
