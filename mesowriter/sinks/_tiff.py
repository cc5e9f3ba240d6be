"""TIFF sink: BigTIFF OME-TIFF or ImageJ hyperstack, pixels contiguous, direct I/O.

Where things are in the file, and why, is `sinks/_tiff_format.py`. This module
is the writer: it runs in a writer process and turns batches of ring slots
into pixels, IFDs and descriptions, in an order that survives a power cut.

Pixels. A batch of consecutive frames is one write at one offset. When a
frame's size is a multiple of 4096 bytes the ring's slots are consecutive
bytes, so the write goes straight from shared memory to the disk (direct
I/O). Other sizes are staged by this process into an aligned buffer that
carries the partial last page forward to the next batch (one such batch in
flight at a time, since two batches share that page). Several batches are in
flight at once (`write_depth`), each on a thread around `pwrite`, which
releases the GIL; their IFDs go through the page cache on a thread of their
own, so a buffered write waiting for the inode lock never holds a pixel
write back.

The durable order of one commit (a group of completed batches)::

    submit:  pixels (direct)  +  the batch's IFDs, unlinked (next = 0)
    commit:  1. sync                 pixels and IFDs of the group durable
             2. link the IFDs        chain extends over the group
             3. header block         committed = n (checksummed sector)
                sync                 links and block durable
             4. description          declares the linked frames
             (the journal lines follow, then their own sync: see the worker)

A commit runs on a committer thread of its own, one at a time, while the
writer loop goes on submitting batches (a sync waits for the drive, which
would otherwise idle while the loop waited too). What it writes is built
before it starts; the sink's counts move, and the worker hears of the
frames, only once its last step has returned. A commit that fails is not
retried (Linux reports lost pages to one sync only): the stream stops, and
the file keeps what earlier commits made durable.

So at any instant of a cut the chain, the block, the description and the
journal each describe only frames whose pixels reached the disk, and
`recover` finds every frame the block or the journal vouches for. A commit
is due every `COMMIT_BYTES` or `COMMIT_SECONDS`, whichever comes first, as
soon as frames stop arriving (the worker says when), and at close: a power
cut loses at most what the ring held plus that much.

ImageJ (`.tif` names): planes go in TZC order whatever the acquisition
order, so a t/c/z acquisition is reordered in the file (each frame at the
position its event index gives); the IFD chain and the description cover the
longest run of written positions from 0.
"""

from __future__ import annotations

import errno
import os
import socket
import time
from collections import deque
from concurrent import futures
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import msgspec
import numpy as np

from mesowriter._layout import ImagejPlan, event_index, imagej_plan
from mesowriter._platform import (
    O_BINARY,
    O_NOFOLLOW,
    AlignedFile,
    Mode,
    fsync_dir,
    is_aligned,
    os_path,
)
from mesowriter._ring import page_aligned_buffer, page_unit
from mesowriter._spec import StreamSpec
from mesowriter.sinks._base import (
    COMMIT_BYTES,
    COMMIT_SECONDS,
    BatchFailed,
    FrameBatch,
    ResumeState,
    Sink,
    SinkFinalised,
)
from mesowriter.sinks._imagej import final_description, flat_description
from mesowriter.sinks._omexml import build_ome_xml, provisional_ome_xml
from mesowriter.sinks._tiff_format import (
    CLASSIC_LIMIT,
    DESCRIPTION_CAPACITY,
    DESCRIPTION_OFFSET,
    PAGE,
    SOFTWARE,
    SOFTWARE_OFFSET,
    UNKNOWN_FRONT_CAPACITY,
    WRITABLE_DTYPES,
    Geometry,
    HeaderBlock,
    IfdCodec,
    header_bytes,
    newest_block,
    round_up,
)

TIFF_SUFFIXES = (".ome.tiff", ".ome.tif", ".ome.btf", ".tiff", ".tif", ".btf")
OME_SUFFIXES = (".ome.tiff", ".ome.tif", ".ome.btf")
CLASSIC_SUFFIXES = (".tif", ".tiff")
GROW_BYTES = 256 * 1024 * 1024
DEFAULT_WRITE_DEPTH = 4
PROVISIONAL = (DESCRIPTION_CAPACITY, DESCRIPTION_OFFSET)


def tiff_suffix(path: str) -> str | None:
    lower = path.lower()
    return next((s for s in TIFF_SUFFIXES if lower.endswith(s)), None)


def tiff_format(path: str) -> str:
    """ "ome" for `.ome.tif(f)` names, "imagej" for other TIFF names."""
    return "ome" if path.lower().endswith(OME_SUFFIXES) else "imagej"


@dataclass
class _Pending:
    """One submitted batch: its frames' file positions and its writes."""

    positions: list[int]
    futures: list[Future[int]]
    nbytes: int
    done_at: float = 0.0
    stage: Any = None  # the aligned buffer a staged batch was copied into
    mid_page: bool = False  # staged, and its last page is partly padding


@dataclass
class _CommitJob:
    """A commit on the committer thread, and what the state becomes once
    it returns (nothing changes before: the worker journals only durable
    frames)."""

    done: list[_Pending]
    positions: list[int]
    committed: int
    prefix: int
    future: Future[None]


@dataclass
class _State:
    """What the file holds, as far as commits went."""

    committed: int = 0  # frames durable, acquisition order
    prefix: int = 0  # positions [0, prefix) durable and linked
    declared: int = 0  # frames the provisional description declares
    top: int = 0  # one past the highest position submitted
    written: bytearray = field(default_factory=bytearray)  # reordered files


class TiffSink(Sink):
    """Writes one position's frames to a TIFF (OME or ImageJ)."""

    kind: ClassVar[str] = "ome-tiff"
    suffixes: ClassVar[tuple[str, ...]] = TIFF_SUFFIXES
    retry_by_frame: ClassVar[bool] = True

    def __init__(self, spec: StreamSpec) -> None:
        super().__init__(spec)
        self.format = tiff_format(spec.path)
        self.plan: ImagejPlan | None = None
        if self.format == "imagej":
            self.plan = imagej_plan(spec.sequence, spec.position_index or 0)
        self.reordered = self.plan is not None and self.plan.reordered
        self.depth = max(1, spec.write_depth)
        self.file: AlignedFile | None = None
        self.geo = Geometry(tuple(spec.shape), spec.dtype, 0)
        self.codec = IfdCodec(tuple(spec.shape), spec.dtype, bigtiff=True)
        self.tail = 0
        self.state = _State()
        self.generation = 0
        self._pending: deque[_Pending] = deque()
        self._completed: list[_Pending] = []
        self._pool: ThreadPoolExecutor | None = None
        self._ifd_writer: ThreadPoolExecutor | None = None
        self._committer: ThreadPoolExecutor | None = None
        self._job: _CommitJob | None = None  # the commit in flight
        self._broken: Exception | None = None  # a commit failed: no more
        self._carry = b""  # the partial last page of staged pixels
        self._carry_at = -1  # its file offset
        self._stages: list[Any] = []  # free aligned buffers for staged batches
        self._staged_batches = 0
        self._mid_page_batches = 0  # staged batches ending inside a page
        self._commits = 0
        self._commit_seconds = 0.0  # the committer thread busy in commits
        self.commit_bytes = COMMIT_BYTES  # the worker lowers it for small rings
        self._overflow = 0  # ImageJ positions handed out past the hyperstack
        self._assigned = 0  # frames given a position (submitted)
        self._inflight: set[int] = set()  # positions submitted, not committed
        # Positions of the frames harvested (writes returned) and not yet
        # committed, in order: the job's, then the completed batches'. Kept
        # as they move rather than rebuilt: the worker asks after every pump.
        self._written: list[int] = []
        self._reserved = 0  # bytes reserved on disk from offset 0
        self._desc0: tuple[int, int] | None = PROVISIONAL
        self._on_io: Any = None
        self._image_name = Path(spec.path).name
        self._owner = f"{os.getpid()}@{socket.gethostname()}"[:96]

    # -- the format, for the user's process -------------------------------------
    @classmethod
    def check(cls, spec: StreamSpec) -> None:
        if tiff_suffix(spec.path) is None:
            raise ValueError(
                f"{spec.path!r}: a TIFF path must end in one of {TIFF_SUFFIXES}"
            )
        dtype = np.dtype(spec.dtype)
        if dtype.str[1:] not in WRITABLE_DTYPES:
            raise ValueError(f"TIFF cannot hold pixels of dtype {dtype}")
        shape = spec.shape
        if len(shape) not in (2, 3) or (len(shape) == 3 and shape[2] != 3):
            raise ValueError(
                "TIFF frames must be (height, width) or (height, width, 3); "
                f"got {shape}"
            )
        if any(int(s) <= 0 for s in shape):
            raise ValueError(f"frame shape {shape} holds no pixels")
        if len(shape) == 3 and dtype.str[1:] not in ("u1", "u2"):
            raise ValueError("RGB frames must be uint8 or uint16")

    @classmethod
    def recover(cls, path: str, **options: Any) -> Any:
        from mesowriter.sinks._tiff_recover import recover_tiff

        return recover_tiff(path, **options)

    @classmethod
    def inspect(cls, path: str) -> dict[str, Any]:
        from mesowriter._inspect import inspect_tiff

        return inspect_tiff(path)

    @classmethod
    def space_needed(cls, spec: StreamSpec) -> int:
        """Bytes on disk before the first frame can be written."""
        geo = Geometry(tuple(spec.shape), spec.dtype, _front_capacity(spec))
        if spec.frames is not None:
            return geo.data_end(spec.frames) + PAGE
        return geo.data_offset + min(COMMIT_BYTES, max(geo.frame_nbytes, PAGE))

    @classmethod
    def never_started(cls, path: str) -> bool:
        """A first page of zeros (created, header not yet written), or a
        header block still `writing` with nothing committed."""
        try:  # never through a planted link
            fd = os.open(os_path(path), os.O_RDONLY | O_BINARY | O_NOFOLLOW)
        except OSError:
            return False
        try:
            page0 = os.pread(fd, PAGE, 0)
        finally:
            os.close(fd)
        block = newest_block(page0)
        if block is None:
            return not any(page0)
        return block.state == "writing" and block.committed == 0

    # -- lifecycle ------------------------------------------------------------------
    def open(self, resume: ResumeState | None = None) -> None:
        spec = self.spec
        self._pool = ThreadPoolExecutor(self.depth, thread_name_prefix="mesowriter-io")
        self._ifd_writer = ThreadPoolExecutor(1, thread_name_prefix="mesowriter-ifd")
        self._committer = ThreadPoolExecutor(1, thread_name_prefix="mesowriter-commit")
        if resume is not None:
            self._resume(resume)
            return
        mode: Mode = "overwrite" if spec.overwrite else "create"
        f = self.file = _with_faults(
            AlignedFile(spec.path, mode=mode, direct=self._direct()), spec
        )
        self.geo = Geometry(tuple(spec.shape), spec.dtype, _front_capacity(spec))
        if spec.frames is not None:
            self._reserved = self.geo.data_end(spec.frames)
        else:
            f.make_sparse()
            self._reserved = self.geo.data_offset
        f.reserve(0, self._reserved)
        page0 = bytearray(PAGE)
        page0[:16] = header_bytes(0, bigtiff=True)
        page0[SOFTWARE_OFFSET : SOFTWARE_OFFSET + len(SOFTWARE)] = SOFTWARE
        block = self._block("writing")
        page0[block.slot : block.slot + 512] = block.encode()
        f.pwrite_meta(bytes(page0), 0)
        self._write_description(0)  # durable in `settle`

    def settle(self) -> None:
        """The header, block and description durable, and the file's name."""
        assert self.file is not None
        self.file.sync()
        fsync_dir(os.path.dirname(os.path.abspath(self.spec.path)))

    def _direct(self) -> bool:
        """Direct I/O, except for scattered frames (a reordered ImageJ file)
        of a size it cannot take: those go through the cache."""
        unaligned = self.geo.frame_nbytes % PAGE != 0
        return self.spec.direct_io and not (self.reordered and unaligned)

    def _resume(self, resume: ResumeState) -> None:
        """Reopen a file a worker died writing; the ring still holds the rest."""
        f = self.file = _with_faults(
            AlignedFile(self.spec.path, mode="resume", direct=self._direct()),
            self.spec,
        )
        block = newest_block(f.pread(PAGE, 0))
        if block is None:
            raise RuntimeError(
                f"{self.spec.path}: no mesowriter header block to resume from"
            )
        if block.state == "final":
            raise SinkFinalised(f"{self.spec.path} is already final", block.committed)
        self.geo = block.geometry()
        self.generation = block.generation
        self.tail = block.tail_offset
        st = self.state
        st.committed = self._assigned = resume.committed
        self._reserved = f.size()
        positions = (
            resume.positions if self.reordered else list(range(resume.committed))
        )
        for p in positions:
            self._mark(p)
        st.top = max(positions, default=-1) + 1
        images = self.plan.images if self.plan is not None else 0
        self._overflow = max(
            (p + 1 - images for p in positions if p >= images), default=0
        )
        st.prefix = self._prefix_after([])
        # Relink exactly the durable prefix: a frame past it is written again,
        # unless the worker that died had written it (adopted below).
        if st.prefix:
            self._link(0, st.prefix)
            self._write_header_pointer()
        self._write_block("writing")
        f.sync()
        st.declared = -1
        self._write_description(st.prefix)
        self._adopt(resume.written)

    def _adopt(self, written: list[int]) -> None:
        """Take the frames the dead worker wrote and did not commit as
        written by this sink (pixels and unlinked IFDs are in the file, at
        `written`): the next commit syncs and links them. Their ring slots
        may hold later frames already, so nothing is read from them."""
        if not written:
            return
        limit = self.geo.data_end(max(written) + 1)
        if limit > self._reserved:
            raise RuntimeError(
                f"{self.spec.path}: frames to adopt lie past the file's end "
                f"({limit} > {self._reserved} bytes)"
            )
        st = self.state
        if self.reordered:
            if len(set(written)) != len(written) or any(
                self._is_written_or_pending(p) for p in written
            ):
                raise RuntimeError(
                    f"{self.spec.path}: frames to adopt repeat file positions"
                )
            self._inflight.update(written)
            images = self.plan.images if self.plan is not None else 0
            self._overflow = max(self._overflow, max(p + 1 - images for p in written))
        elif written != list(range(st.committed, st.committed + len(written))):
            raise RuntimeError(
                f"{self.spec.path}: frames to adopt are not the next positions"
            )
        self._assigned += len(written)
        st.top = max(st.top, max(written) + 1)
        nbytes = len(written) * self.geo.frame_nbytes
        done = _Pending(list(written), [], nbytes, done_at=time.monotonic())
        self._completed.append(done)
        self._written = list(written)

    # -- frames ------------------------------------------------------------------------
    def ready(self) -> bool:
        if self._pending and self._pending[-1].mid_page:
            # The next batch shares a page with this one, whose write pads
            # that page with zeros (a fall back to buffered writes too).
            return False
        return len(self._pending) < self.depth

    def batch_unit(self) -> int:
        """Staged frames (a size off the page grid, direct I/O): how many end
        on a page boundary. Batches of whole units share no page, so several
        can be in flight; they are copied into an aligned buffer anyway, so
        they may wrap around the ring. 1 otherwise."""
        f = self.file
        if self.reordered or f is None or not f.direct:
            return 1
        return page_unit(self.geo.frame_nbytes, f.alignment)

    def submit(self, batch: FrameBatch) -> list[int]:
        """Start writing a batch; returns positions committed meanwhile (a
        tail extent that had to move commits everything in flight first)."""
        f = self.file
        assert f is not None and self._pool is not None
        if self._broken is not None:
            raise OSError(errno.EIO, f"an earlier commit failed: {self._broken}")
        positions = [self._place(fr.metadata) for fr in batch.frames]
        try:
            committed = self._ensure_room(max(positions) + 1)
        except BatchFailed as exc:
            self._inflight.difference_update(positions)
            if exc.discarded or self._broken is not None:
                raise  # every write in flight went (or a commit failed)
            self._assigned -= len(positions)
            raise BatchFailed(exc.committed, len(positions), 0, exc.cause) from exc
        except Exception as exc:  # e.g. no room left to reserve
            self._inflight.difference_update(positions)
            self._assigned -= len(positions)
            raise BatchFailed([], len(positions), 0, as_oserror(exc)) from exc
        futures, stage = self._write_pixels(batch, positions)
        # The batch's IFDs, unlinked, on a thread of their own: a buffered
        # write to the file can wait for the direct writes in flight (ext4
        # takes the inode lock for it), which would stall the next batch
        # here, and on a pixel thread it kept a pixel write waiting (1000x1000
        # frames, 6 rounds against fio: 0.93 -> 1.00).
        ifds = self._unlinked_ifds(positions)
        assert self._ifd_writer is not None
        futures.append(self._ifd_writer.submit(self._put_all, ifds))
        st = self.state
        st.top = max(st.top, max(positions) + 1)
        nbytes = len(positions) * self.geo.frame_nbytes
        mid_page = stage is not None and bool(self._carry)
        self._pending.append(
            _Pending(positions, futures, nbytes, stage=stage, mid_page=mid_page)
        )
        if self._on_io is not None:
            for fu in futures:
                fu.add_done_callback(self._on_io)
        return committed

    def _place(self, metadata: bytes) -> int:
        """The file position of the next frame (acquisition order, or for a
        reordered ImageJ file the place its event index gives)."""
        self._assigned += 1
        if not self.reordered:
            return self._assigned - 1
        assert self.plan is not None
        idx = None
        try:
            meta = msgspec.json.decode(metadata)
            if type(meta) is dict:
                idx = event_index(meta)
        except (msgspec.DecodeError, ValueError, RecursionError):
            idx = None
        pos = self.plan.position(idx) if idx is not None else None
        if pos is None or self._is_written_or_pending(pos):
            # Not in the hyperstack (or a repeat): after it, in arrival order.
            pos = self.plan.images + self._overflow
            self._overflow += 1
        self._inflight.add(pos)
        return pos

    def _is_written_or_pending(self, pos: int) -> bool:
        w = self.state.written
        return (pos < len(w) and bool(w[pos])) or pos in self._inflight

    def _ensure_room(self, top: int) -> list[int]:
        """Reserve disk for positions < top and keep the tail extent past them."""
        geo = self.geo
        committed: list[int] = []
        if top > geo.front_capacity:
            if not self.tail:
                committed = self._relocate_tail(geo.grown_tail(top, 0))
            elif top > geo.tail_reserve(self.tail):
                committed = self._relocate_tail(geo.grown_tail(top, self.tail))
        try:
            self._reserve_room(top)
        except Exception as exc:
            if not committed:
                raise
            # The relocation committed what was in flight: say so.
            raise BatchFailed(committed, 0, 0, as_oserror(exc)) from exc
        return committed

    def _reserve_room(self, top: int) -> None:
        """Reserve disk for positions < top, ahead by GROW_BYTES."""
        f = self.file
        assert f is not None
        end = self.geo.data_end(top)
        if self.spec.frames is None or top > self.spec.frames:
            want = round_up(end + GROW_BYTES)
            if self._reserved < end:
                try:
                    f.reserve(self._reserved, want - self._reserved)
                    self._reserved = want
                except OSError as exc:
                    if exc.errno != errno.ENOSPC:
                        raise
                    # A nearly full disk: room for this batch only.
                    f.reserve(self._reserved, round_up(end) - self._reserved)
                    self._reserved = round_up(end)

    def _relocate_tail(self, new_tail: int) -> list[int]:
        """Move the tail extent past the data that is about to grow into it.

        Everything in flight is committed first; the IFDs are written anew at
        the new place, made durable, and only then is the chain switched to
        them and that made durable, before any pixel overwrites the old place.
        """
        f = self.file
        assert f is not None
        committed = self.drain()
        fc = self.geo.front_capacity
        old = self.tail
        st = self.state
        try:
            self.tail = new_tail
            if old and st.top > fc:
                self._write_ifds(fc, st.top, linked_until=st.prefix)
            f.reserve(new_tail, max(st.top - fc, 1) * self.codec.stride)
            f.sync()
        except Exception as exc:
            self.tail = old  # the chain still runs through the old extent
            raise BatchFailed(committed, 0, 0, as_oserror(exc)) from exc
        # From here the new extent is durable: the switch is one link (or the
        # header pointer) and the block, made durable before any pixel lands
        # on the old extent.
        if st.prefix > fc:
            if fc:
                self._write_ifds(fc - 1, fc, linked_until=st.prefix)
            else:
                self._write_header_pointer()
        self._write_block("writing")
        f.sync()
        return committed

    def _unlinked_ifds(self, positions: list[int]) -> list[tuple[bytes, int]]:
        """The IFDs of a batch, each ending the chain: (bytes, offset)."""
        return [
            w
            for first, stop in _runs(sorted(positions))
            for w in self._ifds(first, stop, linked_until=0)
        ]

    def _put_all(self, writes: list[tuple[bytes, int]]) -> int:
        f = self.file
        assert f is not None
        for data, offset in writes:
            f.pwrite_meta(data, offset)
        return 0

    def _write_ifds(self, first: int, stop: int, *, linked_until: int) -> None:
        """(Re)write the IFDs of positions [first, stop) (see `_ifds`)."""
        self._put_all(self._ifds(first, stop, linked_until=linked_until))

    def _ifds(
        self, first: int, stop: int, *, linked_until: int
    ) -> list[tuple[bytes, int]]:
        """The IFDs of positions [first, stop), split by extent.

        IFD p links to p+1 when p + 1 < linked_until, else ends the chain.
        Built here, so that writing them elsewhere reads no changing state.
        """
        out: list[tuple[bytes, int]] = []
        geo = self.geo
        fc = geo.front_capacity
        p = first
        while p < stop:
            seg_stop = min(stop, fc) if p < fc else stop
            start = p
            if p == 0:
                nxt = geo.ifd_offset(1, self.tail) if linked_until > 1 else 0
                ifd0 = self.codec.build(
                    pixel_offset=geo.pixel_offset(0),
                    next_ifd=nxt,
                    description=self._desc0,
                )
                out.append(
                    (ifd0.ljust(self.codec.stride, b"\x00"), geo.ifd_offset(0, 0))
                )
                start = 1
            if start < seg_stop:
                pix = [geo.pixel_offset(q) for q in range(start, seg_stop)]
                nxt_list = [
                    geo.ifd_offset(q + 1, self.tail) if q + 1 < linked_until else 0
                    for q in range(start, seg_stop)
                ]
                buf = self.codec.run(pix, nxt_list)
                out.append((bytes(buf), geo.ifd_offset(start, self.tail)))
            p = seg_stop
        return out

    _desc0: tuple[int, int] | None = PROVISIONAL

    def _write_pixels(
        self, batch: FrameBatch, positions: list[int]
    ) -> tuple[list[Future[int]], Any]:
        f = self.file
        assert f is not None and self._pool is not None
        geo = self.geo
        fb = geo.frame_nbytes
        contiguous = positions == list(
            range(positions[0], positions[0] + len(positions))
        )
        pool = self._pool
        if contiguous and batch.span is not None and batch.slot_stride == fb:
            # The slots are the file's bytes: one write straight from the
            # ring, where direct I/O allows (frames of any size, once the
            # batch starts and ends on a page in the file and in memory).
            span = batch.span[: len(positions) * fb]
            offset = geo.pixel_offset(positions[0])
            if not f.direct or is_aligned(span, offset, f.alignment):
                return [pool.submit(f.pwrite, span, offset)], None
        if contiguous and f.direct:
            return self._write_staged(batch, positions[0])
        return [
            pool.submit(
                f.pwrite, fr.pixels.reshape(-1).view(np.uint8), geo.pixel_offset(p)
            )
            for fr, p in zip(batch.frames, positions, strict=True)
        ], None

    def _write_staged(
        self, batch: FrameBatch, first: int
    ) -> tuple[list[Future[int]], Any]:
        """Copy frames into an aligned buffer (this process's copy, not the
        acquisition's), with the previous batch's partial page in front."""
        f = self.file
        assert f is not None and self._pool is not None

        geo = self.geo
        align = f.alignment
        start = geo.pixel_offset(first)
        end = geo.pixel_offset(first + len(batch.frames))
        base = start - start % align
        lead = start - base
        size = round_up(end - base, align)
        stage = next((b for b in self._stages if len(b) >= size), None)
        if stage is None:
            stage = page_aligned_buffer(max(size, self.commit_bytes))
        else:
            self._stages.remove(stage)
        buf = memoryview(stage)
        if lead:
            mine = self._carry_at == base and len(self._carry) == lead
            buf[:lead] = self._carry if mine else f.pread(lead, base)
        n = end - start
        if batch.span is not None and batch.slot_stride == self.geo.frame_nbytes:
            buf[lead : lead + n] = batch.span[:n]  # one copy of the whole batch
        else:
            at = lead
            for fr in batch.frames:
                raw = fr.pixels.reshape(-1).view(np.uint8)
                buf[at : at + raw.size] = raw.data
                at += raw.size
        buf[lead + n : size] = bytes(size - lead - n)
        tail_start = (end - base) - (end - base) % align
        self._staged_batches += 1
        self._mid_page_batches += tail_start != end - base
        self._carry = bytes(buf[tail_start : end - base])
        self._carry_at = base + tail_start
        return [self._pool.submit(f.pwrite, buf[:size], base)], stage

    # -- commits -----------------------------------------------------------------------
    def on_io(self, callback: Any) -> None:
        """Call `callback(future)` whenever a write or a commit finishes (wakes
        the worker)."""
        self._on_io = callback

    def in_flight(self) -> bool:
        return bool(self._pending or self._completed or self._job)

    def written_uncommitted(self) -> list[int]:
        """Frames harvested, not committed: pixels and IFDs are in the file
        (never read from the ring again: a failure later commits them or
        stops the stream). Only for direct writes, whose errors come back
        from the write itself: a cached write's error comes at the next sync
        or flush, which may be a dead worker's, and a replacement that
        adopted the frames would sync over the lost pages."""
        f = self.file
        return self._written if f is not None and f.direct else []

    def wait_for_writes(self, timeout: float | None) -> None:
        """Block until the oldest write (or the commit) in flight finishes,
        or `timeout`."""
        head = self._pending[0].futures if self._pending else []
        waiting: list[Future[Any]] = [fu for fu in head if not fu.done()]
        if self._job is not None:
            waiting.append(self._job.future)
        if waiting:
            futures.wait(waiting, timeout=timeout, return_when=futures.FIRST_COMPLETED)

    def next_commit_in(self) -> float | None:
        """Seconds until completed writes are due a commit; None if none wait
        or a commit is in flight (its end wakes the worker)."""
        if not self._completed or self._job is not None:
            return None
        return max(0.0, self._completed[0].done_at + COMMIT_SECONDS - time.monotonic())

    def collect(self, *, force: bool = False, idle: bool = False) -> list[int]:
        """Harvest finished writes in order; commit them when due.

        Returns the file positions of the frames newly committed, in
        acquisition order. A commit runs on the committer thread while later
        batches are written; its frames are returned once it has returned.
        `idle` makes completed writes due now (see `Sink.collect`);
        `force` waits for every write in flight and every commit. Raises
        `BatchFailed` when a write failed: the batches before it are
        committed first (their positions are on the exception), later ones
        are waited out and discarded, to be submitted again. A failed commit
        raises it with `failed` 0: nothing is committed from then on.
        """
        now = time.monotonic()
        while self._pending:
            head = self._pending[0]
            if not force and not all(fu.done() for fu in head.futures):
                break
            self._pending.popleft()
            error = _first_error(head.futures)
            self._give_back_stage(head)
            if error is not None:
                self._fail_batch(head, error)
            head.done_at = now
            self._completed.append(head)
            self._written += head.positions
        out = self._finish_commit(wait=force)
        if self._job is not None or not self._completed:
            return out
        due = (
            force
            or idle
            or sum(p.nbytes for p in self._completed) >= self.commit_bytes
            or now - self._completed[0].done_at >= COMMIT_SECONDS
        )
        if due:
            self._then(out, self._start_commit)
            if force:
                out += self._then(out, self._finish_commit, wait=True)
        return out

    @staticmethod
    def _then(committed: list[int], step: Any, **kw: Any) -> list[int]:
        """`step(**kw)`, after frames were `committed`: a failure carries them."""
        try:
            return list(step(**kw) or [])
        except BatchFailed as failed:
            failed.committed = committed + failed.committed
            raise

    def _fail_batch(self, head: _Pending, error: OSError) -> None:
        try:
            committed = self._commit_all()
        except BatchFailed:  # a commit failed too: nothing more is committed
            self._inflight.difference_update(head.positions)
            raise
        later = list(self._pending)
        self._pending.clear()
        for p in later:
            _first_error(p.futures)  # wait; their bytes are never linked
            self._give_back_stage(p)
        discarded = [head, *later]
        for p in discarded:
            self._inflight.difference_update(p.positions)
        self._assigned = self.state.committed
        self._carry = b""
        raise BatchFailed(
            committed,
            len(head.positions),
            sum(len(p.positions) for p in discarded),
            error,
        )

    def _give_back_stage(self, p: _Pending) -> None:
        if p.stage is not None:
            self._stages.append(p.stage)
            p.stage = None

    def drain(self) -> list[int]:
        """Wait for every write in flight and commit it all."""
        out: list[int] = []
        while self.in_flight():
            out += self._then(out, self.collect, force=True)
        return out

    def _give_up(self, exc: Exception, job: _CommitJob | None = None) -> None:
        """A commit failed (or could not start): its writes and every later
        one are never committed (their frames are reported not written);
        what earlier commits made durable stays, and close finalises it. A
        failed sync is not retried: Linux reports lost pages once, and a
        later sync would return success."""
        self._broken = exc
        done = job.done if job is not None else []
        for p in [*done, *self._completed, *self._pending]:
            _first_error(p.futures)  # wait: no write may land after this
            self._give_back_stage(p)
            self._inflight.difference_update(p.positions)
        self._completed.clear()
        self._pending.clear()
        self._written = []
        self._assigned = self.state.committed
        self._carry = b""

    def _commit_all(self) -> list[int]:
        """The commit in flight, then one of every completed write, waited for."""
        out = self._finish_commit(wait=True)
        if self._completed:
            self._then(out, self._start_commit)
            out += self._then(out, self._finish_commit, wait=True)
        return out

    def _start_commit(self) -> None:
        """Commit the completed writes on the committer thread.

        What it writes is built here, from the state as it will be (the
        state itself moves in `_finish_commit`): the links that extend the
        chain over the group, the header block that says how many frames
        are committed, the description that declares them. Raises
        `BatchFailed` (nothing committed, `failed` 0) if it cannot start.
        """
        assert self._job is None
        try:
            if self._broken is not None:
                raise OSError(errno.EIO, f"an earlier commit failed: {self._broken}")
            assert self._committer is not None
            done = self._completed
            positions = [pos for p in done for pos in p.positions]
            st = self.state
            committed = st.committed + len(positions)
            prefix = self._prefix_after(positions)
            links: list[tuple[bytes, int]] = []
            if prefix > st.prefix:
                links = self._ifds(max(st.prefix - 1, 0), prefix, linked_until=prefix)
                if st.prefix == 0:
                    links.append((self._header_pointer(prefix), 0))
            description = None
            if prefix != st.declared:
                description = (self._description_page(prefix), prefix)
            block = self._block("writing", committed=committed, prefix=prefix)
            future = self._committer.submit(self._commit_io, links, block, description)
        except Exception as exc:
            if self._broken is None:
                self._give_up(exc)
            raise BatchFailed([], 0, 0, as_oserror(exc)) from exc
        self._completed = []
        self._job = _CommitJob(done, positions, committed, prefix, future)
        if self._on_io is not None:
            future.add_done_callback(self._on_io)

    def _commit_io(
        self,
        links: list[tuple[bytes, int]],
        block: HeaderBlock,
        description: tuple[bytes, int] | None,
    ) -> None:
        """The durable order of one commit (see the module docstring)."""
        f = self.file
        assert f is not None
        t0 = time.perf_counter()
        try:
            with f.flush_lock:  # a flush may have taken the error instead
                f.sync()  # 1. pixels and IFDs of the group durable
                if f.lost_writes is not None:
                    raise OSError(
                        errno.EIO, f"cached writes were lost: {f.lost_writes}"
                    )
            self._put_all(links)  # 2. extend the chain over the group
            f.pwrite_meta(block.encode(), block.slot)  # 3. committed = n
            f.sync()  # the links and the block durable
            if description is not None:  # 4. readers see them
                f.pwrite_meta(description[0], DESCRIPTION_OFFSET)
        finally:
            self._commit_seconds += time.perf_counter() - t0

    def _finish_commit(self, *, wait: bool) -> list[int]:
        """The frames of the commit in flight once it has returned (`wait`:
        wait for it); [] while it runs. A commit that failed gives its
        writes back, uncommitted, and raises."""
        job = self._job
        if job is None or (not wait and not job.future.done()):
            return []
        self._job = None
        self._commits += 1
        try:
            job.future.result()
        except Exception as exc:
            self._give_up(exc, job)
            raise BatchFailed([], 0, 0, as_oserror(exc)) from exc
        st = self.state
        for pos in job.positions:
            self._mark(pos)
        self._inflight.difference_update(job.positions)
        del self._written[: len(job.positions)]
        st.committed, st.prefix = job.committed, job.prefix
        st.declared = job.prefix
        return job.positions

    def _mark(self, pos: int) -> None:
        st = self.state
        if not self.reordered:
            return
        w = st.written
        if pos >= len(w):
            w.extend(bytes(pos + 1 - len(w) + 1024))
        w[pos] = 1

    def _prefix_after(self, positions: list[int]) -> int:
        """The linked prefix once `positions` are committed too."""
        st = self.state
        if not self.reordered:
            return st.committed + len(positions)
        w, p, more = st.written, st.prefix, set(positions)
        while (p < len(w) and w[p]) or p in more:
            p += 1
        return p

    def _link(self, first: int, stop: int) -> None:
        """Rewrite IFDs [first, stop) so the chain runs to stop - 1."""
        self._write_ifds(first, stop, linked_until=stop)

    def _write_header_pointer(self) -> None:
        assert self.file is not None
        self.file.pwrite_meta(self._header_pointer(self.state.prefix), 0)

    def _header_pointer(self, prefix: int) -> bytes:
        """The TIFF header, pointing at IFD 0 once `prefix` frames are linked."""
        first = self.geo.ifd_offset(0, self.tail) if prefix else 0
        return header_bytes(first, bigtiff=True)

    def _block(
        self, state: str, *, committed: int | None = None, prefix: int | None = None
    ) -> HeaderBlock:
        """The next header block: the state's counts, or those given."""
        st = self.state
        self.generation += 1
        return HeaderBlock(
            generation=self.generation,
            state=state,
            format=self.format,
            shape=tuple(self.spec.shape),
            dtype=self.spec.dtype,
            front_capacity=self.geo.front_capacity,
            tail_offset=self.tail,
            committed=st.committed if committed is None else committed,
            prefix=st.prefix if prefix is None else prefix,
            reordered=self.reordered,
            owner=self._owner,
        )

    def _write_block(self, state: str) -> None:
        assert self.file is not None
        block = self._block(state)
        self.file.pwrite_meta(block.encode(), block.slot)

    def _write_description(self, frames: int) -> None:
        """The provisional description, declaring `frames` linked frames."""
        assert self.file is not None
        st = self.state
        if frames == st.declared:
            return
        self.file.pwrite_meta(self._description_page(frames), DESCRIPTION_OFFSET)
        st.declared = frames

    def _description_page(self, frames: int) -> bytes:
        """The provisional description's page, declaring `frames` frames."""
        raw = self._provisional_text(frames).encode("ascii")
        if len(raw) >= DESCRIPTION_CAPACITY:
            raise ValueError("provisional description does not fit its page")
        return raw.ljust(DESCRIPTION_CAPACITY - 1, b" ") + b"\x00"

    def _provisional_text(self, frames: int) -> str:
        if self.format == "ome":
            return provisional_ome_xml(
                shape=self.spec.shape,
                dtype=self.spec.dtype,
                frames=frames,
                image_name=self._image_name,
            )
        return flat_description(frames, rgb=len(self.spec.shape) == 3) if frames else ""

    # -- the end -----------------------------------------------------------------------
    def close(self, reason: str, records: Any = None) -> dict[str, Any]:
        """Finalise (see `finalise_tiff`); the worker drained and journalled
        every write first."""
        f = self.file
        assert f is not None
        if self.in_flight():
            raise RuntimeError("close() with writes in flight: drain() first")
        summary: dict[str, Any] = {
            "format": self.format,
            "direct_io": f.direct,
            "write_depth": self.depth,
            "staged_batches": self._staged_batches,
            "mid_page_batches": self._mid_page_batches,
            "commits": self._commits,
            "commit_seconds": round(self._commit_seconds, 3),
        }
        st = self.state
        n = st.committed
        if n == 0:
            # A TIFF needs at least one image; no file beats a corrupt one.
            self._shutdown()
            from mesowriter._platform import unlink

            unlink(self.spec.path)
            summary.update(frames_in_file=0, file_bytes=0, bigtiff=True)
            summary["note"] = "no frames were written; no data file was kept"
            return summary
        # Holes are closed by moving planes down: known before, not after.
        holes = self.reordered and st.prefix < n
        if holes:
            self._compact()
        self._write_block("finalising")
        if self._broken is not None:
            self._cut_chain()
        result = finalise_tiff(
            f,
            self.geo,
            tail=self.tail,
            frames=n,
            description=self._final_text(records, holes=holes),
            classic=self._classic_ok(n),
            block=lambda state: self._block(state),
        )
        self._shutdown()
        summary.update(result)
        return summary

    def _cut_chain(self) -> None:
        """A commit failed after linking past the committed frames: end the
        chain at the last linked one, durably, before finalising writes
        anything where the IFDs past it are."""
        assert self.file is not None
        prefix = self.state.prefix
        if prefix:
            self._link(prefix - 1, prefix)
        else:
            self._write_header_pointer()
        self.file.sync()

    def _final_text(self, records: Any, *, holes: bool = False) -> str:
        spec = self.spec
        if self.format == "ome":
            return build_ome_xml(
                shape=spec.shape,
                dtype=spec.dtype,
                records=records if records is not None else iter(()),
                sequence=spec.sequence,
                position_key=spec.position_key,
                image_name=self._image_name,
                summary=spec.summary,
            )
        st = self.state
        plan = self.plan
        # A hyperstack only when plane k is the frame of TZC position k: a
        # reordered file placed each frame there unless holes were compacted;
        # a file in arrival order must check (a dropped or skipped frame
        # shifts every later plane).
        whole = plan is not None and not holes and st.committed <= plan.images
        if whole and plan is not None and not self.reordered:
            whole = _in_tzc_order(plan, records)
        return final_description(
            plan, st.committed, whole=whole, rgb=len(spec.shape) == 3
        )

    def _classic_ok(self, n: int) -> bool:
        """ImageJ reads only classic TIFF: use it whenever the file fits."""
        if self.format != "imagej" or not self.spec.path.lower().endswith(
            CLASSIC_SUFFIXES
        ):
            return False
        # the classic IFDs may have to go past a live tail extent
        tail = max(n - self.geo.front_capacity, 0) * 512
        return self.geo.data_end(n) + tail + n * 256 + 2 * PAGE < CLASSIC_LIMIT

    def _compact(self) -> None:
        """Close the holes a canceled, reordered run leaves: frames past the
        first hole move down into it, in file order. Targets are holes, so a
        crash mid-way leaves every journalled position intact."""
        f = self.file
        assert f is not None
        st = self.state
        w = st.written
        geo = self.geo
        fb = geo.frame_nbytes
        filled = [p for p in range(st.prefix, len(w)) if w[p]]
        target = st.prefix
        for p in filled:
            data = f.pread(fb, geo.pixel_offset(p))
            f.pwrite_meta(data, geo.pixel_offset(target))
            w[p] = 0
            w[target] = 1
            target += 1
        self._write_ifds(st.prefix, target, linked_until=0)
        f.sync()
        old = st.prefix
        st.prefix = target
        self._link(max(old - 1, 0), target)
        if old == 0:
            self._write_header_pointer()
        f.sync()

    def _shutdown(self) -> None:
        for pool in (self._pool, self._ifd_writer, self._committer):
            if pool is not None:
                pool.shutdown(wait=True)
        self._pool = self._ifd_writer = self._committer = None
        if self.file is not None:
            self.file.close()
            self.file = None

    def abort(self) -> None:
        for p in self._pending:
            for fu in p.futures:
                fu.exception()
        self._pending.clear()
        if self._job is not None:
            self._job.future.exception()
            self._job = None
        self._shutdown()

    @property
    def committed(self) -> int:
        return self.state.committed


class _EventIndex(msgspec.Struct):
    index: dict[str, Any] | None = None


class _EventOnly(msgspec.Struct):
    mda_event: _EventIndex | None = None


_event_decoder = msgspec.json.Decoder(_EventOnly)


def _in_tzc_order(plan: ImagejPlan, records: Any) -> bool:
    """Whether the k-th record's event is TZC position k of `plan`, for all k.

    Only the event index of each metadata record is decoded. A plan of one
    plane per time point has the same shape flat or not: not checked.
    """
    if plan.slices * plan.channels == 1 or records is None:
        return True
    for k, (_, raw) in enumerate(records):
        try:
            ev = _event_decoder.decode(raw).mda_event
        except (msgspec.DecodeError, RecursionError):
            return False
        idx = event_index({"mda_event": {"index": ev.index}}) if ev else None
        if idx is None or plan.position(idx) != k:
            return False
    return True


def _first_error(fs: list[Future[Any]]) -> OSError | None:
    """Wait for `fs`; the first error any of them raised, as an OSError (a
    write that failed is a failed batch, whatever it raised)."""
    error = None
    for fu in fs:
        exc = fu.exception()
        if exc is not None and error is None:
            error = as_oserror(exc)
    return error


def as_oserror(exc: BaseException) -> OSError:
    if isinstance(exc, OSError):
        return exc
    err = OSError(errno.EIO, f"{type(exc).__name__}: {exc}")
    err.__cause__ = exc
    return err


def _with_faults(f: AlignedFile, spec: StreamSpec) -> AlignedFile:
    """Tests only: a file whose unsynced writes a modelled power cut undoes,
    or whose syncs fail."""
    if not spec.fault:
        return f
    from mesowriter._faults import Faults, PowerCutFile, SyncFaultFile

    faults = Faults.parse(spec.fault)
    out: Any = f
    if faults.powercut is not None:
        out = PowerCutFile(out)
    if faults.fail_sync is not None:
        out = SyncFaultFile(out, faults.fail_sync)
    if faults.slow_sync is not None:
        out = SyncFaultFile(out, faults.slow_sync[0], delay=faults.slow_sync[1])
    return out  # type: ignore[no-any-return]


def _front_capacity(spec: StreamSpec) -> int:
    """IFDs in front: the frame count when known (at least 1: IFD 0 always
    sits there), else room for a short run."""
    return max(1, spec.frames) if spec.frames is not None else UNKNOWN_FRONT_CAPACITY


def _runs(sorted_positions: list[int]) -> list[tuple[int, int]]:
    """[first, stop) runs of consecutive positions."""
    runs: list[tuple[int, int]] = []
    for p in sorted_positions:
        if runs and runs[-1][1] == p:
            runs[-1] = (runs[-1][0], p + 1)
        else:
            runs.append((p, p + 1))
    return runs


def finalise_tiff(
    f: AlignedFile,
    geo: Geometry,
    *,
    tail: int,
    frames: int,
    description: str,
    classic: bool,
    block: Any,
) -> dict[str, Any]:
    """Give a file holding `frames` committed, linked frames its final form.

    Shared by the sink and `recover`. New IFDs and the description go where
    they overlap nothing the current chain uses; one sync; then the chain is
    switched to them (single-sector writes: IFD 0, or the TIFF header); the
    block says "final"; the file is cut after the description; one sync.
    At every instant the file reads as either its provisional or its final
    self. `block(state)` makes the next HeaderBlock.
    """
    n = frames
    data_end = geo.data_end(n)
    text = description.encode("ascii", "xmlcharrefreplace") + b"\x00"
    fc = geo.front_capacity
    tail_n = max(n - fc, 0)
    tail_bytes = tail_n * 512
    if classic:
        codec = IfdCodec(geo.shape, geo.dtype, bigtiff=False)
        start = round_up(data_end, 16)
        size = n * codec.stride
        # The classic chain goes where it overlaps no live IFD: after the
        # data unless that would reach into the live tail, else past it.
        if tail and start < tail + tail_bytes and start + size + len(text) > tail:
            start = round_up(tail + tail_bytes, 16)
        desc_at = start + size
        offsets = [start + k * codec.stride for k in range(n)]
        ifd0 = codec.build(
            pixel_offset=geo.pixel_offset(0),
            next_ifd=offsets[1] if n > 1 else 0,
            description=(len(text), desc_at),
        ).ljust(codec.stride, b"\x00")
        rest = codec.run(
            [geo.pixel_offset(k) for k in range(1, n)],
            [offsets[k + 1] if k + 1 < n else 0 for k in range(1, n)],
        )
        f.pwrite_meta(ifd0 + bytes(rest) + text, start)
        shared = codec.shared_values()
        if shared is not None:
            f.pwrite_meta(shared[1], shared[0])
        end = desc_at + len(text)
        f.sync()
        blk = block("final")
        f.pwrite_meta(blk.encode(), blk.slot)
        f.pwrite_meta(header_bytes(start, bigtiff=False), 0)
    else:
        codec = IfdCodec(geo.shape, geo.dtype, bigtiff=True)
        new_tail = tail
        desc_at = round_up(data_end, 16)
        if tail_n:
            cand = round_up(data_end, 16)
            # Move the tail only where the new IFDs AND the description end
            # before the live extent: nothing the chain uses is overwritten.
            if cand + tail_bytes + len(text) <= tail:
                new_tail = cand
            desc_at = round_up((new_tail if new_tail else tail) + tail_bytes, 16)
            if new_tail != tail:
                pix = [geo.pixel_offset(k) for k in range(fc, n)]
                nxt = [
                    new_tail + (k + 1 - fc) * 512 if k + 1 < n else 0
                    for k in range(fc, n)
                ]
                f.pwrite_meta(bytes(codec.run(pix, nxt)), new_tail)
        f.pwrite_meta(text, desc_at)
        end = desc_at + len(text)
        f.sync()
        if tail_n and new_tail != tail and fc:
            last_front = codec.build(
                pixel_offset=geo.pixel_offset(fc - 1),
                next_ifd=new_tail,
                description=(len(text), desc_at) if fc == 1 else None,
            )
            if fc > 1:
                f.pwrite_meta(
                    last_front.ljust(512, b"\x00"), geo.ifd_offset(fc - 1, tail)
                )
        first_ifd = geo.ifd_offset(0, new_tail)
        nxt0 = geo.ifd_offset(1, new_tail) if n > 1 else 0
        ifd0 = codec.build(
            pixel_offset=geo.pixel_offset(0),
            next_ifd=nxt0,
            description=(len(text), desc_at),
        )
        f.pwrite_meta(ifd0.ljust(512, b"\x00"), first_ifd)
        f.pwrite_meta(header_bytes(first_ifd, bigtiff=True), 0)
        blk = block("final")
        f.pwrite_meta(blk.encode(), blk.slot)
    f.sync()  # the switch durable before anything past `end` goes
    f.truncate(end)
    f.sync()
    return {
        "bigtiff": not classic,
        "frames_in_file": n,
        "file_bytes": end,
        "description_bytes": len(text),
    }
