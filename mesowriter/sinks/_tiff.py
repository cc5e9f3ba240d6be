"""BigTIFF OME-TIFF written with direct I/O straight from the ring.

File layout (every region starts on a 4096-byte boundary)::

    0      BigTIFF header -> first IFD (0 until frame 0 is on disk)
    4096   provisional OME-XML, fixed 4096 bytes, rewritten on flush
    8192   frame 0: [IFD page 4096 B][pixels, padded to 4096]
    ...    frame k at 8192 + k * stride
    end    final OME-XML (written at close; IFD 0 then points to it)

Each frame's IFD is built in its ring slot's prefix page, right in front of
its pixels, so one direct write puts IFD and pixels on disk together with no
copy. Only then is the previous IFD linked to it: a reader (or a crash) sees
a chain that ends at the last complete frame, never a dangling one. The
provisional OME-XML declares only frames already linked, and the final
OME-XML declares exactly the frames written.
"""

from __future__ import annotations

import errno
import os
import struct
import time
from collections.abc import Iterator
from contextlib import suppress
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from mesowriter._ring import PAGE, page_aligned_buffer, round_up
from mesowriter._spec import StreamSpec
from mesowriter.sinks._base import FrameBatch, Sink
from mesowriter.sinks._directio import AlignedFile, Mode

TIFF_SUFFIXES = (".ome.tiff", ".ome.tif", ".tiff", ".tif", ".ome.btf", ".btf")
XML_OFFSET = PAGE
XML_CAPACITY = PAGE
DATA_START = 2 * PAGE
IFD_PAGE = PAGE
SOFTWARE = b"mesowriter\x00"
_SOFTWARE_AT = 2048  # inside each IFD page
GROW_BYTES = 256 * 1024 * 1024
FLUSH_INTERVAL = 1.0  # seconds between provisional OME-XML updates

_SHORT, _LONG, _ASCII, _LONG8 = 3, 4, 2, 16
_SAMPLE_FORMAT = {"u": 1, "i": 2, "f": 3}
WRITABLE_DTYPES = ("u1", "u2", "u4", "u8", "i1", "i2", "i4", "i8", "f4", "f8")


def tiff_suffix(path: str) -> str | None:
    lower = path.lower()
    return next((s for s in TIFF_SUFFIXES if lower.endswith(s)), None)


class TiffLayout:
    """Where frame k's IFD and pixels live, and how its IFD reads."""

    def __init__(self, shape: tuple[int, ...], dtype: np.dtype) -> None:
        self.height, self.width = int(shape[0]), int(shape[1])
        self.samples = int(shape[2]) if len(shape) == 3 else 1
        self.dtype = dtype
        self.frame_nbytes = int(np.prod(shape)) * dtype.itemsize
        self.stride = IFD_PAGE + round_up(self.frame_nbytes)

    def ifd_offset(self, k: int) -> int:
        return DATA_START + k * self.stride

    def pixel_offset(self, k: int) -> int:
        return self.ifd_offset(k) + IFD_PAGE

    def ifd(self, k: int, next_ifd: int, description: tuple[int, int] | None) -> bytes:
        """The IFD of frame k (BigTIFF, tags ascending), starting its page."""
        base = self.ifd_offset(k)
        spp = self.samples
        bits = self.dtype.itemsize * 8
        entries: list[tuple[int, int, int, bytes]] = [
            (254, _LONG, 1, struct.pack("<I", 0)),
            (256, _LONG, 1, struct.pack("<I", self.width)),
            (257, _LONG, 1, struct.pack("<I", self.height)),
            (258, _SHORT, spp, struct.pack(f"<{spp}H", *([bits] * spp))),
            (259, _SHORT, 1, struct.pack("<H", 1)),
            (262, _SHORT, 1, struct.pack("<H", 2 if spp == 3 else 1)),
        ]
        if description is not None:
            count, offset = description
            entries.append((270, _ASCII, count, struct.pack("<Q", offset)))
        fmt = _SAMPLE_FORMAT[self.dtype.kind]
        entries += [
            (273, _LONG8, 1, struct.pack("<Q", self.pixel_offset(k))),
            (277, _SHORT, 1, struct.pack("<H", spp)),
            (278, _LONG, 1, struct.pack("<I", self.height)),
            (279, _LONG8, 1, struct.pack("<Q", self.frame_nbytes)),
            (284, _SHORT, 1, struct.pack("<H", 1)),
            (305, _ASCII, len(SOFTWARE), struct.pack("<Q", base + _SOFTWARE_AT)),
            (339, _SHORT, spp, struct.pack(f"<{spp}H", *([fmt] * spp))),
        ]
        out = bytearray(struct.pack("<Q", len(entries)))
        for tag, typ, count, value in entries:
            out += struct.pack("<HHQ", tag, typ, count) + value.ljust(8, b"\x00")
        out += struct.pack("<Q", next_ifd)
        return bytes(out)

    def ifd_page(
        self, k: int, next_ifd: int, description: tuple[int, int] | None
    ) -> bytes:
        page = bytearray(IFD_PAGE)
        ifd = self.ifd(k, next_ifd, description)
        page[: len(ifd)] = ifd
        page[_SOFTWARE_AT : _SOFTWARE_AT + len(SOFTWARE)] = SOFTWARE
        return bytes(page)


PROVISIONAL_DESCRIPTION = (XML_CAPACITY, XML_OFFSET)


def header_pages(first_ifd: int, provisional_xml: str) -> bytes:
    """BigTIFF header page + the fixed-size provisional OME-XML page."""
    head = bytearray(2 * PAGE)
    head[:16] = b"II" + struct.pack("<HHHQ", 43, 8, 0, first_ifd)
    xml = provisional_xml.encode("utf-8")
    if len(xml) >= XML_CAPACITY:
        raise ValueError("provisional OME-XML does not fit its page")
    # Spaces after the root element are still well-formed XML; the count in
    # IFD 0 stays fixed, so updating the XML is one aligned page write.
    head[XML_OFFSET : XML_OFFSET + XML_CAPACITY - 1] = xml.ljust(XML_CAPACITY - 1)
    return bytes(head)


class OmeTiffSink(Sink):
    """Writes one position's frames to a BigTIFF OME-TIFF."""

    kind: ClassVar[str] = "ome-tiff"
    slot_prefix: ClassVar[int] = IFD_PAGE
    retry_by_frame = True  # a frame counts once its IFD is linked

    def __init__(self, spec: StreamSpec) -> None:
        super().__init__(spec)
        self.layout = TiffLayout(spec.shape, np.dtype(spec.dtype))
        self._file: AlignedFile | None = None
        self._frames = 0
        self._declared = -1
        self._allocated = 0
        self._last_flush = 0.0
        self._head = page_aligned_buffer(2 * PAGE)
        self._last_ifd = page_aligned_buffer(IFD_PAGE)
        self._image_name = Path(spec.path).name

    @classmethod
    def check(cls, spec: StreamSpec) -> None:
        if tiff_suffix(spec.path) is None:
            raise ValueError(
                f"{spec.path!r}: an OME-TIFF path must end in one of {TIFF_SUFFIXES}"
            )
        dtype = np.dtype(spec.dtype)
        if dtype.str[1:] not in WRITABLE_DTYPES:
            raise ValueError(f"OME-TIFF cannot hold pixels of dtype {dtype}")
        shape = spec.shape
        if len(shape) not in (2, 3) or (len(shape) == 3 and shape[2] != 3):
            raise ValueError(
                f"OME-TIFF frames must be (height, width) or (height, width, 3); "
                f"got {shape}"
            )
        if len(shape) == 3 and dtype.str[1:] not in ("u1", "u2"):
            raise ValueError("RGB frames must be uint8 or uint16")

    # -- lifecycle ----------------------------------------------------------
    def open(self, resume_from: int = 0) -> None:
        spec = self.spec
        if resume_from:
            self._file = AlignedFile(spec.path, mode="resume", direct=spec.direct_io)
            self._frames = resume_from
            self._allocated = self._file.size()
            # Cut the chain after the last frame the journal vouches for; a
            # frame written but not journalled is written again, in place.
            k = resume_from - 1
            desc = PROVISIONAL_DESCRIPTION if k == 0 else None
            self._last_ifd[:] = self.layout.ifd_page(k, 0, desc)
            self._file.pwrite(self._last_ifd, self.layout.ifd_offset(k))
            self.flush(force=True)
            return
        mode: Mode = "overwrite" if spec.overwrite else "create"
        self._file = AlignedFile(spec.path, mode=mode, direct=spec.direct_io)
        if spec.frames:
            self._reserve(self.layout.ifd_offset(spec.frames))
        else:
            self._reserve(DATA_START + GROW_BYTES)
        self._head[:] = header_pages(0, "")
        self._file.pwrite(self._head, 0)

    def _reserve(self, end: int) -> None:
        assert self._file is not None
        if end > self._allocated:
            self._file.allocate(end)
            self._allocated = end

    # -- frames ---------------------------------------------------------------
    def write(self, batch: FrameBatch) -> int:
        f = self._file
        assert f is not None
        lay = self.layout
        first = self._frames
        count = len(batch.frames)
        if batch.slot_stride != lay.stride:
            raise RuntimeError("ring slot stride does not match the TIFF layout")
        for j, prefix in enumerate(batch.prefixes):
            k = first + j
            nxt = lay.ifd_offset(k + 1) if j < count - 1 else 0
            desc = PROVISIONAL_DESCRIPTION if k == 0 else None
            ifd = lay.ifd(k, nxt, desc)
            prefix[: len(ifd)] = ifd
            prefix[_SOFTWARE_AT : _SOFTWARE_AT + len(SOFTWARE)] = SOFTWARE
        end = lay.ifd_offset(first + count)
        if end > self._allocated:
            try:
                self._reserve(max(end, self._allocated + GROW_BYTES))
            except OSError as exc:
                if exc.errno != errno.ENOSPC:
                    raise
                self._reserve(end)  # a nearly full disk: room for this batch only
        f.pwrite(batch.span, lay.ifd_offset(first))
        if first > 0:  # link the previous frame to this batch
            struct.pack_into(
                "<Q", self._last_ifd, self._next_field_at(), lay.ifd_offset(first)
            )
            f.pwrite(self._last_ifd, lay.ifd_offset(first - 1))
        self._last_ifd[:] = batch.prefixes[-1]
        self._frames += count
        if first == 0:
            self.flush(force=True)
        else:
            self.flush()
        return len(batch.span)

    def _next_field_at(self) -> int:
        (n_tags,) = struct.unpack_from("<Q", self._last_ifd, 0)
        return 8 + 20 * int(n_tags)

    def flush(self, force: bool = False) -> None:
        """Point readers at the frames written so far (provisional OME-XML)."""
        if self._file is None or self._frames == self._declared:
            return
        now = time.monotonic()
        if not force and now - self._last_flush < FLUSH_INTERVAL:
            return
        from mesowriter._ome import provisional_ome_xml

        xml = provisional_ome_xml(
            shape=self.spec.shape,
            dtype=self.spec.dtype,
            frames=self._frames,
            image_name=self._image_name,
        )
        self._head[:] = header_pages(DATA_START, xml)
        self._file.pwrite(self._head, 0)
        self._declared = self._frames
        self._last_flush = now

    def close(
        self, reason: str, records: Iterator[tuple[int, bytes]] | None = None
    ) -> dict[str, Any]:
        f = self._file
        assert f is not None
        n = self._frames
        summary: dict[str, Any] = {
            "format": "ome-tiff",
            "bigtiff": True,
            "direct_io": f.direct,
            "frames_in_file": n,
        }
        if n == 0:
            # A TIFF needs at least one image; no file beats a corrupt one.
            f.close()
            self._file = None
            with suppress(FileNotFoundError):
                os.unlink(self.spec.path)
            summary["file_bytes"] = 0
            summary["note"] = "no frames were written; no data file was kept"
            return summary
        from mesowriter._ome import build_ome_xml

        xml = (
            build_ome_xml(
                shape=self.spec.shape,
                dtype=self.spec.dtype,
                records=records if records is not None else iter(()),
                sequence=self.spec.sequence,
                position_key=self.spec.position_key,
                image_name=self._image_name,
                summary=self.spec.summary,
            ).encode("utf-8")
            + b"\x00"
        )
        lay = self.layout
        data_end = lay.ifd_offset(n)
        f.pwrite_tail(xml, data_end)
        # Only now is IFD 0 pointed at the final XML: a crash before this
        # line leaves the provisional XML, which is still true.
        nxt = lay.ifd_offset(1) if n > 1 else 0
        ifd0 = page_aligned_buffer(IFD_PAGE)
        ifd0[:] = lay.ifd_page(0, nxt, (len(xml), data_end))
        f.pwrite(ifd0, lay.ifd_offset(0))
        f.truncate(data_end + len(xml))
        f.sync()
        summary["file_bytes"] = data_end + len(xml)
        summary["ome_xml_bytes"] = len(xml)
        f.close()
        self._file = None
        return summary

    def abort(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
