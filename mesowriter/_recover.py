"""`mesowriter recover`: finalise files whose writer and acquisition both died.

The format's sink does the work (see `TiffSink.recover`): the file is
treated exactly as a replacement worker would treat it, resumed at the
frames its header block and its journal vouch for, then finalised by the
same code as a normal close. Before anything, shared memory left by dead
processes is removed, and a file that a live writer still owns is refused.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass, field

from mesowriter._ring import remove_stale_rings


class RecoverError(ValueError):
    """The file cannot be recovered (not ours, no frame on disk, a live owner)."""


@dataclass(frozen=True)
class RecoverResult:
    """What `recover` found and did."""

    path: str
    recovered: bool  # False: nothing to do (already finalised)
    frames_on_disk: int  # frames kept: their pixels are durable
    frames_in_journal: int  # complete journal records
    frames_declared: int  # planes the final description declares
    sidecar: str | None
    report: str | None
    notes: list[str] = field(default_factory=list)
    removed_rings: list[str] = field(default_factory=list)


def recover(
    path: str | os.PathLike[str], *, overwrite_sidecar: bool = True
) -> RecoverResult:
    """Finalise a data file whose writer died; see the module docstring.

    Raises FileNotFoundError for a missing data file and RecoverError when
    the file is not a mesowriter file, holds no frame, has a live owner or
    is of a format that cannot be recovered. A file already finalised is
    left untouched (its journal, if any, becomes the sidecar).
    """
    from mesowriter.sinks import sink_for_path

    data_path = os.path.abspath(os.fspath(path))
    try:
        st = os.lstat(data_path)
    except FileNotFoundError:
        raise FileNotFoundError(f"{data_path}: no such data file") from None
    if stat.S_ISLNK(st.st_mode):
        raise RecoverError(f"{data_path} is a symbolic link; recover the file itself")
    if not stat.S_ISREG(st.st_mode):
        raise RecoverError(f"{data_path} is not a regular file")
    removed = remove_stale_rings()
    try:
        sink = sink_for_path(data_path)
    except ValueError as exc:
        raise RecoverError(str(exc)) from None
    result: RecoverResult = sink.recover(data_path, overwrite_sidecar=overwrite_sidecar)
    if removed:
        result.removed_rings.extend(removed)
    return result
