"""One acquisition scenario, written the way mesofield 0.5.0b0 drives writers.

    python compat/_acquire.py IMPL SCENARIO OUTDIR

IMPL is ``legacy`` (mesofield's own ``mesofield.data.writer``) or
``mesowriter`` (mesowriter's classes swapped into the module attributes
mesofield looks its writers up from). Everything else is mesofield's code:
its ``ExperimentConfig`` / ``HardwareManager`` build the devices from an
in-memory rig spec, ``camera.arm(config)`` makes the writer
(``BaseCamera.set_writer`` -> ``_make_writer``) and the sequence
(``ExperimentConfig.build_sequence``, whose metadata carries live objects),
``MMCamera.start()`` calls ``core.run_mda(..., output=writer, block=False)``,
``MockFrameProducer.save_data()`` calls ``sequenceStarted(seq, {})`` /
``frameReady`` / ``sequenceFinished`` itself, ``OpenCVCamera.run()`` calls
``begin`` / ``add_frame`` / ``finish``, and ``Procedure`` writes the
AcquisitionManifest. No writer is ever closed: mesofield never closes one.

The only places where the harness itself stands in for mesofield:
- the hardware: the DemoCamera (mm-test-adapters) behind ``MMCamera``, and a
  deterministic fake ``cv2.VideoCapture`` behind ``OpenCVCamera`` (no webcam);
- ``mda_gui``: the one line of ``mesofield/gui/mdagui.py`` (``CustomMDAWidget.
  run_mda``: ``self._mmc.run_mda(sequence, output=OMEWriter(save_path))``)
  is re-enacted, since that module needs Qt widgets;
- ``cv2_codecs``: constructor calls with the arguments mesofield uses
  (``BaseCamera._make_writer``: ``CV2Writer(filename=..., fps=...)`` and
  ``CV2Writer(filename=..., fps=..., fourcc=...)``) and the public
  ``fourcc=None`` of mesofield's own ``CV2Writer``.

Writes OUTDIR/result.json (what happened: writer attributes, warnings,
errors logged by mesofield, live child processes) for run_compat.py.
"""

from __future__ import annotations

import gc
import json
import os
import sys
import threading
import time
import traceback
import warnings
import weakref
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import _mesofield  # noqa: E402  (installs the Qt/NI-DAQ stand-ins first)

MESO_SIZE = (160, 120)  # DemoCamera frames, width x height
MESO_FRAMES = 60
PUPIL_FRAMES = 40
CV_SIZE = (96, 64)
CV_FPS = 60


# ---------------------------------------------------------------------------
# bookkeeping


class Recorder:
    """Warnings, errors mesofield or pymmcore-plus logged, and exceptions."""

    def __init__(self) -> None:
        self.warnings: list[dict[str, str]] = []
        self.logged: list[dict[str, str]] = []
        self.exceptions: list[dict[str, str]] = []
        self.notes: dict[str, Any] = {}
        warnings.simplefilter("always")
        self._orig_showwarning = warnings.showwarning
        warnings.showwarning = self._on_warning
        from loguru import logger

        from mesofield.utils._logger import get_logger

        get_logger("compat")  # mesofield configures loguru on first use
        logger.remove()
        logger.add(self._on_log, level="WARNING", format="{message}")
        import logging

        class _H(logging.Handler):
            def emit(h, record: logging.LogRecord) -> None:  # noqa: N805
                msg = record.getMessage()
                if record.exc_info and record.exc_info[1] is not None:
                    msg += f" [{type(record.exc_info[1]).__name__}: {record.exc_info[1]}]"
                self.logged.append(
                    {"logger": record.name, "level": record.levelname, "message": msg}
                )

        handler = _H(level=logging.WARNING)
        for name in ("pymmcore-plus", "pymmcore_plus", ""):
            logging.getLogger(name).addHandler(handler)

    def _on_warning(self, message, category, filename, lineno, file=None, line=None):  # type: ignore[no-untyped-def]
        self.warnings.append(
            {"category": category.__name__, "message": str(message)[:500],
             "where": f"{os.path.basename(filename)}:{lineno}"}
        )

    def _on_log(self, message: Any) -> None:
        rec = message.record
        self.logged.append(
            {"logger": str(rec["extra"].get("logger_name", rec["name"])),
             "level": rec["level"].name, "message": str(rec["message"])[:800]}
        )

    def call(self, what: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except BaseException as exc:  # noqa: BLE001 - everything is reported
            self.exceptions.append(
                {"where": what, "type": type(exc).__name__, "message": str(exc)[:800],
                 "traceback": traceback.format_exc()[-3000:]}
            )
            return None


def children() -> list[int]:
    import psutil

    return sorted(p.pid for p in psutil.Process().children(recursive=True))


def writer_info(device: Any) -> dict[str, Any]:
    w = getattr(device, "writer", None)
    return {
        "class": None if w is None else f"{type(w).__module__}.{type(w).__name__}",
        "has__frame_metadata_filename": hasattr(w, "_frame_metadata_filename"),
        "_frame_metadata_filename": getattr(w, "_frame_metadata_filename", None),
        "has_frame_metadatas": hasattr(w, "frame_metadatas"),
        "has_finalize_metadata": callable(getattr(w, "finalize_metadata", None)),
        "output_path": getattr(device, "output_path", None),
        "metadata_path": getattr(device, "metadata_path", None),
    }


def start_and_join(rec: Recorder, what: str, start: Any, timeout: float = 60) -> None:
    """Call `start()` (which returns at once) and join the threads it started."""
    before = set(threading.enumerate())
    rec.call(what, start)
    new = [t for t in threading.enumerate() if t not in before]
    deadline = time.monotonic() + timeout
    for t in new:
        t.join(max(0.1, deadline - time.monotonic()))
        if t.is_alive():
            rec.exceptions.append(
                {"where": what, "type": "Timeout", "message": f"thread {t.name} still running after {timeout} s", "traceback": ""}
            )


def meso_spec(frames: int = MESO_FRAMES, **extra: Any) -> dict[str, Any]:
    width, height = MESO_SIZE
    cam = {
        "id": "mesoscope",
        "backend": "micromanager",
        "primary": True,
        "properties": {
            "Camera": {"OnCameraCCDXSize": width, "OnCameraCCDYSize": height,
                       "Exposure": 2, "Mode": "Artificial Waves"},
        },
        "output": {"suffix": "meso", "file_type": "ome.tiff", "bids_type": "func"},
    }
    cam.update(extra)
    return {"cameras": [cam]}


# ---------------------------------------------------------------------------
# scenarios


def scenario_session(rec: Recorder, out: Path) -> None:
    """MMCamera + MockFrameProducer, two acquisitions in one process, manifests.

    Per acquisition, as mesofield's Procedure does: `arm(config)` on every
    camera (new writers; the last run's writer is dropped, never closed),
    `MMCamera.start()` -> `core.run_mda(events=seq, output=writer,
    block=False)`, the mock camera's frames replayed through its writer by
    `MockFrameProducer.save_data()`, then the AcquisitionManifest.
    """
    spec = meso_spec()
    spec["pupil"] = {
        "type": "mock_camera", "width": 64, "height": 48, "frame_interval_ms": 5,
        "output": {"suffix": "pupil", "file_type": "ome.tiff", "bids_type": "func"},
    }
    cfg = _mesofield.experiment(out, spec, duration=2, num_meso_frames=MESO_FRAMES)
    meso, pupil = cfg.hardware.devices["mesoscope"], cfg.hardware.devices["pupil"]
    runs = []
    for session in ("01", "02"):
        cfg.set("session", session)
        started = datetime.now()
        rec.call("mesoscope.arm", meso.arm, cfg)
        rec.call("pupil.arm", pupil.arm, cfg)
        if session == "01":
            rec.notes["sequence_metadata_types"] = {
                k: type(v).__name__ for k, v in meso.sequence.metadata.items()
            }
        rec.call("pupil.start", pupil.start)
        start_and_join(rec, "mesoscope.start (run_mda block=False)", meso.start)
        deadline = time.monotonic() + 20
        while len(pupil._frames) < PUPIL_FRAMES and time.monotonic() < deadline:
            time.sleep(0.01)
        rec.call("pupil.stop", pupil.stop)
        # Identical input for both writers: the mock's frames are seeded, so
        # its first PUPIL_FRAMES frames are the same in every run.
        with pupil._frames_lock:
            del pupil._frames[PUPIL_FRAMES:]
            del pupil._frame_records[PUPIL_FRAMES:]
        rec.call("pupil.save_data (manual sequenceStarted/frameReady/sequenceFinished)",
                 pupil.save_data)
        stopped = datetime.now()
        manifest = rec.call("Procedure._write_acquisition_manifest",
                            _mesofield.write_manifest, cfg, started, stopped)
        gc.collect()
        runs.append({
            "session": session,
            "manifest": str(manifest) if manifest else None,
            "mesoscope": writer_info(meso),
            "pupil": writer_info(pupil),
            "children_after_run": children(),
        })
    rec.notes["runs"] = runs


def scenario_mda_gui(rec: Recorder, out: Path) -> None:
    """mesofield's MDA GUI: `run_mda(sequence, output=OMEWriter(save_path))`.

    Two positions x two channels x three z x two time points, on the
    MMCamera's core (DevEngine); the writer is constructed inline and never
    referenced again (mdagui.py, CustomMDAWidget.run_mda).
    """
    import useq

    cfg = _mesofield.experiment(out, meso_spec(), duration=2, num_meso_frames=MESO_FRAMES)
    meso = cfg.hardware.devices["mesoscope"]
    seq = useq.MDASequence(
        stage_positions=[(0, 0, 0), (100, 100, 0)],
        channels=["DAPI", "FITC"],
        z_plan={"range": 2, "step": 1},
        time_plan={"interval": 0, "loops": 2},
    )
    rec.notes["sizes"] = {str(k): v for k, v in seq.sizes.items() if v}
    save_path = out / "mda" / "mda_run.ome.tiff"
    save_path.parent.mkdir(parents=True, exist_ok=True)
    OMEWriter = _mesofield.load().writer.OMEWriter  # noqa: N806 - swapped per IMPL
    refs: list[Any] = []

    def run() -> Any:
        writer = OMEWriter(str(save_path))
        refs.append(weakref.ref(writer))
        rec.notes["writer"] = writer_info(types_ns(writer=writer))
        return meso.core.run_mda(seq, output=writer)

    # mdagui passes save_path=None when "save" is unchecked: OMEWriter(None).
    none_dir = out / "none_path"
    none_dir.mkdir(parents=True, exist_ok=True)
    cwd = os.getcwd()
    os.chdir(none_dir)
    try:
        OMEWriter(None)
        rec.notes["writer_none_path"] = "constructed"
    except Exception as exc:  # noqa: BLE001 - reported by run_compat.py
        rec.notes["writer_none_path"] = f"{type(exc).__name__}: {exc}"
    finally:
        os.chdir(cwd)
    thread = rec.call("core.run_mda(seq, output=OMEWriter(save_path))", run)
    if thread is not None:
        thread.join(60)
    time.sleep(0.5)
    gc.collect()
    rec.notes["save_path"] = str(save_path)
    rec.notes["children_after_run"] = children()


def types_ns(**kw: Any) -> Any:
    import types

    return types.SimpleNamespace(**kw)


def scenario_mda_video(rec: Recorder, out: Path) -> None:
    """An MMCamera whose output file_type is mp4: CV2Writer as an MDA handler."""
    spec = meso_spec(frames=MESO_FRAMES, id="pupil",
                     output={"suffix": "pupil", "file_type": "mp4", "bids_type": "beh"})
    cfg = _mesofield.experiment(out, spec, duration=2, num_meso_frames=30)
    cam = cfg.hardware.devices["pupil"]
    rec.call("pupil.arm", cam.arm, cfg)
    start_and_join(rec, "pupil.start (run_mda block=False)", cam.start)
    gc.collect()
    rec.notes["pupil"] = writer_info(cam)
    rec.notes["children_after_run"] = children()


class FakeCapture:
    """A cv2.VideoCapture stand-in: deterministic BGR frames, like a webcam's."""

    def __init__(self) -> None:
        self.i = 0
        self.w, self.h = CV_SIZE

    def isOpened(self) -> bool:  # noqa: N802
        return True

    def read(self) -> tuple[bool, np.ndarray]:
        yy, xx = np.mgrid[0 : self.h, 0 : self.w]
        frame = ((xx * 2 + yy * 3 + self.i * 5) % 256).astype(np.uint8)
        self.i += 1
        return True, np.dstack([frame, frame // 2, 255 - frame])

    def get(self, prop: int) -> float:
        import cv2

        return {cv2.CAP_PROP_FRAME_WIDTH: self.w, cv2.CAP_PROP_FRAME_HEIGHT: self.h,
                cv2.CAP_PROP_FPS: 0.0}.get(prop, 0.0)

    def set(self, prop: int, value: float) -> bool:
        return True

    def release(self) -> None:
        pass


def scenario_opencv(rec: Recorder, out: Path) -> None:
    """OpenCVCamera's own capture loop: begin / add_frame / finish(extra).

    Two cameras: "pupil" with no fourcc in its config (mesofield then calls
    `CV2Writer(filename=..., fps=...)`) and "behav" asking for H264 in .mp4.
    """
    ns = _mesofield.load()
    ns.cameras.OpenCVCamera._open_capture = lambda self: FakeCapture()
    spec = {"cameras": [
        {"id": "pupil", "backend": "opencv", "primary": True, "fps": CV_FPS,
         "output": {"suffix": "pupil", "file_type": "mp4", "bids_type": "beh"}},
        {"id": "behav", "backend": "opencv", "fps": CV_FPS, "fourcc": "H264",
         "output": {"suffix": "behav", "file_type": "mp4", "bids_type": "beh"}},
    ]}
    cfg = _mesofield.experiment(out, spec, duration=1, num_meso_frames=10)
    cams = [cfg.hardware.devices["pupil"], cfg.hardware.devices["behav"]]
    for cam in cams:
        rec.call(f"{cam.id}.arm", cam.arm, cfg)
    for cam in cams:
        rec.call(f"{cam.id}.start", cam.start)
    for cam in cams:
        if not cam.wait(30000):
            rec.exceptions.append({"where": f"{cam.id}.run", "type": "Timeout",
                                   "message": "capture loop still running", "traceback": ""})
    gc.collect()
    rec.notes["cameras"] = {cam.id: {**writer_info(cam), "frames": cam._frame_index,
                                     "fourcc_cfg": cam.fourcc} for cam in cams}
    rec.notes["children_after_run"] = children()


CODEC_CASES = (
    # name, filename, constructor kwargs (besides filename/fps), environment
    ("default_mp4", "default.mp4", {}, {}),
    ("none_mp4", "none.mp4", {"fourcc": None}, {}),
    ("default_avi", "default.avi", {}, {}),
    ("env_avi", "env.avi", {}, {"MESOFIELD_FOURCC": "mp4v"}),
    ("h264_mp4", "h264.mp4", {"fourcc": "H264"}, {}),
)


def scenario_cv2_codecs(rec: Recorder, out: Path) -> None:
    """CV2Writer constructed as mesofield constructs it, in direct mode."""
    CV2Writer = _mesofield.load().data.CV2Writer  # noqa: N806 - swapped per IMPL
    cases = {}
    for name, fname, kwargs, env in CODEC_CASES:
        saved = {k: os.environ.get(k) for k in env}
        os.environ.update(env)
        n_warn = len(rec.warnings)
        n_log = len(rec.logged)
        path = out / fname
        try:
            writer = rec.call(f"{name}: CV2Writer({fname!r}, fps=30, **{kwargs})",
                              CV2Writer, filename=str(path), fps=30, **kwargs)
            if writer is not None:
                rec.call(f"{name}: begin", writer.begin, 64, 48, False)
                for i in range(12):
                    rec.call(f"{name}: add_frame", writer.add_frame,
                             np.full((48, 64), i * 20, np.uint8))
                rec.call(f"{name}: finish", writer.finish, {"case": name})
        finally:
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v
        cases[name] = {
            "path": str(path),
            "constructed": writer is not None,
            "fourcc_attr": getattr(writer, "_fourcc", None) if writer is not None else None,
            "warnings": rec.warnings[n_warn:],
            "logged": rec.logged[n_log:],
        }
    rec.notes["cases"] = cases
    gc.collect()
    rec.notes["children_after_run"] = children()


def scenario_multicam(rec: Recorder, out: Path) -> None:
    """An MMCamera on Micro-Manager's Multi Camera device (two DemoCameras)."""
    spec = meso_spec(configuration_path=str(HERE / "multicam.cfg"))
    # Different DemoCamera modes, so that each frame's camera can be told
    # from its pixels alone, whatever file and sidecar layout a writer uses.
    spec["cameras"][0]["properties"] = {
        cam: {"OnCameraCCDXSize": MESO_SIZE[0], "OnCameraCCDYSize": MESO_SIZE[1],
              "Mode": mode}
        for cam, mode in (("Camera", "Artificial Waves"), ("Camera2", "Fluorescent Beads"))
    }
    spec["cameras"][0]["properties"]["Core"] = {"Camera": "Multi Camera"}
    cfg = _mesofield.experiment(out, spec, duration=2, num_meso_frames=20)
    meso = cfg.hardware.devices["mesoscope"]
    meso.core.setExposure(2)
    rec.notes["camera_channels"] = meso.core.getNumberOfCameraChannels()
    rec.notes["physical_cameras"] = [
        meso.core.getPhysicalCameraDevice(i)
        for i in range(meso.core.getNumberOfCameraChannels())
    ]
    delivered: list[str] = []
    means: dict[str, list[float]] = {}

    def on_frame(img: Any, ev: Any, meta: Any) -> None:
        cam = str(meta.get("camera_device"))
        delivered.append(cam)
        means.setdefault(cam, []).append(float(np.asarray(img, dtype=np.float64).mean()))

    meso.core.mda.events.frameReady.connect(on_frame)
    rec.call("mesoscope.arm", meso.arm, cfg)
    start_and_join(rec, "mesoscope.start (run_mda block=False)", meso.start)
    gc.collect()
    rec.notes["delivered_camera_devices"] = delivered
    rec.notes["frame_means"] = means
    rec.notes["mesoscope"] = writer_info(meso)
    rec.notes["children_after_run"] = children()


def scenario_crash(rec: Recorder, out: Path) -> None:
    """A long MMCamera run; run_compat.py SIGKILLs this process mid-run."""
    cfg = _mesofield.experiment(out, meso_spec(), duration=60, num_meso_frames=6000)
    meso = cfg.hardware.devices["mesoscope"]
    progress = out / "progress.json"
    count = [0]

    def on_frame(img: Any, ev: Any, meta: Any) -> None:
        count[0] += 1
        if count[0] % 25 == 0:
            tmp = progress.with_suffix(".tmp")
            tmp.write_text(json.dumps({"frames": count[0], "children": children(),
                                       "output_path": meso.output_path}))
            os.replace(tmp, progress)

    meso.core.mda.events.frameReady.connect(on_frame)
    rec.call("mesoscope.arm", meso.arm, cfg)
    rec.notes["mesoscope"] = writer_info(meso)
    (out / "armed.json").write_text(json.dumps(rec.notes))
    start_and_join(rec, "mesoscope.start", meso.start, timeout=300)


SCENARIOS = {
    "session": scenario_session,
    "mda_gui": scenario_mda_gui,
    "mda_video": scenario_mda_video,
    "opencv": scenario_opencv,
    "cv2_codecs": scenario_cv2_codecs,
    "multicam": scenario_multicam,
    "crash": scenario_crash,
}


def main() -> int:
    impl, scenario, outdir = sys.argv[1], sys.argv[2], Path(sys.argv[3])
    outdir.mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()
    classes = _mesofield.use_writers(impl)
    rec = Recorder()
    rec.notes["writer_classes"] = {k: f"{v.__module__}.{v.__name__}" for k, v in classes.items()}
    rec.notes["stubbed_modules"] = _mesofield.STUBBED
    rec.call(f"scenario {scenario}", SCENARIOS[scenario], rec, outdir)
    result = {
        "impl": impl,
        "scenario": scenario,
        "seconds": round(time.monotonic() - t0, 2),
        "pid": os.getpid(),
        "children_at_end": children(),
        "warnings": rec.warnings,
        "logged": rec.logged,
        "exceptions": rec.exceptions,
        "notes": rec.notes,
    }
    (outdir / "result.json").write_text(json.dumps(result, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
