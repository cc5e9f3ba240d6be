"""Stand-ins for the two heavy modules mesofield imports at module level.

mesofield 0.5.0b0 imports

- ``PyQt6.QtCore`` (``QThread``, ``QObject``, ``pyqtSignal``) at the top of
  ``mesofield/devices/cameras.py`` (``OpenCVCamera`` is a ``QThread``),
  ``mesofield/base.py`` (``ProcedureSignals``) and
  ``mesofield/processors/base.py``; ``mesofield/playback.py`` (the playback
  readers) imports ``mesofield.base``;
- ``nidaqmx`` at the top of ``mesofield/engines.py``, which
  ``mesofield/devices/cameras.py`` imports for ``DevEngine``.

The compat environment keeps Qt and the NI-DAQ driver out, so before any of
those modules is imported, :func:`install` puts small stand-ins into
``sys.modules`` -- only for a module that really cannot be imported. Nothing
mesofield runs in the harness needs Qt or a DAQ: the stand-in ``QThread``
runs ``run()`` on a ``threading.Thread`` (``OpenCVCamera``'s capture loop is
then mesofield's own code, unchanged), signals keep their slots and call
them, and ``nidaqmx`` is an empty module (only ``PupilEngine`` and
``MesoEngine`` would use it; the harness uses ``DevEngine``).
"""

from __future__ import annotations

import importlib.util
import sys
import threading
import time
import types
from typing import Any


class _BoundSignal:
    def __init__(self) -> None:
        self._slots: list[Any] = []

    def connect(self, slot: Any, *args: Any, **kwargs: Any) -> None:
        self._slots.append(slot)

    def disconnect(self, slot: Any = None) -> None:
        if slot is None:
            self._slots.clear()
        elif slot in self._slots:
            self._slots.remove(slot)
        else:
            raise TypeError("slot not connected")

    def emit(self, *args: Any) -> None:
        for slot in list(self._slots):
            slot(*args)


class pyqtSignal:  # noqa: N801 - the PyQt6 name
    """A class attribute that gives each instance its own signal."""

    def __init__(self, *types_: Any, **kwargs: Any) -> None:
        self._name = ""

    def __set_name__(self, owner: type, name: str) -> None:
        self._name = name

    def __get__(self, obj: Any, objtype: Any = None) -> Any:
        if obj is None:
            return self
        store = obj.__dict__.setdefault("_stub_signals", {})
        if self._name not in store:
            store[self._name] = _BoundSignal()
        return store[self._name]


class QObject:
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass


class QThread(QObject):
    """``run()`` on a Python thread, with the QThread calls mesofield makes."""

    _current = threading.local()

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__()
        self._stub_thread: threading.Thread | None = None
        self._stub_interrupt = False

    def _stub_main(self) -> None:
        QThread._current.obj = self
        self.run()

    def run(self) -> None:  # overridden
        pass

    def start(self) -> None:
        self._stub_interrupt = False
        self._stub_thread = threading.Thread(
            target=self._stub_main, name=type(self).__name__, daemon=True
        )
        self._stub_thread.start()

    def isRunning(self) -> bool:  # noqa: N802
        return self._stub_thread is not None and self._stub_thread.is_alive()

    def wait(self, ms: int | None = None) -> bool:
        if self._stub_thread is None:
            return True
        self._stub_thread.join(None if ms is None else ms / 1000)
        return not self._stub_thread.is_alive()

    def requestInterruption(self) -> None:  # noqa: N802
        self._stub_interrupt = True

    def isInterruptionRequested(self) -> bool:  # noqa: N802
        return self._stub_interrupt

    def msleep(self, ms: int) -> None:
        time.sleep(max(0, ms) / 1000)

    @staticmethod
    def currentThread() -> Any:  # noqa: N802
        return getattr(QThread._current, "obj", None)


class QTimer(QObject):
    pass


def _importable(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


def install() -> list[str]:
    """Put the stand-ins into sys.modules; return the names stubbed."""
    stubbed: list[str] = []
    if not _importable("PyQt6"):
        qt = types.ModuleType("PyQt6")
        core = types.ModuleType("PyQt6.QtCore")
        for obj in (QObject, QThread, QTimer, pyqtSignal):
            setattr(core, obj.__name__, obj)
        core.__dict__["Qt"] = types.SimpleNamespace()
        qt.QtCore = core  # type: ignore[attr-defined]
        qt.__path__ = []  # a package: PyQt6.QtWidgets etc. raise ImportError
        sys.modules["PyQt6"] = qt
        sys.modules["PyQt6.QtCore"] = core
        stubbed.append("PyQt6.QtCore")
    if not _importable("nidaqmx"):
        ni = types.ModuleType("nidaqmx")
        ni.__path__ = []  # type: ignore[attr-defined]
        system = types.ModuleType("nidaqmx.system")
        ni.system = system  # type: ignore[attr-defined]
        sys.modules["nidaqmx"] = ni
        sys.modules["nidaqmx.system"] = system
        stubbed.append("nidaqmx")
    return stubbed
