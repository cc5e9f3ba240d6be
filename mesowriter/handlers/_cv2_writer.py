"""CV2Writer: the legacy video handler, encoding in writer processes.

Same name, constructor and files as the writer labs already call, in its two
modes:

- a pymmcore-plus handler (`sequenceStarted` / `frameReady` /
  `sequenceFinished`, or `attach(core)`), one video per position, exactly as
  `CustomWriter` does for OME-TIFF (it shares that class's plumbing);
- direct mode for cameras that run their own capture loop: `begin(width,
  height, is_color=True)`, `add_frame(frame)`, `finish(extra_metadata=None)`.

Either way the calling thread only copies each frame into a shared-memory
ring; a writer process tone-maps and encodes it, and every video stream gets
a writer process of its own while there are cores for them. Both modes write
the legacy sidecar `<filename>_frame_metadata.json`.

The codec is settled at construction, before any camera starts. No fourcc
(mesofield's default) means `MESOWRITER_FOURCC`, else `MESOFIELD_FOURCC`,
else the container's portable codec, which opens in every build and so never
warns. An unknown fourcc or a container no codec can write raises ValueError;
a codec this OpenCV build lacks (H.264 in the Linux wheels), or an
environment value that does not fit, falls back to the portable codec with
one `CodecFallbackWarning`, here, in the user's process. The stream report's
`sink` records the codec actually used.
"""

from __future__ import annotations

import json
import os
import re
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import msgspec
import numpy as np

from mesowriter._errors import WriterError
from mesowriter._metadata import CustomJSONEncoder
from mesowriter._report import StreamReport
from mesowriter._service import WriterService
from mesowriter._spec import SidecarSpec, VideoOptions
from mesowriter._stream import Stream
from mesowriter.handlers._custom_writer import CustomWriter, _File
from mesowriter.sinks._video import stores_raw_16bit
from mesowriter.video import check_video_request, choose_codec

DEFAULT_VIDEO_RING_BYTES = 256 * 1024 * 1024
_DIRECT_KEY = "p0"
_MONO_BITS = re.compile(r"Mono(\d+)$")


class CV2Writer(CustomWriter):
    """Video (.mp4/.avi/.mkv/.mov) + frame-metadata sidecar, encoded off-thread.

    Parameters
    ----------
    filename
        The video file. With several positions each goes to
        `<stem>_<position key><ext>`.
    fps
        Frame rate written into the container.
    fourcc
        Requested codec, e.g. "H264" (tried as "avc1" in .mp4/.mov), "mp4v",
        "MJPG", "FFV1". None (or "") means the `MESOWRITER_FOURCC`, else
        `MESOFIELD_FOURCC`, environment variable, else the container's
        portable codec: "mp4v" (.mp4/.mov), "MJPG" (.avi), "FFV1" (.mkv,
        lossless, the one codec that keeps 16-bit frames).
    service
        A WriterService to share with other writers; by default the writer
        starts and owns one (stopped by `close()`).
    display_range, bit_depth
        The one fixed 16-to-8-bit mapping for the whole file: `(low, high)`
        -> 0..255, else 0 .. 2**bit_depth - 1 -> 0..255. Without either, the
        camera's bit depth is used (from the summary metadata, or the core
        given to `attach`), else the dtype's full range. With FFV1, uint16
        gray frames are stored as they are (bit-exact 16-bit) unless one of
        these, or `per_frame_normalize`, asks for 8-bit.
    per_frame_normalize
        The legacy per-frame min/max stretch (brightness not comparable
        between frames); off by default.
    lossless
        Forces FFV1 (.mkv/.avi) and raw values: uint16 gray frames are
        stored bit-exact, uint8 frames unchanged; the mapping options are
        refused.
    ring_bytes, policy
        Shared memory for the rings (split between positions) and what a
        full ring does ("block" or "drop").
    """

    _min_ring_bytes = 16 * 1024 * 1024  # video frames are small

    def __init__(
        self,
        filename: str | os.PathLike[str],
        fps: float = 30,
        fourcc: str | None = None,
        *,
        service: WriterService | None = None,
        overwrite: bool = False,
        display_range: tuple[float, float] | None = None,
        bit_depth: int | None = None,
        per_frame_normalize: bool = False,
        lossless: bool = False,
        ring_bytes: int = DEFAULT_VIDEO_RING_BYTES,
        policy: str = "block",
        workers: int = 1,
    ) -> None:
        name = os.fspath(filename)
        check_video_request(name, fourcc or None, lossless)
        if not fps > 0:
            raise ValueError(f"fps must be positive, got {fps}")
        if lossless and (display_range is not None or per_frame_normalize):
            raise ValueError(
                "lossless video stores raw values: drop display_range and "
                "per_frame_normalize"
            )
        if display_range is not None and not display_range[1] > display_range[0]:
            raise ValueError(f"display_range needs low < high, got {display_range}")
        if bit_depth is not None and not 1 <= bit_depth <= 32:
            raise ValueError(f"bit_depth must be 1..32, got {bit_depth}")
        # Probe now (cheap, cached), so a fallback is announced before any
        # worker or camera starts; the worker is handed the codec chosen.
        self.codec = choose_codec(name, fourcc or None, lossless=lossless)
        self._video = VideoOptions(
            fps=float(fps),
            fourcc=self.codec.used,
            display_range=display_range,
            bit_depth=bit_depth,
            per_frame_normalize=per_frame_normalize,
            lossless=lossless,
            requested_fourcc=self.codec.requested,
            fallback_reason=self.codec.reason,
        )
        super().__init__(
            name,
            service=service,
            ring_bytes=ring_bytes,
            policy=policy,
            overwrite=overwrite,
            direct_io=False,
            workers=workers,
        )
        self._core: Any = None
        self._direct: tuple[int, int, bool] | None = None  # height, width, colour
        self._direct_count = 0

    @classmethod
    def _check_filename(cls, name: str) -> None:
        """Done in `__init__` already, with the fourcc asked for."""

    @property
    def fps(self) -> float:
        return self._video.fps

    # -- handler mode -------------------------------------------------------------
    @contextmanager
    def attach(self, core: Any) -> Iterator[CustomWriter]:
        """As `CustomWriter.attach`; the core also tells the camera's bit depth."""
        self._core = core
        try:
            with super().attach(core) as writer:
                yield writer
        finally:
            self._core = None

    def _open(self, f: _File, shape: tuple[int, ...], dtype: Any) -> Stream:
        shape = tuple(int(s) for s in shape)
        return self._open_video(
            f,
            shape,
            np.dtype(dtype),
            is_color=len(shape) == 3,
            color_order="RGB",  # pymmcore-plus delivers RGB
        )

    def _camera_bit_depth(self) -> int | None:
        """The camera's significant bits, from the summary or the core."""
        infos = (self._summary or {}).get("image_infos") or []
        if len(infos) == 1:
            found = _MONO_BITS.match(str(infos[0].get("pixel_format", "")))
            if found:
                return int(found.group(1))
        if self._core is not None:
            try:
                return int(self._core.getImageBitDepth())
            except Exception:
                return None
        return None

    # -- direct mode ----------------------------------------------------------------
    def begin(
        self,
        width: int,
        height: int,
        is_color: bool = True,
        *,
        dtype: Any = None,
    ) -> None:
        """Start a video for frames of `width` x `height` from the caller's loop.

        Frames are (height, width) gray or (height, width, 3) BGR, as OpenCV
        cameras deliver them. The stream opens (ring, writer process, codec)
        here when `dtype` is given, else at the first `add_frame`, which then
        fixes the dtype; pass `dtype` to keep that cost out of the loop.
        """
        if self._direct is not None or self._streams:
            raise RuntimeError("CV2Writer is already writing; call finish() first")
        if int(width) <= 0 or int(height) <= 0:
            raise ValueError(f"frame size must be positive, got {width}x{height}")
        if not self._overwrite and os.path.exists(self.filename):
            raise FileExistsError(
                f"{self.filename} exists (a second begin() on one writer?); "
                "pass overwrite=True to replace it"
            )
        self._reset()
        self._files = {_DIRECT_KEY: _File(_DIRECT_KEY, self.filename, 0, None, None)}
        self._direct = (int(height), int(width), bool(is_color))
        self._direct_count = 0
        if dtype is not None:
            shape = (int(height), int(width)) + ((3,) if is_color else ())
            self._streams[_DIRECT_KEY] = self._open_direct(shape, np.dtype(dtype))

    def add_frame(
        self, frame: np.ndarray, metadata: Mapping[str, Any] | None = None
    ) -> bool:
        """Queue one frame; True if it went into the ring, False if dropped.

        uint8 frames pass through unchanged; deeper ones go through the fixed
        mapping. The sidecar record is `{"index", "timestamp"}` (time.time()
        at the call) plus `metadata`. Raises FrameRejected for a frame that
        does not fit the video (the video stays open).
        """
        if self._direct is None:
            raise RuntimeError("CV2Writer.add_frame called before begin()")
        stream = self._streams.get(_DIRECT_KEY)
        if stream is None:
            stream = self._streams[_DIRECT_KEY] = self._open_direct(
                tuple(frame.shape), frame.dtype
            )
        record: dict[str, Any] = {"index": self._direct_count, "timestamp": time.time()}
        if metadata:
            record.update(metadata)
        self._direct_count += 1
        return stream.write(frame, record)

    def finish(self, extra_metadata: Mapping[str, Any] | None = None) -> StreamReport:
        """Finalise the video and its sidecar; return the stream report.

        The sidecar is `{"frame_metadatas": {"p0": [per-frame records]},
        **extra_metadata}`, as the legacy `finish()` wrote it (extra keys at
        the top level). Raises WriterError if the stream failed or any frame
        was not written.
        """
        if self._direct is None:
            raise RuntimeError("CV2Writer.finish called before begin()")
        extra = _plain(extra_metadata) if extra_metadata else None
        if extra and "frame_metadatas" in extra:
            raise ValueError("extra_metadata may not use the key 'frame_metadatas'")
        stream = self._streams.get(_DIRECT_KEY)
        if stream is None:  # no frame came: still leave a (empty) video + sidecar
            height, width, colour = self._direct
            shape = (height, width) + ((3,) if colour else ())
            stream = self._open_direct(shape, np.dtype(np.uint8))
        self._direct = None
        self._streams.pop(_DIRECT_KEY, None)
        report = stream.close(
            "completed", check=False, extra_metadata=dict(extra) if extra else None
        )
        self.reports[_DIRECT_KEY] = report
        self._frame_metadatas = None  # read from the sidecar when asked for
        problems = report.problems()
        if problems:
            self.error = WriterError(f"{report.path}: {'; '.join(problems)}")
            raise self.error
        return report

    def _open_direct(self, shape: tuple[int, ...], dtype: np.dtype[Any]) -> Stream:
        assert self._direct is not None
        height, width, colour = self._direct
        if shape[:2] != (height, width) or len(shape) not in (2, 3):
            raise ValueError(
                f"frame of shape {shape} does not fit begin({width}, {height}): "
                f"expected ({height}, {width}) or ({height}, {width}, 3)"
            )
        if len(shape) == 3 and not colour:
            raise ValueError(
                f"colour frames {shape} but begin(is_color=False): pass "
                "is_color=True or gray frames"
            )
        return self._open_video(
            self._files[_DIRECT_KEY],
            shape,
            dtype,
            is_color=colour,
            color_order="BGR",
            # direct mode: the legacy layout, written by the worker with
            # finish()'s extra keys
            sidecar=self._sidecar_spec("frame_metadatas", by_caller=False),
        )

    # -- shared ---------------------------------------------------------------------
    def _open_video(
        self,
        f: _File,
        shape: tuple[int, ...],
        dtype: np.dtype[Any],
        *,
        is_color: bool,
        color_order: str,
        sidecar: SidecarSpec | None = None,
    ) -> Stream:
        video = self._video
        bit_depth = video.bit_depth
        channels = shape[2] if len(shape) == 3 else 1
        if (
            bit_depth is None
            and video.display_range is None
            and dtype.itemsize > 1
            # the camera's depth would turn raw 16-bit FFV1 into an 8-bit map
            and not stores_raw_16bit(video, dtype, channels)
        ):
            camera = self._camera_bit_depth()
            if camera is not None and 1 <= camera <= 8 * dtype.itemsize:
                bit_depth = camera
        opts = msgspec.structs.replace(
            video, is_color=is_color, bit_depth=bit_depth, color_order=color_order
        )
        return self._open_file(
            f,
            shape,
            dtype,
            kind="video",
            video=opts,
            sidecar=sidecar,
        )


def _plain(data: Mapping[str, Any]) -> dict[str, Any]:
    """`data` as plain JSON types (numpy values etc. via CustomJSONEncoder)."""
    out = json.loads(json.dumps(dict(data), cls=CustomJSONEncoder))
    if not isinstance(out, dict):
        raise TypeError("extra_metadata must be a mapping")
    return out
