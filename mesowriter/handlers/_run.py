"""`mesowriter.run`: an MDA written from the acquisition thread, in one call.

pymmcore-plus hands `output=` handlers their frames on a relay thread that
competes with the acquisition thread for the GIL; a handler connected to the
runner's own signals is called on the acquisition thread, where mesowriter
costs one copy per frame. This helper makes that faster path the easy one.
"""

from __future__ import annotations

import os
from typing import Any

from mesowriter._report import StreamReport
from mesowriter.sinks import sink_for_path


def run(
    core: Any,
    sequence: Any,
    path: str | os.PathLike[str],
    **options: Any,
) -> dict[str, StreamReport]:
    """Run `sequence` on `core`, writing to `path`; return the reports by key.

    The writer follows the name (`.ome.tif`/`.tif`: CustomWriter; a video
    suffix: CV2Writer, where `options` may hold `fps` and `fourcc`) and is
    connected to the acquisition thread for the run. Raises WriterError if
    any frame was lost or any file failed, after finalising everything.
    """
    from mesowriter.handlers._custom_writer import CustomWriter
    from mesowriter.handlers._cv2_writer import CV2Writer

    kind = sink_for_path(os.fspath(path)).kind
    writer: CustomWriter = (
        CV2Writer(path, **options) if kind == "video" else CustomWriter(path, **options)
    )
    with writer:
        with writer.attach(core):
            core.mda.run(sequence)
    return dict(writer.reports)
