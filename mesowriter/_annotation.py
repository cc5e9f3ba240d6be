"""The frame-metadata annotation: every frame's metadata, losslessly, in text.

Written into the final OME-XML (one `CommentAnnotation`) so that the legacy
sidecar can be rebuilt from the data file alone. The text is newline-delimited
JSON:

- line 1, a header object: `{"format": "mesowriter/frame-metadata", "version":
  1, "position_key": ..., "frames": N, "layout": ..., "complete": ...,
  "sequence": ..., "summary": ...}`;
- template lines `{"template": k, "record": {...}}`: a full metadata dict, the
  first one seen with a given key structure;
- frame lines `[frame_index, k, leaf, value, leaf, value, ...]`, one per plane
  in IFD order: the record equals template `k` with the listed leaves (the
  non-dict values, numbered depth-first in key order) replaced. `k == -1`
  means the metadata was not a JSON object and the line is
  `[frame_index, -1, value]`; `k == -2` means it was not JSON at all and the
  line is `[frame_index, -2, "raw text"]`.

Factoring out the constant part keeps a DemoCamera frame at ~150 bytes instead
of ~800, keeps key order, and keeps each plane's record readable on its own.
NaN and infinities travel as the tokens `NaN`, `Infinity`, `-Infinity` (what
Python's json module reads), exactly as in the sidecar.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Iterator
from typing import Any

import msgspec

from mesowriter._layout import EMPTY_PLANE, Plane, plane_from_metadata

FORMAT = "mesowriter/frame-metadata"
VERSION = 1

_json_encode = msgspec.json.Encoder().encode
_json_decode = msgspec.json.Decoder().decode


def decode_json(raw: bytes | str) -> tuple[Any, bool | None]:
    """Decode JSON; the flag says whether the stdlib was needed (NaN, ...).

    None means undecodable: the value is then meaningless.
    """
    try:
        return _json_decode(raw), False
    except (msgspec.DecodeError, TypeError):
        pass
    try:
        return json.loads(raw), True
    except (ValueError, TypeError, RecursionError):
        return None, None


def dumps(obj: Any, stdlib: bool) -> str:
    """Compact JSON text; the stdlib keeps NaN/Infinity and lone surrogates."""
    if not stdlib:
        try:
            return _json_encode(obj).decode("utf-8")
        except (msgspec.EncodeError, UnicodeEncodeError, OverflowError):
            pass
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":"))


def loads(text: str) -> Any:
    try:
        return _json_decode(text)
    except msgspec.DecodeError:
        return json.loads(text)


def _flatten(d: dict[str, Any], leaves: list[Any]) -> tuple[Any, ...]:
    """Return the key structure of `d` and append its leaves depth-first."""
    shape: list[Any] = []
    for k, v in d.items():
        if type(v) is dict:
            shape.append((k, _flatten(v, leaves)))
        else:
            shape.append(k)
            leaves.append(v)
    return tuple(shape)


def _leaf_paths(d: dict[str, Any], prefix: tuple[str, ...], out: list[Any]) -> None:
    for k, v in d.items():
        if type(v) is dict:
            _leaf_paths(v, (*prefix, k), out)
        else:
            out.append((*prefix, k))


def _same(a: Any, b: Any) -> bool:
    """JSON-exact equality: 1, 1.0 and True differ; so do 0.0 and -0.0."""
    t = type(a)
    if t is not type(b) or a != b:
        return False
    if t is float:
        return math.copysign(1.0, a) == math.copysign(1.0, b)
    if t is list:
        return dumps(a, False) == dumps(b, False)
    return True


class AnnotationWriter:
    """Consumes (frame index, metadata JSON) records once, as a stream.

    Collects the annotation's lines and, for the plane descriptions, what
    each frame says about its plane; `text(header)` joins the annotation.
    """

    def __init__(self) -> None:
        self.lines: list[str] = []
        self.planes: list[Plane] = []
        self.metas_seen = 0
        self.pixel_size: float | None = None
        self.first_received: str | None = None
        self._templates: dict[Any, tuple[int, list[Any]]] = {}

    def add_all(self, records: Iterable[tuple[int, bytes]]) -> None:
        for frame_index, raw in records:
            self.add(frame_index, raw)

    def add(self, frame_index: int, raw: bytes) -> None:
        from mesowriter._layout import positive_number

        meta, stdlib = decode_json(raw)
        if type(meta) is not dict:
            kind = -1 if stdlib is not None else -2
            value = (
                meta if stdlib is not None else bytes(raw).decode("utf-8", "replace")
            )
            self.lines.append(dumps([frame_index, kind, value], bool(stdlib)))
            self.planes.append(EMPTY_PLANE)
            return
        self.lines.append(self._frame_line(frame_index, meta, bool(stdlib)))
        self.planes.append(plane_from_metadata(meta))
        if self.pixel_size is None:
            self.pixel_size = positive_number(meta.get("pixel_size_um"))
        if self.first_received is None:
            cam = meta.get("camera_metadata")
            if type(cam) is dict and type(cam.get("TimeReceivedByCore")) is str:
                self.first_received = cam["TimeReceivedByCore"]

    def _frame_line(self, frame_index: int, meta: dict[str, Any], stdlib: bool) -> str:
        leaves: list[Any] = []
        key = _flatten(meta, leaves)
        found = self._templates.get(key)
        if found is None:
            tid = len(self._templates)
            self._templates[key] = (tid, leaves)
            self.lines.append(dumps({"template": tid, "record": meta}, stdlib))
            return dumps([frame_index, tid], False)
        tid, tleaves = found
        row: list[Any] = [frame_index, tid]
        for i, (a, b) in enumerate(zip(leaves, tleaves, strict=True)):
            if a is not b and not _same(a, b):
                row.append(i)
                row.append(a)
        return dumps(row, stdlib)

    def text(self, header: dict[str, Any]) -> str:
        head = {"format": FORMAT, "version": VERSION, "frames": len(self.planes)}
        head.update(header)
        return "\n".join([dumps(head, False), *self.lines])


def read_annotation(text: str) -> tuple[dict[str, Any], list[Any]]:
    """(header, frames) of an annotation; ValueError if it is malformed.

    Metadata that was not a JSON object comes back as the JSON value itself,
    and metadata that was not JSON as `{"mesowriter_raw_metadata": text}`.
    """
    try:
        return _read(text)
    except (KeyError, IndexError, TypeError, AttributeError, RecursionError) as exc:
        raise ValueError(f"malformed frame-metadata annotation: {exc!r}") from exc


def _read(text: str) -> tuple[dict[str, Any], list[Any]]:
    it: Iterator[str] = iter(text.split("\n"))
    header = loads(next(it))
    if not isinstance(header, dict) or header.get("version") != VERSION:
        raise ValueError("unsupported mesowriter frame-metadata header")
    templates: list[tuple[str, list[tuple[str, ...]]]] = []
    frames: list[Any] = []
    for line in it:
        item = loads(line)
        if isinstance(item, dict):  # template definition
            record = item["record"]
            paths: list[tuple[str, ...]] = []
            _leaf_paths(record, (), paths)
            templates.append((dumps(record, True), paths))
            continue
        kind = item[1]
        if kind == -1:
            frames.append(item[2])
        elif kind == -2:
            frames.append({"mesowriter_raw_metadata": item[2]})
        else:
            if not isinstance(kind, int) or not 0 <= kind < len(templates):
                raise ValueError(f"frame line names template {kind!r}")
            body, paths = templates[kind]
            rec = loads(body)
            for i in range(2, len(item), 2):
                path = paths[item[i]]
                d = rec
                for key in path[:-1]:
                    d = d[key]
                d[path[-1]] = item[i + 1]
            frames.append(rec)
    if len(frames) != header["frames"]:
        raise ValueError(f"expected {header['frames']} frames, found {len(frames)}")
    return header, frames
