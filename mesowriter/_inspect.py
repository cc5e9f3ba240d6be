"""`mesowriter inspect`: what a data file holds, read back from the file itself.

The summary comes from what a reader sees (tifffile's OME series, OpenCV's
capture), not from what the writer meant to write; the report beside the file
adds what only the writer knows (frames received and dropped, finish reason).
`export_sidecar` rebuilds the legacy sidecar from the OME-XML alone, which is
what makes the sidecar a convenience rather than the only record.

The file is not trusted: its TIFF structure and OME-XML are checked against
its real size (`mesowriter._untrusted`) before tifffile sees it; tifffile then
builds only the OME series (checked) or one series of all pages, never
follows an OME-XML to other files, and what it logs is kept in
`reader_warnings` instead of reaching stderr. Anything malformed raises
`BadFileError` (a ValueError): one line naming the file and the problem.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from typing import Any
from xml.etree import ElementTree

import msgspec

from mesowriter._platform import atomic_write
from mesowriter._spec import report_path, sidecar_path
from mesowriter._untrusted import (
    BadFileError,
    TiffFacts,
    check_imagej,
    check_input_file,
    check_ome,
    parse_xml,
    read_tiff,
)
from mesowriter.sinks import sink_for_path
from mesowriter.sinks._omexml import FRAME_METADATA_NS, sidecar_from_ome_xml

__all__ = [
    "BadFileError",
    "export_sidecar",
    "inspect_file",
    "inspect_tiff",
    "inspect_video",
]

_OME = "{http://www.openmicroscopy.org/Schemas/OME/2016-06}"
_TO_SECONDS = {
    "s": 1.0,
    "ms": 1e-3,
    "\u00b5s": 1e-6,
    "ns": 1e-9,
    "min": 60.0,
    "h": 3600.0,
}
# Companion JSON files (report, sidecar) larger than this are not read.
MAX_COMPANION_BYTES = 512 << 20
# tifffile series kinds that take layout claims from descriptions or private
# tags: inspect lets tifffile build only the OME or ImageJ series whose
# description it has checked first, or else one series of all pages.
_CLAIMED_SERIES = (
    "shaped", "lsm", "mmstack", "ome", "imagej", "ndtiff", "fluoview", "stk",
    "sis", "svs", "scn", "qpi", "ndpi", "bif", "avs", "eer", "philips",
    "scanimage", "nih", "mdgel", "indica",
)  # fmt: skip


def inspect_file(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Summarise an OME-TIFF or video file written by mesowriter.

    Keys common to both: `path`, `kind`, `shape`, `frames_in_file`,
    `time_span_s`, `effective_fps`, `time_source`, and from the report beside
    the file (None without one) `frames_received`, `frames_written`,
    `frames_dropped`, `dropped_indices`, `finish_reason`. OME-TIFF adds
    `axes`, `dtype`, `frames_declared`, `provisional`, `frame_metadata`,
    `channels`, `physical_size_x_um`, `acquisition_date`, `ome_xml_bytes`,
    `reader_warnings`; video adds `width`, `height`, `fps`, `fourcc` and the
    report's `codec`. Raises FileNotFoundError for a missing file and
    BadFileError (a ValueError) for anything else that is not a readable
    file of ours.
    """
    p = os.fspath(path)
    if not os.path.lexists(p):
        raise FileNotFoundError(f"{p}: no such file")
    check_input_file(p)
    try:
        sink = sink_for_path(p)
    except ValueError as exc:
        raise BadFileError(str(exc)) from None
    report = _load_report(p)
    # the format's sink knows how to read it: `inspect_tiff`, `inspect_video`
    info = sink.inspect(p)
    if info["kind"] == "video":
        info.update(_video_report(report))
    if info["time_span_s"] is None:
        span, source = _sidecar_time_span(p)
        info["time_span_s"], info["time_source"] = span, source
    span = info["time_span_s"]
    n = info["frames_in_file"]
    info["effective_fps"] = (n - 1) / span if span and n > 1 else None
    for key in ("frames_received", "frames_written", "frames_dropped"):
        info[key] = report.get(key)
    info["dropped_indices"] = report.get("dropped_indices")
    info["finish_reason"] = report.get("finish_reason")
    info["report"] = report_path(p) if report else None
    if "report_problem" in report:
        info["report_problem"] = report["report_problem"]
    return info


def export_sidecar(
    path: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    overwrite: bool = False,
) -> dict[str, list[Any]]:
    """Write the legacy sidecar rebuilt from the file's OME-XML alone.

    Returns it as well. The JSON is compact and keeps key order, as the
    writer's own sidecar, so for metadata that was JSON to begin with the
    two files are byte for byte equal. Raises BadFileError (a ValueError)
    for a file whose XML carries no frame metadata (not finalised, or not
    from mesowriter) and for a malformed file or annotation.
    """
    p = os.fspath(path)
    target = os.fspath(out)
    if not overwrite and os.path.exists(target):
        raise FileExistsError(f"{target} exists; pass overwrite=True to replace it")
    facts = read_tiff(p)
    xml = _ome_xml(facts)
    if not xml:
        raise BadFileError(f"{p}: no OME-XML in the file")
    root = parse_xml(xml, source=p)
    _check_annotation_size(root, p, facts.file_size)
    try:
        data = sidecar_from_ome_xml(xml)
    except ValueError as exc:
        if "provisional" in xml:
            raise BadFileError(
                f"{p} was never finalised (provisional OME-XML); "
                f"`mesowriter recover` rebuilds it from its journal"
            ) from exc
        raise BadFileError(f"{p}: {exc}") from exc
    except (LookupError, TypeError, AttributeError, RecursionError) as exc:
        raise BadFileError(
            f"{p}: its frame-metadata annotation is malformed "
            f"({type(exc).__name__}: {exc})"
        ) from exc
    try:
        body = msgspec.json.encode(data)
    except (msgspec.EncodeError, UnicodeEncodeError, OverflowError):
        body = json.dumps(data, separators=(",", ":")).encode("ascii")
    atomic_write(target, body)
    return data


# -- OME-TIFF ---------------------------------------------------------------------


def inspect_tiff(path: str) -> dict[str, Any]:
    """What a reader sees in an OME-TIFF or ImageJ TIFF, once it checks out."""
    facts = read_tiff(path)
    xml = _ome_xml(facts)
    root = None
    trusted: set[str] = set()
    imagej_planes = None
    if xml:
        root = parse_xml(xml, source=path)
        check_ome(root, source=path, file_size=facts.file_size, ifds=facts.ifds)
        trusted.add("ome")
    elif (facts.description or b"").startswith(b"ImageJ="):
        imagej_planes = check_imagej(facts.description or b"", facts, source=path)
        trusted.add("imagej")
    with _reader_log() as reader_warnings:
        try:
            shape, axes, dtype = _tifffile_series(path, trusted)
        except Exception as exc:
            raise BadFileError(
                f"{path}: tifffile cannot read it ({type(exc).__name__}: {exc})"
            ) from exc
    info: dict[str, Any] = {
        "path": path,
        "kind": "ome-tiff" if root is not None else "tiff",
        "shape": shape,
        "axes": axes,
        "dtype": dtype,
        "frames_in_file": facts.ifds,
        "ome_xml_bytes": len(xml),
    }
    info.update(_ome_summary(root, path))
    if imagej_planes is not None:
        info["frames_declared"] = imagej_planes
    info["reader_warnings"] = reader_warnings
    return info


def _ome_xml(facts: TiffFacts) -> str:
    """IFD 0's description if it is OME-XML, else ""."""
    raw = facts.description or b""
    if not raw.rstrip().endswith(b"OME>") and b"<OME" not in raw[:4096]:
        return ""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise BadFileError(
            f"{facts.path}: its OME-XML is not UTF-8 (byte {exc.start})"
        ) from None


def _tifffile_series(
    path: str, trusted: set[str]
) -> tuple[list[int] | None, str | None, str | None]:
    """What a reader sees: the first series' shape, axes and dtype.

    tifffile builds only the series kinds in `trusted` (checked), never
    follows an OME-XML to other files.
    """
    import tifffile

    known = getattr(tifffile.TIFF, "FILE_FLAGS", ())
    options: dict[str, Any] = {"_multifile": False}
    options.update(
        (f"is_{k}", False) for k in _CLAIMED_SERIES if k in known and k not in trusted
    )
    try:
        tf = tifffile.TiffFile(path, **options)
    except TypeError:  # a tifffile without these options
        tf = tifffile.TiffFile(path)
    with tf:
        series = tf.series[0] if tf.series else None
        if series is None:
            return None, None, None
        return [int(n) for n in series.shape], str(series.axes), str(series.dtype)


@contextmanager
def _reader_log() -> Iterator[list[str]]:
    """tifffile's log messages and warnings, collected instead of printed."""
    messages: list[str] = []

    class _Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if len(messages) < 20:
                messages.append(record.getMessage()[:300])

    log = logging.getLogger("tifffile")
    handler, propagate = _Keep(), log.propagate
    log.addHandler(handler)
    log.propagate = False
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            yield messages
        messages.extend(str(w.message)[:300] for w in caught[:20])
    finally:
        log.removeHandler(handler)
        log.propagate = propagate


def _ome_summary(root: ElementTree.Element | None, path: str) -> dict[str, Any]:
    """Declared planes, channels, sizes and DeltaT span from the OME-XML.

    `root` has passed `check_ome`; the numbers read here are checked too.
    """
    out: dict[str, Any] = {
        "frames_declared": None,
        "provisional": None,
        "frame_metadata": False,
        "channels": [],
        "physical_size_x_um": None,
        "acquisition_date": None,
        "time_span_s": None,
        "time_source": None,
    }
    if root is None:
        return out
    declared = 0
    times: list[float] = []
    for image in root.iter(f"{_OME}Image"):
        desc = image.findtext(f"{_OME}Description") or ""
        out["provisional"] = "provisional" in desc
        date = image.findtext(f"{_OME}AcquisitionDate")
        if date and out["acquisition_date"] is None:
            out["acquisition_date"] = date[:64]
        px = image.find(f"{_OME}Pixels")
        if px is None:
            continue
        if px.find(f"{_OME}MetadataOnly") is None:
            declared += _planes(px)
        for ch in px.iter(f"{_OME}Channel"):
            name = ch.get("Name")
            out["channels"].append(name[:256] if name is not None else None)
        size = px.get("PhysicalSizeX")
        if size is not None and out["physical_size_x_um"] is None:
            out["physical_size_x_um"] = _number(size, "PhysicalSizeX", path)
        for plane in px.iter(f"{_OME}Plane"):
            dt = plane.get("DeltaT")
            if dt is not None:
                unit = plane.get("DeltaTUnit", "s")
                seconds = _number(dt, "DeltaT", path) * _TO_SECONDS.get(unit, 1.0)
                times.append(seconds)
    out["frames_declared"] = declared
    for el in root.iter(f"{_OME}CommentAnnotation"):
        if el.get("Namespace", "").startswith("mesowriter/frame-metadata"):
            out["frame_metadata"] = True
    if len(times) > 1:
        out["time_span_s"] = max(times) - min(times)
        out["time_source"] = "ome:DeltaT"
    return out


def _planes(px: ElementTree.Element) -> int:
    """Planes of a Pixels element (checked by `check_ome`): RGB counts once."""
    channel = px.find(f"{_OME}Channel")
    spp = int(channel.get("SamplesPerPixel", "1")) if channel is not None else 1
    size_c = max(int(px.get("SizeC", "1")) // max(spp, 1), 1)
    return int(px.get("SizeT", "1")) * int(px.get("SizeZ", "1")) * size_c


def _number(text: str, name: str, path: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise BadFileError(
            f"{path}: OME {name}={text[:40]!r} is not a number"
        ) from None
    if not math.isfinite(value):
        raise BadFileError(f"{path}: OME {name}={text[:40]!r} is not finite")
    return value


_FRAME_LINE = re.compile(r"\[\s*-?\d+\s*,\s*(-?\d+)")


def _check_annotation_size(root: ElementTree.Element, path: str, size: int) -> None:
    """Refuse a frame-metadata annotation that would expand beyond reason.

    Each frame line is rebuilt from its template: a forged annotation of a
    few MB (one huge template, a million short lines) would become
    terabytes. A mesowriter file spends at least 8 KiB per frame on disk and
    at most 32 KiB of metadata per frame, so a real sidecar stays below 4x
    the file; more than 8x (plus 64 MiB) is refused.
    """
    text = None
    for el in root.iter(f"{_OME}CommentAnnotation"):
        if el.get("Namespace") == FRAME_METADATA_NS:
            text = el.findtext(f"{_OME}Value") or ""
            break
    if text is None:
        return
    limit = 8 * size + (64 << 20)
    templates: list[int] = []
    total = 0
    for line in text.split("\n")[1:]:
        if line.startswith("{"):
            templates.append(len(line))
            continue
        match = _FRAME_LINE.match(line)
        if match is None:
            raise BadFileError(f"{path}: its frame-metadata annotation is malformed")
        kind = int(match.group(1))
        if kind >= len(templates) or kind < -2:
            raise BadFileError(
                f"{path}: its frame-metadata annotation uses template {kind}, "
                "which it does not define"
            )
        total += len(line) + (templates[kind] if kind >= 0 else 0)
        if total > limit:
            raise BadFileError(
                f"{path}: its frame-metadata annotation would expand to more "
                f"than {limit} bytes"
            )


# -- video --------------------------------------------------------------------------


def inspect_video(path: str) -> dict[str, Any]:
    """What OpenCV sees in a video file; BadFileError if it cannot open it."""
    import cv2

    cap = cv2.VideoCapture(path)
    try:
        if not cap.isOpened():
            raise BadFileError(f"{path}: OpenCV cannot open this video")
        frames = max(int(cap.get(cv2.CAP_PROP_FRAME_COUNT)), 0)
        width = int(cap.get(cv2.CAP_PROP_FRAME_WIDTH))
        height = int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT))
        fps = float(cap.get(cv2.CAP_PROP_FPS))
        code = int(cap.get(cv2.CAP_PROP_FOURCC))
    finally:
        cap.release()
    fourcc = "".join(chr((code >> (8 * i)) & 0xFF) for i in range(4)).strip("\x00")
    return {
        "path": path,
        "kind": "video",
        "shape": [frames, height, width],
        "frames_in_file": frames,
        "width": width,
        "height": height,
        "fps": fps if math.isfinite(fps) else None,
        "fourcc": fourcc,
        "time_span_s": None,
        "time_source": None,
    }


def _video_report(report: dict[str, Any]) -> dict[str, Any]:
    """What only the writer knows of a video: the codec it used."""
    sink = report.get("sink")
    codec = sink.get("codec") if isinstance(sink, dict) else None
    return {"codec": codec if isinstance(codec, str) else None}


# -- files beside the data -------------------------------------------------------------


def _load_report(path: str) -> dict[str, Any]:
    """The report beside the data, its fields checked; {} if there is none.

    A report is a convenience: one that is too big or malformed leaves the
    writer-only fields None (`report_problem` says why) rather than failing
    the inspection of a good data file.
    """
    where = report_path(path)
    if not os.path.exists(where):
        return {}
    data = _read_companion(where)
    if not isinstance(data, dict):
        return {"report_problem": f"{where} is not a readable JSON object"}
    report: dict[str, Any] = {}
    for key in ("frames_received", "frames_written", "frames_dropped"):
        value = data.get(key)
        report[key] = value if type(value) is int else None
    indices = data.get("dropped_indices")
    if isinstance(indices, list) and all(type(i) is int for i in indices):
        report["dropped_indices"] = indices
    reason = data.get("finish_reason")
    report["finish_reason"] = reason[:64] if isinstance(reason, str) else None
    if isinstance(data.get("sink"), dict):
        report["sink"] = data["sink"]
    return report


def _read_companion(path: str) -> Any:
    """A JSON file beside the data; None if absent, too big or malformed."""
    try:
        if os.path.getsize(path) > MAX_COMPANION_BYTES:
            return None
        with open(path, "rb") as fh:
            return json.loads(fh.read())
    except (OSError, ValueError, RecursionError):
        return None


def _sidecar_time_span(path: str) -> tuple[float | None, str | None]:
    """Span of the sidecar's clock, chosen as downstream readers choose it."""
    data = _read_companion(sidecar_path(path))
    if not isinstance(data, dict):
        return None, None
    metas = [m for v in data.values() if isinstance(v, list) for m in v]
    metas = [m for m in metas if isinstance(m, dict)]
    for name in ("TimeReceivedByCore", "ElapsedTime-ms", "runner_time_ms"):
        found = (_frame_time(m, name) for m in metas)
        times = [t for t in found if t is not None and math.isfinite(t)]
        if len(times) > 1:
            return max(times) - min(times), f"sidecar:{name}"
    return None, None


def _frame_time(meta: dict[str, Any], name: str) -> float | None:
    if name == "runner_time_ms":
        ms = meta.get(name)
        if isinstance(ms, (int, float)) and not isinstance(ms, bool):
            return float(ms) / 1e3
        return None
    cam = meta.get("camera_metadata")
    v = cam.get(name) if isinstance(cam, dict) else None
    if not isinstance(v, str) or len(v) > 64:
        return None
    try:
        if name == "TimeReceivedByCore":
            return datetime.fromisoformat(v.replace(" ", "T", 1)).timestamp()
        return float(v) / 1e3
    except (ValueError, OverflowError):
        return None
