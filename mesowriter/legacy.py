"""The names of mesofield's writer module, for a drop-in swap.

A lab that runs mesofield replaces its writer module with this one (for
example `mesofield/data/writer.py` reduced to `from mesowriter.legacy import *`)
and changes nothing else: the classes, constants and helpers mesofield
imports from there exist here under the same names and take the same
arguments. `OMEWriter` is mesowriter's `CustomWriter` (mesofield 0.5 renamed
the writer; the lab code labs wrote against earlier calls it `CustomWriter`).
"""

from __future__ import annotations

import os
from typing import Any

from mesowriter._metadata import CustomJSONEncoder
from mesowriter._spec import sidecar_path
from mesowriter.handlers import CustomWriter, CV2Writer
from mesowriter.video import configure_opencv_codec

FRAME_MD_FILENAME = "_frame_metadata.json"

__all__ = [
    "FRAME_MD_FILENAME",
    "CV2Writer",
    "CustomJSONEncoder",
    "CustomWriter",
    "NullWriter",
    "OMEWriter",
    "configure_opencv_codec",
]


class NullWriter:
    """A handler that keeps nothing: mesofield's benchmarking writer.

    It takes every call an MDA writer takes and counts the frames, so a run
    without a file is still accounted for (`frames_received`).
    """

    def __init__(self, filename: str | os.PathLike[str] | None = None) -> None:
        self._filename = None if filename is None else os.fspath(filename)
        self._frame_metadata_filename = (
            None if self._filename is None else sidecar_path(self._filename)
        )
        self.frame_metadatas: dict[str, list[Any]] = {}
        self.frames_received = 0

    def sequenceStarted(self, seq: Any = None, meta: Any = None) -> None:
        self.frames_received = 0

    def frameReady(self, img: Any, event: Any = None, meta: Any = None) -> None:
        self.frames_received += 1

    def sequenceCanceled(self, seq: Any = None) -> None:
        """Nothing to finish."""

    def sequenceFinished(self, seq: Any = None) -> None:
        """Nothing to finish."""

    def finalize_metadata(self) -> None:
        """Nothing is written."""

    def close(self) -> None:
        """Nothing to release."""


class OMEWriter(CustomWriter):
    """mesofield's OME-TIFF writer: `CustomWriter` under that name.

    `OMEWriter(None)` is what mesofield's MDA window builds when saving is
    unchecked: the user asked for no file, so it gives a `NullWriter`, which
    counts the run's frames and keeps none.
    """

    def __new__(cls, filename: Any = None, *args: Any, **kwargs: Any) -> Any:
        if filename is None:
            return NullWriter(None)
        return super().__new__(cls)
