"""Per-frame metadata: encoded once, in the producer, into plain JSON.

pymmcore-plus hands each frame a dict whose `mda_event` is a live pydantic
object dragging its whole `MDASequence`; we keep its plain fields instead
(not null, as the legacy writer did, and without the sequence).
"""

from __future__ import annotations

import datetime as _dt
import enum
import json
import math
from collections.abc import Mapping
from pathlib import PurePath
from typing import Any

import msgspec
import numpy as np


def reduce_event(event: Any) -> dict[str, Any]:
    """An MDAEvent's plain JSON fields, without its parent sequence."""
    result: dict[str, Any] = event.model_dump(
        mode="json", exclude={"sequence"}, exclude_none=True
    )
    return result


def _plain(obj: Any) -> Any:
    """Turn the non-JSON objects acquisition code hands us into JSON types."""
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, PurePath):
        return str(obj)
    if isinstance(obj, (_dt.datetime, _dt.date, _dt.time)):
        return obj.isoformat()
    if isinstance(obj, _dt.timedelta):
        return obj.total_seconds()
    if isinstance(obj, enum.Enum):
        return obj.value
    if isinstance(obj, (set, frozenset)):
        return sorted(obj, key=repr)
    if isinstance(obj, (bytes, bytearray, memoryview)):
        return bytes(obj).hex()
    if type(obj).__name__ == "MDAEvent" and hasattr(obj, "model_dump"):
        return reduce_event(obj)
    if hasattr(obj, "model_dump"):  # other pydantic models (useq, pymmcore-plus)
        return obj.model_dump(mode="json")
    raise TypeError(f"cannot encode {type(obj).__name__} as JSON")


class CustomJSONEncoder(json.JSONEncoder):
    """The legacy sidecar encoder: numpy, paths, datetimes and MDAEvents as JSON."""

    def default(self, o: Any) -> Any:
        try:
            return _plain(o)
        except TypeError:
            return super().default(o)


class MetadataEncoder:
    """Encodes one frame's metadata dict to JSON bytes, never failing.

    An object nothing knows how to encode becomes its `repr` and is counted
    in `fallbacks`, so a quirk in metadata never costs the frame's pixels.
    """

    def __init__(self) -> None:
        self.fallbacks = 0
        self._strict = msgspec.json.Encoder(enc_hook=_plain)
        self._lenient = msgspec.json.Encoder(enc_hook=self._lenient_hook)

    def _lenient_hook(self, obj: Any) -> Any:
        try:
            return _plain(obj)
        except TypeError:
            self.fallbacks += 1
            return repr(obj)

    def encode(self, metadata: Mapping[str, Any] | None) -> bytes:
        if not metadata:
            return b"{}"
        try:
            return self._strict.encode(metadata)
        except (TypeError, ValueError, OverflowError):
            return self._lenient.encode(_sanitise(metadata, self))


def _sanitise(obj: Any, counter: MetadataEncoder) -> Any:
    """Deep copy with keys as strings and non-finite floats as strings."""
    if isinstance(obj, Mapping):
        return {str(k): _sanitise(v, counter) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_sanitise(v, counter) for v in obj]
    if isinstance(obj, float) and not math.isfinite(obj):
        counter.fallbacks += 1
        return repr(obj)
    return obj
