"""Finding a user-supplied OpenH264 library and quieting OpenCV's logging.

We never ship OpenH264 (Cisco's binary licence covers only their own
downloads), so the user drops it in `external/video-codecs/` or names it with
`MESOWRITER_OPENH264_LIBRARY` or mesofield's `MESOFIELD_OPENH264_LIBRARY`
(first found wins, in the order of `find_openh264`). Which OpenCV builds can
use it:

* Windows opencv-python: its FFmpeg loads `openh264-1.8.0-win64.dll` at run
  time, found via `OPENH264_LIBRARY` (a full path) or the DLL search path.
* Linux/macOS: only an OpenCV whose FFmpeg was built with libopenh264 (e.g.
  some conda or distribution builds); the Linux pip wheels have no H.264
  encoder at all, whatever is installed.

The dynamic loader reads `LD_LIBRARY_PATH`/`DYLD_LIBRARY_PATH` only when a
process starts, so changing them here helps processes spawned *afterwards*
(the writer workers), not the calling one: call `configure_opencv_codec()` in
the parent before starting workers, and again in each worker (it is cheap and
idempotent) for `OPENH264_LIBRARY` and the log levels.
"""

from __future__ import annotations

import os
import sys
import warnings
from pathlib import Path

from mesowriter._platform import SHARED_LIBRARY_SUFFIX, add_library_folder

ENV_LIBRARY = "MESOWRITER_OPENH264_LIBRARY"  # a file, or a folder holding it
ENV_LIBRARY_LEGACY = "MESOFIELD_OPENH264_LIBRARY"  # mesofield's name, same meaning
ENV_CODECS_DIR = "MESOWRITER_VIDEO_CODECS_DIR"

# The exact names OpenCV's own FFmpeg wrappers ask for come first; both
# tables are keyed by this OS's shared-library suffix.
_PREFERRED = {
    ".dll": "openh264-1.8.0-win64.dll",
    ".dylib": "libopenh264-1.8.0-osx64.4.dylib",
}
_PATTERNS = {".dll": "openh264*.dll", ".dylib": "libopenh264*.dylib"}
_SO_PATTERN = "libopenh264*.so*"


def default_codecs_dir() -> Path:
    """`external/video-codecs/` of the repository this package lives in."""
    return Path(__file__).resolve().parents[2] / "external" / "video-codecs"


def _find_in(folder: Path) -> Path | None:
    if not folder.is_dir():
        return None
    preferred = _PREFERRED.get(SHARED_LIBRARY_SUFFIX)
    if preferred and (folder / preferred).is_file():
        return folder / preferred
    pattern = _PATTERNS.get(SHARED_LIBRARY_SUFFIX, _SO_PATTERN)
    hits = sorted(p for p in folder.glob(pattern))
    hits = [p for p in hits if p.is_file()]
    return hits[-1] if hits else None


def find_openh264() -> Path | None:
    """The OpenH264 library named by the environment or the codecs folder.

    Looks, in order, at `MESOWRITER_OPENH264_LIBRARY`, then
    `MESOFIELD_OPENH264_LIBRARY` (each a file or a folder holding it), then
    the folders `MESOWRITER_VIDEO_CODECS_DIR` and `external/video-codecs/`.
    Our own variable comes first, so it can override a lab-wide mesofield
    setting. A variable naming no library is warned about and skipped, as
    mesofield skipped it, so a stale path does not hide a copy found later.
    """
    for var in (ENV_LIBRARY, ENV_LIBRARY_LEGACY):
        named = os.environ.get(var)
        if not named:
            continue
        p = Path(named).expanduser()
        found = p if p.is_file() else _find_in(p)
        if found is not None:
            return found.resolve()
        warnings.warn(
            f"{var}={named!r} names no OpenH264 library; ignored",
            RuntimeWarning,
            stacklevel=3,
        )
    for folder in (os.environ.get(ENV_CODECS_DIR), default_codecs_dir()):
        if folder and (found := _find_in(Path(folder).expanduser())) is not None:
            return found.resolve()
    return None


def _quiet_logging() -> None:
    # Env vars reach cv2 imported later and every spawned worker; a user's
    # own setting wins. FFmpeg's level is read when its backend first starts.
    user_set = "OPENCV_LOG_LEVEL" in os.environ
    os.environ.setdefault("OPENCV_LOG_LEVEL", "ERROR")
    os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")  # AV_LOG_QUIET
    cv2 = sys.modules.get("cv2")
    if cv2 is not None and not user_set:
        logging = getattr(getattr(cv2, "utils", None), "logging", None)
        if logging is not None:
            logging.setLogLevel(logging.LOG_LEVEL_ERROR)


def configure_opencv_codec() -> str | None:
    """Quiet OpenCV/FFmpeg logs and expose OpenH264 if the user supplied it.

    Returns the library path found, or None. Safe to call repeatedly: paths
    are added to search variables only once.
    """
    _quiet_logging()
    lib = find_openh264()
    if lib is None:
        return None
    add_library_folder(str(lib.parent))
    os.environ.setdefault("OPENH264_LIBRARY", str(lib))
    return str(lib)
