"""Bring up mesofield 0.5.0b0 (installed, unmodified) for the compat harness.

- :func:`load` installs the Qt / NI-DAQ stand-ins (see ``_stubs.py``) and
  imports the mesofield modules the harness drives.
- :func:`use_writers` chooses the writer classes mesofield constructs:
  ``"legacy"`` leaves mesofield's own ``mesofield.data.writer`` module alone
  (``OMEWriter`` on ome-writers, ``CV2Writer`` on cv2.VideoWriter);
  ``"mesowriter"`` swaps mesowriter's ``CustomWriter`` / ``CV2Writer`` into
  every module attribute mesofield looks its writers up from
  (``BaseCamera._make_writer`` imports ``OMEWriter`` from
  ``mesofield.data.writer`` and ``CV2Writer`` from ``mesofield.data`` at call
  time; ``mesofield.devices.cameras`` and ``mesofield.data.manager`` hold
  module-level references).
- :func:`experiment` builds a real ``ExperimentConfig`` with a real
  ``HardwareManager`` from an in-memory rig spec, as mesofield does for an
  ``experiment.json`` with an embedded ``hardware`` block.
- :func:`write_manifest` runs mesofield's own
  ``Procedure._write_acquisition_manifest`` (unbound, on the few attributes it
  reads), so the AcquisitionManifest (with each camera's ``metadata_path``)
  is mesofield's, without starting a Qt-signalled Procedure.
"""

from __future__ import annotations

import importlib
import os
import sys
import types
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

import _stubs  # noqa: E402

STUBBED = _stubs.install()

# (module, attribute) pairs through which mesofield 0.5.0b0 reaches its writers.
WRITER_SLOTS = (
    ("mesofield.data.writer", "OMEWriter"),
    ("mesofield.data.writer", "CV2Writer"),
    ("mesofield.data", "OMEWriter"),
    ("mesofield.data", "CV2Writer"),
    ("mesofield.devices.cameras", "OMEWriter"),
    ("mesofield.devices.cameras", "CV2Writer"),
    ("mesofield.data.manager", "OMEWriter"),
    ("mesofield.data.manager", "CV2Writer"),
)


def load() -> types.SimpleNamespace:
    os.environ.setdefault("PYMM_SIGNALS_BACKEND", "psygnal")
    ns = types.SimpleNamespace()
    ns.writer = importlib.import_module("mesofield.data.writer")
    ns.data = importlib.import_module("mesofield.data")
    ns.cameras = importlib.import_module("mesofield.devices.cameras")
    ns.mocks = importlib.import_module("mesofield.devices.mocks")
    ns.config = importlib.import_module("mesofield.config")
    ns.hardware = importlib.import_module("mesofield.hardware")
    ns.manager = importlib.import_module("mesofield.data.manager")
    ns.base = importlib.import_module("mesofield.base")
    return ns


def use_writers(impl: str) -> dict[str, type]:
    """Make mesofield construct `impl`'s writers; return {legacy name: class}."""
    load()
    if impl == "legacy":
        mod = importlib.import_module("mesofield.data.writer")
        return {"OMEWriter": mod.OMEWriter, "CV2Writer": mod.CV2Writer}
    if impl != "mesowriter":
        raise ValueError(impl)
    import mesowriter.legacy

    # the swap a lab makes: mesofield's writer names, from mesowriter.legacy
    classes = {
        "OMEWriter": mesowriter.legacy.OMEWriter,
        "CV2Writer": mesowriter.legacy.CV2Writer,
    }
    for module_name, attr in WRITER_SLOTS:
        module = importlib.import_module(module_name)
        if hasattr(module, attr):
            setattr(module, attr, classes[attr])
    return classes


def experiment(root: Path, spec: dict[str, Any], duration: int, **params: Any) -> Any:
    """A real ExperimentConfig + HardwareManager, initialised, rooted at `root`."""
    ns = load()
    cfg = ns.config.ExperimentConfig()
    cfg.experiment_dir = str(root)
    values = {
        "subject": "DEMO",
        "session": "01",
        "task": "compat",
        "duration": duration,
        "led_pattern": ["4", "4", "2", "2"],
        **params,
    }
    for key, value in values.items():
        cfg.set(key, value)
    cfg.hardware = ns.hardware.HardwareManager(spec=dict(spec))
    cfg.hardware.initialize(cfg)
    return cfg


def write_manifest(cfg: Any, started: datetime, stopped: datetime) -> Path:
    """mesofield's Procedure._write_acquisition_manifest on `cfg`'s devices."""
    ns = load()
    proc = types.SimpleNamespace(
        data_dir=cfg.data_dir,
        config=cfg,
        experimenter="compat",
        protocol="MAKE_COMPAT",
        start_time=started.astimezone(timezone.utc),
        stopped_time=stopped.astimezone(timezone.utc),
        logger=ns.base.get_logger("compat"),
        manifest_extra=lambda: {},
    )
    ns.base.Procedure._write_acquisition_manifest(proc)
    session = Path(cfg.data_dir) / f"sub-{cfg.subject}" / f"ses-{cfg.session}"
    return session / "manifest.json"
