"""Which codec a video stream really gets, decided before the first frame.

OpenCV's `VideoWriter` gives no reason when a codec cannot open: H.264 in
particular is missing from the opencv-python wheels on Linux. So every
request is checked cheaply against a table first (`check_video_request`, in
the user's process), then probed by opening a real writer on a scratch file
(`resolve_codec`), and a failed request falls back to the container's
portable codec with one `CodecFallbackWarning` instead of an empty file.

No request (`fourcc=None`, mesofield's default) means `MESOWRITER_FOURCC`,
else `MESOFIELD_FOURCC`, else the portable codec, which always opens and so
never warns (`choose_codec`).
"""

from __future__ import annotations

import os
import tempfile
import warnings
from dataclasses import dataclass, replace

import numpy as np

from mesowriter.video._openh264 import configure_opencv_codec


class CodecFallbackWarning(UserWarning):
    """The requested codec could not open; the container's portable one is used."""


class VideoEncodeError(RuntimeError):
    """The encoder refused to open or to take a frame; never skipped silently."""


@dataclass(frozen=True)
class CodecChoice:
    """The outcome of codec resolution, reported in the stream report."""

    requested: str
    used: str  # the fourcc tag the writer was opened with
    fell_back: bool
    reason: str | None
    is_color: bool  # the writer's isColor (True if a codec cannot take gray)


@dataclass(frozen=True)
class _Family:
    tags: tuple[str, ...]  # spellings a user may ask for; first is canonical
    containers: dict[str, str | None]  # ext -> tag to use there (None: as asked)
    lossless: bool = False


_FAMILIES: dict[str, _Family] = {
    # H.264: the right tag differs by container ('avc1' in ISO-BMFF); the
    # encoder exists only in OpenCV builds with libopenh264 or libx264.
    "h264": _Family(
        ("H264", "h264", "avc1", "AVC1", "X264", "x264"),
        {".mp4": "avc1", ".mov": "avc1", ".mkv": "H264", ".avi": "H264"},
    ),
    "mpeg4": _Family(
        ("mp4v", "MP4V", "FMP4", "XVID", "DIVX", "DX50"),
        {".mp4": "mp4v", ".mov": "mp4v", ".avi": None, ".mkv": None},
    ),
    "mjpeg": _Family(("MJPG",), {".avi": None, ".mkv": None, ".mov": None}),
    "ffv1": _Family(("FFV1",), {".mkv": None, ".avi": None}, lossless=True),
    "huffyuv": _Family(("HFYU",), {".avi": None, ".mkv": None}),
    "vp8": _Family(("VP80",), {".mkv": None}),
    "vp9": _Family(("VP90",), {".mkv": None, ".mp4": "vp09"}),
}

# What a request falls back to when its codec cannot open in this build.
PORTABLE_CODEC: dict[str, str] = {
    ".mp4": "mp4v",
    ".mov": "mp4v",
    ".avi": "MJPG",
    ".mkv": "FFV1",
}
LOSSLESS_CONTAINERS = (".mkv", ".avi")

# Where a default request (fourcc=None) comes from, first set wins: our own
# name is the specific override, mesofield's may be set lab-wide for it.
FOURCC_ENV_VARS = ("MESOWRITER_FOURCC", "MESOFIELD_FOURCC")

_probe_cache: dict[tuple[str, str, bool, bool, tuple[int, int]], bool] = {}


def container_of(path: str) -> str:
    """The lower-case extension of `path`, e.g. '.mp4'."""
    return os.path.splitext(path)[1].lower()


def _family_of(fourcc: str) -> tuple[str, _Family] | None:
    folded = fourcc.lower()
    for name, fam in _FAMILIES.items():
        if any(t.lower() == folded for t in fam.tags):
            return name, fam
    return None


def codec_family(fourcc: str) -> str | None:
    """The codec family a fourcc names ('h264', 'ffv1', ...), None if unknown."""
    found = _family_of(fourcc)
    return found[0] if found else None


def _check_container(path: str) -> str:
    ext = container_of(path)
    if ext not in PORTABLE_CODEC:
        raise ValueError(
            f"cannot write video to {path!r}: extension {ext or '(none)'!r} is not "
            f"a video container; use one of {', '.join(PORTABLE_CODEC)}"
        )
    return ext


def check_video_request(path: str, fourcc: str | None, lossless: bool = False) -> None:
    """Raise ValueError if no OpenCV build could write `fourcc` into `path`.

    Cheap (no encoder is opened), so the user's process can run it before the
    camera starts; whether *this* build has the codec is `resolve_codec`'s job.
    `fourcc=None` (the default codec) checks only the container, and that
    `lossless` has one.
    """
    ext = _check_container(path)
    if fourcc is None:
        if lossless and ext not in LOSSLESS_CONTAINERS:
            raise ValueError(f"lossless video needs a .mkv or .avi path, got {ext}")
        return  # the default codec fits every container
    if not isinstance(fourcc, str) or len(fourcc) != 4:
        raise ValueError(f"fourcc must be a 4-character code, got {fourcc!r}")
    found = _family_of(fourcc)
    if found is None:
        known = ", ".join(t for f in _FAMILIES.values() for t in f.tags[:1])
        raise ValueError(f"unknown fourcc {fourcc!r}; known codecs: {known}")
    name, fam = found
    if ext not in fam.containers:
        raise ValueError(
            f"fourcc {fourcc!r} ({name}) cannot go into a {ext} file; it fits "
            f"{', '.join(fam.containers)}"
        )
    if lossless and not fam.lossless:
        raise ValueError(
            f"lossless video needs fourcc='FFV1' (got {fourcc!r}); set "
            "VideoOptions(fourcc='FFV1', lossless=True) and a .mkv or .avi path"
        )
    if lossless and ext not in LOSSLESS_CONTAINERS:
        raise ValueError(f"lossless FFV1 video needs a .mkv or .avi path, got {ext}")


def fourcc_from_env() -> tuple[str, str] | None:
    """(variable, value) of the first fourcc variable set, else None."""
    for var in FOURCC_ENV_VARS:
        value = os.environ.get(var, "").strip()
        if value:
            return var, value
    return None


def _tag_for(fourcc: str, ext: str) -> str:
    found = _family_of(fourcc)
    assert found is not None
    fam = found[1]
    tag = fam.containers[ext]
    if tag is not None:
        return tag
    return fourcc if fourcc in fam.tags else fam.tags[0]


def open_writer(
    path: str,
    tag: str,
    fps: float,
    size: tuple[int, int],
    *,
    is_color: bool,
    depth16: bool = False,
) -> object:
    """Open a `cv2.VideoWriter` through FFmpeg; `size` is (width, height).

    16-bit output goes through the params form, the only way to ask for
    CV_16U; it is grayscale only.
    """
    import cv2

    fcc = cv2.VideoWriter.fourcc(*tag)
    if depth16:
        params = [
            cv2.VIDEOWRITER_PROP_DEPTH,
            cv2.CV_16U,
            cv2.VIDEOWRITER_PROP_IS_COLOR,
            0,
        ]
        return cv2.VideoWriter(path, cv2.CAP_FFMPEG, fcc, fps, size, params)
    return cv2.VideoWriter(path, cv2.CAP_FFMPEG, fcc, fps, size, is_color)


def probe(
    tag: str,
    ext: str,
    *,
    is_color: bool,
    depth16: bool = False,
    size: tuple[int, int] = (64, 64),
) -> bool:
    """True if this build can open `tag` in `ext` and encode one frame.

    Writes to a scratch directory, never next to the user's data; cached per
    process because a failed H.264 open costs FFmpeg a device search.
    """
    key = (tag, ext, is_color, depth16, size)
    if key in _probe_cache:
        return _probe_cache[key]
    import cv2

    w, h = size
    dtype = np.uint16 if depth16 else np.uint8
    frame = np.zeros((h, w, 3) if is_color else (h, w), dtype)
    level = cv2.utils.logging.getLogLevel()
    cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_SILENT)
    try:
        with tempfile.TemporaryDirectory(prefix="mesowriter-probe-") as tmp:
            writer = open_writer(
                os.path.join(tmp, "probe" + ext),
                tag,
                10.0,
                size,
                is_color=is_color,
                depth16=depth16,
            )
            ok = bool(writer.isOpened()) and bool(writer.write(frame))  # type: ignore[attr-defined]
            writer.release()  # type: ignore[attr-defined]
    except cv2.error:
        ok = False
    finally:
        cv2.utils.logging.setLogLevel(level)
    _probe_cache[key] = ok
    return ok


def resolve_codec(
    path: str,
    fourcc: str,
    *,
    is_color: bool,
    depth16: bool = False,
    size: tuple[int, int] = (64, 64),
    source: str | None = None,
) -> CodecChoice:
    """Pick the codec a stream will really use, warning once if it differs.

    Tries the requested codec (gray first when asked, then colour, since some
    encoders only take colour input), then the container's portable codec.
    `size` is (width, height): a few encoders reject some sizes. `source`
    names the environment variable the request came from, for the warning.
    Raises VideoEncodeError if even the portable codec cannot open.
    """
    check_video_request(path, fourcc, lossless=False)
    configure_opencv_codec()
    ext = container_of(path)

    def attempt(tag: str) -> bool | None:
        # -> the writer's isColor that works, or None
        for color in (is_color,) if (is_color or depth16) else (False, True):
            if probe(tag, ext, is_color=color, depth16=depth16, size=size):
                return color
        return None

    tag = _tag_for(fourcc, ext)
    color = attempt(tag)
    if color is not None:
        return CodecChoice(fourcc, tag, False, None, color)
    portable = PORTABLE_CODEC[ext]
    detail = "16-bit " if depth16 else ""
    asked = f"{fourcc!r}" + (f" (tried as {tag!r})" if tag != fourcc else "")
    if source:
        asked += f" from {source}"
    reason = f"{detail}{asked} encoder not available in this OpenCV build"
    if (
        _family_of(fourcc) == _family_of(portable)
        or (color := attempt(portable)) is None
    ):
        raise VideoEncodeError(
            f"cannot open a {detail}video writer for {path!r}: {reason}, and no "
            f"portable codec ({portable!r}) either"
        )
    warnings.warn(
        f"{reason}; writing {path!r} with {portable!r} instead "
        "(see external/video-codecs/README.md to enable H.264)",
        CodecFallbackWarning,
        stacklevel=2,
    )
    return CodecChoice(fourcc, portable, True, reason, color)


def choose_codec(
    path: str,
    fourcc: str | None,
    *,
    lossless: bool = False,
    is_color: bool = False,
    depth16: bool = False,
    size: tuple[int, int] = (64, 64),
) -> CodecChoice:
    """The codec for a writer asked for `fourcc`, where None means the default.

    An explicit `fourcc` that no build could write into `path` is a mistake
    in the caller's code and raises ValueError, as does a path that is not a
    video container. `None` means FFV1 when `lossless`, else the first of
    `FOURCC_ENV_VARS` set, else the container's portable codec, silently.
    An environment value applies to every writer of every container, so one
    that is malformed or does not fit this container does not stop the
    acquisition: it gives the portable codec with one CodecFallbackWarning,
    like a codec that cannot open.
    """

    def resolve(tag: str, source: str | None = None) -> CodecChoice:
        return resolve_codec(
            path, tag, is_color=is_color, depth16=depth16, size=size, source=source
        )

    if fourcc or lossless:
        wanted = fourcc or "FFV1"
        check_video_request(path, wanted, lossless)
        return resolve(wanted)
    ext = _check_container(path)
    env = fourcc_from_env()
    if env is None:
        return resolve(PORTABLE_CODEC[ext])
    var, value = env
    try:
        check_video_request(path, value)
    except ValueError as exc:
        reason = f"{var}={value!r} ignored: {exc}"
        choice = resolve(PORTABLE_CODEC[ext])
        warnings.warn(
            f"{reason}; writing {path!r} with {choice.used!r}",
            CodecFallbackWarning,
            stacklevel=3,
        )
        return replace(choice, requested=value, fell_back=True, reason=reason)
    return resolve(value, source=var)
