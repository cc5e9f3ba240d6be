"""Sinks by name, imported lazily so a TIFF-only worker never loads OpenCV."""

from __future__ import annotations

import importlib

from mesowriter.sinks._base import FrameBatch, Sink, SlotFrame

_SINKS = {
    "ome-tiff": ("mesowriter.sinks._tiff", "OmeTiffSink"),
    "video": ("mesowriter.sinks._video", "VideoSink"),
}
VIDEO_SUFFIXES = (".mp4", ".avi", ".mkv", ".mov")


def sink_class(kind: str) -> type[Sink]:
    """The sink class registered under `kind`."""
    try:
        module, name = _SINKS[kind]
    except KeyError:
        raise ValueError(
            f"unknown sink kind {kind!r}; known: {sorted(_SINKS)}"
        ) from None
    cls: type[Sink] = getattr(importlib.import_module(module), name)
    return cls


def kind_for_path(path: str) -> str:
    """Pick the sink from the file name, or say clearly why none fits."""
    from mesowriter.sinks._tiff import TIFF_SUFFIXES, tiff_suffix

    if tiff_suffix(path):
        return "ome-tiff"
    if path.lower().endswith(VIDEO_SUFFIXES):
        return "video"
    raise ValueError(
        f"{path!r}: cannot tell the format from the name; use a TIFF suffix "
        f"{TIFF_SUFFIXES} or a video suffix {VIDEO_SUFFIXES}"
    )


__all__ = ["FrameBatch", "Sink", "SlotFrame", "kind_for_path", "sink_class"]
