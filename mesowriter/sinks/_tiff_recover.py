"""Recovering a TIFF whose writer and acquisition died.

What counts as on disk (see `_tiff.py` for the order that makes it true):

- the header block's `committed`, written after each commit's pixel sync,
  so it vouches for frames whose pixels are durable;
- the journal's records, appended after the same sync, whose file
  positions must read 0, 1, 2, ... (in acquisition order);
- and, in every case, pixels that lie inside the file.

Frames the block vouches for beyond the journal are kept, their metadata
marked as lost in the sidecar and the report. Zeros past those counts are
never frames: nothing durable says they were written. The file is then
resumed and finalised by the sink's own code, exactly as a normal close
would, and the run's one sidecar is rebuilt from the journals of all its
files (when they are all final).
"""

from __future__ import annotations

import datetime as _dt
import os
from typing import Any

import msgspec
import numpy as np

from mesowriter._journal import MISSING_METADATA, read_header, scan, write_group_sidecar
from mesowriter._platform import (
    FileLockedError,
    atomic_write,
    os_path,
    probe_lock,
    unlink,
)
from mesowriter._report import FinishReason, StreamReport, dropped_from
from mesowriter._spec import SidecarSpec, StreamSpec, journal_path, report_path
from mesowriter._untrusted import read_journal_header
from mesowriter.sinks._base import ResumeState
from mesowriter.sinks._tiff import TiffSink
from mesowriter.sinks._tiff_format import (
    PAGE,
    HeaderBlock,
    newest_block,
)
from mesowriter.sinks._tiff_format import (
    read_header as read_tiff_header,
)


def recover_tiff(path: str, *, overwrite_sidecar: bool = True) -> Any:
    from mesowriter._recover import RecoverError, RecoverResult

    notes: list[str] = []
    size = os.path.getsize(os_path(path))
    with open(os_path(path), "rb") as fh:
        page0 = fh.read(PAGE)
    if probe_lock(path):
        owner = newest_block(page0)
        raise RecoverError(
            f"{path} is being written by a live mesowriter process"
            f"{f' ({owner.owner})' if owner is not None else ''}; recover refuses "
            "to touch it (run it again once that writer has exited)"
        )
    try:
        read_tiff_header(page0)
    except ValueError:
        raise RecoverError(f"{path}: not a TIFF file") from None
    block = newest_block(page0)
    jpath = journal_path(path)
    spec: StreamSpec | None = None
    records: list[tuple[int, int, bytes]] = []
    if os.path.lexists(jpath):
        if os.path.islink(jpath):
            raise RecoverError(f"{jpath} is a symbolic link; not following it")
        try:
            spec = read_journal_header(jpath).spec  # every number checked
            _, records, _ = scan(jpath)
        except ValueError as exc:
            notes.append(f"journal not usable: {exc}")
            records = []
    if block is None:
        if spec is None:
            raise RecoverError(f"{path}: not a mesowriter file (no header block)")
        raise RecoverError(
            f"{path}: has a journal but no mesowriter header block (written by an "
            "older mesowriter, or not a mesowriter file)"
        )
    if spec is None:
        spec = _spec_from_block(path, block)
        notes.append(
            "no journal: frame metadata is lost; the header block vouches for "
            "the frames"
        )
    elif tuple(spec.shape) != tuple(block.shape) or np.dtype(spec.dtype) != np.dtype(
        block.dtype
    ):
        raise RecoverError(f"{path}: its journal describes another file ({jpath})")
    spec = _moved(spec, path)
    if block.state == "final":
        sidecar = _finish_group(spec, None, notes, overwrite_sidecar)
        return RecoverResult(
            path=path,
            recovered=False,
            frames_on_disk=block.committed,
            frames_in_journal=len(records),
            frames_declared=block.committed,
            sidecar=sidecar,
            report=report_path(path) if os.path.exists(report_path(path)) else None,
            notes=["already finalised: nothing to do", *notes],
        )
    geo = block.geometry()
    fb = geo.frame_nbytes
    room = max(0, (size - geo.data_offset) // fb) if size > geo.data_offset else 0
    if block.reordered:
        valid = [r for r in records if 0 <= r[1] and geo.data_end(r[1] + 1) <= size]
        records = records[: len(valid)] if len(valid) == len(records) else valid
        n = len(records)
        positions = [k for _, k, _ in records]
        if block.committed > n:
            notes.append(
                f"{block.committed - n} frame(s) of a reordered file had no journal "
                "line: their place in the hyperstack is unknown, they are not kept"
            )
    else:
        journalled = 0
        for j, (_, k, _) in enumerate(records):
            if k != j:
                notes.append(f"journal record {j} names file position {k}; kept {j}")
                break
            journalled = j + 1
        records = records[:journalled]
        n = min(max(block.committed, journalled), room)
        records = records[:n]
        positions = list(range(n))
    if n == 0:
        raise RecoverError(
            f"{path}: no frame reached the disk (header block: {block.committed}, "
            f"journal: {len(records)}); nothing to recover, files left as they are"
        )
    missing = n - len(records)
    if missing:
        notes.append(
            f"kept {missing} frame(s) whose pixels are durable but whose metadata "
            "never reached the journal (marked in the sidecar)"
        )
    sink = TiffSink(spec)
    try:
        sink.open(ResumeState(n, positions))
    except FileLockedError:
        raise RecoverError(
            f"{path} is being written by a live mesowriter process ({block.owner}); "
            "recover refuses to touch it"
        ) from None
    last = records[-1][0] if records else -1
    metas = [(i, m) for i, _, m in records]
    metas += [(last + 1 + j, MISSING_METADATA) for j in range(missing)]
    summary = sink.close(FinishReason.RECOVERED.value, iter(metas))
    sidecar = _finish_group(spec, n, notes, overwrite_sidecar)
    report = _write_report(path, spec, metas, records, summary, sidecar, notes)
    return RecoverResult(
        path=path,
        recovered=True,
        frames_on_disk=n,
        frames_in_journal=len(records),
        frames_declared=int(summary.get("frames_in_file", n)),
        sidecar=sidecar,
        report=report,
        notes=notes,
    )


def _spec_from_block(path: str, block: HeaderBlock) -> StreamSpec:
    return StreamSpec(
        stream_id=0,
        path=path,
        kind=TiffSink.kind,
        shape=tuple(block.shape),
        dtype=block.dtype,
        frames=None,
        position_key="p0",
    )


def _moved(spec: StreamSpec, path: str) -> StreamSpec:
    """Files moved since the run: companions are found beside the data."""
    folder = os.path.dirname(path)
    side = spec.sidecar_spec

    def here(p: str) -> str:
        return os.path.join(folder, os.path.basename(p))

    members = tuple((k, path if p == spec.path else here(p)) for k, p in side.members)
    sidecar = SidecarSpec(path=here(side.path), layout=side.layout, members=members)
    return msgspec.structs.replace(spec, path=path, sidecar=sidecar)


def _finish_group(
    spec: StreamSpec, frames: int | None, notes: list[str], overwrite: bool
) -> str | None:
    """Rebuild the run's one sidecar once every member file is final; then
    the members' journals go."""
    side = spec.sidecar_spec
    if not overwrite and os.path.exists(side.path):
        notes.append("kept the existing sidecar (overwrite_sidecar=False)")
        return side.path
    counts: dict[str, int] = {}
    for key, member in side.members:
        if member == spec.path:
            if frames is not None:
                counts[key] = frames
            continue
        state = _member_state(member)
        if state != "final":
            notes.append(
                f"{member} is {state}: run `mesowriter recover` on it; the sidecar "
                f"{side.path} is written once every file of the run is final"
            )
            return None
    if not counts and not any(os.path.exists(journal_path(p)) for _, p in side.members):
        return side.path if os.path.exists(side.path) else None
    try:
        write_group_sidecar(side, extra=spec.extra_metadata, frames=counts)
    except OSError as exc:
        notes.append(f"writing the sidecar failed: {exc}")
        return None
    for _, member in side.members:
        unlink(journal_path(member))
    return side.path


def _member_state(path: str) -> str:
    try:
        with open(os_path(path), "rb") as fh:
            block = newest_block(fh.read(PAGE))
    except OSError:
        return "missing"
    if block is None:
        return "not a mesowriter file"
    if block.state != "final" and os.path.exists(journal_path(path)):
        try:
            read_header(journal_path(path))
        except ValueError:
            return "damaged"
    return block.state


def _write_report(
    path: str,
    spec: StreamSpec,
    metas: list[tuple[int, bytes]],
    records: list[tuple[int, int, bytes]],
    summary: dict[str, Any],
    sidecar: str | None,
    notes: list[str],
) -> str:
    """The report a finished stream would have had, as far as disk tells.

    Stream indices below the last one written that are not in the file were
    dropped or refused before the crash; later ones are unknown.
    """
    indices = [i for i, _ in metas]
    seen = set(indices)
    received = max(indices) + 1 if indices else 0
    drops = {"not_written": [i for i in range(received) if i not in seen]}
    drops = {k: v for k, v in drops.items() if v}
    dropped = dropped_from(drops)
    now = _dt.datetime.now(_dt.timezone.utc).isoformat()
    report = StreamReport(
        path=path,
        kind=spec.kind,
        position_key=spec.position_key,
        shape=list(spec.shape),
        dtype=spec.dtype,
        finish_reason=FinishReason.RECOVERED,
        frames_expected=spec.frames,
        frames_received=received,
        frames_written=len(metas),
        frames_dropped=len(dropped),
        dropped_indices=dropped,
        drops=drops,
        metadata_missing=indices[len(records) :],
        sidecar=sidecar,
        sink=summary,
        written_by="recover",
        notes=notes,
        finished_at=now,
    )
    out = report_path(path)
    atomic_write(out, report.to_json())
    return out
