"""CustomWriter: the legacy OME-TIFF handler, now fed to writer processes.

Same name, constructor and files as the writer labs already call: BigTIFF
OME-TIFF, one file per position when a sequence has several, and the legacy
sidecar `<filename>_frame_metadata.json`. What changed is where the work
happens: `frameReady` copies the frame into a shared-memory ring and returns;
writer processes do the disk I/O.

Two ways to connect it:

- `core.mda.run(seq, output=writer)`: pymmcore-plus calls it from a relay
  thread fed by an unbounded queue (convenient, but the relay thread competes
  with the acquisition thread for the GIL; measured at about half the
  throughput);
- `with writer.attach(core): core.mda.run(seq)`: called on the acquisition
  thread itself, which for mesowriter costs one memcpy per frame.

pymmcore-plus logs and swallows exceptions from handlers, and an exception in
`frameReady` would kill the relay thread; so `frameReady` never raises, and
every problem is collected and raised at `sequenceFinished` (also kept in
`writer.error` and in each stream's report).
"""

from __future__ import annotations

import json
import math
import os
import warnings
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import msgspec
import numpy as np

from mesowriter._errors import FrameRejected, WriterError
from mesowriter._platform import atomic_write
from mesowriter._metadata import CustomJSONEncoder, _plain
from mesowriter._paths import position_path, prepare_output_path
from mesowriter._report import StreamReport
from mesowriter._service import DEFAULT_RING_BYTES, WriterService
from mesowriter._spec import sidecar_path
from mesowriter._stream import Stream
from mesowriter.sinks._tiff import TIFF_SUFFIXES, tiff_suffix

_COUNT_EVENTS_UP_TO = 50_000


class CustomWriter:
    """BigTIFF OME-TIFF + frame-metadata sidecar for pymmcore-plus MDA runs.

    Parameters
    ----------
    filename
        The data file (`.ome.tif`, `.ome.tiff`, `.tif`, `.tiff`). With
        several positions each goes to `<stem>_<position key><suffix>`.
    service
        A WriterService to share with other writers (e.g. a CV2Writer for a
        second camera); by default the writer starts and owns one.
    ring_bytes
        Shared memory for the rings, split between positions (each gets at
        least 64 MiB, so that a position's ring always holds a few frames).
    policy
        Full-ring policy: "block" (default) or "drop".
    """

    # The least ring a file gets (a share of ring_bytes, split between files),
    # so that it always holds a few frames.
    _min_ring_bytes = 64 * 1024 * 1024

    def __init__(
        self,
        filename: str | os.PathLike[str],
        *,
        service: WriterService | None = None,
        ring_bytes: int = DEFAULT_RING_BYTES,
        policy: str = "block",
        overwrite: bool = False,
        direct_io: bool = True,
        workers: int = 1,
    ) -> None:
        name = os.fspath(filename)
        self._check_filename(name)
        self._filename = prepare_output_path(name, overwrite)
        self._overwrite = overwrite
        self._ring_bytes = ring_bytes
        self._policy = policy
        self._direct_io = direct_io
        self._own_service = service is None
        self._service = (
            service if service is not None else WriterService(workers=workers)
        )
        self.frame_metadatas: dict[str, list[dict[str, Any]]] = {}
        self.reports: dict[str, StreamReport] = {}
        self.errors: list[str] = []
        self.error: WriterError | None = None
        self._streams: dict[str, Stream] = {}
        self._expected: dict[str, int | None] = {}
        self._sequence: Any = None
        self._sequence_json: dict[str, Any] | None = None
        self._summary: dict[str, Any] | None = None
        self._multi = False
        self._canceled = False
        self._key_by_p: dict[int, str] = {}
        self._open_failed: dict[str, str] = {}
        self._lost: dict[str, int] = {}
        self._refused: set[str] = set()  # files whose stream refused a frame
        self._undelivered: WriterError | None = None

    @classmethod
    def _check_filename(cls, name: str) -> None:
        """Refuse a file name this writer cannot write (subclasses override)."""
        if tiff_suffix(name) is None:
            raise ValueError(
                f"{name!r}: CustomWriter writes OME-TIFF; use one of {TIFF_SUFFIXES}"
            )

    @property
    def filename(self) -> str:
        return self._filename

    @property
    def service(self) -> WriterService:
        return self._service

    def path_for(self, key: str) -> str:
        """The data file of position `key`."""
        return position_path(self._filename, key) if self._multi else self._filename

    # -- pymmcore-plus callbacks -------------------------------------------------
    def sequenceStarted(self, seq: Any, meta: Mapping[str, Any] | None = None) -> None:
        """Plan one file per position and open them before the first frame."""
        self._reset()
        self._sequence = seq
        self._sequence_json = _plain_json(seq)
        self._summary = _summary_json(meta)
        self._key_by_p, expected = _positions(seq)
        keys = list(expected)
        self._multi = len(keys) > 1
        self._expected = expected
        infos = (meta or {}).get("image_infos") or []
        if len(infos) == 1 and "plane_shape" in infos[0]:
            shape = tuple(int(s) for s in infos[0]["plane_shape"])
            dtype = np.dtype(infos[0]["dtype"])
            for key in keys:
                self._try_open(key, shape, dtype)

    def frameReady(
        self, img: np.ndarray, event: Any, meta: Mapping[str, Any] | None = None
    ) -> None:
        """Hand the frame to its position's ring. Never raises (see module doc)."""
        try:
            key = self._key_for(event)
            stream = self._streams.get(key)
            if stream is None:
                stream = self._try_open(key, img.shape, img.dtype)
            if stream is None:  # its file could not be opened: counted, not retried
                self._lost[key] = self._lost.get(key, 0) + 1
                return
            try:
                stream.write(img, meta if meta is not None else {"mda_event": event})
            except (FrameRejected, WriterError) as exc:
                # Each such frame is in the stream's report (indices, reasons)
                # and raised at sequenceFinished; the first cause is kept here.
                if key not in self._refused:
                    self._refused.add(key)
                    self._record(f"frame {getattr(event, 'index', '?')}: {exc}", exc)
        except Exception as exc:
            self._record(f"frame {getattr(event, 'index', '?')}: {exc}", exc)

    def _key_for(self, event: Any) -> str:
        """The file key of an event: its position's, as planned at the start."""
        from mesowriter._layout import file_key_for_event

        index = dict(event.index)
        key = self._key_by_p.get(int(index.get("p", 0)))
        return key if key is not None else file_key_for_event(index, event.pos_name)

    def _try_open(self, key: str, shape: tuple[int, ...], dtype: Any) -> Stream | None:
        """Open a position's stream once; a failure is recorded, not retried."""
        if key in self._open_failed:
            return None
        try:
            return self._open(key, shape, dtype)
        except Exception as exc:
            self._open_failed[key] = f"{type(exc).__name__}: {exc}"
            self._record(f"opening {self.path_for(key)}: {exc}", exc)
            return None

    def sequenceCanceled(self, seq: Any = None) -> None:
        self._canceled = True

    def sequenceFinished(self, seq: Any = None) -> None:
        """Finalise every file and sidecar; raise if anything was lost or failed."""
        reason = "canceled" if self._canceled else "completed"
        for key, lost in self._lost.items():
            self._record(
                f"{lost} frame(s) of position {key!r} were not written: its file "
                f"could not be opened ({self._open_failed.get(key, 'unknown')})",
                None,
            )
        for key, stream in list(self._streams.items()):
            try:
                report = stream.close(reason, check=False)
            except Exception as exc:  # the service itself is broken
                self._record(f"closing {stream.spec.path}: {exc}", exc)
                continue
            self.reports[key] = report
            for problem in report.problems():
                self._record(f"{report.path}: {problem}", None)
        self._streams.clear()
        self.frame_metadatas = self._load_sidecars()
        if self._multi:
            try:
                self.finalize_metadata()
            except Exception as exc:
                self._record(f"writing the combined sidecar: {exc}", exc)
        if self.errors:
            self.error = WriterError("; ".join(self.errors))
            self._undelivered = self.error
            raise self.error

    # -- legacy API ---------------------------------------------------------------
    def finalize_metadata(self) -> str:
        """(Re)write `<filename>_frame_metadata.json` from `frame_metadatas`."""
        path = sidecar_path(self._filename)
        data = json.dumps(self.frame_metadatas, cls=CustomJSONEncoder).encode()
        atomic_write(path, data)
        return path

    @contextmanager
    def attach(self, core: Any) -> Iterator[CustomWriter]:
        """Connect to the acquisition thread itself, for the duration of a `with`.

        `with writer.attach(core): core.mda.run(seq)` skips pymmcore-plus's
        relay thread, which otherwise halves the throughput.
        """
        events = getattr(getattr(core, "mda", core), "events", core)
        names = (
            "sequenceStarted",
            "frameReady",
            "sequenceCanceled",
            "sequenceFinished",
        )
        for name in names:
            getattr(events, name).connect(getattr(self, name))
        try:
            yield self
        finally:
            for name in names:
                getattr(events, name).disconnect(getattr(self, name))

    def close(self) -> None:
        """Stop the writer processes this writer started; raise a run's error.

        pymmcore-plus logs and swallows what `sequenceFinished` raises, so an
        error of the last run that no call of ours has raised to the caller
        yet is raised here: a `with CustomWriter(...)` block never ends
        quietly after lost frames.
        """
        for stream in list(self._streams.values()):
            try:
                stream.close("canceled", check=False)
            except Exception as exc:
                self._record(f"closing {stream.spec.path}: {exc}", exc)
        self._streams.clear()
        if self._own_service:
            self._service.close()
        if self._undelivered is not None:
            error, self._undelivered = self._undelivered, None
            raise error

    def __enter__(self) -> CustomWriter:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # -- internals ------------------------------------------------------------------
    def _reset(self) -> None:
        """Forget the last run, so that nothing of it reaches the next file."""
        self._sequence = None
        self._sequence_json = None
        self._summary = None
        self._key_by_p = {}
        self._expected = {}
        self.frame_metadatas = {}
        self.reports = {}
        self.errors = []
        self.error = None
        self._undelivered = None
        self._canceled = False
        self._open_failed = {}
        self._lost = {}
        self._refused = set()

    def _open(self, key: str, shape: tuple[int, ...], dtype: Any) -> Stream:
        return self._open_file(
            key, shape, dtype, kind="ome-tiff", frames=self._expected.get(key)
        )

    def _open_file(
        self,
        key: str,
        shape: tuple[int, ...],
        dtype: Any,
        *,
        kind: str,
        frames: int | None,
        **options: Any,
    ) -> Stream:
        """Open the stream of file `key`, its share of the ring, and keep it."""
        n_files = max(1, len(self._expected))
        stream = self._service.open_stream(
            self.path_for(key),
            shape=tuple(shape),
            dtype=dtype,
            frames=frames,
            overwrite=self._overwrite,
            kind=kind,
            position_key=key,
            ring_bytes=max(self._min_ring_bytes, self._ring_bytes // n_files),
            policy=self._policy,
            direct_io=self._direct_io,
            sequence=self._sequence_json,
            summary=self._summary,
            **options,
        )
        self._streams[key] = stream
        return stream

    def _record(self, message: str, exc: BaseException | None) -> None:
        self.errors.append(message)

    def _load_sidecars(self) -> dict[str, list[dict[str, Any]]]:
        result: dict[str, list[dict[str, Any]]] = {}
        for report in self.reports.values():
            if report.sidecar and os.path.exists(report.sidecar):
                with open(report.sidecar, "rb") as fh:
                    result.update(json.load(fh))
        return result


def _plain_json(obj: Any) -> dict[str, Any] | None:
    if obj is None:
        return None
    try:
        data = obj.model_dump(mode="json")
        return data if isinstance(data, dict) else None
    except Exception as exc:
        warnings.warn(
            f"the MDA sequence could not be turned into JSON ({exc!r}); the "
            "OME-XML is written without its T/C/Z/position layout",
            RuntimeWarning,
            stacklevel=3,
        )
        return None


def _summary_json(meta: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """The summary metadata as plain JSON (without the sequence, sent apart)."""
    if not meta:
        return None
    try:
        data = msgspec.to_builtins(
            {k: v for k, v in meta.items() if k != "mda_sequence"}, enc_hook=_plain
        )
        return data if isinstance(data, dict) else None
    except Exception as exc:
        warnings.warn(
            f"the summary metadata could not be turned into JSON ({exc!r}); "
            "pixel size, acquisition date and camera bit depth are not kept",
            RuntimeWarning,
            stacklevel=3,
        )
        return None


def _positions(seq: Any) -> tuple[dict[int, str], dict[str, int | None]]:
    """File key of each position index, and the frames each key will get.

    A position's key is its name, else `p{index}`. Names that several
    positions share would put different places into one file, so those
    positions are keyed by index instead, with a warning.
    """
    from mesowriter._layout import file_key_for_event

    positions = list(getattr(seq, "stage_positions", ()) or ())
    names = [getattr(p, "name", None) or None for p in positions]
    shared = sorted({n for n in names if n is not None and names.count(n) > 1})
    if shared:
        warnings.warn(
            f"several stage positions are named {shared}; their files and sidecar "
            "lists are keyed p<index> instead, so that no two places share a file",
            UserWarning,
            stacklevel=3,
        )
    key_by_p = {
        i: file_key_for_event({"p": i}, None if n in shared else n)
        for i, n in enumerate(names)
    }
    keys = list(key_by_p.values()) or ["p0"]
    sizes = {k: v for k, v in dict(getattr(seq, "sizes", {})).items() if v}
    total = math.prod(sizes.values()) if sizes else 1
    # Every axis multiplies out only without sub-sequences, channels that
    # skip their z stack (do_stack=False) or time points (acquire_every).
    simple = all(getattr(p, "sequence", None) is None for p in positions) and all(
        getattr(c, "do_stack", True) and getattr(c, "acquire_every", 1) == 1
        for c in getattr(seq, "channels", ()) or ()
    )
    if simple:  # exact, and instant even for millions of frames
        return key_by_p, dict.fromkeys(keys, total // max(1, sizes.get("p", 1)))
    expected: dict[str, int | None] = dict.fromkeys(keys, None)
    if total <= _COUNT_EVENTS_UP_TO:
        counts: dict[str, int] = dict.fromkeys(keys, 0)
        for event in seq:
            p = int(event.index.get("p", 0))
            key = key_by_p.get(p) or file_key_for_event(
                dict(event.index), event.pos_name
            )
            counts[key] = counts.get(key, 0) + 1
        return key_by_p, dict(counts)
    return key_by_p, expected  # too many events to count: files grow as needed
