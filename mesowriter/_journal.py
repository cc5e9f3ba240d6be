"""The metadata journal and the legacy sidecar it becomes.

While a stream is open its worker appends one line per frame committed:
frame index, file position and the metadata bytes exactly as the producer
encoded them (after the pixels' own sync, so the journal never vouches for
a frame whose pixels are not durable); a thread syncs them, once for the
commits that queued meanwhile (`_journal_sync`). A crash
keeps every complete line; the first line says what the stream was::

    {"mesowriter_journal": 2, "spec": {...}}
    {"i":0,"k":0,"m":{...metadata...}}
    ...

A record line is parsed by its fixed prefix, never by a JSON parser, so
metadata holding the tokens NaN or Infinity (see `mesowriter._metadata`)
cannot make a record unreadable. The journal is created under an
unpredictable name, opened exclusively (no planted symlink is followed),
synced, then renamed into place.

At the end the journals of a run become the one legacy sidecar::

    <filename>_frame_metadata.json = {"<key>": [meta, meta, ...], ...}

built by joining the stored JSON bytes, never re-encoding them, and written
atomically.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Iterator
from typing import Any

import msgspec

from mesowriter._platform import (
    O_BINARY,
    O_NOFOLLOW,
    atomic_write,
    fsync_dir,
    open_exclusive,
    os_path,
    replace,
    temp_sibling,
    unlink,
)
from mesowriter._spec import SidecarSpec, StreamSpec, journal_path

JOURNAL_VERSION = 2
MISSING_METADATA = b'{"mesowriter_metadata_lost":true}'
_RECORD = re.compile(rb'\{"i":(-?\d{1,19}),"k":(-?\d{1,19}),"m":')
_O_APPEND = os.O_WRONLY | os.O_APPEND | O_BINARY | O_NOFOLLOW


class JournalHeader(msgspec.Struct, frozen=True):
    mesowriter_journal: int
    spec: StreamSpec


_encoder = msgspec.json.Encoder()


class Journal:
    """Append-only lines; its valid prefix survives a crash."""

    def __init__(self, path: str, fd: int, records: int) -> None:
        self.path = path
        self._fd = fd
        self.records = records

    @classmethod
    def create(cls, spec: StreamSpec) -> Journal:
        """A new journal holding `spec`, complete under its name on return
        (written aside, then renamed); durable once `settle` returns."""
        path = journal_path(spec.path)
        tmp = temp_sibling(path)
        fd = open_exclusive(tmp)
        try:
            _write_all(
                fd, _encoder.encode(JournalHeader(JOURNAL_VERSION, spec)) + b"\n"
            )
            replace(tmp, path)
        except BaseException:
            os.close(fd)
            unlink(tmp)
            raise
        return cls(path, fd, 0)

    def settle(self) -> None:
        """The header and the name durable (before any frame is written)."""
        os.fsync(self._fd)
        fsync_dir(os.path.dirname(os.path.abspath(self.path)))

    @classmethod
    def reopen(cls, path: str, keep: int) -> Journal:
        """Reopen after a worker died, keeping the first `keep` records (the
        frames the ring says were committed; later ones are written again)."""
        header, records, ends = scan(path)
        del header
        if len(records) < keep:
            raise ValueError(
                f"{path}: journal holds {len(records)} records, the ring says "
                f"{keep} frames were committed"
            )
        fd = os.open(os_path(path), _O_APPEND)
        os.ftruncate(fd, ends[keep])
        return cls(path, fd, keep)

    def append(self, entries: Iterable[tuple[int, int, bytes]]) -> None:
        """Record frames (index, file position, metadata JSON) as committed."""
        lines = [
            b'{"i":%d,"k":%d,"m":%s}\n' % (i, k, m or b"{}") for i, k, m in entries
        ]
        _write_all(self._fd, b"".join(lines))
        self.records += len(lines)

    def sync(self) -> None:
        os.fsync(self._fd)

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def remove(self) -> None:
        self.close()
        unlink(self.path)


class MemoryJournal:
    """The journal of a sink that keeps no files: the indices, in memory."""

    def __init__(self) -> None:
        from array import array

        self.indices = array("q")
        self.path = ""

    @property
    def records(self) -> int:
        return len(self.indices)

    def append(self, entries: Iterable[tuple[int, int, bytes]]) -> None:
        self.indices.extend(i for i, _, _ in entries)

    def sync(self) -> None:
        """Nothing is kept, so nothing to make durable."""

    def settle(self) -> None:
        """Nothing to make durable."""

    def close(self) -> None:
        """Nothing to close."""

    def remove(self) -> None:
        """Nothing to remove."""


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def parse_record(line: bytes) -> tuple[int, int, bytes] | None:
    """(index, position, metadata) of one complete line, or None if torn."""
    m = _RECORD.match(line)
    if m is None or not line.endswith(b"}\n"):
        return None
    return int(m.group(1)), int(m.group(2)), line[m.end() : -2]


def read_header(path: str) -> JournalHeader:
    """The journal's first line, every number in its spec checked (a journal
    is a file, and files may lie); ValueError if absent or malformed."""
    from mesowriter._untrusted import read_journal_header

    return read_journal_header(path)


def scan(path: str) -> tuple[JournalHeader, list[tuple[int, int, bytes]], list[int]]:
    """A journal's header, its complete records and the byte offset after
    the header and after each record (`ends[n]` = length keeping n)."""
    header = read_header(path)
    records: list[tuple[int, int, bytes]] = []
    with open(os_path(path), "rb", buffering=1 << 20) as fh:
        pos = len(fh.readline())
        ends = [pos]
        for line in fh:
            rec = parse_record(line)
            if rec is None:
                break
            records.append(rec)
            pos += len(line)
            ends.append(pos)
    return header, records, ends


def iter_records(path: str, limit: int | None = None) -> Iterator[tuple[int, bytes]]:
    """(frame index, metadata JSON) of the journalled frames, in order.

    Reads one line at a time, so finalising a 100 000-frame stream never
    holds the journal in memory; stops at a torn last line.
    """
    n = 0
    with open(os_path(path), "rb", buffering=1 << 20) as fh:
        fh.readline()  # the header
        for line in fh:
            if limit is not None and n >= limit:
                return
            rec = parse_record(line)
            if rec is None:
                return
            yield rec[0], rec[2]
            n += 1


def write_sidecar(
    sidecar: SidecarSpec,
    groups: dict[str, Iterable[bytes]],
    extra: dict[str, Any] | None = None,
) -> int:
    """Write the sidecar atomically from already-encoded items; return how
    many were written. Items are joined without re-encoding."""
    count = 0

    def chunks() -> Iterator[bytes]:
        nonlocal count
        nested = sidecar.layout == "frame_metadatas"
        yield b'{"frame_metadatas":{' if nested else b"{"
        first = True
        for key, items in groups.items():
            yield (b"" if first else b",") + _encoder.encode(key) + b":["
            first = False
            for n, item in enumerate(items):
                yield b"," + item if n else item
                count += 1
            yield b"]"
        if nested:
            yield b"}"
            first = False
        for key, value in (extra or {}).items():
            if nested and key == "frame_metadatas":
                continue
            yield (b"" if first else b",") + _encoder.encode(key) + b":"
            yield _encoder.encode(value)
            first = False
        yield b"}"

    atomic_write(sidecar.path, chunks())
    return count


def journal_metadata(path: str, frames: int | None = None) -> Iterator[bytes]:
    """The metadata of a journal's frames; `frames` beyond the records are
    frames whose pixels are durable but whose metadata was lost (marked)."""
    n = 0
    for _, meta in iter_records(path, frames):
        yield meta
        n += 1
    while frames is not None and n < frames:
        yield MISSING_METADATA
        n += 1


def write_group_sidecar(
    sidecar: SidecarSpec,
    extra: dict[str, Any] | None = None,
    frames: dict[str, int] | None = None,
) -> int:
    """Join every member's journal into the run's one sidecar.

    `frames` may say how many frames a member holds where that exceeds its
    journal (recover); those frames get a marker saying their metadata was
    lost. A member without a journal and without a count contributes an
    empty list (its data file keeps its metadata in the OME-XML annotation),
    and so does a member counted 0 (one whose stream never opened): whatever
    sits at its journal's name is not this run's and is not even opened.
    """
    groups: dict[str, Iterable[bytes]] = {}
    for key, data_path in sidecar.members:
        jpath = journal_path(data_path)
        n = (frames or {}).get(key)
        if n == 0:
            groups[key] = ()
        elif os.path.exists(jpath):
            groups[key] = journal_metadata(jpath, n)
        else:
            groups[key] = (MISSING_METADATA for _ in range(n or 0))
    return write_sidecar(sidecar, groups, extra)


__all__ = [
    "MISSING_METADATA",
    "Journal",
    "JournalHeader",
    "atomic_write",
    "iter_records",
    "journal_metadata",
    "read_header",
    "scan",
    "write_group_sidecar",
    "write_sidecar",
]
