"""Per-frame metadata: encoded once, in the producer, into JSON; never costs a frame.

pymmcore-plus hands each frame a dict whose `mda_event` is a live pydantic
object dragging its whole `MDASequence`; we keep its plain fields instead
(not null, as the legacy writer did, and without the sequence). Whatever
else acquisition code puts in the dict, `MetadataEncoder.encode` returns
JSON bytes and never raises (only BaseExceptions such as KeyboardInterrupt
pass): the frame's pixels must never be lost to its metadata.

What the JSON holds
-------------------
- JSON types as themselves; numpy scalars as Python numbers, numpy arrays as
  nested lists, paths as strings, enums as their values, sets as arrays,
  bytes as base64 (msgspec's encoding), datetimes as ISO 8601 strings,
  pydantic models (useq, pymmcore-plus) as their fields.
- NaN, +inf and -inf as the literal tokens `NaN`, `Infinity`, `-Infinity`:
  what Python's `json` module writes and reads, and what the legacy sidecar
  writer emitted, so Python readers (json, pandas) get the float back. These
  tokens are not RFC 8259 JSON: strict parsers (msgspec, JavaScript's
  `JSON.parse`) refuse them. msgspec itself would silently write `null`, so
  they are detected (only when the bytes contain `null` at all) and counted
  in `MetadataEncoder.nonfinite`.
- A value that cannot become JSON (an unknown type, a `repr`, `model_dump` or
  `__str__` that raises, a circular reference, nesting deeper than
  `MAX_DEPTH`, an int of more than 4300 digits, a string with lone
  surrogates) is replaced, value by value, by the marker
  ``{"mesowriter_unencodable": "<type>", "error": "<why>", "repr": "<repr>"}``
  (`repr` cut to `MAX_TEXT` characters, left out if it raises), counted in
  `fallbacks`. A dict key that cannot be a JSON key (not a str, int, float
  or enum) becomes the string of its `repr`, also counted in `fallbacks`.
- If even that fails, the frame's metadata is the single object
  ``{"mesowriter_metadata_error": "<what happened>"}``, counted in
  `frames_replaced`.

`plain_json` and `sequence_json` do the same conversion for the sequence and
summary metadata (mesofield puts live hardware objects in
`MDASequence.metadata`), but drop what cannot become JSON instead of
marking it, so that the rest, above all the T/C/Z/position layout, survives.
"""

from __future__ import annotations

import datetime as _dt
import enum
import json
import math
import re
import reprlib
from collections.abc import Mapping
from pathlib import PurePath
from typing import Any

import msgspec
import numpy as np

__all__ = [
    "MAX_DEPTH",
    "MAX_TEXT",
    "CustomJSONEncoder",
    "MetadataEncoder",
    "plain_json",
    "reduce_event",
    "sequence_json",
]

MAX_DEPTH = 128  # deeper nesting is a marker: real metadata nests < 10 levels
MAX_TEXT = 200  # characters of a repr or error message kept in a marker
UNENCODABLE = "mesowriter_unencodable"
METADATA_ERROR = "mesowriter_metadata_error"
_DROP_MARK = "\x00mesowriter:dropped\x00"  # no real string holds NULs like this
# msgpack float64 (0xcb) with an all-ones exponent: NaN, +inf or -inf.
_NONFINITE_FLOAT64 = re.compile(rb"\xcb[\x7f\xff][\xf0-\xff]")


class _Unsupported(TypeError):
    """`_plain` knows no JSON form for this type."""


def reduce_event(event: Any) -> dict[str, Any]:
    """An MDAEvent's plain fields, without its parent sequence.

    Python mode, not JSON mode: pydantic's JSON mode raises on values it does
    not know (a numpy scalar in `event.metadata` cost the whole frame); in
    Python mode they reach our encoder, which knows them or marks them.
    """
    try:
        result: dict[str, Any] = event.model_dump(
            mode="python", exclude={"sequence"}, exclude_none=True
        )
        return result
    except Exception:
        # Keep the plain fields; the metadata as given is encoded value by value.
        result = event.model_dump(
            mode="python", exclude={"sequence", "metadata"}, exclude_none=True
        )
        meta = getattr(event, "metadata", None)
        if meta is not None:
            result["metadata"] = meta
        return result


def _plain(obj: Any) -> Any:
    """One step from an object acquisition code hands us towards JSON types.

    Raises `_Unsupported` (a TypeError) for a type it does not know.
    """
    if isinstance(obj, np.generic):
        return obj.item()
    if type(obj).__name__ == "MDAEvent" and hasattr(obj, "model_dump"):
        return reduce_event(obj)
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, enum.Enum):
        return obj.value
    if isinstance(obj, str):  # a subclass: its text, never its own __str__
        return str.__str__(obj)
    if isinstance(obj, float):
        return float.__float__(obj)
    if isinstance(obj, int):
        return int.__index__(obj)
    if isinstance(obj, Mapping):
        return dict(obj)
    if isinstance(obj, PurePath):
        return str(obj)
    if isinstance(obj, (_dt.datetime, _dt.date, _dt.time)):
        return obj.isoformat()
    if isinstance(obj, _dt.timedelta):
        return obj.total_seconds()
    if isinstance(obj, (set, frozenset)):
        return sorted(obj, key=repr)
    if isinstance(obj, (bytes, bytearray, memoryview)):
        return bytes(obj).hex()
    if hasattr(obj, "model_dump"):  # other pydantic models (useq, pymmcore-plus)
        return obj.model_dump(mode="python")
    raise _Unsupported(f"cannot encode {type(obj).__name__} as JSON")


class CustomJSONEncoder(json.JSONEncoder):
    """The legacy sidecar encoder: numpy, paths, datetimes and MDAEvents as JSON."""

    def default(self, o: Any) -> Any:
        try:
            return _plain(o)
        except _Unsupported:
            return super().default(o)


class MetadataEncoder:
    """Encodes one frame's metadata to JSON bytes, never failing (module doc).

    Counters, cumulative over the frames encoded: `fallbacks` (values and
    keys replaced by a marker), `frames_replaced` (frames whose whole metadata
    became the error object), `nonfinite` (NaN/inf kept as tokens). One
    encoder per thread: `Stream` keeps one per stream, used under its lock.
    """

    def __init__(self) -> None:
        self.fallbacks = 0
        self.frames_replaced = 0
        self.nonfinite = 0
        # (object, what the hook made of it) for this frame, in msgspec's
        # order, so that a second encoding can replay them (`_has_nonfinite`).
        self._hooked: list[tuple[Any, Any]] = []
        self._replayed = 0
        self._encode = msgspec.json.Encoder(enc_hook=self._hook).encode
        self._pack = msgspec.msgpack.Encoder(enc_hook=self._replay).encode

    def _hook(self, obj: Any) -> Any:
        out = _plain(obj)
        self._hooked.append((obj, out))
        return out

    def _replay(self, obj: Any) -> Any:
        i = self._replayed
        source, out = self._hooked[i]
        if source is not obj:  # not the same walk: let the careful path decide
            raise _Unsupported("replay out of step")
        self._replayed = i + 1
        return out

    def encode(self, metadata: Mapping[str, Any] | None) -> bytes:
        """`metadata` as JSON bytes; see the module doc for what they hold."""
        try:
            if metadata is None:
                return b"{}"
            out = self._encode(metadata)
            # msgspec writes NaN and inf as null without a word: look closer
            # only when there is a null at all.
            if b"null" not in out or not self._has_nonfinite(metadata):
                return out
        except Exception:
            pass
        finally:
            self._hooked.clear()
        return self._careful(metadata)

    def _has_nonfinite(self, metadata: Any) -> bool:
        """Whether the JSON just encoded holds a NaN or inf written as null.

        msgpack keeps floats as IEEE doubles, so the same walk encoded as
        msgpack (the hook's results replayed, not recomputed: about 1 us)
        shows every NaN and inf as a float64 with all exponent bits set. The
        pattern may also match inside other bytes; then the careful path,
        which knows for sure, merely runs for nothing.
        """
        self._replayed = 0
        return _NONFINITE_FLOAT64.search(self._pack(metadata)) is not None

    def _careful(self, metadata: Any) -> bytes:
        """Value by value, with markers; the frame's error object at worst."""
        try:
            walker = _Walker(drop=False)
            tree = walker.value(metadata, 0)
            out = json.dumps(
                tree, ensure_ascii=False, separators=(",", ":"), check_circular=False
            ).encode("utf-8")
        except Exception as exc:
            self.frames_replaced += 1
            return _frame_error(exc)
        self.fallbacks += walker.replaced
        self.nonfinite += walker.nonfinite
        return out


def plain_json(obj: Any) -> tuple[Any, int]:
    """`obj` as plain JSON types, and how many values were dropped.

    What cannot become JSON is left out (a dict entry, a list item; None if
    `obj` itself cannot), not marked. NaN and inf stay floats. Never raises.
    """
    walker = _Walker(drop=True)
    try:
        out = walker.value(obj, 0)
    except Exception:
        return None, walker.replaced + 1
    return (None if out is _DROPPED else out), walker.replaced


def sequence_json(seq: Any) -> tuple[dict[str, Any] | None, int]:
    """A `useq.MDASequence` as JSON, without only what cannot become JSON.

    mesofield puts live hardware objects in `MDASequence.metadata`, which
    makes pydantic's JSON dump raise; those values alone are dropped (and
    counted), so the T/C/Z/position layout still reaches the OME-XML.
    Returns (None, dropped) only if nothing of the sequence can be had.
    Never raises.
    """
    if seq is None:
        return None, 0
    dropped = 0
    try:
        data = seq.model_dump(mode="json")
        return (data, 0) if isinstance(data, dict) else (None, 1)
    except Exception:
        pass

    def fallback(value: Any) -> Any:
        nonlocal dropped
        plain, n = plain_json(value)
        dropped += n
        return _DROP_MARK if plain is None and n else plain

    try:  # pydantic >= 2.11: unknown values pass through `fallback`
        data = seq.model_dump(mode="json", fallback=fallback)
        if isinstance(data, dict):
            return _without_mark(data), dropped
    except Exception:
        pass
    # Older pydantic, or what it refuses anyway (circular references).
    try:
        tree, n = plain_json(seq.model_dump(mode="python"))
        if isinstance(tree, dict):
            return tree, n
    except Exception:
        pass
    return None, 1


def _without_mark(obj: Any) -> Any:
    """`obj` without the dict entries and list items `fallback` dropped."""
    if isinstance(obj, dict):
        return {k: _without_mark(v) for k, v in obj.items() if v != _DROP_MARK}
    if isinstance(obj, list):
        return [_without_mark(v) for v in obj if v != _DROP_MARK]
    return obj


# -- the careful path ---------------------------------------------------------------

_DROPPED: Any = object()  # a value `_Walker(drop=True)` leaves out
_INT_DIGITS_SAFE = 1 << 13  # bits; beyond, str(int) may exceed the digit limit
_REPR = reprlib.Repr()
_REPR.maxlevel, _REPR.maxstring, _REPR.maxother = 3, 120, 60


class _Walker:
    """Builds a tree of plain JSON types, replacing (or dropping) what fails.

    Every failure is confined to the value it happened in: the walk of a
    dict or list catches its items' errors one by one.
    """

    __slots__ = ("_active", "drop", "nonfinite", "replaced")

    def __init__(self, drop: bool) -> None:
        self.drop = drop
        self.replaced = 0  # values (and keys) replaced or dropped
        self.nonfinite = 0
        self._active: set[int] = set()  # ids of the containers being walked

    def value(self, obj: Any, depth: int) -> Any:
        t = type(obj)
        if t is str:
            return obj if _utf8(obj) else self._bad(obj, "a lone surrogate")
        if obj is None or t is bool:
            return obj
        if t is int:
            if obj.bit_length() < _INT_DIGITS_SAFE:
                return obj
            try:
                str(obj)
            except ValueError as exc:
                return self._bad(obj, exc)
            return obj
        if t is float:
            if not math.isfinite(obj):
                self.nonfinite += 1
            return obj
        if depth >= MAX_DEPTH:
            return self._bad(obj, f"nested deeper than {MAX_DEPTH} levels")
        try:
            if isinstance(obj, (dict, Mapping)):
                return self._mapping(obj, depth)
            if isinstance(obj, (list, tuple, set, frozenset)):
                return self._items(obj, depth)
            converted = _leaf(obj)
        except Exception as exc:  # RecursionError, MemoryError, anything
            return self._bad(obj, exc)
        return self.value(converted, depth + 1)

    def _mapping(self, obj: Any, depth: int) -> Any:
        if id(obj) in self._active:
            return self._bad(obj, "circular reference")
        self._active.add(id(obj))
        try:
            items = dict.items(obj) if isinstance(obj, dict) else obj.items()
            out: dict[str, Any] = {}
            for k, v in items:
                key = self._key(k)
                if key is _DROPPED:
                    continue
                item = self.value(v, depth + 1)
                if item is _DROPPED:
                    continue
                if key in out:  # e.g. 1 and "1": keep both
                    n = 2
                    while f"{key}~{n}" in out:
                        n += 1
                    key = f"{key}~{n}"
                out[key] = item
            return out
        finally:
            self._active.discard(id(obj))

    def _items(self, obj: Any, depth: int) -> Any:
        if id(obj) in self._active:
            return self._bad(obj, "circular reference")
        self._active.add(id(obj))
        try:
            out = []
            for v in obj:
                item = self.value(v, depth + 1)
                if item is not _DROPPED:
                    out.append(item)
            return out
        finally:
            self._active.discard(id(obj))

    def _key(self, k: Any) -> Any:
        """A dict key as msgspec writes it; else its repr (or dropped)."""
        try:
            if type(k) is str and _utf8(k):
                return k
            if isinstance(k, enum.Enum):
                k = k.value
            if isinstance(k, str):
                text = str.__str__(k)
                if _utf8(text):
                    return text
            elif isinstance(k, (int, np.integer)) and not isinstance(k, bool):
                return str(int(k))
            elif isinstance(k, (float, np.floating)):
                return repr(float(k))
        except Exception:
            pass
        self.replaced += 1
        if self.drop:
            return _DROPPED
        return _bounded_repr(k) or f"<unrepresentable {_type_name(k)} key>"

    def _bad(self, obj: Any, why: object) -> Any:
        self.replaced += 1
        if self.drop:
            return _DROPPED
        marker = {UNENCODABLE: _type_name(obj), "error": _describe(why)}
        text = _bounded_repr(obj)
        if text is not None:
            marker["repr"] = text
        return marker


def _leaf(obj: Any) -> Any:
    """One step towards JSON types, as the fast path would have taken it."""
    try:  # what msgspec encodes natively (datetime, UUID, Decimal, bytes, ...)
        return msgspec.to_builtins(obj, enc_hook=_refuse, str_keys=True)
    except Exception:
        pass
    try:
        return _plain(obj)
    except _Unsupported:  # dataclasses and the like, with our hook inside
        return msgspec.to_builtins(obj, enc_hook=_plain, str_keys=True)


def _refuse(obj: Any) -> Any:
    raise _Unsupported(type(obj).__name__)


def _utf8(text: str) -> bool:
    if text.isascii():
        return True
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _type_name(obj: Any) -> str:
    try:
        t = type(obj)
        name = f"{t.__module__}.{t.__qualname__}"
        return name.removeprefix("builtins.")[:MAX_TEXT]
    except Exception:
        return "?"


def _safe_text(text: str) -> str:
    """Cut to MAX_TEXT characters; lone surrogates escaped."""
    if len(text) > MAX_TEXT:
        text = text[: MAX_TEXT - 3] + "..."
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def _bounded_repr(obj: Any) -> str | None:
    """A short repr, or None if it raises (builtin containers stay short)."""
    try:
        if type(obj) in (dict, list, tuple, set, frozenset, str, bytes):
            text = _REPR.repr(obj)
        else:
            text = repr(obj)
        return _safe_text(text)
    except Exception:
        return None


def _describe(why: object) -> str:
    if isinstance(why, _Unsupported):
        text = str(why)
    elif isinstance(why, BaseException):
        try:
            text = f"{type(why).__name__}: {why}"
        except Exception:
            text = type(why).__name__
    else:
        text = str(why)
    return _safe_text(text)


def _frame_error(exc: Exception) -> bytes:
    try:
        return msgspec.json.encode({METADATA_ERROR: _describe(exc)})
    except Exception:
        return b'{"%s":"unknown"}' % METADATA_ERROR.encode()
