"""Turn the files a dead acquisition left behind into a valid OME-TIFF.

When the acquisition process and its writer both die (power cut, SIGKILL of
the whole process group), the data file holds a BigTIFF whose IFD chain ends
at the last frame linked, a provisional OME-XML page (or none), and, when
the frame count was known, preallocated zeros after the last frame. The
journal `<path>_journal.ndjson` holds the stream's spec and one line per
frame whose write completed. `recover` joins the two:

- The IFD chain is walked from the file itself; each IFD must sit where
  mesowriter puts frame k and read exactly as mesowriter writes it, with
  its pixels inside the file. The chain stops at the first IFD that does not.
- A frame counts only when it is both linked in the chain and journalled.
  The journal line is the commit record, appended after the frame's write
  returned: a frame linked but not journalled may be torn (the last frame of
  an interrupted batch) and has no metadata, so it is dropped and the drop
  is noted. Preallocated zeros are never frames: they have no IFD.
- The final OME-XML (`build_ome_xml`, from the journal's spec and records)
  is appended after the last frame, IFD 0 is pointed at it, the chain is cut
  after the last kept frame and the file is truncated there. The sidecar is
  rebuilt from the journal, the journal removed, and a report with
  `finish_reason: "recovered"` written next to the data.

Each step leaves a file that a rerun of `recover` can finish.
"""

from __future__ import annotations

import datetime as _dt
import os
import struct
from dataclasses import dataclass, field
from pathlib import Path

import msgspec
import numpy as np

from mesowriter._journal import JournalRecord, atomic_write, scan, write_sidecar
from mesowriter._ome import build_ome_xml, planes_declared
from mesowriter._spec import StreamSpec, journal_path, report_path, sidecar_path
from mesowriter.sinks._tiff import DATA_START, IFD_PAGE, XML_OFFSET, TiffLayout

_BIGTIFF_HEADER = struct.Struct("<2sHHHQ")


class RecoverError(ValueError):
    """The file cannot be recovered (not ours, no frame on disk, no journal)."""


@dataclass(frozen=True)
class RecoverResult:
    """What `recover` found and did."""

    path: str
    recovered: bool  # False: nothing to do (already finalised)
    frames_on_disk: int  # frames linked in the file's valid IFD chain
    frames_in_journal: int  # complete journal records
    frames_declared: int  # planes the final OME-XML declares
    sidecar: str | None
    report: str | None
    notes: list[str] = field(default_factory=list)


def recover(
    path: str | os.PathLike[str], *, overwrite_sidecar: bool = True
) -> RecoverResult:
    """Finalise an OME-TIFF whose writer died; see the module docstring.

    Raises FileNotFoundError for a missing data file and RecoverError when
    the file is not a mesowriter BigTIFF, holds no frame, or has no journal
    while still provisional. A file already finalised is left untouched.
    """
    data_path = os.fspath(path)
    if not os.path.isfile(data_path):
        raise FileNotFoundError(f"{data_path}: no such data file")
    jpath = journal_path(data_path)
    if not os.path.exists(jpath):
        return _without_journal(data_path)
    header, records, _ = scan(jpath)
    spec = header.spec
    if spec.kind != "ome-tiff":
        raise RecoverError(
            f"{data_path}: recover handles OME-TIFF streams, not {spec.kind!r}"
        )
    layout = TiffLayout(spec.shape, np.dtype(spec.dtype))
    notes: list[str] = []
    with open(data_path, "r+b") as fh:
        size = os.fstat(fh.fileno()).st_size
        chain, stop_note = _walk_chain(fh.fileno(), data_path, layout, size)
        if stop_note:
            notes.append(stop_note)
        n = _frames_to_keep(chain, records, notes)
        if n == 0:
            raise RecoverError(
                f"{data_path}: no frame reached the disk (IFD chain: {chain}, "
                f"journal: {len(records)} records); nothing to recover, files "
                "left as they are"
            )
        kept = records[:n]
        xml = build_ome_xml(
            shape=spec.shape,
            dtype=spec.dtype,
            records=((r.i, bytes(r.m)) for r in kept),
            sequence=spec.sequence,
            position_key=spec.position_key,
            image_name=Path(data_path).name,
            summary=spec.summary,
        )
        _finalise(fh.fileno(), layout, n, xml.encode("utf-8") + b"\x00")
    if size > layout.ifd_offset(n):
        notes.append(f"cut the file after frame {n - 1} (was {size} bytes)")
    sidecar = sidecar_path(data_path)
    if overwrite_sidecar or not os.path.exists(sidecar):
        write_sidecar(
            sidecar,
            {spec.position_key: [bytes(r.m) for r in kept]},
            extra=spec.extra_metadata,
        )
    else:
        notes.append("kept the existing sidecar (overwrite_sidecar=False)")
    declared = planes_declared(xml)
    report = _write_report(data_path, spec, kept, chain, len(records), declared, notes)
    os.unlink(jpath)
    return RecoverResult(
        path=data_path,
        recovered=True,
        frames_on_disk=chain,
        frames_in_journal=len(records),
        frames_declared=declared,
        sidecar=sidecar,
        report=report,
        notes=notes,
    )


def _read_first_ifd(fd: int, path: str) -> int:
    raw = _pread(fd, _BIGTIFF_HEADER.size, 0)
    if len(raw) < _BIGTIFF_HEADER.size:
        raise RecoverError(f"{path}: too short to be a BigTIFF")
    order, magic, offsize, zero, first = _BIGTIFF_HEADER.unpack(raw)
    if (order, magic, offsize, zero) != (b"II", 43, 8, 0):
        raise RecoverError(f"{path}: not a little-endian BigTIFF written by mesowriter")
    return int(first)


def _walk_chain(
    fd: int, path: str, layout: TiffLayout, size: int
) -> tuple[int, str | None]:
    """Count IFDs linked from the header that read as mesowriter wrote them."""
    offset = _read_first_ifd(fd, path)
    k = 0
    while offset:
        if offset != layout.ifd_offset(k):
            return k, f"IFD {k} at offset {offset} is not where frame {k} belongs"
        if layout.pixel_offset(k) + layout.frame_nbytes > size:
            return k, f"frame {k}'s pixels run past the end of the file"
        page = _pread(fd, IFD_PAGE, offset)
        (n_tags,) = struct.unpack_from("<Q", page, 0)
        next_at = 8 + 20 * int(n_tags)
        if next_at + 8 > IFD_PAGE:
            return k, f"IFD {k} is malformed ({n_tags} tags)"
        (nxt,) = struct.unpack_from("<Q", page, next_at)
        desc = _description(page, int(n_tags)) if k == 0 else None
        if page[: next_at + 8] != layout.ifd(k, nxt, desc):
            return k, f"IFD {k} does not read as mesowriter writes frame {k}"
        offset = int(nxt)
        k += 1
    return k, None


def _description(page: bytes, n_tags: int) -> tuple[int, int] | None:
    """IFD 0's ImageDescription (count, offset): provisional or final XML."""
    for j in range(n_tags):
        tag, _, count, value = struct.unpack_from("<HHQQ", page, 8 + 20 * j)
        if tag == 270:
            return int(count), int(value)
    return None


def _frames_to_keep(chain: int, records: list[JournalRecord], notes: list[str]) -> int:
    """Frames both linked in the file and journalled, in file order."""
    n = min(chain, len(records))
    for j, rec in enumerate(records[:n]):
        if rec.k != j:  # the journal must list file positions 0, 1, 2, ...
            notes.append(f"journal record {j} names file position {rec.k}; kept {j}")
            n = j
            break
    if chain > n:
        notes.append(
            f"dropped {chain - n} frame(s) linked in the file but not journalled: "
            "their write was never confirmed and their metadata is lost"
        )
    if len(records) > n:
        notes.append(
            f"dropped {len(records) - n} journal record(s) whose frames are not "
            "in the file's IFD chain"
        )
    return n


def _finalise(fd: int, layout: TiffLayout, n: int, xml: bytes) -> None:
    """Append the final XML, point IFD 0 at it, cut the chain and the file."""
    data_end = layout.ifd_offset(n)
    _pwrite_all(fd, xml, data_end)
    os.fsync(fd)
    if n > 1:  # frame n-1 may still link to a dropped frame
        last = layout.ifd_page(n - 1, 0, None)
        _pwrite_all(fd, last, layout.ifd_offset(n - 1))
    first = layout.ifd_page(
        0, layout.ifd_offset(1) if n > 1 else 0, (len(xml), data_end)
    )
    _pwrite_all(fd, first, layout.ifd_offset(0))
    _pwrite_all(fd, _BIGTIFF_HEADER.pack(b"II", 43, 8, 0, DATA_START), 0)
    os.ftruncate(fd, data_end + len(xml))
    os.fsync(fd)


def _pwrite_all(fd: int, data: bytes, offset: int) -> None:
    view = memoryview(data)
    while view:
        if hasattr(os, "pwrite"):
            done = os.pwrite(fd, view, offset)
        else:  # pragma: no cover - Windows
            os.lseek(fd, offset, os.SEEK_SET)
            done = os.write(fd, view)
        view, offset = view[done:], offset + done


def _pread(fd: int, n: int, offset: int) -> bytes:
    if hasattr(os, "pread"):
        return os.pread(fd, n, offset)
    os.lseek(fd, offset, os.SEEK_SET)  # pragma: no cover - Windows
    return os.read(fd, n)  # pragma: no cover - Windows


def _write_report(
    data_path: str,
    spec: StreamSpec,
    kept: list[JournalRecord],
    chain: int,
    journalled: int,
    declared: int,
    notes: list[str],
) -> str:
    """The report a finished stream would have had, as far as disk tells."""
    indices = [r.i for r in kept]
    seen = set(indices)
    missing = [i for i in range(max(indices) + 1) if i not in seen] if indices else []
    report = {
        "path": data_path,
        "kind": spec.kind,
        "position_key": spec.position_key,
        "shape": list(spec.shape),
        "dtype": spec.dtype,
        "finish_reason": "recovered",
        "frames_expected": spec.frames,
        "frames_written": len(kept),
        "frames_on_disk": chain,
        "frames_in_journal": journalled,
        "frames_declared": declared,
        "written_indices": [indices[0], indices[-1]] if indices else [],
        # Stream indices below the last one written that never reached the
        # file (dropped or rejected before the crash); later ones are unknown.
        "missing_indices": missing,
        "sidecar": sidecar_path(data_path),
        "notes": notes,
        "finished_at": _dt.datetime.now(_dt.timezone.utc).isoformat(),
    }
    out = report_path(data_path)  # beside the data, wherever it was moved
    atomic_write(out, msgspec.json.format(msgspec.json.encode(report), indent=2))
    return out


def _without_journal(path: str) -> RecoverResult:
    """No journal: either finalised already (nothing to do) or unrecoverable."""
    with open(path, "rb") as fh:
        first = _read_first_ifd(fh.fileno(), path)
        if first == 0:
            raise RecoverError(f"{path}: no frame reached the disk and no journal")
        page = _pread(fh.fileno(), IFD_PAGE, first)
        (n_tags,) = struct.unpack_from("<Q", page, 0)
        desc = _description(page, int(n_tags)) if 8 + 20 * n_tags < IFD_PAGE else None
        if desc is None or desc[1] == XML_OFFSET:
            raise RecoverError(
                f"{path}: still provisional but its journal "
                f"{journal_path(path)} is gone; the metadata cannot be recovered"
            )
        xml = _pread(fh.fileno(), desc[0], desc[1]).decode("utf-8", "replace")
        chain = _count_ifds(fh.fileno(), first)
    return RecoverResult(
        path=path,
        recovered=False,
        frames_on_disk=chain,
        frames_in_journal=0,
        frames_declared=planes_declared(xml),
        sidecar=sidecar_path(path) if os.path.exists(sidecar_path(path)) else None,
        report=report_path(path) if os.path.exists(report_path(path)) else None,
        notes=["already finalised (no journal, final OME-XML in place): nothing to do"],
    )


def _count_ifds(fd: int, first: int) -> int:
    size = os.fstat(fd).st_size
    offset, k = first, 0
    while offset and offset + 8 <= size and k <= size // IFD_PAGE:
        (n_tags,) = struct.unpack("<Q", _pread(fd, 8, offset))
        (offset,) = struct.unpack("<Q", _pread(fd, 8, offset + 8 + 20 * n_tags))
        k += 1
    return k
