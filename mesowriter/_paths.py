"""Path checks made in the user's process, before any camera starts.

A run creates a data file and companions beside it (journal, report,
sidecar). All of their names are checked here, at open: length, a folder in
the way, an existing file, a live writer owning it, the free space the first
frames need. An open that is refused changes nothing on disk: the previous
run's files survive, and with `overwrite=True` they are replaced only when
the new run has its data file (the worker locks it first).
"""

from __future__ import annotations

import enum
import errno
import os
import shutil
import tempfile
from typing import Literal

from mesowriter._platform import check_file_name, probe_lock
from mesowriter._spec import journal_path, report_path, sidecar_path

NAME_MAX = 255


class _Sidecar(enum.Enum):
    OWN = "own"


OWN_SIDECAR: Literal[_Sidecar.OWN] = _Sidecar.OWN
"""`prepare_output_path(sidecar=...)`'s default: the data file's own sidecar."""


def prepare_output_path(
    path: str | os.PathLike[str],
    overwrite: bool,
    *,
    sidecar: str | Literal[_Sidecar.OWN] | None = OWN_SIDECAR,
    space_needed: int = 0,
) -> str:
    """Validate `path` and its companions for a new data file; return it
    absolute. Creates the folder if needed, and nothing else; a refusal
    leaves no folder behind either.

    `sidecar` is the sidecar the run writes: by default the data file's own
    `<path>_frame_metadata.json` (what a handler writes), else the name
    given, or None for a stream that writes none of its own (a member of a
    group whose sidecar was checked when its writer was made).
    """
    raw = os.fspath(path)
    if not raw or raw.endswith(("/", os.sep)):
        raise ValueError(f"{raw!r} is not a file name")
    target = normalised_path(raw)
    check_file_name(target)
    if os.path.isdir(target):
        raise IsADirectoryError(f"{target} is a folder, not a data file name")
    companions = [journal_path(target), report_path(target)]
    if sidecar is OWN_SIDECAR:
        companions.append(sidecar_path(target))
    elif sidecar is not None:
        companions.append(normalised_path(sidecar))
    for name in (target, *companions):
        _check_length(name)
    for name in companions:
        if os.path.isdir(name):
            raise IsADirectoryError(f"{name} is a folder; the run needs that name")
    if os.path.lexists(target) and probe_lock(target):
        raise FileExistsError(
            f"{target} is being written by a live mesowriter process; it cannot "
            "be replaced while that writer owns it: choose another name"
        )
    if os.path.islink(target):
        # The worker refuses it too (O_NOFOLLOW), but a handler opens its files
        # when the run starts, and that refusal surfaces after the camera ran.
        raise OSError(
            errno.ELOOP,
            f"{target} is a symbolic link; a data file is never written through "
            "a link (with or without overwrite=True): remove it or choose "
            "another name",
            target,
        )
    if not overwrite:
        _refuse_existing(target, companions)
    folder = os.path.dirname(target)
    created = _make_folders(folder)
    try:
        _check_folder(folder, space_needed)
    except BaseException:
        _remove_folders(created)  # a refused open leaves no folder either
        raise
    return target


def _check_folder(folder: str, space_needed: int) -> None:
    """The folder takes a new file and has room for the first frames."""
    try:
        fd, probe = tempfile.mkstemp(prefix=".mesowriter-probe-", dir=folder)
    except OSError as exc:
        raise PermissionError(f"cannot write into {folder}: {exc}") from exc
    os.close(fd)
    os.unlink(probe)
    if space_needed:
        free = shutil.disk_usage(folder).free
        if free < space_needed:
            raise OSError(
                errno.ENOSPC,
                f"{folder} has {free / 2**20:.0f} MiB free; this stream needs "
                f"{space_needed / 2**20:.0f} MiB before its first frame",
            )


def _make_folders(folder: str) -> list[str]:
    """Create `folder` and any missing parents; return those created,
    outermost first. On failure remove them again, then raise."""
    missing: list[str] = []
    here = folder
    while not os.path.isdir(here):
        missing.append(here)
        parent = os.path.dirname(here)
        if parent == here:
            break
        here = parent
    created: list[str] = []
    for name in reversed(missing):
        try:
            os.mkdir(name)
        except FileExistsError:
            if os.path.isdir(name):  # made meanwhile by someone else: not ours
                continue
            _remove_folders(created)
            raise PermissionError(
                f"cannot create the folder {folder}: {name} is not a folder"
            ) from None
        except OSError as exc:
            _remove_folders(created)
            raise PermissionError(f"cannot create the folder {folder}: {exc}") from exc
        created.append(name)
    return created


def _remove_folders(created: list[str]) -> None:
    """Remove the folders `_make_folders` created (innermost first), if empty."""
    for name in reversed(created):
        try:
            os.rmdir(name)
        except OSError:
            return


def _refuse_existing(target: str, companions: list[str]) -> None:
    journal = journal_path(target)
    if os.path.lexists(target):
        raise FileExistsError(f"{target} exists; pass overwrite=True to replace it")
    if os.path.lexists(journal):
        raise FileExistsError(
            f"{journal} holds the journal of an unfinished run; run "
            f"`mesowriter recover {target}` or pass overwrite=True"
        )
    for name in companions:
        if os.path.lexists(name):
            raise FileExistsError(
                f"{name} is left from another run (its data file {target} is not "
                "there: moved away?); move it or pass overwrite=True"
            )


def _check_length(path: str) -> None:
    """One name at most NAME_MAX bytes (and UTF-16 units, for NTFS)."""
    leaf = os.path.basename(path)
    size = max(len(os.fsencode(leaf)), len(leaf.encode("utf-16-le")) // 2)
    if size > NAME_MAX:
        shown = leaf if len(leaf) <= 64 else f"{leaf[:24]}...{leaf[-32:]}"
        raise ValueError(
            f"the file name {shown} is {size} bytes long; file names hold at "
            f"most {NAME_MAX} (shorten the data file name: its companions add "
            "up to 20 characters)"
        )


def normalised_path(path: str | os.PathLike[str]) -> str:
    """Absolute, `~` expanded, `..` resolved: one name per file, for comparing."""
    return os.path.abspath(os.path.expanduser(os.fspath(path)))


def position_path(path: str, key: str) -> str:
    """`run.ome.tiff` -> `run_p1.ome.tiff`: one data file per position.

    `key` must already be one safe path component (see `_names`).
    """
    from mesowriter.sinks import split_suffix

    stem, suffix = split_suffix(path)
    return f"{stem}_{key}{suffix}"
