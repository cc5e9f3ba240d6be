"""Reading files that may lie: every claim checked before it costs anything.

`inspect` and `recover` open files that a crash, a copy tool or a person may
have damaged or forged. A file cannot be trusted to say how big it is: a
1 KB file declaring 10^8 planes made tifffile allocate 1.6 GB, a tampered
tag count asked for a 1 TiB read. So, before anything is allocated or read
on a file's word:

- `read_tiff` walks the TIFF/BigTIFF header and IFD chain with bounded
  reads, checking each IFD's tag count, each value's offset and byte count,
  and each strip's offset and length against the real file size; the IFDs
  together may not claim more bytes than the file has (overlapping IFDs are
  how a small file becomes a long walk), and a chain that loops is refused;
- `parse_xml` refuses any DOCTYPE (our OME-XML never has one; without it
  there are no entities to expand and no external entities to fetch), caps
  the size and the nesting depth;
- `check_ome` compares what the OME-XML declares (planes x plane bytes, each
  TiffData's IFD and PlaneCount) with the file size and its IFD count, and
  `check_imagej` what an ImageJ description declares;
- `check_stream_spec` bounds a journal header's spec (shape, dtype, frame
  bytes).

Any violation raises `BadFileError`, one line naming the file and what is
wrong with it; the CLI turns it into exit code 2.
"""

from __future__ import annotations

import math
import os
import re
import stat
import struct
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from xml.etree import ElementTree

import numpy as np

if TYPE_CHECKING:
    from mesowriter._journal import JournalHeader
    from mesowriter._spec import StreamSpec

__all__ = [
    "MAX_FRAME_BYTES",
    "MAX_TAGS",
    "MAX_XML_BYTES",
    "BadFileError",
    "TiffFacts",
    "TiffPage",
    "check_imagej",
    "check_input_file",
    "check_ome",
    "check_stream_spec",
    "parse_xml",
    "plain_dtype",
    "read_journal_header",
    "read_tiff",
]

MAX_XML_BYTES = 1 << 30  # the final OME-XML of 10^6 frames is ~200 MB
MAX_XML_DEPTH = 64  # OME-XML nests 6 levels; frame metadata is text
MAX_TAGS = 1024  # TIFF writers use a few dozen per IFD
MAX_FRAME_BYTES = 1 << 32  # 4 GiB: far above any camera frame
MAX_EDGE = 1 << 20  # pixels along one axis of a frame
MAX_SAMPLES = 16
MAX_FRAMES = 1 << 40
_MAX_SMALL_ARRAY = 4096  # bytes of a per-page parameter tag (BitsPerSample, ...)
_OME_NS = "{http://www.openmicroscopy.org/Schemas/OME/2016-06}"
_DOCTYPE = re.compile(rb"<!\s*(DOCTYPE|ENTITY|ELEMENT|ATTLIST)", re.IGNORECASE)


class BadFileError(ValueError):
    """A file is malformed or claims more than it holds.

    The message is one line: the file, then what is wrong with it.
    """


def _bad(path: str, problem: str) -> BadFileError:
    return BadFileError(f"{path}: {problem}")


def check_input_file(path: str | os.PathLike[str]) -> int:
    """The size of `path`, a non-empty regular file; BadFileError otherwise."""
    p = os.fspath(path)
    try:
        st = os.stat(p)
    except FileNotFoundError:
        raise _bad(p, "no such file") from None
    except OSError as exc:
        raise _bad(p, f"cannot be read ({exc.strerror or exc})") from None
    if stat.S_ISDIR(st.st_mode):
        raise _bad(p, "is a folder, not a data file")
    if not stat.S_ISREG(st.st_mode):
        raise _bad(p, "is not a regular file")
    if st.st_size == 0:
        raise _bad(p, "is empty")
    return int(st.st_size)


# -- XML ----------------------------------------------------------------------------


def parse_xml(
    text: str | bytes,
    *,
    source: str,
    max_bytes: int = MAX_XML_BYTES,
    max_depth: int = MAX_XML_DEPTH,
) -> ElementTree.Element:
    """Parse XML from a file that may be hostile; BadFileError if refused.

    Refuses a DOCTYPE (and any other markup declaration) outright: without
    one there are no entities to expand (billion laughs) and no external
    entities to fetch. Also refuses more than `max_bytes` (trailing NULs, as a
    TIFF tag stores them, do not count), text that is not UTF-8, and nesting
    deeper than `max_depth`.
    """
    data = text.encode("utf-8", "surrogatepass") if isinstance(text, str) else text
    data = data.rstrip(b"\x00")
    if len(data) > max_bytes:
        raise _bad(source, f"its XML is {len(data)} bytes, more than {max_bytes}")
    if _DOCTYPE.search(data):
        raise _bad(source, "its XML has a DOCTYPE or entity declaration (refused)")
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise _bad(source, f"its XML is not UTF-8 (byte {exc.start})") from None
    parser: Any = ElementTree.XMLPullParser(events=("start", "end"))
    root: ElementTree.Element | None = None
    depth = 0
    step = 1 << 20
    try:
        for start in range(0, len(data), step):
            parser.feed(data[start : start + step])
            for event, elem in parser.read_events():
                if event == "start":
                    depth += 1
                    if root is None and isinstance(elem, ElementTree.Element):
                        root = elem
                    if depth > max_depth:
                        raise _bad(source, f"its XML nests deeper than {max_depth}")
                else:
                    depth -= 1
        parser.close()
    except ElementTree.ParseError as exc:
        raise _bad(source, f"its XML cannot be parsed ({exc})") from None
    if root is None:
        raise _bad(source, "its XML has no element")
    return root


# -- OME-XML against the file ---------------------------------------------------------

_PIXEL_BITS = {
    "int8": 8,
    "uint8": 8,
    "int16": 16,
    "uint16": 16,
    "int32": 32,
    "uint32": 32,
    "float": 32,
    "double": 64,
    "complex": 64,
    "double-complex": 128,
    "bit": 1,
}


@dataclass(frozen=True)
class OmePlanes:
    """What an OME-XML declares, once checked."""

    planes: int  # planes with pixel data, over all images
    images: int
    plane_bytes: tuple[int, ...]  # per image with pixel data


def check_ome(
    root: ElementTree.Element,
    *,
    source: str,
    file_size: int,
    ifds: int | None = None,
) -> OmePlanes:
    """Check what an OME-XML declares against the file that holds it.

    Every Size*, SamplesPerPixel, TiffData IFD/PlaneCount/First* must be a
    plain non-negative integer; the planes declared times their bytes must
    fit in the file, and (with `ifds`, the file's IFD count) there must be an
    IFD for each plane and each TiffData must stay within the IFDs. Images
    marked MetadataOnly declare no planes. Raises BadFileError.
    """
    total_planes = 0
    total_bytes = 0
    plane_bytes: list[int] = []
    images = 0
    for image in root.iter(f"{_OME_NS}Image"):
        images += 1
        px = image.find(f"{_OME_NS}Pixels")
        if px is None:
            raise _bad(source, f"OME Image {images - 1} has no Pixels element")
        sizes = {k: _xml_int(px, f"Size{k}", source, default=None) for k in "XYZCT"}
        for k, v in sizes.items():
            if v is None:
                raise _bad(source, f"OME Pixels has no Size{k}")
        x, y, z, c, t = (int(sizes[k] or 0) for k in "XYZCT")
        ptype = px.get("Type", "")
        if ptype not in _PIXEL_BITS:
            raise _bad(source, f"OME Pixels Type={ptype!r} is not an OME pixel type")
        channel = px.find(f"{_OME_NS}Channel")
        spp = 1
        if channel is not None:
            spp = _xml_int(channel, "SamplesPerPixel", source, default=1) or 1
        if spp > MAX_SAMPLES:
            raise _bad(source, f"OME SamplesPerPixel={spp} is implausible")
        if px.find(f"{_OME_NS}MetadataOnly") is not None:
            continue
        planes = t * z * max(c // spp, 1)
        nbytes = math.ceil(x * y * spp * _PIXEL_BITS[ptype] / 8)
        total_planes += planes
        total_bytes += planes * nbytes
        plane_bytes.append(nbytes)
        if total_bytes > file_size:
            raise _bad(
                source,
                f"its OME-XML declares {total_planes} planes of {nbytes} bytes, "
                f"more than the file's {file_size} bytes hold",
            )
        for data in px.iter(f"{_OME_NS}TiffData"):
            _check_tiffdata(data, source, planes, {"T": t, "Z": z, "C": c}, ifds)
    if ifds is not None and total_planes > ifds:
        raise _bad(
            source,
            f"its OME-XML declares {total_planes} planes but the file holds "
            f"{ifds} images",
        )
    return OmePlanes(total_planes, images, tuple(plane_bytes))


def _check_tiffdata(
    data: ElementTree.Element,
    source: str,
    planes: int,
    sizes: dict[str, int],
    ifds: int | None,
) -> None:
    ifd = _xml_int(data, "IFD", source, default=0) or 0
    count = _xml_int(data, "PlaneCount", source, default=None)
    for axis, size in sizes.items():
        first = _xml_int(data, f"First{axis}", source, default=0) or 0
        if first and first >= size:
            raise _bad(source, f"OME TiffData First{axis}={first} is beyond Size{axis}")
    if count is not None and count > planes:
        raise _bad(
            source, f"OME TiffData PlaneCount={count} exceeds the {planes} planes"
        )
    in_other_file = data.find(f"{_OME_NS}UUID") is not None
    if ifds is not None and not in_other_file and ifd + (count or 1) > ifds:
        raise _bad(
            source,
            f"OME TiffData points at IFD {ifd} (+{count or 1} planes) but the file "
            f"holds {ifds} images",
        )


def _xml_int(
    el: ElementTree.Element, name: str, source: str, *, default: int | None
) -> int | None:
    raw = el.get(name)
    if raw is None:
        return default
    text = raw.strip()
    if not text.isdigit() or not text.isascii() or len(text) > 15:
        raise _bad(source, f"OME {name}={raw[:40]!r} is not a plausible count")
    return int(text)


_IMAGEJ_COUNTS = ("images", "channels", "slices", "frames")


def check_imagej(description: bytes, facts: TiffFacts, *, source: str) -> int:
    """Check an ImageJ hyperstack description against the file; its planes.

    ImageJ (and tifffile) take `images` planes of the first page's size, read
    contiguously when the file has fewer IFDs (as ImageJ writes files over
    4 GiB), so `images` x plane bytes must fit in the file, and the counts
    must be plain integers. Raises BadFileError.
    """
    counts: dict[str, int] = {}
    for raw in description.split(b"\n")[:64]:
        key, sep, value = raw.decode("ascii", "replace").partition("=")
        if sep and key in _IMAGEJ_COUNTS:
            text = value.strip()
            if not text.isdigit() or not text.isascii() or len(text) > 15:
                raise _bad(source, f"ImageJ {key}={text[:40]!r} is not a count")
            counts[key] = int(text)
    page = facts.first
    if page is None:
        raise _bad(source, "has an ImageJ description but no image")
    planes = counts.get("images", 1)
    product = math.prod(counts.get(k, 1) for k in _IMAGEJ_COUNTS[1:])
    plane_bytes = page.width * page.height * page.samples * max(page.bits, 8) // 8
    if max(planes, product) * plane_bytes > facts.file_size:
        raise _bad(
            source,
            f"its ImageJ description declares {max(planes, product)} planes of "
            f"{plane_bytes} bytes, more than the file's {facts.file_size} bytes hold",
        )
    return planes


# -- TIFF ------------------------------------------------------------------------

# bytes per value of each TIFF field type
_TYPE_SIZES = {
    1: 1,  # BYTE
    2: 1,  # ASCII
    3: 2,  # SHORT
    4: 4,  # LONG
    5: 8,  # RATIONAL
    6: 1,  # SBYTE
    7: 1,  # UNDEFINED
    8: 2,  # SSHORT
    9: 4,  # SLONG
    10: 8,  # SRATIONAL
    11: 4,  # FLOAT
    12: 8,  # DOUBLE
    13: 4,  # IFD
    16: 8,  # LONG8
    17: 8,  # SLONG8
    18: 8,  # IFD8
}
# struct codes of the unsigned integer types a reader takes offsets and
# sizes from (IFD and IFD8 are offsets too)
_INT_CODES = {1: "B", 3: "H", 4: "I", 16: "Q", 13: "I", 18: "Q"}
_WIDTH, _LENGTH, _BITS, _COMPRESSION = 256, 257, 258, 259
_DESCRIPTION, _STRIP_OFFSETS, _SAMPLES, _STRIP_COUNTS = 270, 273, 277, 279
_TILE_WIDTH, _TILE_LENGTH, _TILE_OFFSETS, _TILE_COUNTS = 322, 323, 324, 325


@dataclass(frozen=True)
class TiffPage:
    """The facts of one IFD that a reader acts on, all checked."""

    offset: int
    width: int
    height: int
    samples: int
    bits: int  # bits per sample (of the first sample)
    compression: int
    data_bytes: int  # sum of its strip or tile byte counts
    description: tuple[int, int] | None  # ImageDescription (count, offset)


@dataclass(frozen=True)
class TiffFacts:
    """A TIFF's structure as far as it checks out."""

    path: str
    file_size: int
    bigtiff: bool
    byteorder: str  # "<" or ">"
    ifds: int  # IFDs in the chain (up to the first bad one, when not strict)
    first: TiffPage | None
    description: bytes | None  # IFD 0's ImageDescription, without trailing NULs
    stopped: str | None = None  # why the chain ended early (strict=False)


def read_tiff(
    path: str | os.PathLike[str],
    *,
    strict: bool = True,
    max_ifds: int | None = None,
    max_description: int = MAX_XML_BYTES,
) -> TiffFacts:
    """Walk a TIFF or BigTIFF's IFD chain, checking every claim (module doc).

    Raises BadFileError for a file that is not a TIFF, and, with `strict`,
    for any IFD that claims what the file does not hold. Without `strict` the
    chain ends at the first such IFD and `stopped` says why (what `recover`
    needs: a crash leaves a valid prefix). Reads are bounded: no more IFD and
    strip-table bytes in all than the file has, at most `MAX_TAGS` tags per
    IFD, at most `max_description` bytes of IFD 0's description.
    """
    p = os.fspath(path)
    size = check_input_file(p)
    with open(p, "rb") as fh:
        return _TiffWalk(fh.fileno(), p, size, strict, max_description).run(max_ifds)


class _TiffWalk:
    def __init__(
        self, fd: int, path: str, size: int, strict: bool, max_description: int
    ) -> None:
        self.fd, self.path, self.size = fd, path, size
        self.strict = strict
        self.max_description = max_description
        self.budget = 2 * size + (1 << 20)  # IFD and table bytes we will read
        self.inline_description = b""

    def read(self, offset: int, n: int) -> bytes:
        """Exactly n bytes at offset; the caller has checked they exist."""
        self.budget -= n
        if self.budget < 0:
            raise _bad(
                self.path, "its IFDs overlap (they claim more bytes than it has)"
            )
        data = _pread(self.fd, n, offset)
        if len(data) != n:
            raise _bad(self.path, "it changed size while being read")
        return data

    def run(self, max_ifds: int | None) -> TiffFacts:
        head = self.read(0, min(16, self.size))
        order = {b"II": "<", b"MM": ">"}.get(head[:2])
        if order is None or len(head) < 8:
            raise _bad(self.path, f"is not a TIFF (it starts with {head[:8]!r})")
        (magic,) = struct.unpack(order + "H", head[2:4])
        if magic == 42:
            bigtiff = False
            (first,) = struct.unpack(order + "I", head[4:8])
        elif magic == 43 and len(head) == 16:
            bigtiff = True
            offsize, zero, first = struct.unpack(order + "HHQ", head[4:16])
            if (offsize, zero) != (8, 0):
                raise _bad(self.path, "is not a valid BigTIFF (bad header)")
        else:
            raise _bad(self.path, f"is not a TIFF (magic number {magic})")
        self.order, self.bigtiff = order, bigtiff
        self.count_fmt, self.count_size = ("Q", 8) if bigtiff else ("H", 2)
        self.entry_size = 20 if bigtiff else 12
        self.off_fmt, self.off_size = ("Q", 8) if bigtiff else ("I", 4)
        self.entry = struct.Struct(
            order + ("HHQ8s" if bigtiff else "HHI4s")
        )  # tag, type, count, value field

        offset, k = int(first), 0
        first_page: TiffPage | None = None
        description: bytes | None = None
        stopped: str | None = None
        revisits: set[int] = set()  # targets of backward jumps: loops go there
        previous = 0
        while offset:
            if max_ifds is not None and k >= max_ifds:
                stopped = f"stopped after {max_ifds} IFDs"
                break
            if offset <= previous:
                if offset in revisits:
                    stopped = f"its IFD chain loops back to offset {offset}"
                    if self.strict:
                        raise _bad(self.path, stopped)
                    break
                revisits.add(offset)
            try:
                page, nxt = self.ifd(k, offset)
                if k == 0:
                    description = self.description(page)
            except BadFileError as exc:
                if self.strict:
                    raise
                stopped = str(exc).removeprefix(f"{self.path}: ")
                break
            if k == 0:
                first_page = page
            previous, offset, k = offset, nxt, k + 1
        return TiffFacts(
            path=self.path,
            file_size=self.size,
            bigtiff=self.bigtiff,
            byteorder=self.order,
            ifds=k,
            first=first_page,
            description=description,
            stopped=stopped,
        )

    def ifd(self, k: int, offset: int) -> tuple[TiffPage, int]:
        """Check IFD k at offset; its page facts and the next IFD's offset."""
        where = f"IFD {k} at offset {offset}"
        if offset < 8 or offset + self.count_size > self.size:
            raise _bad(self.path, f"{where} lies outside the file ({self.size} bytes)")
        # One read for a typical IFD (up to 32 tags), a second for a longer one.
        guess = self.count_size + 32 * self.entry_size + self.off_size
        head = self.read(offset, min(guess, self.size - offset))
        (n,) = struct.unpack_from(self.order + self.count_fmt, head)
        if n == 0 or n > MAX_TAGS:
            raise _bad(self.path, f"{where} claims {n} tags")
        end = self.count_size + n * self.entry_size + self.off_size
        if offset + end > self.size:
            raise _bad(self.path, f"{where}: its {n} tags run past the end of the file")
        if end > len(head):
            head += self.read(offset + len(head), end - len(head))
        raw = head[self.count_size : end]
        tags: dict[int, tuple[int, int, bytes]] = {}
        for tag, typ, count, value in self.entry.iter_unpack(raw[: -self.off_size]):
            itemsize = _TYPE_SIZES.get(typ)
            if itemsize is None:
                continue  # unknown type: readers skip it, and so do we
            nbytes = count * itemsize
            if nbytes > self.size:
                raise _bad(
                    self.path, f"{where}: tag {tag} claims {count} values (too many)"
                )
            if nbytes > self.off_size:
                (at,) = struct.unpack(self.order + self.off_fmt, value)
                if at + nbytes > self.size:
                    raise _bad(
                        self.path,
                        f"{where}: tag {tag}'s {nbytes} bytes at offset {at} run "
                        f"past the end of the file ({self.size} bytes)",
                    )
            tags[tag] = (typ, count, value)
        (nxt,) = struct.unpack(self.order + self.off_fmt, raw[-self.off_size :])
        return self.page(where, offset, tags), int(nxt)

    def page(
        self, where: str, offset: int, tags: dict[int, tuple[int, int, bytes]]
    ) -> TiffPage:
        width = self.scalar(where, tags, _WIDTH)
        height = self.scalar(where, tags, _LENGTH)
        if not width or not height:
            raise _bad(self.path, f"{where} has no image size")
        samples = self.scalar(where, tags, _SAMPLES) or 1
        bits_all = self.values(where, tags, _BITS, small=True)
        bits = int(bits_all[0]) if len(bits_all) else 1
        compression = self.scalar(where, tags, _COMPRESSION) or 1
        if _TILE_OFFSETS in tags:
            offsets = self.values(where, tags, _TILE_OFFSETS)
            counts = self.values(where, tags, _TILE_COUNTS)
        else:
            offsets = self.values(where, tags, _STRIP_OFFSETS)
            counts = self.values(where, tags, _STRIP_COUNTS)
        if len(offsets) != len(counts) or not len(offsets):
            raise _bad(
                self.path,
                f"{where} has {len(offsets)} data offsets and {len(counts)} counts",
            )
        if isinstance(counts, tuple) and isinstance(offsets, tuple):
            past = any(
                c > self.size or o > self.size - c
                for o, c in zip(offsets, counts, strict=True)
            )
            data_bytes = sum(counts)
        else:
            size = np.uint64(self.size)
            big_counts = np.asarray(counts, np.uint64)
            past = bool(
                np.any(big_counts > size)
                or np.any(np.asarray(offsets, np.uint64) > size - big_counts)
            )
            data_bytes = 0 if past else int(big_counts.sum(dtype=np.uint64))
        if past:
            raise _bad(
                self.path, f"{where}: its pixel data run past the end of the file"
            )
        if compression == 1 and _TILE_OFFSETS not in tags:
            needed = width * height * samples * max(bits, 1) // 8
            if data_bytes < needed:
                raise _bad(
                    self.path,
                    f"{where}: {data_bytes} bytes of pixels for a page of {needed}",
                )
        desc = None
        if _DESCRIPTION in tags:
            _, count, value = tags[_DESCRIPTION]
            if count > self.off_size:
                (at,) = struct.unpack(self.order + self.off_fmt, value)
                desc = (int(count), int(at))
            else:
                desc = (int(count), -1)  # stored inline, in the entry
                self.inline_description = value[:count]
        return TiffPage(
            offset, width, height, samples, bits, compression, data_bytes, desc
        )

    def scalar(
        self, where: str, tags: dict[int, tuple[int, int, bytes]], tag: int
    ) -> int:
        values = self.values(where, tags, tag, small=True)
        return int(values[0]) if len(values) else 0

    def values(
        self,
        where: str,
        tags: dict[int, tuple[int, int, bytes]],
        tag: int,
        small: bool = False,
    ) -> tuple[int, ...] | np.ndarray:
        """A tag's unsigned integer values (bounds were checked in `ifd`):
        a tuple for a few values, an array for a long strip table."""
        if tag not in tags:
            return ()
        typ, count, value = tags[tag]
        code = _INT_CODES.get(typ)
        if code is None:
            raise _bad(self.path, f"{where}: tag {tag} has field type {typ}")
        nbytes = count * _TYPE_SIZES[typ]
        if small and nbytes > _MAX_SMALL_ARRAY:
            raise _bad(self.path, f"{where}: tag {tag} claims {count} values")
        if nbytes <= self.off_size:
            return struct.unpack(f"{self.order}{count}{code}", value[:nbytes])
        (at,) = struct.unpack(self.order + self.off_fmt, value)
        raw = self.read(int(at), nbytes)
        if count <= 64:
            return struct.unpack(f"{self.order}{count}{code}", raw)
        return np.frombuffer(raw, np.dtype(self.order + code)).astype(np.uint64)

    def description(self, page: TiffPage) -> bytes | None:
        if page.description is None:
            return None
        count, at = page.description
        if count > self.max_description:
            raise _bad(
                self.path,
                f"its ImageDescription is {count} bytes, more than "
                f"{self.max_description}",
            )
        raw = self.inline_description if at < 0 else self.read(at, count)
        return raw.rstrip(b"\x00")


def _pread(fd: int, n: int, offset: int) -> bytes:
    if hasattr(os, "pread"):
        return os.pread(fd, n, offset)
    os.lseek(fd, offset, os.SEEK_SET)  # pragma: no cover - Windows
    return os.read(fd, n)  # pragma: no cover - Windows


# -- journals --------------------------------------------------------------------

_PLAIN_KINDS = "uifc"
_STREAM_KINDS = ("ome-tiff", "video")


def check_stream_spec(spec: StreamSpec, *, source: str) -> None:
    """Refuse a journal header's spec that no writer could have made.

    The shape must be 2 or 3 positive, bounded edges; the dtype a plain
    numeric numpy dtype (no objects, records, strings or sub-arrays); one
    frame at most `MAX_FRAME_BYTES`; the frame count, if any, non-negative
    and bounded. Raises BadFileError (a ValueError) naming `source`.
    """
    shape = tuple(spec.shape)
    if len(shape) not in (2, 3):
        raise _bad(source, f"its stream shape {shape!r} is not (height, width[, n])")
    for edge in shape:
        if not isinstance(edge, int) or isinstance(edge, bool):
            raise _bad(source, f"its stream shape {shape!r} is not made of integers")
        if not 1 <= edge <= MAX_EDGE:
            raise _bad(source, f"its stream shape {shape!r} has an implausible edge")
    if len(shape) == 3 and shape[2] > MAX_SAMPLES:
        raise _bad(source, f"its stream shape {shape!r} has {shape[2]} samples")
    dtype = plain_dtype(spec.dtype, source=source)
    nbytes = math.prod(shape) * dtype.itemsize
    if nbytes > MAX_FRAME_BYTES:
        raise _bad(source, f"its frames would be {nbytes} bytes each (implausible)")
    if spec.kind not in _STREAM_KINDS:
        raise _bad(source, f"its stream kind {spec.kind!r} is unknown")
    if spec.frames is not None and not 0 <= spec.frames <= MAX_FRAMES:
        raise _bad(source, f"its expected frame count {spec.frames} is implausible")


def plain_dtype(text: Any, *, source: str) -> np.dtype[Any]:
    """`text` as a plain numeric numpy dtype; BadFileError otherwise."""
    if not isinstance(text, str) or not 1 <= len(text) <= 16:
        raise _bad(source, f"its dtype {str(text)[:40]!r} is not a dtype name")
    try:
        dtype = np.dtype(text)
    except Exception:
        raise _bad(source, f"its dtype {text!r} is not a numpy dtype") from None
    if (
        dtype.kind not in _PLAIN_KINDS
        or dtype.fields is not None
        or dtype.subdtype is not None
        or dtype.hasobject
    ):
        raise _bad(source, f"its dtype {text!r} is not a plain numeric dtype")
    return dtype


def read_journal_header(path: str, *, max_bytes: int = 64 << 20) -> JournalHeader:
    """The checked header (`_journal.JournalHeader`) of a journal file.

    Reads at most `max_bytes` for its first line; BadFileError if the line is
    missing, too long, not a header, or its spec fails `check_stream_spec`.
    """
    import msgspec

    from mesowriter._journal import JournalHeader

    check_input_file(path)
    with open(path, "rb") as fh:
        line = fh.readline(max_bytes + 1)
    if not line.endswith(b"\n"):
        if len(line) > max_bytes:
            raise _bad(path, f"its header line is longer than {max_bytes} bytes")
        raise _bad(path, "has no complete header line")
    try:
        header = msgspec.json.decode(line[:-1], type=JournalHeader)
    except (msgspec.DecodeError, RecursionError) as exc:
        raise _bad(
            path, f"its header is not a mesowriter journal header ({exc})"
        ) from None
    check_stream_spec(header.spec, source=path)
    return header
