"""mesowriter: drop-free OME-TIFF and video writing for pymmcore-plus.

The acquisition process copies each frame once into a shared-memory ring;
writer processes drain the ring into BigTIFF OME-TIFF files (direct I/O) or
OpenCV video, and merge per-frame metadata into the legacy sidecar
`<filename>_frame_metadata.json` and the OME-XML.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from mesowriter._errors import FrameRejected, WriterError
from mesowriter._metadata import CustomJSONEncoder
from mesowriter._recover import RecoverError, RecoverResult, recover
from mesowriter._report import StreamReport
from mesowriter._service import (
    WriterService,
    configure_shared_service,
    shared_service,
)
from mesowriter._spec import VideoOptions
from mesowriter._stream import Stream

if TYPE_CHECKING:
    from mesowriter.handlers import CustomWriter, CV2Writer

__version__ = "0.1.0"

__all__ = [
    "CV2Writer",
    "CustomJSONEncoder",
    "CustomWriter",
    "FrameRejected",
    "RecoverError",
    "RecoverResult",
    "Stream",
    "StreamReport",
    "VideoOptions",
    "WriterError",
    "WriterService",
    "configure_opencv_codec",
    "configure_shared_service",
    "recover",
    "run",
    "shared_service",
]


def __getattr__(name: str) -> Any:
    # Handlers pull in pymmcore-plus and OpenCV; load them on first use.
    if name in ("CustomWriter", "CV2Writer"):
        from mesowriter import handlers

        return getattr(handlers, name)
    if name == "run":
        from mesowriter.handlers import run

        return run
    if name == "configure_opencv_codec":
        from mesowriter.video import configure_opencv_codec

        return configure_opencv_codec
    raise AttributeError(f"module 'mesowriter' has no attribute {name!r}")
