"""The metadata journal and the legacy sidecar it becomes.

While a stream is open its worker appends one JSON line per frame written
(frame index, file position and the metadata bytes exactly as the producer
encoded them). A crash keeps every complete line; the first line says what
the stream was. At completion the journal becomes the legacy sidecar::

    <data file>_frame_metadata.json = {"<position key>": [meta, meta, ...]}

built by joining the stored JSON bytes, never re-encoding them, and written
atomically (`mesowriter._platform.atomic_write`). Every file here is binary
(no CRLF on Windows) and opened through `os_path` (long Windows paths).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from typing import Any

import msgspec

from mesowriter._platform import O_BINARY, O_NOFOLLOW, os_path, unlink
from mesowriter._platform import atomic_write as atomic_write
from mesowriter._spec import StreamSpec

JOURNAL_VERSION = 1


class JournalHeader(msgspec.Struct, frozen=True):
    mesowriter_journal: int
    spec: StreamSpec


class JournalRecord(msgspec.Struct, frozen=True):
    i: int  # the stream's frame index (order of receipt)
    k: int  # position in the data file
    m: msgspec.Raw  # metadata JSON, verbatim


_header_decoder = msgspec.json.Decoder(JournalHeader)
_record_decoder = msgspec.json.Decoder(JournalRecord)
_encoder = msgspec.json.Encoder()


class Journal:
    """Append-only, newline-delimited JSON; its valid prefix survives a crash."""

    def __init__(self, path: str, fd: int, records: int) -> None:
        self.path = path
        self._fd = fd
        self.records = records

    @classmethod
    def create(cls, path: str, spec: StreamSpec) -> Journal:
        flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_APPEND | O_BINARY
        fd = os.open(os_path(path), flags | O_NOFOLLOW, 0o644)
        os.write(fd, _encoder.encode(JournalHeader(JOURNAL_VERSION, spec)) + b"\n")
        return cls(path, fd, 0)

    @classmethod
    def reopen(cls, path: str) -> Journal:
        """Reopen after a crash: drop a torn last line, keep the rest."""
        header, records, valid_bytes = scan(path)
        del header
        fd = os.open(os_path(path), os.O_WRONLY | os.O_APPEND | O_BINARY | O_NOFOLLOW)
        os.ftruncate(fd, valid_bytes)
        return cls(path, fd, len(records))

    def append(self, entries: list[tuple[int, int, bytes]]) -> None:
        """Record frames (index, file position, metadata JSON) as written."""
        lines = [
            b'{"i":%d,"k":%d,"m":%s}\n' % (i, k, m or b"{}") for i, k, m in entries
        ]
        data = b"".join(lines)
        view = memoryview(data)
        while view:
            n = os.write(self._fd, view)
            view = view[n:]
        self.records += len(entries)

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def remove(self) -> None:
        self.close()
        unlink(self.path)


def scan(path: str) -> tuple[JournalHeader, list[JournalRecord], int]:
    """Read a journal: its header, its complete records, its valid length."""
    with open(os_path(path), "rb") as fh:
        data = fh.read()
    first = data.find(b"\n")
    if first < 0:
        raise ValueError(f"{path}: journal has no complete header")
    header = _header_decoder.decode(data[:first])
    records: list[JournalRecord] = []
    pos = first + 1
    while True:
        end = data.find(b"\n", pos)
        if end < 0:
            break
        try:
            records.append(_record_decoder.decode(data[pos:end]))
        except msgspec.DecodeError:
            break
        pos = end + 1
    return header, records, pos


def iter_records(path: str) -> Iterator[tuple[int, bytes]]:
    """(frame index, metadata JSON) of every journalled frame, in file order.

    Reads one line at a time, so finalising a 100 000-frame stream never
    holds the journal in memory; stops at a torn last line, like `scan`.
    """
    with open(os_path(path), "rb", buffering=1 << 20) as fh:
        fh.readline()  # the header
        for line in fh:
            if not line.endswith(b"\n"):
                return
            try:
                rec = _record_decoder.decode(line[:-1])
            except msgspec.DecodeError:
                return
            yield rec.i, bytes(rec.m)


def write_sidecar(
    path: str,
    groups: dict[str, Iterable[bytes]],
    extra: dict[str, Any] | None = None,
) -> int:
    """Write {key: [meta, ...], **extra} atomically; return the items written.

    Items are already-encoded JSON, streamed to a temporary file and joined
    without re-encoding, then the file is synced and renamed into place.
    """
    count = 0

    def chunks() -> Iterator[bytes]:
        nonlocal count
        yield b"{"
        first = True
        for key, items in groups.items():
            if not first:
                yield b","
            first = False
            yield _encoder.encode(key) + b":["
            for n, item in enumerate(items):
                yield b"," + item if n else item
                count += 1
            yield b"]"
        for key, value in (extra or {}).items():
            if not first:
                yield b","
            first = False
            yield _encoder.encode(key) + b":" + _encoder.encode(value)
        yield b"}"

    atomic_write(path, chunks())
    return count
