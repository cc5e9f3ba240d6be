"""OME-XML for mesowriter's OME-TIFF files (one position per file).

The TIFF sink puts a small *provisional* XML in IFD 0 while a file is being
written and replaces it with the *final* XML at finalisation. Both follow one
rule: the XML declares exactly the planes that have an IFD, so no reader ever
fills a missing plane with zeros.

The final XML also carries every frame's metadata, losslessly, in one
`CommentAnnotation` (namespace `FRAME_METADATA_NS`) so that the legacy sidecar
can be rebuilt from the TIFF alone (`sidecar_from_ome_xml`). Its value is
newline-delimited JSON:

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
The whole XML is ASCII (non-ASCII as character references), so the sink may
store it as a plain TIFF ASCII tag.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from xml.etree import ElementTree

import msgspec
import numpy as np

__all__ = [
    "FRAME_METADATA_NS",
    "build_ome_xml",
    "file_key_for_event",
    "provisional_ome_xml",
    "sidecar_from_ome_xml",
]

FRAME_METADATA_NS = "mesowriter/frame-metadata/v1"
MODULO_NS = "openmicroscopy.org/omero/dimension/modulo"
_OME_NS = "http://www.openmicroscopy.org/Schemas/OME/2016-06"
_HEADER = (
    '<?xml version="1.0" encoding="UTF-8"?>\n'
    f'<OME xmlns="{_OME_NS}" '
    'xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance" '
    f'xsi:schemaLocation="{_OME_NS} {_OME_NS}/ome.xsd" Creator="mesowriter">'
)
_PIXEL_TYPES = {
    "u1": "uint8",
    "u2": "uint16",
    "u4": "uint32",
    "i1": "int8",
    "i2": "int16",
    "i4": "int32",
    "f4": "float",
    "f8": "double",
    "c8": "complex",
    "c16": "double-complex",
}
_MAX_NAME = 256  # keeps the provisional XML far below its ~3 KB budget
# Characters XML 1.0 forbids even as character references.
_XML_INVALID = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]")
_AXES = ("t", "p", "g", "c", "z")
_json_encode = msgspec.json.Encoder().encode
_json_decode = msgspec.json.Decoder().decode


def file_key_for_event(event_index: Mapping[str, int], pos_name: str | None) -> str:
    """Return the key of the file (and sidecar list) an event's frame goes to.

    The key is `pos_name`, else `"p{index['p']}"` (`"p0"` without a position
    axis), as pymmcore-plus's writers and the legacy sidecar key positions.
    Grid tiles (axis `g`) are deliberately *not* split into files: like
    pymmcore-plus, which keeps `g` as an array dimension of its position, all
    tiles of a position share its file and its sidecar list, and the OME-XML
    exposes `g` as a modulo "tile" axis (`R` in tifffile) when it can. An empty
    `pos_name` counts as no name, since it cannot name a file.
    """
    if pos_name:
        return pos_name
    return f"p{int(event_index.get('p', 0))}"


def provisional_ome_xml(
    *, shape: tuple[int, ...], dtype: Any, frames: int, image_name: str
) -> str:
    """Return the small OME-XML kept in IFD 0 while the file is being written.

    It declares the `frames` committed planes as a flat stack (SizeT = frames,
    planes in IFD order), so a reader opening a file mid-acquisition or after a
    crash sees exactly the frames on disk. With `frames == 0` it declares one
    `MetadataOnly` plane: valid OME with no pixel data, so tifffile skips the
    OME series instead of reading a page whose pixels may not be on disk yet.
    The result stays below 3 KB for any name (names are cut to 256 chars).
    """
    if frames < 0:
        raise ValueError(f"frames must be >= 0, not {frames}")
    px = _pixels_open(shape, dtype, "XYCZT", 1, 1, max(frames, 1), "")
    data = f'<TiffData IFD="0" PlaneCount="{frames}"/>' if frames else "<MetadataOnly/>"
    desc = "mesowriter: provisional metadata, file still being written"
    return _ascii(
        f'{_HEADER}<Image ID="Image:0" Name={_attr(image_name[:_MAX_NAME])}>'
        f"<Description>{desc}</Description>{px}"
        f"{_channel(0, shape, None)}{data}</Pixels></Image></OME>"
    )


@dataclass(slots=True)
class _Plane:
    """What a Plane element needs from one frame's metadata."""

    index: tuple[int, int, int, int, int] | None  # (t, p, g, c, z)
    runner_ms: float | None
    camera_ms: float | None
    exposure_ms: float | None
    x: float | None
    y: float | None
    z: float | None
    channel: str | None


@dataclass(slots=True)
class _Layout:
    """How planes map onto the OME hypercube."""

    order: str  # OME DimensionOrder
    sizes: dict[str, int]  # "T"/"Z"/"C" -> size (channels, not samples)
    coords: list[tuple[int, int, int]]  # per IFD: (TheT, TheZ, TheC)
    in_order: bool  # plane k is at linear index k: one TiffData suffices
    channel_names: list[str | None]
    modulo: tuple[str, int] | None  # (OME letter carrying the grid, tiles)
    z_step: float | None
    t_interval: float | None


def build_ome_xml(
    *,
    shape: tuple[int, ...],
    dtype: Any,
    records: Iterable[tuple[int, bytes]],
    sequence: dict[str, Any] | None,
    position_key: str,
    image_name: str,
    summary: dict[str, Any] | None = None,
    complete: bool | None = None,
) -> str:
    """Return the final OME-XML of a one-position file.

    `records` are (frame index, metadata JSON) of every frame written to the
    file, in IFD order; they are consumed once, as a stream. When they form the
    full T x C x Z (x grid) hypercube of `sequence` for this position, the XML
    declares those sizes with the DimensionOrder of the acquisition; otherwise
    (cancelled run, no sequence, events without an index, several positions in
    one file) it declares a flat stack, SizeT = frames written, in IFD order.
    `complete=False` forces the flat stack; `None` and `True` let the records
    decide, because declaring a plane that has no IFD is never acceptable.
    """
    planes: list[_Plane] = []
    lines: list[str] = []
    templates: dict[Any, tuple[int, list[Any]]] = {}
    pixel_size: float | None = None
    first_received: str | None = None
    for frame_index, raw in records:
        meta, stdlib = _decode(raw)
        if type(meta) is not dict:
            kind = -1 if stdlib is not None else -2
            value = meta if stdlib is not None else _text(raw)
            lines.append(_dumps([frame_index, kind, value], bool(stdlib)))
            planes.append(_Plane(None, None, None, None, None, None, None, None))
            continue
        lines.append(_frame_line(frame_index, meta, templates, lines, bool(stdlib)))
        plane = _plane(meta)
        planes.append(plane)
        if pixel_size is None:
            pixel_size = _pos_number(meta.get("pixel_size_um"))
        if first_received is None:
            cam = meta.get("camera_metadata")
            if type(cam) is dict:
                first_received = _str_or_none(cam.get("TimeReceivedByCore"))

    n = len(planes)
    cube = None
    if n and complete is not False and sequence is not None:
        cube = _hypercube(sequence, planes)
    layout = cube or _flat(planes)
    if pixel_size is None and summary is not None:
        pixel_size = _summary_pixel_size(summary)

    header = {
        "format": "mesowriter/frame-metadata",
        "version": 1,
        "position_key": position_key,
        "frames": n,
        "layout": "flat" if cube is None else "hypercube",
        "complete": complete,
        "sequence": sequence,
        "summary": summary,
    }
    out: list[str] = [_HEADER, f'<Image ID="Image:0" Name={_attr(image_name)}>']
    date = _acquisition_date(summary, first_received)
    if date:
        out.append(f"<AcquisitionDate>{date}</AcquisitionDate>")
    extra = ""
    if pixel_size is not None:
        extra += f' PhysicalSizeX="{pixel_size!r}" PhysicalSizeY="{pixel_size!r}"'
    if layout.z_step is not None:
        extra += f' PhysicalSizeZ="{layout.z_step!r}"'
    if layout.t_interval is not None:
        extra += f' TimeIncrement="{layout.t_interval!r}" TimeIncrementUnit="s"'
    s = layout.sizes
    out.append(_pixels_open(shape, dtype, layout.order, s["Z"], s["C"], s["T"], extra))
    for c in range(s["C"]):
        out.append(_channel(c, shape, layout.channel_names[c]))
    if not n:
        out.append("<MetadataOnly/>")
    elif layout.in_order:
        out.append(f'<TiffData IFD="0" PlaneCount="{n}"/>')
    else:
        out.extend(
            f'<TiffData FirstT="{t}" FirstZ="{z}" FirstC="{c}" IFD="{k}" '
            'PlaneCount="1"/>'
            for k, (t, z, c) in enumerate(layout.coords)
        )
    out.extend(_plane_xml(planes, layout.coords))
    out.append("</Pixels>")
    if layout.modulo:
        out.append('<AnnotationRef ID="Annotation:Modulo"/>')
    out.append("</Image><StructuredAnnotations>")
    if layout.modulo:
        letter, tiles = layout.modulo
        out.append(
            f'<XMLAnnotation ID="Annotation:Modulo" Namespace="{MODULO_NS}"><Value>'
            '<Modulo namespace="http://www.openmicroscopy.org/Schemas/'
            f'Additions/2011-09"><ModuloAlong{letter} Type="tile" Start="0" '
            f'Step="1" End="{tiles - 1}"/></Modulo></Value></XMLAnnotation>'
        )
    lines.insert(0, _dumps(header, False))
    out.append(
        f'<CommentAnnotation ID="Annotation:FrameMetadata" '
        f'Namespace="{FRAME_METADATA_NS}"><Value>'
    )
    out.append(_text_escape("\n".join(lines)))
    out.append("</Value></CommentAnnotation></StructuredAnnotations></OME>")
    return _ascii("".join(out))


def sidecar_from_ome_xml(xml: str) -> dict[str, list[dict[str, Any]]]:
    """Rebuild the legacy sidecar, {position_key: [frame metadata, ...]}.

    Uses only the frame-metadata annotation written by `build_ome_xml`; raises
    ValueError when there is none (e.g. a provisional XML). Metadata that was
    not a JSON object comes back as the JSON value itself, and metadata that
    was not JSON as `{"mesowriter_raw_metadata": text}`.
    """
    text = None
    for el in ElementTree.fromstring(xml).iter(f"{{{_OME_NS}}}CommentAnnotation"):
        if el.get("Namespace") == FRAME_METADATA_NS:
            value = el.find(f"{{{_OME_NS}}}Value")
            text = "" if value is None else value.text or ""
            break
    if text is None:
        raise ValueError("no mesowriter frame-metadata annotation in this OME-XML")
    it = iter(text.split("\n"))
    header = _loads(next(it))
    if not isinstance(header, dict) or header.get("version") != 1:
        raise ValueError("unsupported mesowriter frame-metadata header")
    templates: list[tuple[str, list[tuple[str, ...]]]] = []
    frames: list[Any] = []
    for line in it:
        item = _loads(line)
        if isinstance(item, dict):  # template definition
            record = item["record"]
            paths: list[tuple[str, ...]] = []
            _leaf_paths(record, (), paths)
            templates.append((_dumps(record, True), paths))
            continue
        kind = item[1]
        if kind == -1:
            frames.append(item[2])
        elif kind == -2:
            frames.append({"mesowriter_raw_metadata": item[2]})
        else:
            body, paths = templates[kind]
            rec = _loads(body)
            for i in range(2, len(item), 2):
                path = paths[item[i]]
                d = rec
                for key in path[:-1]:
                    d = d[key]
                d[path[-1]] = item[i + 1]
            frames.append(rec)
    if len(frames) != header["frames"]:
        raise ValueError(f"expected {header['frames']} frames, found {len(frames)}")
    return {str(header["position_key"]): frames}


# -- frame metadata encoding ---------------------------------------------------


def _decode(raw: bytes) -> tuple[Any, bool | None]:
    """Decode JSON; the flag says whether the stdlib was needed (NaN, ...).

    None means undecodable: the value is then meaningless.
    """
    try:
        return _json_decode(raw), False
    except (msgspec.DecodeError, TypeError):
        pass
    try:
        return json.loads(raw), True
    except (ValueError, TypeError):
        return None, None


def _text(raw: bytes) -> str:
    return bytes(raw).decode("utf-8", "replace")


def _dumps(obj: Any, stdlib: bool) -> str:
    """Compact JSON text; the stdlib keeps NaN/Infinity and lone surrogates."""
    if not stdlib:
        try:
            return _json_encode(obj).decode("utf-8")
        except (msgspec.EncodeError, UnicodeEncodeError, OverflowError):
            pass
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":"))


def _loads(text: str) -> Any:
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
        return _dumps(a, False) == _dumps(b, False)
    return True


def _frame_line(
    frame_index: int,
    meta: dict[str, Any],
    templates: dict[Any, tuple[int, list[Any]]],
    lines: list[str],
    stdlib: bool,
) -> str:
    leaves: list[Any] = []
    key = _flatten(meta, leaves)
    found = templates.get(key)
    if found is None:
        tid = len(templates)
        templates[key] = (tid, leaves)
        lines.append(_dumps({"template": tid, "record": meta}, stdlib))
        return _dumps([frame_index, tid], False)
    tid, tleaves = found
    row: list[Any] = [frame_index, tid]
    for i, (a, b) in enumerate(zip(leaves, tleaves, strict=True)):
        if a is not b and not _same(a, b):
            row.append(i)
            row.append(a)
    return _dumps(row, stdlib)


# -- plane information -----------------------------------------------------------


def _number(v: Any) -> float | None:
    if type(v) is float or type(v) is int:
        f = float(v)
        return f if math.isfinite(f) else None
    return None


def _pos_number(v: Any) -> float | None:
    f = _number(v)
    return f if f is not None and f > 0 else None


def _str_or_none(v: Any) -> str | None:
    return v if type(v) is str else None


def _plane(meta: dict[str, Any]) -> _Plane:
    ev = meta.get("mda_event")
    ev = ev if type(ev) is dict else {}
    index = None
    idx = ev.get("index")
    if type(idx) is dict and all(k in _AXES and type(v) is int for k, v in idx.items()):
        g = idx.get
        index = (g("t", 0), g("p", 0), g("g", 0), g("c", 0), g("z", 0))
    cam = meta.get("camera_metadata")
    camera_ms = None
    if type(cam) is dict and type(cam.get("ElapsedTime-ms")) is str:
        try:
            camera_ms = float(cam["ElapsedTime-ms"])
        except ValueError:
            pass
        if camera_ms is not None and not math.isfinite(camera_ms):
            camera_ms = None
    pos = meta.get("position")
    pos = pos if type(pos) is dict else {}
    ch = ev.get("channel")
    return _Plane(
        index,
        _number(meta.get("runner_time_ms")),
        camera_ms,
        _number(meta.get("exposure_ms")),
        _number(pos.get("x", ev.get("x_pos"))),
        _number(pos.get("y", ev.get("y_pos"))),
        _number(pos.get("z", ev.get("z_pos"))),
        _str_or_none(ch.get("config")) if type(ch) is dict else None,
    )


def _plane_xml(planes: list[_Plane], coords: list[tuple[int, int, int]]) -> list[str]:
    # DeltaT from one clock only, relative to the file's first frame: the
    # runner's clock if any frame has it, else the camera's ElapsedTime-ms.
    use_runner = any(p.runner_ms is not None for p in planes)
    times = [p.runner_ms if use_runner else p.camera_ms for p in planes]
    base = next((t for t in times if t is not None), 0.0)
    out = []
    for p, (t, z, c), ms in zip(planes, coords, times, strict=True):
        a = f'<Plane TheZ="{z}" TheT="{t}" TheC="{c}"'
        if ms is not None:
            a += f' DeltaT="{ms - base!r}" DeltaTUnit="ms"'
        if p.exposure_ms is not None:
            a += f' ExposureTime="{p.exposure_ms!r}" ExposureTimeUnit="ms"'
        if p.x is not None:
            a += f' PositionX="{p.x!r}" PositionXUnit="\u00b5m"'
        if p.y is not None:
            a += f' PositionY="{p.y!r}" PositionYUnit="\u00b5m"'
        if p.z is not None:
            a += f' PositionZ="{p.z!r}" PositionZUnit="\u00b5m"'
        out.append(a + "/>")
    return out


# -- layout ----------------------------------------------------------------------


def _flat(planes: list[_Plane]) -> _Layout:
    names = {p.channel for p in planes}
    name = names.pop() if len(names) == 1 else None
    return _Layout(
        order="XYCZT",
        sizes={"T": max(len(planes), 1), "Z": 1, "C": 1},
        coords=[(k, 0, 0) for k in range(len(planes))],
        in_order=True,
        channel_names=[name],
        modulo=None,
        z_step=None,
        t_interval=None,
    )


def _position_plan(
    sequence: dict[str, Any], p: int
) -> tuple[dict[str, int], list[str], list[str | None], dict[str, Any]] | None:
    """Sizes, acquisition order (outer first) and channel names at position p."""
    import useq

    try:
        seq = useq.MDASequence.model_validate(sequence)
    except Exception:
        return None
    main = {k: v for k, v in seq.sizes.items() if v and k != "p"}
    order = [str(a) for a in seq.axis_order if a in main]
    plans = sequence
    sizes = main
    channels = seq.channels
    if seq.stage_positions and p < len(seq.stage_positions):
        sub = seq.stage_positions[p].sequence
        if sub is not None:
            sizes = {k: v or main.get(k, 0) for k, v in sub.sizes.items() if k != "p"}
            sizes = {k: v for k, v in sizes.items() if v}
            order = [a for a in order if a in sizes]
            order += [str(a) for a in sub.axis_order if a in sizes and a not in order]
            if sub.channels:
                channels = sub.channels
            plans = dict(sequence)
            sub_dump = sub.model_dump(mode="json")
            for k in ("z_plan", "time_plan"):
                if sub_dump.get(k):
                    plans[k] = sub_dump[k]
    elif seq.stage_positions and p >= len(seq.stage_positions):
        return None
    names: list[str | None] = [c.config for c in channels]
    return sizes, order, names, plans


def _hypercube(sequence: dict[str, Any], planes: list[_Plane]) -> _Layout | None:
    """The layout of the full hypercube, or None if the frames do not form it."""
    first = planes[0].index
    if first is None:
        return None
    p = first[1]
    if any(pl.index is None or pl.index[1] != p for pl in planes):
        return None
    plan = _position_plan(sequence, p)
    if plan is None:
        return None
    sizes, order, names, plans = plan
    if any(a not in ("t", "g", "c", "z") for a in sizes):
        return None
    axes = [a for a in order if sizes[a] > 1]
    letter = {"t": "T", "c": "C", "z": "Z"}
    letters = {a: letter[a] for a in axes if a != "g"}
    modulo = None
    fold_into = None
    if "g" in axes:
        free = [x for x in "TZC" if x not in letters.values()]
        if free:
            letters["g"] = free[0]
            modulo = (free[0], sizes["g"])
        else:
            at = axes.index("g")
            if at == 0:
                return None  # grid outermost of four axes: no OME slot for it
            fold_into = axes[at - 1]
            modulo = (letters[fold_into], sizes["g"])
            axes.remove("g")
    inner_first = [letters[a] for a in reversed(axes)]
    inner_first += [x for x in "ZCT" if x not in inner_first]
    dim = {"T": 1, "Z": 1, "C": 1}
    for a in axes:
        dim[letters[a]] = sizes[a] * (sizes["g"] if a == fold_into else 1)
    n = len(planes)
    if n != dim["T"] * dim["Z"] * dim["C"]:
        return None
    pos = {"t": 0, "g": 2, "c": 3, "z": 4}
    s0, s1 = dim[inner_first[0]], dim[inner_first[1]]
    seen = bytearray(n)
    coords: list[tuple[int, int, int]] = []
    in_order = True
    ng = sizes.get("g", 1)
    for k, pl in enumerate(planes):
        idx = pl.index
        assert idx is not None
        v = {"T": 0, "Z": 0, "C": 0}
        for a in ("t", "g", "c", "z"):
            i = idx[pos[a]]
            if i >= sizes.get(a, 1):
                return None
            if a in letters:
                v[letters[a]] = i
        if fold_into is not None:
            v[letters[fold_into]] = idx[pos[fold_into]] * ng + idx[2]
        lin = v[inner_first[0]] + s0 * (v[inner_first[1]] + s1 * v[inner_first[2]])
        if seen[lin]:
            return None
        seen[lin] = 1
        in_order = in_order and lin == k
        coords.append((v["T"], v["Z"], v["C"]))
    channel_names: list[str | None] = [None] * dim["C"]
    if letters.get("c") == "C":
        channel_names = [names[i] if i < len(names) else None for i in range(dim["C"])]
    elif dim["C"] == 1:  # one channel (or none): name it when all frames agree
        used = {pl.channel for pl in planes}
        channel_names = [used.pop() if len(used) == 1 else None]
    z_step = None
    if letters.get("z") == "Z" and type(plans.get("z_plan")) is dict:
        z_step = _pos_number(plans["z_plan"].get("step"))
    t_interval = None
    if letters.get("t") == "T" and fold_into != "t":
        tp = plans.get("time_plan")
        if type(tp) is dict:
            t_interval = _pos_number(tp.get("interval"))
    return _Layout(
        order="XY" + "".join(inner_first),
        sizes=dim,
        coords=coords,
        in_order=in_order,
        channel_names=channel_names,
        modulo=modulo,
        z_step=z_step,
        t_interval=t_interval,
    )


# -- XML pieces --------------------------------------------------------------------


def _pixels_open(
    shape: tuple[int, ...],
    dtype: Any,
    order: str,
    size_z: int,
    size_c: int,
    size_t: int,
    extra: str,
) -> str:
    dt = np.dtype(dtype)
    ptype = _PIXEL_TYPES.get(f"{dt.kind}{dt.itemsize}")
    if ptype is None:
        raise ValueError(f"no OME pixel type for dtype {dt}")
    if len(shape) not in (2, 3):
        raise ValueError(f"frames must be (h, w) or (h, w, samples), not {shape}")
    spp = shape[2] if len(shape) == 3 else 1
    big = "true" if dt.byteorder == ">" else "false"
    inter = ' Interleaved="true"' if spp > 1 else ""
    return (
        f'<Pixels ID="Pixels:0" DimensionOrder="{order}" Type="{ptype}" '
        f'SizeX="{shape[1]}" SizeY="{shape[0]}" SizeZ="{size_z}" '
        f'SizeC="{size_c * spp}" SizeT="{size_t}" BigEndian="{big}"{inter}{extra}>'
    )


def _channel(c: int, shape: tuple[int, ...], name: str | None) -> str:
    spp = shape[2] if len(shape) == 3 else 1
    named = f" Name={_attr(name)}" if name is not None else ""
    return f'<Channel ID="Channel:0:{c}"{named} SamplesPerPixel="{spp}"/>'


def _attr(value: str) -> str:
    """A quoted attribute value; XML-invalid characters become U+FFFD."""
    v = _XML_INVALID.sub("\ufffd", value)
    v = v.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    v = v.replace('"', "&quot;").replace("\n", "&#10;").replace("\r", "&#13;")
    return '"' + v.replace("\t", "&#9;") + '"'


def _json_char(m: re.Match[str]) -> str:
    # Only inside JSON strings can such characters occur: a \u escape keeps the
    # JSON equal and the XML valid.
    return f"\\u{ord(m.group()):04x}"


def _text_escape(text: str) -> str:
    text = _XML_INVALID.sub(_json_char, text)
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _ascii(xml: str) -> str:
    return xml.encode("ascii", "xmlcharrefreplace").decode("ascii")


def _summary_pixel_size(summary: dict[str, Any]) -> float | None:
    infos = summary.get("image_infos")
    if type(infos) is list and infos and type(infos[0]) is dict:
        return _pos_number(infos[0].get("pixel_size_um"))
    return None


def _acquisition_date(summary: dict[str, Any] | None, received: str | None) -> str:
    """ISO 8601 date from the summary's datetime, else the first frame's."""
    for value in ((summary or {}).get("datetime"), received):
        if type(value) is str:
            try:
                return datetime.fromisoformat(value.replace(" ", "T", 1)).isoformat()
            except ValueError:
                continue
    return ""


def pixels_planes(px: Any) -> int:
    """Planes one OME Pixels element declares (an ElementTree element).

    SizeC counts the samples of RGB pixels, which share one plane.
    """
    spp = 1
    channel = px.find(f"{{{_OME_NS}}}Channel")
    if channel is not None:
        spp = int(channel.get("SamplesPerPixel", "1"))
    size_c = max(int(px.get("SizeC", "1")) // max(spp, 1), 1)
    return int(px.get("SizeT", "1")) * int(px.get("SizeZ", "1")) * size_c


def planes_declared(xml: str) -> int:
    """Planes an OME-XML declares with data (MetadataOnly images hold none).

    Raises ValueError if the XML cannot be parsed (a TIFF's trailing NUL is
    allowed).
    """
    from xml.etree import ElementTree

    try:
        root = ElementTree.fromstring(xml.rstrip("\x00"))
    except ElementTree.ParseError as exc:
        raise ValueError(f"the OME-XML cannot be parsed: {exc}") from exc
    total = 0
    for px in root.iter(f"{{{_OME_NS}}}Pixels"):
        if px.find(f"{{{_OME_NS}}}MetadataOnly") is None:
            total += pixels_planes(px)
    return total
