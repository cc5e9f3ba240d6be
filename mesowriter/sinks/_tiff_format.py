"""Where a mesowriter TIFF keeps what: geometry, IFD codec and header block.

Pure functions and small records, shared by the sink (in a writer process),
`recover` and `inspect`. Every offset is computable from the geometry, so a
reader, a replacement worker or `recover` finds frame k without a chain walk::

    0       TIFF header: BigTIFF while writing (classic for a finished ImageJ
            file that fits in 4 GiB); first IFD = 0 until a frame is linked
    256     "mesowriter\\0", the Software tag value of every IFD
    272     classic TIFF of RGB frames: BitsPerSample (3 SHORTs) and, at 280,
            SampleFormat, which do not fit in a classic IFD entry (the same
            for every IFD; written when the file is finalised as classic)
    512     header block, copy A  } one sector each, checksummed, the newer
    1024    header block, copy B  } generation wins (see HeaderBlock)
    4096    provisional description, 4096 B: OME-XML or ImageJ text that
            declares only frames already linked (rewritten in place)
    8192    front IFD extent: IFD k at 8192 + k*512 for k < front_capacity
    D       pixels, CONTIGUOUS: frame k at D + k*F (F = frame bytes, no
            padding), D = round_up(8192 + front_capacity*512, 4096)
    T       tail IFD extent, only for k >= front_capacity: IFD k at
            T + (k - front_capacity)*512, past the data reservation
    end     final description (written at close)

Why IFDs live outside the pixels: `tifffile.memmap` and `numpy.memmap` need
one contiguous run of pixels (analysis code memory-maps whole stacks), and
with pixels alone in their region a batch of frames is one direct write from
the ring's consecutive slots. Where the IFDs go:

- **Frame count known**: all IFDs go in front (front_capacity = frames). The
  file is [header|description|IFDs|pixels|final XML]: nothing is ever moved,
  and on Windows no gap past the written data is zero-filled.
- **Frame count unknown** (or more frames than declared): the first 1024 IFDs
  go in front (short runs need nothing else); later ones go to a tail extent
  placed past the data reserved so far. When the pixels reach it, the tail is
  copied further out (the reservation doubles, so copying costs O(n) in all)
  and relinked before any pixel overwrites it. At close the tail moves to
  just after the last frame when it fits there without overlapping itself.

Each IFD takes 512 bytes, one sector: rewriting an IFD (to link it to the
next) is a single-sector write, which a drive completes whole.
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass

import msgspec
import numpy as np

PAGE = 4096
SECTOR = 512
IFD_STRIDE = SECTOR
CLASSIC_IFD_STRIDE = 256
SOFTWARE_OFFSET = 256
SOFTWARE = b"mesowriter\x00"
SAMPLE_VALUES_OFFSET = 272  # classic RGB: BitsPerSample here, SampleFormat + 8
BLOCK_OFFSETS = (512, 1024)
DESCRIPTION_OFFSET = PAGE
DESCRIPTION_CAPACITY = PAGE
FRONT_OFFSET = 2 * PAGE
UNKNOWN_FRONT_CAPACITY = 1024
# Data reserved ahead of the tail extent when the frame count is unknown.
TAIL_RESERVE_BYTES = 256 * 1024 * 1024
CLASSIC_LIMIT = 2**32

_SHORT, _LONG, _ASCII, _LONG8 = 3, 4, 2, 16
_SAMPLE_FORMAT = {"u": 1, "i": 2, "f": 3}
WRITABLE_DTYPES = ("u1", "u2", "u4", "u8", "i1", "i2", "i4", "i8", "f4", "f8")
_BIGTIFF_HEADER = struct.Struct("<2sHHHQ")
_CLASSIC_HEADER = struct.Struct("<2sHI")


def round_up(n: int, to: int = PAGE) -> int:
    return -(-n // to) * to


# -- geometry --------------------------------------------------------------------


@dataclass(frozen=True)
class Geometry:
    """Where frame k's pixels and IFD are, for one file."""

    shape: tuple[int, ...]
    dtype: str
    front_capacity: int

    @property
    def frame_nbytes(self) -> int:
        n = 1
        for s in self.shape:
            n *= int(s)
        return n * np.dtype(self.dtype).itemsize

    @property
    def data_offset(self) -> int:
        return round_up(FRONT_OFFSET + self.front_capacity * IFD_STRIDE)

    def pixel_offset(self, k: int) -> int:
        return self.data_offset + k * self.frame_nbytes

    def data_end(self, n: int) -> int:
        return self.data_offset + n * self.frame_nbytes

    def ifd_offset(self, k: int, tail_offset: int) -> int:
        if k < self.front_capacity:
            return FRONT_OFFSET + k * IFD_STRIDE
        if not tail_offset:
            raise ValueError(f"IFD {k} needs a tail extent, and the file has none")
        return tail_offset + (k - self.front_capacity) * IFD_STRIDE

    def tail_reserve(self, tail_offset: int) -> int:
        """Frames whose pixels fit before a tail extent at `tail_offset`."""
        return (tail_offset - self.data_offset) // self.frame_nbytes

    def tail_for(self, frames: int) -> int:
        """A tail extent offset leaving room for `frames` frames of pixels."""
        return round_up(self.data_end(frames))

    def grown_tail(self, needed: int, tail_offset: int) -> int:
        """Where the tail goes so that `needed` frames fit before it.

        The reservation at least doubles (copies cost O(n) over a run), and
        the new extent starts past the old one, so a copy never overlaps the
        chain it replaces.
        """
        reserve = self.tail_reserve(tail_offset) if tail_offset else 0
        frames = max(
            needed,
            2 * reserve,
            2 * self.front_capacity,
            TAIL_RESERVE_BYTES // self.frame_nbytes,
        )
        new = self.tail_for(frames)
        if tail_offset:
            old_end = tail_offset + max(reserve - self.front_capacity, 0) * IFD_STRIDE
            new = max(new, round_up(old_end))
        return new


# -- IFDs ---------------------------------------------------------------------------


class IfdCodec:
    """Builds the IFDs of one file's frames (BigTIFF or classic TIFF).

    Tags in ascending order, one strip per frame, no compression: exactly
    what a reader needs to find each frame's pixels, and what `tifffile`
    recognises as contiguous.
    """

    def __init__(self, shape: tuple[int, ...], dtype: str, *, bigtiff: bool) -> None:
        dt = np.dtype(dtype)
        if dt.str[1:] not in WRITABLE_DTYPES:
            raise ValueError(f"TIFF cannot hold pixels of dtype {dt}")
        self.bigtiff = bigtiff
        self.height, self.width = int(shape[0]), int(shape[1])
        self.samples = int(shape[2]) if len(shape) == 3 else 1
        self.frame_nbytes = self.height * self.width * self.samples * dt.itemsize
        self._bits = dt.itemsize * 8
        self._format = _SAMPLE_FORMAT[dt.kind]
        self.stride = IFD_STRIDE if bigtiff else CLASSIC_IFD_STRIDE
        plain = self.build(pixel_offset=0, next_ifd=0, description=None)
        self._template = plain.ljust(self.stride, b"\x00")
        self._count = _LONG8 if bigtiff else _LONG
        entry = 20 if bigtiff else 12
        head = 8 if bigtiff else 2
        n_tags = len(self._entries(0, None))
        self._next_at = head + n_tags * entry
        # Field offsets inside a plain IFD, for patching copies of the template.
        value_at = 12 if bigtiff else 8
        self._strip_at = head + self._tag_index(273) * entry + value_at

    def _tag_index(self, tag: int) -> int:
        return [t for t, *_ in self._entries(0, None)].index(tag)

    def _entries(
        self, pixel_offset: int, description: tuple[int, int] | None
    ) -> list[tuple[int, int, int, int | bytes]]:
        spp = self.samples
        off = _LONG8 if self.bigtiff else _LONG
        bits, formats = self._sample_values()
        out: list[tuple[int, int, int, int | bytes]] = [
            (254, _LONG, 1, 0),
            (256, _LONG, 1, self.width),
            (257, _LONG, 1, self.height),
            (258, _SHORT, spp, bits),
            (259, _SHORT, 1, 1),
            (262, _SHORT, 1, 2 if spp == 3 else 1),
        ]
        if description is not None:
            count, offset = description
            out.append((270, _ASCII, count, offset))
        out += [
            (273, off, 1, pixel_offset),
            (277, _SHORT, 1, spp),
            (278, _LONG, 1, self.height),
            (279, off, 1, self.frame_nbytes),
            (284, _SHORT, 1, 1),
            (305, _ASCII, len(SOFTWARE), SOFTWARE_OFFSET),
            (339, _SHORT, spp, formats),
        ]
        return out

    def _sample_values(self) -> tuple[int | bytes, int | bytes]:
        """BitsPerSample and SampleFormat: inline, or (classic TIFF of RGB
        frames, 6 bytes each) the offsets of their shared copies in page 0."""
        spp = self.samples
        if spp > 1 and not self.bigtiff:
            return SAMPLE_VALUES_OFFSET, SAMPLE_VALUES_OFFSET + 8
        return (
            struct.pack(f"<{spp}H", *([self._bits] * spp)),
            struct.pack(f"<{spp}H", *([self._format] * spp)),
        )

    def shared_values(self) -> tuple[int, bytes] | None:
        """(offset, bytes) of the out-of-line values the IFDs point at, if any."""
        if self.samples == 1 or self.bigtiff:
            return None
        n = self.samples
        bits = struct.pack(f"<{n}H", *([self._bits] * n)).ljust(8, b"\x00")
        formats = struct.pack(f"<{n}H", *([self._format] * n)).ljust(8, b"\x00")
        return SAMPLE_VALUES_OFFSET, bits + formats

    def build(
        self,
        *,
        pixel_offset: int,
        next_ifd: int,
        description: tuple[int, int] | None,
    ) -> bytes:
        """One IFD (unpadded)."""
        big = self.bigtiff
        limit = 2**64 if big else CLASSIC_LIMIT
        if max(pixel_offset + self.frame_nbytes, next_ifd) >= limit:
            raise ValueError("offset beyond what this TIFF flavour can address")
        entries = self._entries(pixel_offset, description)
        out = bytearray(struct.pack("<Q" if big else "<H", len(entries)))
        width = 8 if big else 4
        for tag, typ, count, value in entries:
            if isinstance(value, int):
                if typ == _SHORT and count == 1:
                    raw = struct.pack("<H", value)
                elif typ == _LONG and count == 1:
                    raw = struct.pack("<I", value)
                else:  # an offset (ASCII, arrays) or a LONG8
                    raw = struct.pack("<Q" if big else "<I", value)
            else:
                raw = value
            if len(raw) > width:
                raise ValueError(f"tag {tag} value does not fit inline")
            head = struct.pack("<HHQ" if big else "<HHI", tag, typ, count)
            out += head + raw.ljust(width, b"\x00")
        out += struct.pack("<Q" if big else "<I", next_ifd)
        return bytes(out)

    def run(self, pixel_offsets: list[int], next_offsets: list[int]) -> bytearray:
        """Consecutive IFDs, each padded to the stride, from the template.

        Used for every IFD but IFD 0 (which carries the description).
        """
        n = len(pixel_offsets)
        buf = bytearray(self._template * n)
        q = "<Q" if self.bigtiff else "<I"
        for j in range(n):
            base = j * self.stride
            struct.pack_into(q, buf, base + self._strip_at, pixel_offsets[j])
            struct.pack_into(q, buf, base + self._next_at, next_offsets[j])
        return buf


def header_bytes(first_ifd: int, *, bigtiff: bool) -> bytes:
    if bigtiff:
        return _BIGTIFF_HEADER.pack(b"II", 43, 8, 0, first_ifd)
    return _CLASSIC_HEADER.pack(b"II", 42, first_ifd)


def read_header(raw: bytes) -> tuple[bool, int]:
    """(bigtiff, first IFD) of a little-endian TIFF header; ValueError otherwise."""
    if len(raw) >= 16 and raw[:4] == b"II+\x00":
        _, _, size, zero, first = _BIGTIFF_HEADER.unpack_from(raw)
        if (size, zero) != (8, 0):
            raise ValueError("malformed BigTIFF header")
        return True, int(first)
    if len(raw) >= 8 and raw[:4] == b"II*\x00":
        return False, int(_CLASSIC_HEADER.unpack_from(raw)[2])
    raise ValueError("not a little-endian TIFF file")


# -- the header block ------------------------------------------------------------------

_BLOCK_MAGIC = b"MESOBLK1"
_BLOCK_HEAD = struct.Struct("<8sII")  # magic, JSON length, crc32 of the JSON


class HeaderBlock(msgspec.Struct, frozen=True, kw_only=True):
    """The file's own durable record of what it holds.

    Written after every commit (so it lags the pixels by at most one sync)
    into one of two sectors, alternately: a torn write spoils one copy, the
    checksum finds it, and the other copy (one generation older) holds.
    `recover` trusts it for the frames whose pixels are durable even when
    the journal lags or is gone.
    """

    generation: int
    state: str  # "writing" | "finalising" | "final"
    format: str  # "ome" | "imagej"
    shape: tuple[int, ...]
    dtype: str
    front_capacity: int
    tail_offset: int = 0
    committed: int = 0  # frames durable, in acquisition order
    prefix: int = 0  # file positions [0, prefix) all durable
    reordered: bool = False  # file position != acquisition order (ImageJ)
    owner: str = ""
    version: int = 1

    def geometry(self) -> Geometry:
        return Geometry(tuple(self.shape), self.dtype, self.front_capacity)

    def encode(self) -> bytes:
        body = msgspec.json.encode(self)
        if len(body) + _BLOCK_HEAD.size > SECTOR:
            raise ValueError("header block does not fit its sector")
        head = _BLOCK_HEAD.pack(_BLOCK_MAGIC, len(body), zlib.crc32(body))
        return (head + body).ljust(SECTOR, b"\x00")

    @property
    def slot(self) -> int:
        return BLOCK_OFFSETS[self.generation % 2]


_block_decoder = msgspec.json.Decoder(HeaderBlock)


def decode_block(raw: bytes) -> HeaderBlock | None:
    """A header block from one sector, or None if absent, torn or foreign."""
    if len(raw) < _BLOCK_HEAD.size:
        return None
    magic, length, crc = _BLOCK_HEAD.unpack_from(raw)
    body = raw[_BLOCK_HEAD.size : _BLOCK_HEAD.size + length]
    if magic != _BLOCK_MAGIC or len(body) != length or zlib.crc32(body) != crc:
        return None
    try:
        block = _block_decoder.decode(body)
    except (msgspec.DecodeError, ValueError):
        return None
    return block if _plausible(block) else None


def _plausible(b: HeaderBlock) -> bool:
    """Checks a block before anything trusts its numbers (files lie)."""
    try:
        dt = np.dtype(b.dtype)
    except TypeError:
        return False
    shape_ok = len(b.shape) in (2, 3) and all(0 < int(s) < 2**20 for s in b.shape)
    return (
        shape_ok
        and dt.str[1:] in WRITABLE_DTYPES
        and (len(b.shape) == 2 or b.shape[2] == 3)
        and 0 <= b.front_capacity < 2**32
        and 0 <= b.committed < 2**40
        and 0 <= b.prefix <= max(b.committed, 0) + 2**32
        and 0 <= b.tail_offset < 2**62
        and b.state in ("writing", "finalising", "final")
        and b.format in ("ome", "imagej")
    )


def newest_block(page0: bytes) -> HeaderBlock | None:
    """The valid header block of highest generation in the file's first page."""
    found = [decode_block(page0[o : o + SECTOR]) for o in BLOCK_OFFSETS]
    valid = [b for b in found if b is not None]
    return max(valid, key=lambda b: b.generation) if valid else None
