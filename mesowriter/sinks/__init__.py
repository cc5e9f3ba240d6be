"""The sink registry: one line per format, each imported on first use.

A sink class is the authority on its format (suffixes, file or folder, what
to check before a run, how `inspect` and `recover` read its files); code
elsewhere asks here, never a sink module. A new format is a module in this
package and one line below.
"""

from __future__ import annotations

import importlib

from mesowriter.sinks._base import (
    BatchFailed,
    FrameBatch,
    ResumeState,
    Sink,
    SinkFinalised,
    SlotFrame,
)

_SINKS = {
    "ome-tiff": "mesowriter.sinks._tiff:TiffSink",
    "video": "mesowriter.sinks._video:VideoSink",
    "discard": "mesowriter.sinks._discard:DiscardSink",  # kind= only: no suffix
}


def sink_class(kind: str) -> type[Sink]:
    """The sink class registered under `kind`."""
    try:
        module, name = _SINKS[kind].split(":")
    except KeyError:
        raise ValueError(
            f"unknown sink kind {kind!r}; known: {sorted(_SINKS)}"
        ) from None
    cls: type[Sink] = getattr(importlib.import_module(module), name)
    return cls


def preload() -> None:
    """Import every sink now, off the acquisition's path: the first
    `sink_for_path` would otherwise, inside the user's first open."""
    for kind in _SINKS:
        sink_class(kind)


def sink_for_path(path: str) -> type[Sink]:
    """The sink whose suffixes the file name ends in, or a clear ValueError."""
    classes = [sink_class(kind) for kind in _SINKS]
    for cls in classes:
        if cls.matches(path):
            return cls
    known = ", ".join(s for cls in classes for s in cls.suffixes)
    raise ValueError(
        f"{path!r}: cannot tell the format from the name; use one of {known}"
    )


def kind_for_path(path: str) -> str:
    return sink_for_path(path).kind


def split_suffix(path: str) -> tuple[str, str]:
    """(stem, suffix) with the format's full suffix (`run`, `.ome.tif`), so
    that a position key goes before `.ome.tif`, not between its parts."""
    lower = path.lower()
    for kind in _SINKS:
        for s in sorted(sink_class(kind).suffixes, key=len, reverse=True):
            if lower.endswith(s):
                return path[: len(path) - len(s)], path[len(path) - len(s) :]
    import os

    return os.path.splitext(path)


__all__ = [
    "BatchFailed",
    "FrameBatch",
    "ResumeState",
    "Sink",
    "SinkFinalised",
    "SlotFrame",
    "kind_for_path",
    "sink_class",
    "sink_for_path",
    "split_suffix",
]
