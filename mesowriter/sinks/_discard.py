"""A sink that keeps nothing: the ceiling of the ring and the worker alone.

The bench's pipeline section (`benchmarks/suite.py`, h) needs the cost of
handing frames through shared memory to a writer process with no disk in
the way; tests need a fast end-to-end stream. This sink commits every frame
it is given without reading or writing it.

It has no suffixes, so no file name can ever choose it (`sink_for_path`
never returns it): only `open_stream(path, kind="discard", ...)` does.
It keeps no files, so the worker writes no companions either: `path` only
names the stream.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, ClassVar

from mesowriter.sinks._base import FrameBatch, ResumeState, SynchronousSink


class DiscardSink(SynchronousSink):
    """Counts frames and forgets them; never touches a file of its own."""

    kind: ClassVar[str] = "discard"
    suffixes: ClassVar[tuple[str, ...]] = ()  # never chosen by a name
    keeps_files: ClassVar[bool] = False

    def open(self, resume: ResumeState | None = None) -> None:
        """Nothing to create; a resumed stream just goes on counting."""

    def write(self, batch: FrameBatch) -> None:
        """Drop the batch: its slots are freed once the worker commits it."""

    def close(
        self, reason: str, records: Iterator[tuple[int, bytes]] | None = None
    ) -> dict[str, Any]:
        return {"format": "discard", "frames_discarded": self._count}
