"""CustomWriter: the legacy OME-TIFF handler, now fed to writer processes.

Same name, constructor, attributes and files as the writer labs already call:
BigTIFF OME-TIFF for `.ome.tif(f)` names (an ImageJ hyperstack for plain
`.tif(f)`), one file per position named `run_p0.ome.tif`, one file per camera
with several cameras (`run_Camera2.ome.tif`), and ONE legacy sidecar
`<filename>_frame_metadata.json` keyed by position. What changed is where the
work happens: `frameReady` copies the frame into a shared-memory ring and
returns; writer processes do the disk I/O.

Every file of a run is planned and opened at `sequenceStarted` (sizes,
shapes and cameras are known then), so nothing heavy runs on the thread that
delivers frames. Two ways to connect it:

- `core.mda.run(seq, output=writer)`: pymmcore-plus calls it from a relay
  thread fed by an unbounded queue;
- `with writer.attach(core): core.mda.run(seq)`, or `mesowriter.run(core,
  seq, path)`: called on the acquisition thread itself, which for mesowriter
  costs one memcpy per frame (the faster path at high rates).

pymmcore-plus logs and swallows exceptions from handlers, and an exception in
`frameReady` would kill the relay thread; so `frameReady` never raises, and
every problem is collected and raised at `sequenceFinished` (also kept in
`writer.error`, in each stream's report, and raised again by `close()`).

A writer owns no process: it uses the process-wide service, which reaps its
idle writer process and pool on its own, so writers that are never closed
(as mesofield uses them) leave nothing behind.
"""

from __future__ import annotations

import json
import math
import os
import threading
import weakref
from collections.abc import Iterator, Mapping
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from typing import Any

import msgspec
import numpy as np

from mesowriter._errors import FrameRejected, WriterError
from mesowriter._journal import write_group_sidecar
from mesowriter._metadata import CustomJSONEncoder, plain_json, sequence_json
from mesowriter._names import safe_component, unique_components, unique_keys
from mesowriter._paths import position_path, prepare_output_path
from mesowriter._platform import atomic_write, unlink
from mesowriter._report import StreamReport
from mesowriter._service import (
    DEFAULT_RING_BYTES,
    WriterService,
    add_finisher,
    shared_service,
)
from mesowriter._spec import SidecarSpec, journal_path, sidecar_path
from mesowriter._stream import Stream
from mesowriter.sinks import sink_for_path

_COUNT_EVENTS_UP_TO = 50_000


@dataclass
class _File:
    """One data file of a run: a position, seen by one camera."""

    key: str  # its list in the sidecar
    path: str
    position_index: int
    camera: str | None  # None: whichever camera delivers (one camera)
    frames: int | None
    shape: tuple[int, ...] | None = None
    dtype: str | None = None


class CustomWriter:
    """BigTIFF OME-TIFF + frame-metadata sidecar for pymmcore-plus MDA runs.

    Parameters
    ----------
    filename
        The data file (`.ome.tif`, `.ome.tiff`: OME-TIFF; `.tif`, `.tiff`:
        ImageJ hyperstack). With several positions each goes to
        `<stem>_<position key><suffix>`; with several cameras `_<camera>` is
        added. The one sidecar is `<filename>_frame_metadata.json`.
    service
        A WriterService to share with other writers; by default the
        process-wide one (`mesowriter.shared_service()`).
    ring_bytes
        Shared memory for the rings, split between files (each gets at least
        64 MiB, so that a ring always holds a few frames).
    policy
        Full-ring policy: "block" (default) or "drop".
    workers
        With more than 1, the writer starts a service of its own with that
        many writer processes (stopped by `close()`).
    """

    # The least ring a file gets (a share of ring_bytes, split between files),
    # so that it always holds a few frames.
    _min_ring_bytes = 64 * 1024 * 1024
    _kind = "ome-tiff"  # the sink kind this writer's file names must select

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
        self._frame_metadata_filename = sidecar_path(self._filename)
        self._overwrite = overwrite
        self._ring_bytes = ring_bytes
        self._policy = policy
        self._direct_io = direct_io
        self._own_service = service is None and workers > 1
        if service is not None:
            self._service = service
        elif workers > 1:
            self._service = WriterService(workers=workers, ring_bytes=ring_bytes)
        else:
            self._service = shared_service()
        self._service.prewarm()
        self.reports: dict[str, StreamReport] = {}
        self.errors: list[str] = []
        self.error: WriterError | None = None
        self.notes: list[str] = []
        self._frame_metadatas: dict[str, list[Any]] | None = {}
        self._streams: dict[str, Stream] = {}
        self._files: dict[str, _File] = {}
        self._by_source: dict[tuple[int, str | None], _File] = {}
        self._cameras: list[str | None] = [None]
        self._sequence_json: dict[str, Any] | None = None
        self._summary: dict[str, Any] | None = None
        self._canceled = False
        self._open_failed: dict[str, str] = {}
        self._lost: dict[str, int] = {}
        self._refused: set[str] = set()  # files whose stream refused a frame
        self._undelivered: WriterError | None = None
        self._keys_by_p: dict[int, tuple[str, str]] = {}
        self._expected: dict[int, int | None] = {}
        self._relay: weakref.ref[threading.Thread] | None = None
        weakref.finalize(self, _close_streams, self._streams)
        _running_writers.add(self)
        _finish_runs_at_exit()

    @classmethod
    def _check_filename(cls, name: str) -> None:
        """Refuse a file name this writer cannot write (subclasses override)."""
        sink = sink_for_path(name) if name else None
        if sink is None or sink.kind != cls._kind:
            raise ValueError(
                f"{name!r}: CustomWriter writes TIFF; use .ome.tif, .ome.tiff, "
                ".tif or .tiff"
            )

    @property
    def filename(self) -> str:
        return self._filename

    @property
    def service(self) -> WriterService:
        return self._service

    @property
    def frame_metadatas(self) -> dict[str, list[Any]]:
        """The last run's per-frame metadata by key (read from the sidecar on
        first use: a long run's metadata stays on disk until asked for)."""
        if self._frame_metadatas is None:
            self._frame_metadatas = self._load_sidecar()
        return self._frame_metadatas

    @frame_metadatas.setter
    def frame_metadatas(self, value: dict[str, list[Any]]) -> None:
        self._frame_metadatas = value

    def path_for(self, key: str) -> str:
        """The data file of position (file) key `key`."""
        f = self._files.get(key)
        return f.path if f is not None else self._filename

    # -- pymmcore-plus callbacks -------------------------------------------------
    def sequenceStarted(self, seq: Any, meta: Mapping[str, Any] | None = None) -> None:
        """Plan every file of the run and open them before the first frame."""
        self._reset()
        here = threading.current_thread()
        if here is not threading.main_thread() and hasattr(here, "stop"):
            self._relay = weakref.ref(here)  # pymmcore-plus's relay thread
        self._sequence_json, dropped = (
            sequence_json(seq) if seq is not None else (None, 0)
        )
        if dropped:
            self.notes.append(
                f"{dropped} value(s) of the sequence's metadata could not become "
                "JSON and were left out of the OME-XML"
            )
        self._summary = _summary_json(meta, self.notes)
        self._plan(seq)
        for f in self._files.values():
            if f.shape is not None:
                self._try_open(f, f.shape, f.dtype)

    def _plan(self, seq: Any) -> None:
        positions = list(getattr(seq, "stage_positions", ()) or ())
        names = [getattr(p, "name", None) or None for p in positions] or [None]
        keys = unique_keys(names)
        files = unique_components(keys.names)
        for change in keys.describe() + files.describe():
            self.notes.append(f"position name {change}")
        self._keys_by_p = {
            i: (k, c)
            for i, (k, c) in enumerate(zip(keys.names, files.names, strict=True))
        }
        self._expected = _expected_frames(seq, len(self._keys_by_p))
        self._cameras = _cameras(self._summary)
        multi_cam = len(self._cameras) > 1
        cam_parts = unique_components([c or "" for c in self._cameras]).names
        infos = _infos_by_camera(self._summary)
        for p, (key, part) in self._keys_by_p.items():
            for cam, cam_part in zip(self._cameras, cam_parts, strict=True):
                file_key = f"{key}_{cam}" if multi_cam else key
                self._add_file(
                    file_key,
                    p,
                    cam,
                    [part] if len(self._keys_by_p) > 1 else [],
                    [cam_part] if multi_cam else [],
                    infos.get(cam) or (infos.get(None) if not multi_cam else None),
                )

    def _add_file(
        self,
        key: str,
        p: int,
        camera: str | None,
        pos_part: list[str],
        cam_part: list[str],
        info: tuple[tuple[int, ...], str] | None,
    ) -> _File:
        parts = pos_part + cam_part
        path = (
            position_path(self._filename, "_".join(parts)) if parts else self._filename
        )
        f = _File(key, path, p, camera, self._expected.get(p), *(info or (None, None)))
        self._files[key] = f
        self._by_source[(p, camera)] = f
        return f

    def frameReady(
        self, img: np.ndarray, event: Any, meta: Mapping[str, Any] | None = None
    ) -> None:
        """Hand the frame to its file's ring. Never raises (see module doc)."""
        try:
            f = self._file_for(event, meta)
            stream = self._streams.get(f.key)
            if stream is None:
                stream = self._try_open(f, img.shape, img.dtype)
            if stream is None:  # its file could not be opened: counted, not retried
                self._lost[f.key] = self._lost.get(f.key, 0) + 1
                return
            try:
                stream.write(img, meta if meta is not None else {"mda_event": event})
            except (FrameRejected, WriterError) as exc:
                # Each such frame is in the stream's report (indices, reasons)
                # and raised at sequenceFinished; the first cause is kept here.
                if f.key not in self._refused:
                    self._refused.add(f.key)
                    self._record(f"frame {getattr(event, 'index', '?')}: {exc}")
        except Exception as exc:
            self._record(f"frame {getattr(event, 'index', '?')}: {exc}")

    def _file_for(self, event: Any, meta: Mapping[str, Any] | None) -> _File:
        p = int(event.index.get("p", 0))
        camera = None
        if len(self._cameras) > 1 or self._cameras[0] is not None:
            camera = (meta or {}).get("camera_device")
        f = self._by_source.get((p, camera))
        if f is None:
            f = self._by_source.get((p, None)) if self._cameras == [None] else None
        if f is None:  # a position or camera the plan did not foresee
            f = self._unforeseen(p, event, camera)
        return f

    def _unforeseen(self, p: int, event: Any, camera: str | None) -> _File:
        key, part = self._keys_by_p.get(p) or (f"p{p}", f"p{p}")
        if (p, None) in self._by_source or p in self._keys_by_p:
            # a camera not in the plan: its own file and list
            cam_part = safe_component(camera or "camera")
            file_key = f"{key}_{camera}"
            parts = ([part] if len(self._keys_by_p) > 1 else []) + [cam_part]
        else:
            name = getattr(event, "pos_name", None)
            file_key = name or key
            part = safe_component(file_key)
            parts = [part]
            cam_part = ""
        if file_key in self._files:
            file_key = f"{file_key}_{len(self._files)}"
        self.notes.append(
            f"frames of {file_key!r} were not in the plan; written to their own file"
        )
        return self._add_file(file_key, p, camera, parts[:1], parts[1:], None)

    def _try_open(self, f: _File, shape: tuple[int, ...], dtype: Any) -> Stream | None:
        """Open a file's stream once; a failure is recorded, not retried."""
        if f.key in self._open_failed:
            return None
        try:
            stream = self._open(f, tuple(int(s) for s in shape), dtype)
        except Exception as exc:
            self._open_failed[f.key] = f"{type(exc).__name__}: {exc}"
            self._record(f"opening {f.path}: {exc}")
            return None
        self._streams[f.key] = stream
        return stream

    def sequenceCanceled(self, seq: Any = None) -> None:
        self._canceled = True

    def sequenceFinished(self, seq: Any = None) -> None:
        """Finalise every file and the sidecar; raise if anything was lost or failed."""
        self._finish("canceled" if self._canceled else "completed")

    def _finish(self, reason: str) -> None:
        for key, lost in self._lost.items():
            self._record(
                f"{lost} frame(s) of {key!r} were not written: its file could not "
                f"be opened ({self._open_failed.get(key, 'unknown')})"
            )
        for key, stream in list(self._streams.items()):
            try:
                report = stream.close(reason, check=False)
            except Exception as exc:  # the service itself is broken
                self._record(f"closing {stream.spec.path}: {exc}")
                continue
            self.reports[key] = report
            for problem in report.problems():
                self._record(f"{report.path}: {problem}")
        opened = list(self._streams.values())
        self._streams.clear()
        # Streams whose worker writes the sidecar (video direct mode) are
        # not joined again: their journals are gone once it is written.
        joined = [s for s in opened if s.spec.sidecar_spec.by_caller]
        if joined:
            self._write_group_sidecar(joined)
        self._frame_metadatas = None  # read from the sidecar when asked for
        if self.errors:
            self.error = WriterError("; ".join(self.errors))
            self._undelivered = self.error
            raise self.error

    def _write_group_sidecar(self, streams: list[Stream]) -> None:
        """The run's one sidecar, from every file's journal; then the journals go.

        Every file of the run as planned now (a run may add files after the
        first opened), never the list a stream was opened with.
        """
        side = self._sidecar_spec()
        opened = {s.spec.position_key for s in streams}
        # A file that never opened has no journal of this run: whatever lies
        # at its journal's name (another run's) is not read.
        never_opened = {key: 0 for key, _ in side.members if key not in opened}
        try:
            write_group_sidecar(
                side, extra=streams[0].spec.extra_metadata, frames=never_opened
            )
        except Exception as exc:
            self._record(f"writing the sidecar {side.path}: {exc}")
            return
        for key, path in side.members:
            report = self.reports.get(key)
            if report is not None and report.error is None:
                unlink(journal_path(path))

    # -- legacy API ---------------------------------------------------------------
    def finalize_metadata(self) -> str:
        """(Re)write `<filename>_frame_metadata.json` from `frame_metadatas`."""
        data = json.dumps(self.frame_metadatas, cls=CustomJSONEncoder).encode()
        atomic_write(self._frame_metadata_filename, data)
        return self._frame_metadata_filename

    @contextmanager
    def attach(self, core: Any) -> Iterator[CustomWriter]:
        """Connect to the acquisition thread itself, for the duration of a `with`.

        `with writer.attach(core): core.mda.run(seq)` skips pymmcore-plus's
        relay thread, which otherwise costs a large share of the rate.
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
        """Finish what is open; raise a run's error not yet raised to the caller.

        pymmcore-plus logs and swallows what `sequenceFinished` raises, so an
        error of the last run that no call of ours has raised yet is raised
        here: a `with CustomWriter(...)` block never ends quietly after lost
        frames. A writer that is never closed keeps no process either (the
        shared service reaps itself when idle).
        """
        if self._streams:
            try:
                self._finish("canceled")
            except WriterError:
                pass
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
        self._sequence_json = None
        self._summary = None
        self._files = {}
        self._by_source = {}
        self._keys_by_p = {0: ("p0", "p0")}
        self._expected = {}
        self._cameras = [None]
        self._frame_metadatas = {}
        self.reports = {}
        self.errors = []
        self.notes = []
        self.error = None
        self._undelivered = None
        self._canceled = False
        self._open_failed = {}
        self._lost = {}
        self._refused = set()

    def _sidecar_spec(
        self, layout: str = "positions", by_caller: bool = True
    ) -> SidecarSpec:
        """The run's sidecar with every file planned so far; `by_caller`:
        this writer joins it at the end (else the file's worker writes it)."""
        return SidecarSpec(
            path=self._frame_metadata_filename,
            layout=layout,
            members=tuple((f.key, f.path) for f in self._files.values()),
            by_caller=by_caller,
        )

    def _open(self, f: _File, shape: tuple[int, ...], dtype: Any) -> Stream:
        return self._open_file(f, shape, dtype, kind="ome-tiff")

    def _open_file(
        self,
        f: _File,
        shape: tuple[int, ...],
        dtype: Any,
        *,
        kind: str,
        sidecar: SidecarSpec | None = None,
        **options: Any,
    ) -> Stream:
        """Open the stream of file `f`, with its share of the ring; it
        feeds the run's sidecar, which this writer joins (unless `sidecar`
        says otherwise)."""
        n_files = max(1, len(self._files))
        return self._service.open_stream(
            f.path,
            shape=tuple(shape),
            dtype=dtype,
            frames=f.frames,
            overwrite=self._overwrite,
            kind=kind,
            position_key=f.key,
            position_index=f.position_index,
            ring_bytes=max(self._min_ring_bytes, self._ring_bytes // n_files),
            policy=self._policy,
            direct_io=self._direct_io,
            sequence=self._sequence_json,
            summary=self._summary,
            sidecar=sidecar or self._sidecar_spec(),
            notes=tuple(self.notes),
            **options,
        )

    def _record(self, message: str) -> None:
        self.errors.append(message)

    def _load_sidecar(self) -> dict[str, list[Any]]:
        try:
            with open(self._frame_metadata_filename, "rb") as fh:
                data = json.load(fh)
        except (OSError, ValueError):
            return {}
        if not isinstance(data, dict):
            return {}
        inner = data.get("frame_metadatas")
        if isinstance(inner, dict):
            data = inner
        return {k: v for k, v in data.items() if isinstance(v, list)}

    def _finish_at_exit(self) -> None:
        """The interpreter is exiting mid-run (Ctrl-C escaped `core.mda.run`).

        pymmcore-plus then never stops its relay thread, and the interpreter
        would wait for it forever: let it hand over the frames it still
        holds, stop it, and finalise the files as interrupted.
        """
        relay = self._relay() if self._relay is not None else None
        if relay is not None and relay.is_alive() and self._streams:
            relay.stop()  # type: ignore[attr-defined]
            relay.join(60)
        if self._streams:
            with suppress(Exception):
                self._finish("interrupted")


_running_writers: weakref.WeakSet[CustomWriter] = weakref.WeakSet()
_exit_hook_lock = threading.Lock()
_exit_hook_set = False


def _finish_runs_at_exit() -> None:
    """Once: finish open runs when the interpreter starts shutting down,
    before it joins threads (where a never-stopped relay thread hangs it)."""
    global _exit_hook_set
    with _exit_hook_lock:
        if _exit_hook_set:
            return
        _exit_hook_set = True

    def finish() -> None:
        for writer in list(_running_writers):
            writer._finish_at_exit()

    add_finisher(finish)  # a Windows console close or logoff, too
    register = getattr(threading, "_register_atexit", None)
    if register is not None:  # every supported Python has it
        with suppress(RuntimeError):  # already shutting down
            register(finish)


def _close_streams(streams: dict[str, Stream]) -> None:
    """A writer dropped mid-run: its streams are finalised, not leaked."""
    for stream in list(streams.values()):
        with suppress(Exception):
            stream.close("canceled", check=False)
    streams.clear()


def _summary_json(
    meta: Mapping[str, Any] | None, notes: list[str]
) -> dict[str, Any] | None:
    """The summary metadata as plain JSON (without the sequence, sent apart)."""
    if not meta:
        return None
    data, dropped = plain_json({k: v for k, v in meta.items() if k != "mda_sequence"})
    if dropped:
        notes.append(
            f"{dropped} value(s) of the summary metadata could not become JSON"
        )
    return data if isinstance(data, dict) else None


def _cameras(summary: dict[str, Any] | None) -> list[str | None]:
    """The cameras that will deliver frames: the selected one, or the physical
    cameras of a Multi Camera device. [None]: unknown (one camera assumed)."""
    infos = (summary or {}).get("image_infos") or []
    if not infos or not isinstance(infos[0], dict):
        return [None]
    selected = infos[0].get("camera_label")
    if not isinstance(selected, str):
        return [None]
    for device in (summary or {}).get("devices") or []:
        if not isinstance(device, dict) or device.get("label") != selected:
            continue
        physical = [
            p.get("value")
            for p in device.get("properties") or []
            if isinstance(p, dict)
            and str(p.get("name", "")).startswith("Physical Camera")
        ]
        cams = [c for c in physical if isinstance(c, str) and c and c != "Undefined"]
        if cams:
            return list(dict.fromkeys(cams))
    return [selected]


def _infos_by_camera(
    summary: dict[str, Any] | None,
) -> dict[str | None, tuple[tuple[int, ...], str]]:
    """Frame shape and dtype per camera label (None: the selected camera)."""
    out: dict[str | None, tuple[tuple[int, ...], str]] = {}
    infos = (summary or {}).get("image_infos") or []
    for n, info in enumerate(infos):
        if not isinstance(info, dict) or "plane_shape" not in info:
            continue
        try:
            shape = tuple(int(s) for s in info["plane_shape"])
            dtype = np.dtype(info["dtype"]).str
        except (TypeError, ValueError):
            continue
        label = info.get("camera_label")
        out[label if isinstance(label, str) else None] = (shape, dtype)
        if n == 0:
            out[None] = (shape, dtype)
    return out


def _expected_frames(seq: Any, n_positions: int) -> dict[int, int | None]:
    """Frames each position index will get (None: not known in advance).

    Every axis multiplies out only without sub-sequences, channels that skip
    their z stack (do_stack=False) or time points (acquire_every); otherwise
    the events are counted, up to a bound. A plain list of events (which
    pymmcore-plus wraps in a sequence without sizes) has no count.
    """
    if seq is None or type(seq).__name__ == "GeneratorMDASequence":
        return {}
    positions = list(getattr(seq, "stage_positions", ()) or ())
    sizes = {k: v for k, v in dict(getattr(seq, "sizes", {})).items() if v}
    total = math.prod(sizes.values()) if sizes else 1
    simple = all(getattr(p, "sequence", None) is None for p in positions) and all(
        getattr(c, "do_stack", True) and getattr(c, "acquire_every", 1) == 1
        for c in getattr(seq, "channels", ()) or ()
    )
    if simple:  # exact, and instant even for millions of frames
        per = total // max(1, sizes.get("p", 1))
        return dict.fromkeys(range(max(1, n_positions)), per)
    if total > _COUNT_EVENTS_UP_TO:
        return {}  # too many events to count: files grow as needed
    counts: dict[int, int | None] = {}
    for event in seq:
        p = int(event.index.get("p", 0))
        counts[p] = (counts.get(p) or 0) + 1
    return counts


__all__ = ["CustomWriter"]

# Keep msgspec referenced for subclasses that replace options structs.
_ = msgspec
