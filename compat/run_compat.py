"""make compat: mesofield 0.5.0b0's own code against mesowriter's files.

For every scenario in ``_acquire.py`` the same acquisition is written twice,
each in a fresh process: by mesofield's own writer module ("legacy":
``mesofield.data.writer.OMEWriter`` / ``CV2Writer``) and by mesowriter's
classes swapped into the module attributes mesofield takes its writers from.
Then mesofield's readers run on both sets of files and their results are
compared: "every reader returns on our files what it returns on the legacy
writer's". Where the two legitimately differ, the check compares structure
only and says so in its reason:

- timestamps (``TimeReceivedByCore``, ``ElapsedTime-ms``, ``runner_time_ms``,
  ``time_elapsed_s``, ``time_absolute``, the OpenCV camera's ``device_ts``,
  ``started`` / ``stopped``) come from two different runs: compared by
  length, dtype and order, not value;
- ``mda_event``: the legacy encoder writes ``null``, mesowriter keeps the
  event's plain fields (a documented, deliberate change);
- 16-bit frames in video: the legacy writer stretches each frame by its own
  min/max, mesowriter uses one fixed mapping (deliberate): compared by frame
  count, shape and dtype;
- the crash run: the two runs are killed after different numbers of frames,
  so the recovered file is checked for consistency (every reader sees the same
  frame count) and for being readable wherever the killed legacy file is.

Pixels are compared exactly: the DemoCamera ("Artificial Waves") and
mesofield's MockFrameProducer (seeded) give the same frames in every fresh
process, and the fake OpenCV capture is deterministic.

Exit status 1 if any check FAILs. Outputs go to ``compat-output/`` (removed
at the start of each run); ``compat-output/report.json`` has every detail.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import importlib.util
import json
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))

import _mesofield  # noqa: E402  (stand-ins for Qt / NI-DAQ before mesofield)

IMPLS = ("legacy", "mesowriter")
SCENARIOS = ("session", "mda_gui", "mda_video", "opencv", "cv2_codecs", "multicam")
SCENARIO_TIMEOUT = 120.0
ORPHAN_GRACE = 5.0
CRASH_AFTER_FRAMES = 150

# Columns/fields whose values come from the clock of one particular run.
TIMING = {
    "TimeReceivedByCore", "ElapsedTime-ms", "runner_time_ms", "time_elapsed_s",
    "time_absolute", "images_remaining_in_buffer", "device_ts", "timestamp",
    "started", "stopped",
}
# Deliberate, documented difference (LEGACY_API.md: CustomJSONEncoder).
DELIBERATE = {"mda_event"}
TS_RE = re.compile(r"\d{8}_\d{6}_")


# ---------------------------------------------------------------------------
# checks table


@dataclass
class Check:
    area: str
    name: str
    ok: bool
    reason: str
    detail: Any = None


@dataclass
class Report:
    checks: list[Check] = field(default_factory=list)

    def add(self, area: str, name: str, ok: bool, reason: str, detail: Any = None) -> None:
        self.checks.append(Check(area, name, bool(ok), reason, detail))

    def guard(self, area: str, name: str, fn: Callable[[], tuple[bool, str]]) -> None:
        """Run one check; an exception in the harness itself is a FAIL too."""
        try:
            ok, reason = fn()
        except Exception as exc:  # noqa: BLE001
            ok, reason = False, f"harness error: {type(exc).__name__}: {exc}"
            traceback.print_exc()
        self.add(area, name, ok, reason)


def short(obj: Any, n: int = 160) -> str:
    s = obj if isinstance(obj, str) else repr(obj)
    s = " ".join(s.split())
    return s if len(s) <= n else s[: n - 3] + "..."


# ---------------------------------------------------------------------------
# running scenarios


def run_scenario(py: str, impl: str, scenario: str, out: Path) -> dict[str, Any]:
    import psutil

    out.mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()
    proc = subprocess.Popen(
        [py, str(HERE / "_acquire.py"), impl, scenario, str(out)],
        stdout=open(out / "stdout.log", "wb"), stderr=open(out / "stderr.log", "wb"),
        cwd=str(REPO),
    )
    descendants: set[int] = set()
    try:
        ps = psutil.Process(proc.pid)
    except psutil.Error:
        ps = None
    timed_out = False
    while proc.poll() is None:
        if time.monotonic() - t0 > SCENARIO_TIMEOUT:
            timed_out = True
            break
        if ps is not None:
            try:
                descendants.update(c.pid for c in ps.children(recursive=True))
            except psutil.Error:
                pass
        time.sleep(0.05)
    if timed_out:
        for pid in [proc.pid, *descendants]:
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        proc.wait()
    result_path = out / "result.json"
    result: dict[str, Any] = json.loads(result_path.read_text()) if result_path.exists() else {}
    for pid in result.get("children_at_end", []):
        descendants.add(pid)
    # Writer processes must not outlive the acquisition process.
    deadline = time.monotonic() + ORPHAN_GRACE
    alive = [p for p in descendants if _alive(p)]
    while alive and time.monotonic() < deadline:
        time.sleep(0.1)
        alive = [p for p in alive if _alive(p)]
    for pid in alive:  # do not leave them behind on this machine
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass
    result.update(
        returncode=proc.returncode, timed_out=timed_out, orphans=alive,
        wall_seconds=round(time.monotonic() - t0, 2),
        stderr_tail=(out / "stderr.log").read_text(errors="replace")[-1500:],
    )
    return result


def _alive(pid: int) -> bool:
    import psutil

    try:
        p = psutil.Process(pid)
        return p.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def _reached_writer(out: Path, impl: str) -> bool:
    """Frames have reached the writer, not only the camera.

    The legacy writer writes on the relay thread as frames arrive;
    mesowriter's first run in a process starts its writer process and warms
    its ring first (about a second), the frames waiting in pymmcore-plus's
    queue meanwhile. A crash in that second loses frames that never reached
    any writer, so the kill waits until the journal holds some.
    """
    if impl != "mesowriter":
        return True
    return any(
        j.stat().st_size > 0 and j.read_bytes().count(b"\n") > 25
        for j in out.rglob("*_journal.ndjson")
    )


def run_crash(py: str, impl: str, out: Path) -> dict[str, Any]:
    """Start a long acquisition, SIGKILL it and its writer processes mid-run."""
    import psutil

    out.mkdir(parents=True, exist_ok=True)
    proc = subprocess.Popen(
        [py, str(HERE / "_acquire.py"), impl, "crash", str(out)],
        stdout=open(out / "stdout.log", "wb"), stderr=open(out / "stderr.log", "wb"),
        cwd=str(REPO),
    )
    progress = out / "progress.json"
    frames = 0
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            frames = json.loads(progress.read_text())["frames"]
        except (OSError, ValueError, KeyError):
            frames = 0
        if frames >= CRASH_AFTER_FRAMES and _reached_writer(out, impl):
            break
        time.sleep(0.02)
    info: dict[str, Any] = {"frames_before_kill": frames, "exited_before_kill": proc.poll()}
    try:
        kids = psutil.Process(proc.pid).children(recursive=True)
    except psutil.Error:
        kids = []
    victims = [proc.pid, *[k.pid for k in kids]]
    for pid in victims:  # the acquisition process and its writer processes
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass
    proc.wait()
    time.sleep(0.2)
    info["killed_pids"] = victims
    info["survivors"] = [p for p in victims if _alive(p)]
    armed = out / "armed.json"
    notes = json.loads(armed.read_text()) if armed.exists() else {}
    info["output_path"] = (notes.get("mesoscope") or {}).get("output_path")
    info["metadata_path"] = (notes.get("mesoscope") or {}).get("metadata_path")
    if impl == "mesowriter" and info["output_path"]:
        exe = Path(py).with_name("mesowriter")
        r = subprocess.run([str(exe), "recover", info["output_path"]],
                           capture_output=True, text=True, timeout=120)
        info["recover"] = {"returncode": r.returncode, "stdout": r.stdout[-2000:],
                           "stderr": r.stderr[-2000:]}
    return info


# ---------------------------------------------------------------------------
# mesofield's readers


class Readers:
    """mesofield 0.5.0b0's reader functions, imported as they ship."""

    def __init__(self) -> None:
        from mesofield.data import batch, tiffio

        # mesofield/data/batch.py sets OPENCV_VIDEOIO_PRIORITY_FFMPEG=0 at
        # import, which turns off OpenCV's FFmpeg capture backend for the whole
        # process: even its own get_video_codec() then cannot open an .mp4.
        # Undo that, or no video reader could be compared at all.
        os.environ.pop("OPENCV_VIDEOIO_PRIORITY_FFMPEG", None)
        from mesofield.datakit import discover
        from mesofield.datakit.sources.camera.mesoscope import MesoMetadataSource
        from mesofield.datakit.sources.camera.pupil import PupilMetadataSource
        import mesofield.playback as playback

        self.batch, self.tiffio, self.playback, self.discover = batch, tiffio, playback, discover
        self.Meso, self.Pupil = MesoMetadataSource, PupilMetadataSource
        from loguru import logger

        logger.remove()  # mesofield logs to the console; keep the table readable
        path = importlib.metadata.distribution("mesofield").locate_file(
            "experiments/two_cam_demo/load_dataset.py")
        spec = importlib.util.spec_from_file_location("mesofield_two_cam_load_dataset", path)
        assert spec and spec.loader
        self.load_dataset = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(self.load_dataset)

    # Each returns plain, comparable data.
    def meso_source(self, p: str) -> Any:
        return table_summary(self.Meso().load(Path(p)))

    def pupil_source(self, p: str) -> Any:
        return table_summary(self.Pupil().load(Path(p)))

    def mean_trace(self, p: str) -> Any:
        return self.batch.mean_trace_from_tiff([p], show_progress=False)[p]

    def dff(self, p: str, method: str) -> Any:
        return self.batch.dff_trace_from_tiff([p], method=method, show_progress=False,
                                              fs=30.0, window_seconds=0.5)[p]

    def frame_count(self, p: str) -> int:
        return int(self.batch._tiff_frame_count(p))

    def memmap_stack(self, p: str) -> Any:
        import numpy as np

        arr = self.tiffio.memmap_ome_stack(p)
        return {"shape": list(arr.shape), "dtype": str(arr.dtype), "pixels": np.asarray(arr)}

    def frames(self, p: str) -> Any:
        import numpy as np

        with self.playback._FrameReader(Path(p)) as reader:
            n = reader.n_frames
            frames = [reader.read(i) for i in range(n)]
        frames = [f for f in frames if f is not None]
        return {"kind": reader.kind, "n_frames": n, "read": len(frames),
                "shape": list(frames[0].shape) if frames else None,
                "dtype": str(frames[0].dtype) if frames else None,
                "pixels": np.stack(frames) if frames else None}

    def timestamps(self, p: str) -> Any:
        return self.playback._load_frame_timestamps(Path(p))

    def video_codec(self, p: str) -> str:
        return self.batch.get_video_codec(p)


def table_summary(stream: Any) -> dict[str, Any]:
    import numpy as np

    df = stream.value
    return {
        "n": len(df), "t_len": int(np.asarray(stream.t).size),
        "columns": [str(c) for c in df.columns],
        "dtypes": {str(c): str(df[c].dtype) for c in df.columns},
        "df": df, "t": np.asarray(stream.t),
        "meta_n_frames": (stream.meta or {}).get("n_frames"),
    }


def outcome(fn: Callable[[], Any]) -> tuple[str, Any]:
    try:
        return "ok", fn()
    except Exception as exc:  # noqa: BLE001 - the reader's exception is the result
        return "error", f"{type(exc).__name__}: {exc}"


def norm_msg(s: str, roots: list[Path]) -> str:
    for r in roots:
        s = s.replace(str(r), "<out>")
    return TS_RE.sub("<ts>_", s)


# ---------------------------------------------------------------------------
# comparisons


def same_outcome(a: tuple[str, Any], b: tuple[str, Any], roots: list[Path],
                 compare: Callable[[Any, Any], tuple[bool, str]]) -> tuple[bool, str]:
    (ka, va), (kb, vb) = a, b
    if ka == "error" and kb == "error":
        ta, tb = va.split(":")[0], vb.split(":")[0]
        if ta == tb:
            return True, f"both raise {ta} (legacy too): {short(norm_msg(va, roots), 90)}"
        return False, f"legacy raises {short(va, 70)}; ours raises {short(vb, 90)}"
    if ka == "error":
        return True, f"ours works where legacy raises {short(norm_msg(va, roots), 90)}"
    if kb == "error":
        return False, f"raises {short(norm_msg(vb, roots), 150)} (legacy returns a result)"
    return compare(va, vb)


def cmp_array(a: Any, b: Any, tol: float = 0.0) -> tuple[bool, str]:
    import numpy as np

    a, b = np.asarray(a), np.asarray(b)
    if a.shape != b.shape:
        return False, f"shape {b.shape} != legacy {a.shape}"
    if a.dtype != b.dtype:
        return False, f"dtype {b.dtype} != legacy {a.dtype}"
    if a.size == 0:
        return True, f"equal (empty, {a.dtype})"
    if np.issubdtype(a.dtype, np.floating):
        same = np.array_equal(a, b, equal_nan=True)
        diff = float(np.nanmax(np.abs(a.astype(float) - b.astype(float)))) if not same else 0.0
    else:
        same = np.array_equal(a, b)
        diff = float(np.abs(a.astype(np.int64) - b.astype(np.int64)).max()) if not same else 0.0
    if same:
        return True, f"equal values, shape {a.shape}, {a.dtype}"
    if diff <= tol:
        return True, f"shape {a.shape} {a.dtype} equal; values within {tol} (max diff {diff:.3g})"
    return False, f"values differ (max abs diff {diff:.4g}), shape {a.shape} {a.dtype}"


def _base(col: str) -> str:
    return col.rsplit("/", 1)[-1]


def _norm(v: Any) -> Any:
    """A value with its timing fields removed (nested dicts and lists too)."""
    if isinstance(v, dict):
        return {k: _norm(x) for k, x in v.items() if k not in TIMING}
    if isinstance(v, (list, tuple)):
        return [_norm(x) for x in v]
    try:
        if v is None or (isinstance(v, float) and math.isnan(v)):
            return None
    except TypeError:
        pass
    return v


def cmp_table(a: dict[str, Any], b: dict[str, Any]) -> tuple[bool, str]:
    import numpy as np

    if a["n"] != b["n"] or a["t_len"] != b["t_len"]:
        return False, f"rows {b['n']} (t {b['t_len']}) != legacy {a['n']} (t {a['t_len']})"
    if a["columns"] != b["columns"]:
        missing = [c for c in a["columns"] if c not in b["columns"]]
        extra = [c for c in b["columns"] if c not in a["columns"]]
        return False, f"columns differ: missing {missing}, extra {extra}"
    bad_dtypes = {c: (a["dtypes"][c], b["dtypes"][c]) for c in a["columns"]
                  if a["dtypes"][c] != b["dtypes"][c] and _base(c) not in DELIBERATE}
    if bad_dtypes:
        return False, f"dtypes differ (legacy, ours): {bad_dtypes}"
    timing = [c for c in a["columns"] if _base(c) in TIMING]
    deliberate = [c for c in a["columns"] if _base(c) in DELIBERATE]
    for c in a["columns"]:
        if c in timing or c in deliberate:
            continue
        va = [_norm(x) for x in a["df"][c].tolist()]
        vb = [_norm(x) for x in b["df"][c].tolist()]
        if va != vb:
            first = next(i for i, (x, y) in enumerate(zip(va, vb)) if x != y)
            return False, f"column {c!r} differs from row {first}: {short(vb[first], 60)} != legacy {short(va[first], 60)}"
    tb = b["t"]
    if tb.size and (not np.all(np.isfinite(tb)) or tb[0] != 0 or np.any(np.diff(tb) < 0)):
        return False, "timeline not finite, not starting at 0, or not monotonic"
    return True, (f"{a['n']} rows x {len(a['columns'])} columns, dtypes equal; values equal "
                  f"except timing {[_base(c) for c in timing]} (different runs: length/dtype only)"
                  + (" and mda_event (null in legacy, deliberate)" if deliberate else ""))


def cmp_frames(a: dict[str, Any], b: dict[str, Any], values: str) -> tuple[bool, str]:
    for k in ("kind", "n_frames", "read", "shape", "dtype"):
        if a[k] != b[k]:
            return False, f"{k} {b[k]} != legacy {a[k]}"
    if values == "exact":
        ok, why = cmp_array(a["pixels"], b["pixels"])
        return ok, f"{a['n_frames']} frames; {why}"
    if values == "lossy":
        import numpy as np

        d = float(np.abs(a["pixels"].astype(float) - b["pixels"].astype(float)).mean())
        return d < 2.0, (f"{a['n_frames']} frames {a['shape']} {a['dtype']}; decoded pixels "
                         f"mean abs diff {d:.3f} (lossy codec, tolerance 2.0)")
    return True, (f"{a['n_frames']} frames {a['shape']} {a['dtype']} (values not compared: "
                  "16-bit to 8-bit mapping differs deliberately)")


def cmp_timestamps(a: list[float], b: list[float]) -> tuple[bool, str]:
    import numpy as np

    if len(a) != len(b):
        return False, f"{len(b)} timestamps != legacy {len(a)}"
    if not a:
        return True, "both [] (it reads a top-level TimeReceivedByCore, which MDA frame metadata lacks)"
    if np.any(np.diff(np.asarray(b)) < 0):
        return False, "timestamps not in order"
    return True, f"{len(a)} timestamps each, ordered (values differ: different runs)"


def first_diff(a: Any, b: Any, path: str = "") -> str | None:
    if isinstance(a, dict) and isinstance(b, dict):
        for k in list(a) + [k for k in b if k not in a]:
            if k not in a or k not in b:
                return f"{path}{k}: {'missing' if k not in b else 'extra'}"
            d = first_diff(a[k], b[k], f"{path}{k}.")
            if d:
                return d
        return None
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        for i, (x, y) in enumerate(zip(a, b)):
            d = first_diff(x, y, f"{path}[{i}].")
            if d:
                return d
        return None
    where = f"{path.rstrip('.')}: " if path else ""
    return None if a == b else f"{where}{short(b, 60)} != legacy {short(a, 60)}"


def cmp_equal(a: Any, b: Any) -> tuple[bool, str]:
    d = first_diff(a, b)
    return d is None, (f"equal: {short(a, 100)}" if d is None else d)


# ---------------------------------------------------------------------------
# files


def data_files(root: Path) -> list[Path]:
    exts = (".tif", ".tiff", ".mp4", ".avi", ".mkv", ".mov")
    return sorted(p for p in root.rglob("*") if p.is_file() and p.name.lower().endswith(exts))


def sidecars(root: Path) -> list[Path]:
    return sorted(root.rglob("*_frame_metadata.json"))


def rel_names(paths: list[Path], root: Path) -> list[str]:
    return sorted(TS_RE.sub("<ts>_", p.relative_to(root).as_posix()) for p in paths)


def tiff_info(p: str) -> dict[str, Any]:
    import tifffile

    info: dict[str, Any] = {}
    with tifffile.TiffFile(p) as tf:
        s = tf.series[0]
        info.update(shape=list(s.shape), axes=s.axes, dtype=str(s.dtype), pages=len(tf.pages),
                    n_series=len(tf.series), bigtiff=tf.is_bigtiff, ome=tf.is_ome)
        info["pixels"] = s.asarray()
    try:
        import tifffile as tff

        m = tff.memmap(p, mode="r")
        info["memmap"] = list(m.shape)
    except Exception as exc:  # noqa: BLE001
        info["memmap"] = f"{type(exc).__name__}: {exc}"
    return info


def load_json(p: Path) -> Any:
    return json.loads(p.read_text())


def record_keys(sidecar: Any) -> set[str]:
    keys: set[str] = set()
    for v in sidecar.values():
        if isinstance(v, list):
            for r in v:
                if isinstance(r, dict):
                    keys |= set(r)
    return keys


def cmp_sidecar(a: Any, b: Any) -> tuple[bool, str]:
    """Same structure; equal values except timing fields and mda_event."""
    if not isinstance(b, dict):
        return False, f"ours is a {type(b).__name__}, legacy a dict"
    if list(a) != list(b):
        return False, f"top-level keys {list(b)[:8]} != legacy {list(a)[:8]}"
    for k in a:
        va, vb = a[k], b[k]
        if isinstance(va, list):
            if not isinstance(vb, list) or len(va) != len(vb):
                return False, f"{k!r}: {type(vb).__name__} of {len(vb) if hasattr(vb, '__len__') else '?'} != legacy list of {len(va)}"
            for i, (ra, rb) in enumerate(zip(va, vb)):
                if isinstance(ra, dict) and isinstance(rb, dict):
                    if set(ra) != set(rb):
                        return False, f"{k}[{i}] keys {sorted(set(rb) ^ set(ra))} differ from legacy"
                    for f in ra:
                        if f in TIMING or f in DELIBERATE:
                            continue
                        fa, fb = ra[f], rb[f]
                        if isinstance(fa, dict) and isinstance(fb, dict):
                            fa = {x: y for x, y in fa.items() if x not in TIMING}
                            fb = {x: y for x, y in fb.items() if x not in TIMING}
                        if fa != fb:
                            return False, f"{k}[{i}].{f}: {short(fb, 50)} != legacy {short(fa, 50)}"
        elif isinstance(va, dict) and k not in TIMING:
            if not isinstance(vb, dict):
                return False, f"{k!r} is {type(vb).__name__}, legacy a dict"
            sub = cmp_sidecar(va, vb) if all(isinstance(x, list) for x in va.values()) else (
                (set(va) == set(vb)), f"{k!r} keys")
            if not sub[0]:
                return False, f"{k!r}: {sub[1]}"
    return True, (f"keys {list(a)[:6]}, list lengths and record keys equal; values equal "
                  "except timing fields and mda_event (null in legacy)")


# ---------------------------------------------------------------------------
# the harness


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=str(REPO / "compat-output"))
    ap.add_argument("--only", nargs="*", help="scenarios to run (default: all, and crash)")
    ap.add_argument("--self-test", action="store_true",
                    help="write 'ours' with the legacy writer too: every comparison must then "
                         "pass (the absolute checks - multi camera, recover - cannot)")
    args = ap.parse_args()
    t_start = time.monotonic()
    out = Path(args.out).resolve()
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    py = sys.executable
    rep = Report()
    wanted = args.only or [*SCENARIOS, "crash"]

    print(f"mesofield {importlib.metadata.version('mesofield')} | stand-ins: "
          f"{', '.join(_mesofield.STUBBED) or 'none'} | output: {out}", flush=True)
    results: dict[str, dict[str, Any]] = {}
    run_as = {"legacy": "legacy", "mesowriter": "legacy" if args.self_test else "mesowriter"}
    for scenario in [s for s in SCENARIOS if s in wanted]:
        for impl in IMPLS:
            r = run_scenario(py, run_as[impl], scenario, out / impl / scenario)
            results[f"{impl}/{scenario}"] = r
            print(f"  wrote {scenario:<10} with {impl:<10} in {r['wall_seconds']:5.1f} s"
                  f" (exit {r['returncode']})", flush=True)
    crash: dict[str, Any] = {}
    if "crash" in wanted:
        for impl in IMPLS:
            t0 = time.monotonic()
            crash[impl] = run_crash(py, run_as[impl], out / impl / "crash")
            print(f"  crash     with {impl:<10} killed after "
                  f"{crash[impl]['frames_before_kill']} frames ({time.monotonic() - t0:4.1f} s)",
                  flush=True)

    readers = Readers()
    roots = [out / i for i in IMPLS]
    for scenario in [s for s in SCENARIOS if s in wanted]:
        check_process(rep, scenario, results)
    if "session" in wanted:
        check_session(rep, readers, out, results, roots)
    if "mda_gui" in wanted:
        check_mda_gui(rep, readers, out, results, roots)
    if "mda_video" in wanted:
        check_mda_video(rep, readers, out, results, roots)
    if "opencv" in wanted:
        check_opencv(rep, readers, out, results, roots)
    if "cv2_codecs" in wanted:
        check_codecs(rep, readers, out, results, roots)
    if "multicam" in wanted:
        check_multicam(rep, readers, out, results, roots)
    if crash:
        check_crash(rep, readers, out, crash, roots)

    elapsed = time.monotonic() - t_start
    print_table(rep)
    n_fail = sum(not c.ok for c in rep.checks)
    print(f"\n{len(rep.checks) - n_fail} passed, {n_fail} failed   ({elapsed:.0f} s)")
    (out / "report.json").write_text(json.dumps(
        {"seconds": round(elapsed, 1), "checks": [c.__dict__ for c in rep.checks],
         "scenarios": results, "crash": crash}, indent=1, default=str))
    return 1 if n_fail else 0


def print_table(rep: Report) -> None:
    w_area = max(len(c.area) for c in rep.checks)
    w_name = min(52, max(len(c.name) for c in rep.checks))
    print(f"\n{'#':>3}  {'area':<{w_area}}  {'check':<{w_name}}  result  reason")
    print("-" * 150)
    for i, c in enumerate(rep.checks, 1):
        print(f"{i:>3}  {c.area:<{w_area}}  {c.name[:w_name]:<{w_name}}  "
              f"{'PASS' if c.ok else 'FAIL'}    {short(c.reason, 230)}")


# -- per scenario -------------------------------------------------------------


def check_process(rep: Report, scenario: str, results: dict[str, Any]) -> None:
    """Ours runs mesofield's code path as cleanly as the legacy writer does."""
    leg, ours = results[f"legacy/{scenario}"], results[f"mesowriter/{scenario}"]
    area = scenario

    def exits() -> tuple[bool, str]:
        if ours["timed_out"]:
            return False, f"acquisition process still running after {SCENARIO_TIMEOUT:.0f} s (killed)"
        if ours["returncode"] != 0:
            return False, f"exit status {ours['returncode']}: {short(ours['stderr_tail'][-300:])}"
        if ours["orphans"]:
            return False, (f"{len(ours['orphans'])} writer process(es) still alive "
                           f"{ORPHAN_GRACE:.0f} s after the acquisition process exited")
        return True, f"exited by itself in {ours['wall_seconds']} s; no process left behind"

    rep.guard(area, "acquisition process exits, leaves no processes", exits)

    def clean() -> tuple[bool, str]:
        problems = []
        for e in ours.get("exceptions", []):
            if scenario == "cv2_codecs":
                continue  # its own rows: CV2Writer codecs
            problems.append(f"{e['where']}: {e['type']}: {e['message']}")
        for entry in ours.get("logged", []):
            if entry["level"] in ("ERROR", "CRITICAL"):
                problems.append(f"logged {entry['level']} [{entry['logger']}]: {entry['message']}")
        legacy_fallbacks = {TS_RE.sub("", m) for m in re.findall(
            r"open '([^']+)'", " ".join(e["message"] for e in leg.get("logged", [])))}
        for w in ours.get("warnings", []):
            if w["category"] == "DeprecationWarning":
                continue
            if "could not be turned into JSON" in w["message"]:
                continue  # its own row: live objects in MDASequence.metadata
            if w["category"] == "CodecFallbackWarning":
                if scenario == "cv2_codecs":
                    continue  # its own rows: CV2Writer codecs
                m = re.search(r"writing '([^']+)'", w["message"])
                if m and TS_RE.sub("", m.group(1)).replace("/mesowriter/", "/legacy/") in legacy_fallbacks:
                    continue  # legacy falls back on this file too
            problems.append(f"{w['category']}: {w['message']}")
        if "Traceback" in ours.get("stderr_tail", "") and "Traceback" not in leg.get("stderr_tail", ""):
            problems.append(f"stderr: {ours['stderr_tail'][-200:]}")
        legacy_bad = [e["type"] for e in leg.get("exceptions", [])] + [
            "thread died" for _ in [0] if "Exception in thread" in leg.get("stderr_tail", "")]
        if problems:
            return False, f"{len(problems)} problem(s): " + " | ".join(problems[:3])
        note = f" (legacy: {', '.join(legacy_bad)})" if legacy_bad else ""
        return True, "no exception, error log, writer warning or dead thread" + note

    rep.guard(area, "no exception/error/warning on mesofield's path", clean)


def session_paths(out: Path, impl: str, session: str) -> dict[str, str]:
    base = out / impl / "session" / "data" / "sub-DEMO" / f"ses-{session}" / "func"
    found: dict[str, str] = {}
    for p in sorted(base.glob("*.ome.tiff")):
        if p.name.endswith("_mesoscope.ome.tiff"):
            found["meso"] = str(p)
        if p.name.endswith("_pupil.ome.tiff"):
            found["pupil"] = str(p)
    return found


def check_writer_attrs(rep: Report, area: str, label: str, info: dict[str, Any]) -> None:
    def fn() -> tuple[bool, str]:
        if not info.get("has__frame_metadata_filename"):
            return False, (f"{info.get('class')} has no _frame_metadata_filename: "
                           f"camera.metadata_path = {info.get('metadata_path')!r} (manifest metadata_path empty)")
        want = str(info.get("output_path")) + "_frame_metadata.json"
        if info["_frame_metadata_filename"] != want:
            return False, f"_frame_metadata_filename {info['_frame_metadata_filename']!r} != {want!r}"
        if info.get("metadata_path") != want:
            return False, f"camera.metadata_path {info.get('metadata_path')!r} != {want!r}"
        missing = [n for n in ("frame_metadatas", "finalize_metadata") if not info.get(f"has_{n}")]
        if missing:
            return False, f"writer lacks {missing}"
        return True, ("= output_path + '_frame_metadata.json', copied to camera.metadata_path; "
                      "frame_metadatas, finalize_metadata() present")

    rep.guard(area, f"{label}: writer._frame_metadata_filename", fn)


def to_contract(name: str) -> str:
    """`x/run/run_p000.ome.tiff` (mesofield 0.5.0b0) -> `x/run_p0.ome.tiff`."""
    parts = name.split("/")
    if len(parts) >= 2:
        m = re.match(rf"^{re.escape(parts[-2])}_p0*(\d+)(\..+)$", parts[-1])
        if m:
            return "/".join([*parts[:-2], f"{parts[-2]}_p{int(m.group(1))}{m.group(2)}"])
    return name


def check_files_like_legacy(rep: Report, area: str, out: Path, sub: str) -> None:
    la, lb = out / "legacy" / sub, out / "mesowriter" / sub

    def data() -> tuple[bool, str]:
        da, db = rel_names(data_files(la), la), rel_names(data_files(lb), lb)
        # The contract (LEGACY_API.md, the writer labs called CustomWriter):
        # positions as <stem>_p0<suffix> beside the run's name. mesofield
        # 0.5.0b0's OMEWriter (ome-writers 0.3.2) puts them in a folder,
        # <stem>/<stem>_p000<suffix>; mapped to the contract before comparing.
        contract = sorted(to_contract(n) for n in da)
        if contract != db:
            return False, f"ours {sorted(set(db) - set(contract))}, contract {sorted(set(contract) - set(db))}"
        mapped = " (legacy's <stem>/<stem>_p000 mapped to <stem>_p0)" if contract != da else ""
        return True, f"{len(da)} data file(s), same names (timestamps aside){mapped}"

    def side() -> tuple[bool, str]:
        sa, sb = rel_names(sidecars(la), la), rel_names(sidecars(lb), lb)
        if sa != sb:
            return False, f"extra {sorted(set(sb) - set(sa))}, missing {sorted(set(sa) - set(sb))}"
        others = sorted({TS_RE.sub("", p.name).split(".", 1)[-1] for p in lb.rglob("*")
                         if p.is_file() and p not in data_files(lb) and p not in sidecars(lb)
                         and p.name not in ("result.json", "stdout.log", "stderr.log", "manifest.json")})
        note = f"; other files of ours: *.{', *.'.join(others)}" if others else ""
        return True, f"{len(sa)} sidecar(s), same names{note}"

    rep.guard(area, "data file names as legacy", data)
    rep.guard(area, "sidecar names as legacy", side)


def check_tiff_pair(rep: Report, rd: Readers, area: str, label: str, pa: str | None,
                    pb: str | None, roots: list[Path]) -> None:
    """tifffile layout, memory-mapping and every TIFF reader, legacy vs ours."""
    if not pa or not pb:
        rep.add(area, f"{label}: TIFF present", False, f"legacy {pa!r}, ours {pb!r}")
        return
    ia, ib = outcome(lambda: tiff_info(pa)), outcome(lambda: tiff_info(pb))

    def memmap() -> tuple[bool, str]:
        if ib[0] == "error":
            return False, f"tifffile cannot read it: {ib[1]}"
        mb = ib[1]["memmap"]
        if isinstance(mb, str):
            return False, f"tifffile.memmap(path): {mb} (legacy: {ia[1]['memmap']})"
        return True, f"tifffile.memmap(path) -> {mb} (legacy {ia[1]['memmap']})"

    rep.guard(area, f"{label}: tifffile.memmap(path)", memmap)

    def layout() -> tuple[bool, str]:
        a, b = ia[1], ib[1]
        for k in ("shape", "axes", "dtype", "pages", "bigtiff", "ome"):
            if a[k] != b[k]:
                return False, f"series {k}: {b[k]} != legacy {a[k]}"
        ok, why = cmp_array(a["pixels"], b["pixels"])
        return ok, f"{b['axes']} {b['shape']} {b['dtype']} BigTIFF OME; pixels: {why}"

    rep.guard(area, f"{label}: series shape/axes/pixels", layout)
    rep.guard(area, f"{label}: batch mean_trace_from_tiff", lambda: same_outcome(
        outcome(lambda: rd.mean_trace(pa)), outcome(lambda: rd.mean_trace(pb)), roots, cmp_array))
    for method in ("collapse_first", "pixelwise"):
        rep.guard(area, f"{label}: batch dff_trace_from_tiff {method}", lambda m=method: same_outcome(
            outcome(lambda: rd.dff(pa, m)), outcome(lambda: rd.dff(pb, m)), roots, cmp_array))
    rep.guard(area, f"{label}: batch _tiff_frame_count", lambda: same_outcome(
        outcome(lambda: rd.frame_count(pa)), outcome(lambda: rd.frame_count(pb)), roots, cmp_equal))
    rep.guard(area, f"{label}: tiffio.memmap_ome_stack", lambda: same_outcome(
        outcome(lambda: rd.memmap_stack(pa)), outcome(lambda: rd.memmap_stack(pb)), roots,
        lambda a, b: (a["shape"] == b["shape"] and a["dtype"] == b["dtype"]
                      and cmp_array(a["pixels"], b["pixels"])[0],
                      f"{b['shape']} {b['dtype']} (legacy {a['shape']}), pixels "
                      + cmp_array(a["pixels"], b["pixels"])[1])))
    rep.guard(area, f"{label}: playback _FrameReader", lambda: same_outcome(
        outcome(lambda: rd.frames(pa)), outcome(lambda: rd.frames(pb)), roots,
        lambda a, b: cmp_frames(a, b, "exact")))


def check_sidecar_pair(rep: Report, rd: Readers, area: str, label: str, ma: str, mb: str,
                       roots: list[Path], source: str | None, structure: bool = True) -> None:
    ja, jb = outcome(lambda: load_json(Path(ma))), outcome(lambda: load_json(Path(mb)))
    if structure:
        rep.guard(area, f"{label}: sidecar JSON structure", lambda: same_outcome(ja, jb, roots, cmp_sidecar))
    if source == "meso":
        rep.guard(area, f"{label}: datakit MesoMetadataSource", lambda: same_outcome(
            outcome(lambda: rd.meso_source(ma)), outcome(lambda: rd.meso_source(mb)), roots, cmp_table))
    if source == "pupil":
        rep.guard(area, f"{label}: datakit PupilMetadataSource", lambda: same_outcome(
            outcome(lambda: rd.pupil_source(ma)), outcome(lambda: rd.pupil_source(mb)), roots, cmp_table))
    rep.guard(area, f"{label}: playback _load_frame_timestamps", lambda: same_outcome(
        outcome(lambda: rd.timestamps(ma)), outcome(lambda: rd.timestamps(mb)), roots, cmp_timestamps))


def check_session(rep: Report, rd: Readers, out: Path, results: dict[str, Any], roots: list[Path]) -> None:
    area = "session"
    leg, ours = results["legacy/session"], results["mesowriter/session"]
    runs = (ours.get("notes") or {}).get("runs") or []
    for run in runs[:1]:
        check_writer_attrs(rep, area, "MMCamera CustomWriter", run["mesoscope"])
        check_writer_attrs(rep, area, "MockFrameProducer CustomWriter", run["pupil"])

    def leak() -> tuple[bool, str]:
        counts = [len(r["children_after_run"]) for r in runs]
        legacy = [len(r["children_after_run"]) for r in (leg.get("notes") or {}).get("runs", [])]
        if len(counts) < 2:
            return False, f"runs incomplete: {counts}"
        if counts[-1] > counts[0]:
            return False, (f"live child processes after acquisition 1, 2: {counts} (grows with "
                           f"never-closed writers; legacy {legacy})")
        return True, f"live child processes after acquisition 1, 2: {counts} (legacy {legacy})"

    rep.guard(area, "never-closed writers: processes do not pile up", leak)

    def live_meta() -> tuple[bool, str]:
        types_ = (ours.get("notes") or {}).get("sequence_metadata_types", {})
        live = sorted({v for v in types_.values() if v not in ("str", "int", "float", "bool", "list", "dict", "NoneType", "tuple")})
        warns = [w for w in ours.get("warnings", []) if "JSON" in w["message"] or "json" in w["message"]]
        if warns:
            return False, f"{len(warns)} warning(s): {short(warns[0]['message'], 150)}"
        return True, f"sequence.metadata holds live {live}: no warning, nothing dropped"

    rep.guard(area, "live objects in MDASequence.metadata", live_meta)
    check_files_like_legacy(rep, area, out, "session")
    for session in ("01", "02"):
        pa, pb = session_paths(out, "legacy", session), session_paths(out, "mesowriter", session)
        for cam, source in (("meso", "meso"), ("pupil", "pupil")):
            label = f"ses-{session} {cam}"
            if session == "01" or cam == "meso":
                check_tiff_pair(rep, rd, area, label, pa.get(cam), pb.get(cam), roots)
            if pa.get(cam) and pb.get(cam):
                check_sidecar_pair(rep, rd, area, label, pa[cam] + "_frame_metadata.json",
                                   pb[cam] + "_frame_metadata.json", roots,
                                   source if session == "01" else None)

    def manifest() -> tuple[bool, str]:
        m = load_json(out / "mesowriter" / "session" / "data" / "sub-DEMO" / "ses-01" / "manifest.json")
        bad = [p["device_id"] for p in m["producers"] if not p.get("metadata_path")]
        if bad:
            return False, f"AcquisitionManifest producers without metadata_path: {bad}"
        return True, "every camera producer has metadata_path: " + ", ".join(
            p["metadata_path"] for p in m["producers"])

    rep.guard(area, "AcquisitionManifest metadata_path", manifest)

    def dataset(impl: str) -> Any:
        import contextlib
        import io

        root = out / impl / "session"
        with contextlib.redirect_stdout(io.StringIO()):
            _, _, df = rd.load_dataset.build_dataset(root)
        cols = [f"{s}/{c}" for s, c in df.columns]
        return {"n": len(df), "t_len": len(df), "columns": cols,
                "dtypes": {f"{s}/{c}": str(df[(s, c)].dtype) for s, c in df.columns},
                "df": df.set_axis(cols, axis=1), "t": __import__("numpy").zeros(0),
                "index": list(df.index)}

    def ds_cmp(a: Any, b: Any) -> tuple[bool, str]:
        if a["index"] != b["index"]:
            return False, "index (Subject, Session, Task) differs"
        return cmp_table(a, b)

    rep.guard(area, "load_dataset.build_dataset (manifest metadata_path)", lambda: same_outcome(
        outcome(lambda: dataset("legacy")), outcome(lambda: dataset("mesowriter")), roots, ds_cmp))

    def playback_devices(impl: str) -> Any:
        import logging

        session_dir = out / impl / "session" / "data" / "sub-DEMO" / "ses-01"
        manifest = load_json(session_dir / "manifest.json")
        devices, ids, first = rd.playback._build_devices(
            manifest, session_dir, rd.playback.PlaybackClock(), False, logging.getLogger("compat"))
        return {i: {"frames": Path(d._frames_path).name and TS_RE.sub("<ts>_", Path(d._frames_path).name),
                    "meta": d._meta_path and TS_RE.sub("<ts>_", Path(d._meta_path).name),
                    "timestamps": len(d._timestamps)} for i, d in zip(ids, devices)}

    rep.guard(area, "playback _build_devices from the manifest", lambda: same_outcome(
        outcome(lambda: playback_devices("legacy")), outcome(lambda: playback_devices("mesowriter")),
        roots, cmp_equal))

    def discovered(impl: str) -> Any:
        m = rd.discover.discover_manifest(out / impl / "session")
        return sorted((e.tag, TS_RE.sub("<ts>_", e.path), e.subject, e.session, e.task) for e in m.entries)

    rep.guard(area, "datakit discover_manifest", lambda: same_outcome(
        outcome(lambda: discovered("legacy")), outcome(lambda: discovered("mesowriter")), roots, cmp_equal))


def check_mda_gui(rep: Report, rd: Readers, out: Path, results: dict[str, Any], roots: list[Path]) -> None:
    area = "mda_gui (2p x 2c x 3z x 2t)"
    ours = results["mesowriter/mda_gui"]
    check_writer_attrs(rep, area, "CustomWriter",
                       dict((ours.get("notes") or {}).get("writer") or {},
                            output_path=(ours.get("notes") or {}).get("save_path"),
                            metadata_path=((ours.get("notes") or {}).get("writer") or {}).get("_frame_metadata_filename")))
    check_files_like_legacy(rep, area, out, "mda_gui")

    def none_path() -> tuple[bool, str]:
        a = (results["legacy/mda_gui"].get("notes") or {}).get("writer_none_path")
        b = (ours.get("notes") or {}).get("writer_none_path")
        return b == a, f"OMEWriter(None): ours {b!r}, legacy {a!r} (mdagui.py passes None when saving is off)"

    rep.guard(area, "OMEWriter(None) constructs", none_path)
    sa = out / "legacy" / "mda_gui" / "mda" / "mda_run.ome.tiff_frame_metadata.json"
    sb = out / "mesowriter" / "mda_gui" / "mda" / "mda_run.ome.tiff_frame_metadata.json"

    def one_sidecar() -> tuple[bool, str]:
        found = rel_names(sidecars(out / "mesowriter" / "mda_gui"), out / "mesowriter" / "mda_gui")
        if found != ["mda/mda_run.ome.tiff_frame_metadata.json"]:
            return False, f"sidecars {found}; legacy writes only mda/mda_run.ome.tiff_frame_metadata.json"
        return True, "one sidecar, <filename>_frame_metadata.json, every position in it"

    rep.guard(area, "one sidecar for all positions", one_sidecar)
    check_sidecar_pair(rep, rd, area, "combined", str(sa), str(sb), roots, "meso")
    # Position files: pair by position order (names differ between writers).
    fa = [p for p in data_files(out / "legacy" / "mda_gui")]
    fb = [p for p in data_files(out / "mesowriter" / "mda_gui")]
    for i in range(max(len(fa), len(fb))):
        check_tiff_pair(rep, rd, area, f"position {i}", str(fa[i]) if i < len(fa) else None,
                        str(fb[i]) if i < len(fb) else None, roots)


def check_mda_video(rep: Report, rd: Readers, out: Path, results: dict[str, Any], roots: list[Path]) -> None:
    area = "mda_video (CV2Writer handler)"
    ours = results["mesowriter/mda_video"]
    check_writer_attrs(rep, area, "CV2Writer", (ours.get("notes") or {}).get("pupil") or {})
    check_files_like_legacy(rep, area, out, "mda_video")
    va = data_files(out / "legacy" / "mda_video")
    vb = data_files(out / "mesowriter" / "mda_video")
    if va and vb:
        pa, pb = str(va[0]), str(vb[0])
        rep.guard(area, "playback _FrameReader (video)", lambda: same_outcome(
            outcome(lambda: rd.frames(pa)), outcome(lambda: rd.frames(pb)), roots,
            lambda a, b: cmp_frames(a, b, "structure")))
        rep.guard(area, "batch get_video_codec", lambda: same_outcome(
            outcome(lambda: rd.video_codec(pa)), outcome(lambda: rd.video_codec(pb)), roots, cmp_equal))
        check_sidecar_pair(rep, rd, area, "handler-mode", pa + "_frame_metadata.json",
                           pb + "_frame_metadata.json", roots, "pupil")


def check_opencv(rep: Report, rd: Readers, out: Path, results: dict[str, Any], roots: list[Path]) -> None:
    area = "opencv (OpenCVCamera loop)"
    ours = results["mesowriter/opencv"]
    cams = (ours.get("notes") or {}).get("cameras") or {}
    for cam_id, info in cams.items():
        check_writer_attrs(rep, area, f"{cam_id} CV2Writer", info)
    check_files_like_legacy(rep, area, out, "opencv")
    for cam_id in ("pupil", "behav"):
        va = [p for p in data_files(out / "legacy" / "opencv") if p.name.endswith(f"_{cam_id}.mp4")]
        vb = [p for p in data_files(out / "mesowriter" / "opencv") if p.name.endswith(f"_{cam_id}.mp4")]
        if not (va and vb):
            rep.add(area, f"{cam_id}: video present", False, f"legacy {va}, ours {vb}")
            continue
        pa, pb = str(va[0]), str(vb[0])
        rep.guard(area, f"{cam_id}: playback _FrameReader (video)", lambda pa=pa, pb=pb: same_outcome(
            outcome(lambda: rd.frames(pa)), outcome(lambda: rd.frames(pb)), roots,
            lambda a, b: cmp_frames(a, b, "lossy")))
        rep.guard(area, f"{cam_id}: batch get_video_codec", lambda pa=pa, pb=pb: same_outcome(
            outcome(lambda: rd.video_codec(pa)), outcome(lambda: rd.video_codec(pb)), roots, cmp_equal))
        ma, mb = pa + "_frame_metadata.json", pb + "_frame_metadata.json"

        def direct_layout(ma: str = ma, mb: str = mb) -> tuple[bool, str]:
            a, b = load_json(Path(ma)), load_json(Path(mb))
            if list(b) != list(a):
                return False, f"finish() sidecar keys {list(b)} != legacy {list(a)}"
            fm = b.get("frame_metadatas")
            if not isinstance(fm, dict) or not all(isinstance(v, list) for v in fm.values()):
                return False, (f"'frame_metadatas' is {short(fm, 60)}; legacy: a dict of position "
                               f"key -> list ({short(a.get('frame_metadatas'), 30)} in direct mode)")
            fa, fb = a.get("frames", []), b.get("frames", [])
            if len(fa) != len(fb):
                return False, f"{len(fb)} 'frames' records != legacy {len(fa)}"
            return True, (f"{{'frame_metadatas': {{...}}, **extra}} with keys {list(a)}; {len(fa)} "
                          f"'frames' records (legacy frame_metadatas {short(a.get('frame_metadatas'), 30)})")

        rep.guard(area, f"{cam_id}: finish() sidecar layout", direct_layout)
        check_sidecar_pair(rep, rd, area, f"{cam_id} direct-mode", ma, mb, roots,
                           "pupil" if cam_id == "pupil" else None, structure=False)


def check_codecs(rep: Report, rd: Readers, out: Path, results: dict[str, Any], roots: list[Path]) -> None:
    area = "CV2Writer codecs"
    leg = (results["legacy/cv2_codecs"].get("notes") or {}).get("cases") or {}
    ours = (results["mesowriter/cv2_codecs"].get("notes") or {}).get("cases") or {}
    for name, a in leg.items():
        b = ours.get(name) or {}

        def fn(name: str = name, a: dict = a, b: dict = b) -> tuple[bool, str]:
            if not b.get("constructed"):
                exc = [e for e in results["mesowriter/cv2_codecs"].get("exceptions", [])
                       if e["where"].startswith(name)]
                return False, f"constructor raised {exc[0]['type']}: {exc[0]['message']}" if exc else "not constructed"
            ca, cb = outcome(lambda: rd.video_codec(a["path"])), outcome(lambda: rd.video_codec(b["path"]))
            ok, why = same_outcome(ca, cb, roots, cmp_equal)
            if not ok:
                return False, f"file codec: {why}"
            warned = [w["category"] for w in b.get("warnings", [])]
            legacy_warned = bool(a.get("warnings") or a.get("logged"))
            if warned and not legacy_warned:
                return False, f"codec {cb[1]!r} as legacy, but warns {warned} where legacy is silent"
            return True, f"codec {cb[1]!r} as legacy" + (" (both warn of the fallback)" if legacy_warned else ", no warning")

        rep.guard(area, f"{name}: constructs, same codec, same warnings", fn)


def check_multicam(rep: Report, rd: Readers, out: Path, results: dict[str, Any], roots: list[Path]) -> None:
    area = "multicam (Multi Camera)"
    ours = results["mesowriter/multicam"]
    notes = ours.get("notes") or {}
    delivered = notes.get("delivered_camera_devices") or []
    per_cam = {c: delivered.count(c) for c in sorted(set(delivered))}
    legacy_files = data_files(out / "legacy" / "multicam")

    means = notes.get("frame_means") or {}

    def camera_of(frame: Any) -> str:
        import numpy as np

        m = float(np.asarray(frame, dtype=np.float64).mean())
        best = min(((min(abs(m - x) for x in xs), cam) for cam, xs in means.items() if xs),
                   default=(0.0, "?"))
        return best[1] if best[0] < 1e-6 * max(1.0, abs(m)) else "?"

    def by_content(root: Path) -> dict[str, list[str]]:
        import tifffile

        found = {}
        for p in data_files(root):
            if ".tif" in p.name:
                with tifffile.TiffFile(str(p)) as tf:
                    found[p.relative_to(root).as_posix()] = [camera_of(pg.asarray()) for pg in tf.pages]
        return found

    def separate() -> tuple[bool, str]:
        legacy = {k: {c: v.count(c) for c in sorted(set(v))}
                  for k, v in by_content(out / "legacy" / "multicam").items()}
        ours = by_content(out / "mesowriter" / "multicam")
        got: dict[str, int] = {}
        for name, cams in ours.items():
            kinds = sorted(set(cams))
            if len(kinds) != 1:
                return False, (f"{TS_RE.sub('<ts>_', name)} holds frames of {kinds} "
                               f"({ {c: cams.count(c) for c in kinds} }; delivered {per_cam}); "
                               f"legacy: {TS_RE.sub('<ts>_', str(legacy))}")
            if kinds[0] in got:
                return False, f"frames of {kinds[0]} split over several files"
            got[kinds[0]] = len(cams)
        if got != per_cam:
            return False, f"frames per camera in files {got} != delivered {per_cam}"
        return True, f"one file per camera (told apart by pixels), every frame: {got}"

    rep.guard(area, "each camera in its own file, no frame lost", separate)

    def traces() -> tuple[bool, str]:
        files = [p for p in data_files(out / "mesowriter" / "multicam") if ".tif" in p.name]
        lengths = {}
        for p in files:
            o = outcome(lambda p=p: len(rd.mean_trace(str(p))))
            if o[0] == "error":
                return False, f"{p.name[-40:]}: {o[1]}"
            lengths[p.name[-40:]] = o[1]
        want = sorted(per_cam.values())
        if sorted(lengths.values()) != want:
            return False, f"mean trace lengths {lengths} != frames per camera {per_cam}"
        return True, f"mean_trace_from_tiff per camera file: {lengths}"

    rep.guard(area, "batch mean_trace_from_tiff per camera", traces)

    def sidecar_lists() -> tuple[bool, str]:
        root = out / "mesowriter" / "multicam"
        mixed, seen = [], 0
        for side in sidecars(root):
            for key, recs in load_json(side).items():
                if isinstance(recs, list):
                    cams = {str(r.get("camera_device")) for r in recs if isinstance(r, dict)}
                    seen += len(recs)
                    if len(cams) > 1:
                        mixed.append(f"{TS_RE.sub('<ts>_', side.name)}[{key!r}]: {sorted(cams)}")
        if mixed:
            return False, f"per-frame metadata lists mix cameras: {'; '.join(mixed)}"
        if seen != len(delivered):
            return False, f"{seen} frame records in sidecars != {len(delivered)} delivered"
        return True, f"every sidecar list holds one camera's frames ({seen} records)"

    rep.guard(area, "sidecar lists: one camera each", sidecar_lists)


def check_crash(rep: Report, rd: Readers, out: Path, crash: dict[str, Any], roots: list[Path]) -> None:
    area = "crash + recover"
    a, b = crash["legacy"], crash["mesowriter"]

    def killed() -> tuple[bool, str]:
        if b["exited_before_kill"] is not None:
            return False, f"acquisition ended before the kill (exit {b['exited_before_kill']})"
        if b["frames_before_kill"] < CRASH_AFTER_FRAMES:
            return False, f"only {b['frames_before_kill']} frames before the kill"
        return True, (f"SIGKILL after {b['frames_before_kill']} frames: acquisition process and "
                      f"{len(b['killed_pids']) - 1} writer process(es)")

    rep.guard(area, "killed mid-run", killed)

    def recovered() -> tuple[bool, str]:
        r = b.get("recover")
        if not r:
            return False, "no output path known; recover not run"
        if r["returncode"] != 0:
            return False, f"mesowriter recover exit {r['returncode']}: {short(r['stderr'] or r['stdout'], 200)}"
        return True, f"mesowriter recover: {short(r['stdout'], 180)}"

    rep.guard(area, "mesowriter recover exits 0", recovered)
    pa, pb = a.get("output_path"), b.get("output_path")
    if not pb:
        return
    ma, mb = str(pa) + "_frame_metadata.json", str(pb) + "_frame_metadata.json"

    def consistent() -> tuple[bool, str]:
        counts: dict[str, Any] = {}
        counts["memmap_ome_stack"] = outcome(lambda: rd.memmap_stack(pb)["shape"][0])
        counts["_tiff_frame_count"] = outcome(lambda: rd.frame_count(pb))
        counts["mean_trace_from_tiff"] = outcome(lambda: len(rd.mean_trace(pb)))
        counts["_FrameReader"] = outcome(lambda: rd.frames(pb)["n_frames"])
        counts["sidecar p0"] = outcome(lambda: len(load_json(Path(mb))["p0"]))
        counts["MesoMetadataSource"] = outcome(lambda: rd.meso_source(mb)["n"])
        # _load_frame_timestamps reads only a top-level TimeReceivedByCore,
        # which MDA frame metadata lacks: [] from every writer, legacy too.
        stamps = outcome(lambda: len(rd.timestamps(mb)))
        if stamps[0] == "error":
            counts["_load_frame_timestamps"] = stamps
        errors = {k: v[1] for k, v in counts.items() if v[0] == "error"}
        values = {k: v[1] for k, v in counts.items() if v[0] == "ok"}
        if errors:
            return False, f"readers fail on the recovered file: {short(errors, 200)}"
        if len(set(values.values())) != 1:
            return False, f"readers disagree on the frame count: {values}"
        return True, f"every reader sees {next(iter(values.values()))} frames (killed after {b['frames_before_kill']})"

    rep.guard(area, "recovered file: all readers agree on frames", consistent)

    def as_readable() -> tuple[bool, str]:
        worse, notes = [], []
        probes = {
            "memmap_ome_stack": lambda p, m: rd.memmap_stack(p)["dtype"],
            "mean_trace_from_tiff": lambda p, m: str(rd.mean_trace(p).dtype),
            "_tiff_frame_count": lambda p, m: type(rd.frame_count(p)).__name__,
            "_FrameReader": lambda p, m: rd.frames(p)["shape"][1:],
            "MesoMetadataSource": lambda p, m: rd.meso_source(m)["columns"][:3],
            "_load_frame_timestamps": lambda p, m: type(rd.timestamps(m)).__name__,
        }
        for name, fn in probes.items():
            oa, ob = outcome(lambda: fn(pa, ma)), outcome(lambda: fn(pb, mb))
            if oa[0] == "ok" and ob[0] == "error":
                worse.append(f"{name}: {short(ob[1], 80)}")
            elif oa[0] == "ok" and oa[1] != ob[1] and name not in ("MesoMetadataSource",):
                worse.append(f"{name}: {ob[1]} != legacy {oa[1]}")
            elif oa[0] == "error":
                notes.append(f"{name} fails on legacy ({short(oa[1], 60)})")
        if worse:
            return False, "; ".join(worse)
        return True, "readable wherever the killed legacy file is" + (
            f"; legacy: {'; '.join(notes)}" if notes else "")

    rep.guard(area, "recovered file readable wherever legacy's is", as_readable)


if __name__ == "__main__":
    sys.exit(main())
