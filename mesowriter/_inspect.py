"""`mesowriter inspect`: what a data file holds, read back from the file itself.

The summary comes from what a reader sees (tifffile's OME series, OpenCV's
capture), not from what the writer meant to write; the report beside the file
adds what only the writer knows (frames received and dropped, finish reason).
`export_sidecar` rebuilds the legacy sidecar from the OME-XML alone, which is
what makes the sidecar a convenience rather than the only record.
"""

from __future__ import annotations

import json
import os
from datetime import datetime
from pathlib import Path
from typing import Any
from xml.etree import ElementTree

import msgspec

from mesowriter._platform import atomic_write
from mesowriter.sinks._omexml import pixels_planes, sidecar_from_ome_xml
from mesowriter._spec import report_path, sidecar_path
from mesowriter.sinks import sink_for_path

__all__ = ["export_sidecar", "inspect_file"]

_OME = "{http://www.openmicroscopy.org/Schemas/OME/2016-06}"
_TO_SECONDS = {
    "s": 1.0,
    "ms": 1e-3,
    "\u00b5s": 1e-6,
    "ns": 1e-9,
    "min": 60.0,
    "h": 3600.0,
}


def inspect_file(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Summarise an OME-TIFF or video file written by mesowriter.

    Keys common to both: `path`, `kind`, `shape`, `frames_in_file`,
    `time_span_s`, `effective_fps`, `time_source`, and from the report beside
    the file (None without one) `frames_received`, `frames_written`,
    `frames_dropped`, `dropped_indices`, `finish_reason`. OME-TIFF adds
    `axes`, `dtype`, `frames_declared`, `provisional`, `frame_metadata`,
    `channels`, `physical_size_x_um`, `acquisition_date`, `ome_xml_bytes`;
    video adds `width`, `height`, `fps`, `fourcc` and the report's `codec`.
    """
    p = os.fspath(path)
    if not os.path.isfile(p):
        raise FileNotFoundError(f"{p}: no such file")
    report = _load_report(p)
    info = sink_for_path(p).inspect(p)
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
    two files are byte for byte equal. Raises ValueError for a file whose
    XML carries no frame metadata (not finalised, or not from mesowriter).
    """
    import tifffile

    target = os.fspath(out)
    if not overwrite and os.path.exists(target):
        raise FileExistsError(f"{target} exists; pass overwrite=True to replace it")
    with tifffile.TiffFile(os.fspath(path)) as tf:
        xml = tf.ome_metadata or tf.pages.first.description
    if not xml:
        raise ValueError(f"{os.fspath(path)}: no OME-XML in the file")
    try:
        data = sidecar_from_ome_xml(xml)
    except ValueError as exc:
        if "provisional" in xml:
            raise ValueError(
                f"{os.fspath(path)} was never finalised (provisional OME-XML); "
                f"`mesowriter recover` rebuilds it from its journal"
            ) from exc
        raise
    try:
        body = msgspec.json.encode(data)
    except (msgspec.EncodeError, UnicodeEncodeError, OverflowError):
        body = json.dumps(data, separators=(",", ":")).encode("ascii")
    atomic_write(target, body)
    return data


# -- OME-TIFF ---------------------------------------------------------------------


def inspect_tiff(path: str) -> dict[str, Any]:
    import tifffile

    with tifffile.TiffFile(path) as tf:
        xml = tf.ome_metadata or ""
        series = tf.series[0] if tf.series else None
        frames_in_file = len(tf.pages)
        info: dict[str, Any] = {
            "path": path,
            "kind": "ome-tiff",
            "shape": list(series.shape) if series is not None else None,
            "axes": series.axes if series is not None else None,
            "dtype": str(series.dtype) if series is not None else None,
            "frames_in_file": frames_in_file,
            "ome_xml_bytes": len(xml),
        }
    info.update(_ome_summary(xml))
    return info


def _ome_summary(xml: str) -> dict[str, Any]:
    """Declared planes, channels, sizes and DeltaT span from the OME-XML."""
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
    if not xml:
        return out
    root = ElementTree.fromstring(xml)
    declared = 0
    times: list[float] = []
    for image in root.iter(f"{_OME}Image"):
        desc = image.findtext(f"{_OME}Description") or ""
        out["provisional"] = "provisional" in desc
        date = image.findtext(f"{_OME}AcquisitionDate")
        if date and out["acquisition_date"] is None:
            out["acquisition_date"] = date
        px = image.find(f"{_OME}Pixels")
        if px is None:
            continue
        if px.find(f"{_OME}MetadataOnly") is None:
            declared += pixels_planes(px)
        for ch in px.iter(f"{_OME}Channel"):
            out["channels"].append(ch.get("Name"))
        size = px.get("PhysicalSizeX")
        if size is not None and out["physical_size_x_um"] is None:
            out["physical_size_x_um"] = float(size)
        for plane in px.iter(f"{_OME}Plane"):
            dt = plane.get("DeltaT")
            if dt is not None:
                unit = plane.get("DeltaTUnit", "s")
                times.append(float(dt) * _TO_SECONDS.get(unit, 1.0))
    out["frames_declared"] = declared
    for el in root.iter(f"{_OME}CommentAnnotation"):
        if el.get("Namespace", "").startswith("mesowriter/frame-metadata"):
            out["frame_metadata"] = True
    if len(times) > 1:
        out["time_span_s"] = max(times) - min(times)
        out["time_source"] = "ome:DeltaT"
    return out


# -- video --------------------------------------------------------------------------


def inspect_video(path: str) -> dict[str, Any]:
    import cv2

    cap = cv2.VideoCapture(path)
    try:
        if not cap.isOpened():
            raise ValueError(f"{path}: OpenCV cannot open this video")
        frames = int(cap.get(cv2.CAP_PROP_FRAME_COUNT))
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
        "fps": fps,
        "fourcc": fourcc,
        "time_span_s": None,
        "time_source": None,
    }


def _video_report(report: dict[str, Any]) -> dict[str, Any]:
    sink = report.get("sink") or {}
    return {"codec": sink.get("codec") if isinstance(sink, dict) else None}


# -- files beside the data -------------------------------------------------------------


def _load_report(path: str) -> dict[str, Any]:
    try:
        data = Path(report_path(path)).read_bytes()
    except FileNotFoundError:
        return {}
    report = json.loads(data)
    return report if isinstance(report, dict) else {}


def _sidecar_time_span(path: str) -> tuple[float | None, str | None]:
    """Span of the sidecar's clock, chosen as downstream readers choose it."""
    try:
        with open(sidecar_path(path), "rb") as fh:
            data = json.load(fh)
    except (FileNotFoundError, ValueError):
        return None, None
    metas = [m for v in data.values() if isinstance(v, list) for m in v]
    metas = [m for m in metas if isinstance(m, dict)]
    for name in ("TimeReceivedByCore", "ElapsedTime-ms", "runner_time_ms"):
        times = [t for t in (_frame_time(m, name) for m in metas) if t is not None]
        if len(times) > 1:
            return max(times) - min(times), f"sidecar:{name}"
    return None, None


def _frame_time(meta: dict[str, Any], name: str) -> float | None:
    if name == "runner_time_ms":
        v = meta.get(name)
        return float(v) / 1e3 if isinstance(v, (int, float)) else None
    cam = meta.get("camera_metadata")
    v = cam.get(name) if isinstance(cam, dict) else None
    if not isinstance(v, str):
        return None
    try:
        if name == "TimeReceivedByCore":
            return datetime.fromisoformat(v.replace(" ", "T", 1)).timestamp()
        return float(v) / 1e3
    except ValueError:
        return None
