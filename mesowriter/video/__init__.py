"""Video output for writer workers: codec choice, OpenH264 lookup, tone mapping.

Importing this package does not import cv2 (`ToneMap` loads it on first
access), so the parent can validate requests cheaply and
`configure_opencv_codec` can set OpenCV's log level before cv2 reads it.
"""

from typing import TYPE_CHECKING

from mesowriter.video._codecs import (
    FOURCC_ENV_VARS,
    PORTABLE_CODEC,
    CodecChoice,
    CodecFallbackWarning,
    VideoEncodeError,
    check_video_request,
    choose_codec,
    codec_family,
    container_of,
    resolve_codec,
)
from mesowriter.video._openh264 import configure_opencv_codec, find_openh264

if TYPE_CHECKING:
    from mesowriter.video._tonemap import ToneMap, to_bgr

__all__ = [
    "FOURCC_ENV_VARS",
    "PORTABLE_CODEC",
    "CodecChoice",
    "CodecFallbackWarning",
    "ToneMap",
    "VideoEncodeError",
    "check_video_request",
    "choose_codec",
    "codec_family",
    "configure_opencv_codec",
    "container_of",
    "find_openh264",
    "resolve_codec",
    "to_bgr",
]


def __getattr__(name: str) -> object:
    # ToneMap needs cv2; keep `import mesowriter.video` cheap for the parent.
    if name in ("ToneMap", "to_bgr"):
        from mesowriter.video import _tonemap

        return getattr(_tonemap, name)
    raise AttributeError(name)
