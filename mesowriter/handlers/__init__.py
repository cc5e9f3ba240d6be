"""pymmcore-plus handlers with the legacy names: CustomWriter and CV2Writer."""

from __future__ import annotations

from typing import Any

from mesowriter.handlers._custom_writer import CustomWriter
from mesowriter.handlers._run import run

__all__ = ["CV2Writer", "CustomWriter", "run"]


def __getattr__(name: str) -> Any:
    if name == "CV2Writer":  # imports OpenCV only when asked for
        from mesowriter.handlers._cv2_writer import CV2Writer

        return CV2Writer
    raise AttributeError(name)
