"""The message protocol between the user's process and writer workers.

Pixels never travel here: they sit in the ring. These small msgspec structs
travel over one pipe in each direction per worker::

    parent -> worker   MapBlock, UnmapBlock, OpenStream, Doorbell, WantSpace,
                       CloseStream, Shutdown
    worker -> parent   BlockMapped, StreamOpened, Space, StreamFailed,
                       StreamClosed

`MapBlock` hands a worker a pool block as soon as it exists, so the worker
maps and pre-faults it before any stream needs it (a warm start).
`Doorbell` says "frames were published on this stream" (the cursor in the
ring says how many). `WantSpace` is how a producer facing a full ring asks
to be woken: a message in the same ordered pipe, not a shared flag, so the
worker cannot miss it. `CloseStream` carries what only the producer knows,
so the worker writes the complete report even if the producer then dies.
"""

from __future__ import annotations

from typing import Any

import msgspec

from mesowriter._report import ProducerStats
from mesowriter._ring import RingLayout
from mesowriter._spec import StreamSpec


class RemoteError(msgspec.Struct, frozen=True):
    """An exception raised in a worker, carried back with its traceback."""

    type: str
    message: str
    traceback: str
    errno: int | None = None


class MapBlock(msgspec.Struct, frozen=True, tag=True):
    name: str


class UnmapBlock(msgspec.Struct, frozen=True, tag=True):
    name: str


class OpenStream(msgspec.Struct, frozen=True, tag=True):
    spec: StreamSpec
    ring: RingLayout
    resume: bool = False
    # A replacement of a worker that died before it answered the open: the
    # file, if there, may hold that worker's start and nothing else.
    reopen: bool = False


class Doorbell(msgspec.Struct, frozen=True, tag=True, gc=False):
    stream_id: int
    # Frames published so far; -1: read the ring's write cursor (x86-64).
    published: int = -1


class WantSpace(msgspec.Struct, frozen=True, tag=True, gc=False):
    stream_id: int
    seq: int  # the frame waiting for a slot


class CloseStream(msgspec.Struct, frozen=True, tag=True):
    stream_id: int
    published: int  # frames the producer published in all
    reason: str
    producer: ProducerStats
    # Known only at the end (CV2Writer.finish): merged into the sidecar.
    extra_metadata: dict[str, Any] | None = None


class Shutdown(msgspec.Struct, frozen=True, tag=True):
    pass


class BlockMapped(msgspec.Struct, frozen=True, tag=True):
    name: str
    error: str | None = None


class StreamOpened(msgspec.Struct, frozen=True, tag=True):
    stream_id: int
    resumed_from: int = 0
    error: RemoteError | None = None


class Space(msgspec.Struct, frozen=True, tag=True, gc=False):
    stream_id: int


class StreamFailed(msgspec.Struct, frozen=True, tag=True):
    stream_id: int
    error: RemoteError


class StreamClosed(msgspec.Struct, frozen=True, tag=True):
    stream_id: int
    report: bytes  # StreamReport JSON; empty: the stream never opened there


ToWorker = (
    MapBlock | UnmapBlock | OpenStream | Doorbell | WantSpace | CloseStream | Shutdown
)
ToParent = BlockMapped | StreamOpened | Space | StreamFailed | StreamClosed

encoder = msgspec.msgpack.Encoder()
to_worker_decoder = msgspec.msgpack.Decoder(ToWorker)
to_parent_decoder = msgspec.msgpack.Decoder(ToParent)
