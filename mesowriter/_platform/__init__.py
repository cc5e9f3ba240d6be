"""The one place that knows which OS this is.

One implementation is chosen at import (`_windows` on Windows, `_posix`
elsewhere) and its interface re-exported here; the rest of mesowriter calls
these names and never tests `sys.platform`. What is the same everywhere
(alignment, retries, fallbacks, grouping waits, long paths) lives in
`_base` and is tested on Linux for both implementations.
"""

from __future__ import annotations

import sys

from mesowriter._platform._base import (
    DEFAULT_SYNC_EVERY,
    O_BINARY,
    O_NOFOLLOW,
    FileLockedError,
    Mode,
    is_aligned,
)

if sys.platform == "win32":
    from mesowriter._platform._windows import WindowsAlignedFile as AlignedFile
    from mesowriter._platform._windows import WindowsPlatform as _Platform
else:
    from mesowriter._platform._posix import PosixAlignedFile as AlignedFile
    from mesowriter._platform._posix import PosixPlatform as _Platform

_impl = _Platform()

SHARED_LIBRARY_SUFFIX = _impl.shared_library_suffix
add_library_folder = _impl.add_library_folder
probe_lock = _impl.probe_lock
open_exclusive = _impl.open_exclusive
temp_sibling = _impl.temp_sibling
atomic_write = _impl.atomic_write
replace = _impl.replace
unlink = _impl.unlink
fsync_dir = _impl.fsync_dir
os_path = _impl.os_path
check_file_name = _impl.check_file_name
install_shutdown_handler = _impl.install_shutdown_handler
wait_any = _impl.wait_any
shm_available_bytes = _impl.shm_available_bytes
stale_shared_memory = _impl.stale_shared_memory
remove_shared_memory = _impl.remove_shared_memory
advise_huge_pages = _impl.advise_huge_pages

__all__ = [
    "DEFAULT_SYNC_EVERY",
    "O_BINARY",
    "O_NOFOLLOW",
    "SHARED_LIBRARY_SUFFIX",
    "AlignedFile",
    "FileLockedError",
    "Mode",
    "add_library_folder",
    "advise_huge_pages",
    "atomic_write",
    "check_file_name",
    "fsync_dir",
    "install_shutdown_handler",
    "is_aligned",
    "open_exclusive",
    "os_path",
    "probe_lock",
    "remove_shared_memory",
    "replace",
    "shm_available_bytes",
    "stale_shared_memory",
    "temp_sibling",
    "unlink",
    "wait_any",
]
