"""Path checks made in the user's process, before any camera starts."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from mesowriter._platform import check_file_name, unlink
from mesowriter._spec import journal_path, report_path, sidecar_path


def prepare_output_path(path: str | os.PathLike[str], overwrite: bool) -> str:
    """Validate `path` for a new data file and return it absolute.

    Raises a clear error for an empty name, a name Windows reserves for a
    device (`NUL.tif`), a folder, an existing file
    without `overwrite`, a leftover journal of an unfinished run, or a folder
    that cannot be created or written to.
    """
    raw = os.fspath(path)
    if not raw or raw.endswith(("/", os.sep)):
        raise ValueError(f"{raw!r} is not a file name")
    target = Path(normalised_path(raw))
    check_file_name(str(target))
    if target.is_dir():
        raise IsADirectoryError(f"{target} is a folder, not a data file name")
    journal = Path(journal_path(str(target)))
    if not overwrite:
        if target.exists():
            raise FileExistsError(f"{target} exists; pass overwrite=True to replace it")
        if journal.exists():
            raise FileExistsError(
                f"{journal} holds the journal of an unfinished run; run "
                f"`mesowriter recover {target}` or pass overwrite=True"
            )
    folder = target.parent
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise PermissionError(f"cannot create the folder {folder}: {exc}") from exc
    try:
        fd, probe = tempfile.mkstemp(prefix=".mesowriter-probe-", dir=folder)
    except OSError as exc:
        raise PermissionError(f"cannot write into {folder}: {exc}") from exc
    os.close(fd)
    os.unlink(probe)
    if overwrite:
        for stale in (sidecar_path(str(target)), report_path(str(target)), journal):
            unlink(str(stale))
    return str(target)


def normalised_path(path: str | os.PathLike[str]) -> str:
    """Absolute, `~` expanded, `..` resolved: one name per file, for comparing."""
    return os.path.abspath(os.path.expanduser(os.fspath(path)))


def position_path(path: str, key: str) -> str:
    """`run.ome.tiff` -> `run_p1.ome.tiff`: one data file per position."""
    from mesowriter.sinks._tiff import tiff_suffix

    suffix = tiff_suffix(path) or os.path.splitext(path)[1]
    stem = path[: len(path) - len(suffix)] if suffix else path
    return f"{stem}_{key}{suffix}"
