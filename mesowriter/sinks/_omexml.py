"""OME-XML for mesowriter's OME-TIFF files (one position per file): writer and reader.

The TIFF sink keeps a small *provisional* XML in IFD 0 while a file is being
written and replaces it with the *final* XML at finalisation. Both follow one
rule: the XML declares exactly the planes that have an IFD, so no reader ever
fills a missing plane with zeros. The final XML carries every frame's
metadata in one `CommentAnnotation` (see `mesowriter._annotation`), so the
legacy sidecar can be rebuilt from the TIFF alone (`sidecar_from_ome_xml`).
The whole XML is ASCII (non-ASCII as character references), so the sink may
store it as a plain TIFF ASCII tag.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from datetime import datetime
from typing import Any

import numpy as np

from mesowriter._annotation import AnnotationWriter, read_annotation
from mesowriter._layout import Layout, Plane, flat_layout, hypercube_layout
from mesowriter._untrusted import parse_xml

__all__ = [
    "FRAME_METADATA_NS",
    "build_ome_xml",
    "planes_declared",
    "provisional_ome_xml",
    "sidecar_from_ome_xml",
]

FRAME_METADATA_NS = "mesowriter/frame-metadata/v1"
MODULO_NS = "openmicroscopy.org/omero/dimension/modulo"
OME_NS = "http://www.openmicroscopy.org/Schemas/OME/2016-06"
_O = f"{{{OME_NS}}}"
_HEADER = (
    '<?xml version="1.0" encoding="UTF-8"?>\n'
    f'<OME xmlns="{OME_NS}" '
    'xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance" '
    f'xsi:schemaLocation="{OME_NS} {OME_NS}/ome.xsd" Creator="mesowriter">'
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
_MAX_NAME = 256  # keeps the provisional XML far below its 4 KB page
# Characters XML 1.0 forbids even as character references.
_XML_INVALID = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]")


def provisional_ome_xml(
    *, shape: tuple[int, ...], dtype: Any, frames: int, image_name: str
) -> str:
    """Return the small OME-XML kept in IFD 0 while the file is being written.

    It declares the `frames` linked planes as a flat stack (SizeT = frames,
    planes in IFD order), so a reader opening a file mid-acquisition or after a
    crash sees exactly the frames on disk. With `frames == 0` it declares one
    `MetadataOnly` plane: valid OME with no pixel data.
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


def build_ome_xml(
    *,
    shape: tuple[int, ...],
    dtype: Any,
    records: Iterable[tuple[int, bytes]],
    sequence: dict[str, Any] | None,
    position_key: str,
    image_name: str,
    summary: dict[str, Any] | None = None,
    extra_header: dict[str, Any] | None = None,
) -> str:
    """Return the final OME-XML of a one-position file.

    `records` are (frame index, metadata JSON) of every frame written to the
    file, in IFD order; they are consumed once, as a stream. When they form
    the T x C x Z (x grid) hypercube of `sequence` for this position, or whole
    units of its outermost axis, the XML declares those sizes with the
    DimensionOrder of the acquisition; otherwise (no sequence, events without
    an index, frames that stop mid-unit) it declares a flat stack, SizeT =
    frames written, in IFD order.
    """
    notes = AnnotationWriter()
    notes.add_all(records)
    planes = notes.planes
    n = len(planes)
    cube = hypercube_layout(sequence, planes) if n and sequence is not None else None
    layout = cube or flat_layout(planes)
    pixel_size = notes.pixel_size
    if pixel_size is None and summary is not None:
        pixel_size = _summary_pixel_size(summary)
    header = {
        "position_key": position_key,
        "layout": "flat" if cube is None else "hypercube",
        "complete": None if cube is None else cube.complete,
        "sequence": sequence,
        "summary": summary,
        **(extra_header or {}),
    }
    out: list[str] = [_HEADER, f'<Image ID="Image:0" Name={_attr(image_name)}>']
    date = _acquisition_date(summary, notes.first_received)
    if date:
        out.append(f"<AcquisitionDate>{date}</AcquisitionDate>")
    out.append(_pixels_element(shape, dtype, layout, pixel_size))
    for c in range(layout.sizes["C"]):
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
    out.append(
        f'<CommentAnnotation ID="Annotation:FrameMetadata" '
        f'Namespace="{FRAME_METADATA_NS}"><Value>'
    )
    out.append(_text_escape(notes.text(header)))
    out.append("</Value></CommentAnnotation></StructuredAnnotations></OME>")
    return _ascii("".join(out))


def sidecar_from_ome_xml(xml: str) -> dict[str, list[Any]]:
    """Rebuild the legacy sidecar, {position_key: [frame metadata, ...]}.

    Uses only the frame-metadata annotation written by `build_ome_xml`;
    raises ValueError when there is none (e.g. a provisional XML) or it is
    malformed.
    """
    text = None
    for el in parse_xml(xml, source="the OME-XML").iter(f"{_O}CommentAnnotation"):
        if el.get("Namespace") == FRAME_METADATA_NS:
            value = el.find(f"{_O}Value")
            text = "" if value is None else value.text or ""
            break
    if text is None:
        raise ValueError("no mesowriter frame-metadata annotation in this OME-XML")
    header, frames = read_annotation(text)
    return {str(header["position_key"]): frames}


def pixels_planes(px: Any) -> int:
    """Planes one OME Pixels element declares (an ElementTree element).

    SizeC counts the samples of RGB pixels, which share one plane. Raises
    ValueError for sizes that are not positive integers.
    """
    spp = 1
    channel = px.find(f"{_O}Channel")
    if channel is not None:
        spp = _positive(channel.get("SamplesPerPixel", "1"), "SamplesPerPixel")
    size_c = max(_positive(px.get("SizeC", "1"), "SizeC") // spp, 1)
    t = _positive(px.get("SizeT", "1"), "SizeT")
    z = _positive(px.get("SizeZ", "1"), "SizeZ")
    return t * z * size_c


def _positive(text: str, name: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise ValueError(f"{name}={text!r} is not an integer") from None
    if value < 1:
        raise ValueError(f"{name}={value} is not positive")
    return value


def planes_declared(xml: str) -> int:
    """Planes an OME-XML declares with data (MetadataOnly images hold none).

    Raises ValueError if the XML cannot be parsed (a TIFF's trailing NUL is
    allowed) or declares nonsense.
    """
    total = 0
    for px in parse_xml(xml, source="the OME-XML").iter(f"{_O}Pixels"):
        if px.find(f"{_O}MetadataOnly") is None:
            total += pixels_planes(px)
    return total


# -- XML pieces --------------------------------------------------------------------


def _pixels_element(
    shape: tuple[int, ...], dtype: Any, layout: Layout, pixel_size: float | None
) -> str:
    extra = ""
    if pixel_size is not None:
        extra += f' PhysicalSizeX="{pixel_size!r}" PhysicalSizeY="{pixel_size!r}"'
    if layout.z_step is not None:
        extra += f' PhysicalSizeZ="{layout.z_step!r}"'
    if layout.t_interval is not None:
        extra += f' TimeIncrement="{layout.t_interval!r}" TimeIncrementUnit="s"'
    s = layout.sizes
    return _pixels_open(shape, dtype, layout.order, s["Z"], s["C"], s["T"], extra)


def _plane_xml(planes: list[Plane], coords: list[tuple[int, int, int]]) -> list[str]:
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
    from mesowriter._layout import positive_number

    infos = summary.get("image_infos")
    if type(infos) is list and infos and type(infos[0]) is dict:
        return positive_number(infos[0].get("pixel_size_um"))
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
