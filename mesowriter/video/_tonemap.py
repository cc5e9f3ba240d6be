"""Mapping camera frames to the 8-bit BGR or gray frames encoders take.

The mapping is fixed for the whole file (from the camera's bit depth or a
user display range) so intensities stay comparable between frames; the
legacy writer's per-frame min/max stretch made brightness flicker and is
only done when asked for (`per_frame_normalize=True`).

Colour layout, as pymmcore-plus delivers it: with the default `fix=True`,
`CMMCorePlus.fixImage` turns Micro-Manager's 32bitRGB (bytes B, G, R, A in
memory) into (h, w, 3) **RGB** with the alpha dropped. An (h, w, 4) frame
can only come from viewing the raw buffer, so it is taken as **BGRA**.
OpenCV encoders want BGR.
"""

from __future__ import annotations

import cv2
import numpy as np
import numpy.typing as npt

_SUPPORTED = ("uint8", "int8", "uint16", "int16", "int32", "float32")


class ToneMap:
    """A fixed intensity mapping of one stream's frames to uint8.

    `display_range=(low, high)` maps low -> 0 and high -> 255, clipping
    outside; otherwise 0 .. 2**bit_depth - 1 maps to 0 .. 255 (bit_depth
    defaults to the dtype's full width, so pass the camera's real depth,
    e.g. 12, or a 12-bit camera fills only the bottom 1/16 of the range).
    uint8 frames pass through untouched unless a range or per-frame
    normalisation is asked for.
    """

    def __init__(
        self,
        dtype: npt.DTypeLike,
        *,
        bit_depth: int | None = None,
        display_range: tuple[float, float] | None = None,
        per_frame_normalize: bool = False,
    ) -> None:
        self.dtype = np.dtype(dtype)
        self.per_frame = per_frame_normalize
        self._lut: np.ndarray | None = None
        kind = self.dtype.kind
        if self.dtype.name not in _SUPPORTED:
            raise ValueError(f"cannot tone-map frames of dtype {self.dtype}")
        if display_range is not None:
            low, high = float(display_range[0]), float(display_range[1])
            if not high > low:
                raise ValueError(f"display_range needs low < high, got {display_range}")
        elif bit_depth is not None:
            if not 1 <= bit_depth <= 8 * self.dtype.itemsize:
                raise ValueError(f"bit_depth {bit_depth} does not fit {self.dtype}")
            low, high = 0.0, float(2**bit_depth - 1)
        elif kind in "ui":
            info = np.iinfo(self.dtype)
            low, high = float(max(info.min, 0)), float(info.max)
        elif not per_frame_normalize:
            raise ValueError(
                "float frames need display_range, bit_depth or per_frame_normalize"
            )
        else:
            low, high = 0.0, 1.0
        self.low, self.high = low, high
        self.identity = self.dtype == np.uint8 and (
            (low, high) == (0.0, 255.0) and not per_frame_normalize
        )
        self._scale = 255.0 / (high - low)
        # uint16 from 0 (or any whole low): one SIMD pass, ~10x a 16-bit LUT.
        self._u16_fast = (
            self.dtype == np.uint16
            and low >= 0
            and low.is_integer()
            and not self.per_frame
        )
        if self.dtype.itemsize <= 2 and not (self.identity or self.per_frame):
            if not self._u16_fast:
                self._lut = self._build_lut()

    def _build_lut(self) -> np.ndarray:
        # Indexed by the raw bits; signed codes past half-range are negatives.
        bits = 8 * self.dtype.itemsize
        codes = np.arange(2**bits, dtype=np.float64)
        if self.dtype.kind == "i":
            codes = np.where(codes >= 2 ** (bits - 1), codes - 2**bits, codes)
        scaled = (codes - self.low) * 255.0 / (self.high - self.low)
        return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)

    @property
    def description(self) -> str:
        """One line for the stream report."""
        if self.identity:
            return "none (uint8 passed through)"
        if self.per_frame:
            return "per-frame min/max -> 0..255 (intensities not comparable)"
        return f"fixed {self.low:g}..{self.high:g} -> 0..255, clipped ({self.dtype})"

    def __call__(self, frame: np.ndarray) -> np.ndarray:
        """`frame` mapped to uint8, same shape; may be `frame` itself."""
        if self.identity:
            return frame
        flat = frame.reshape(frame.shape[0], -1)  # one channel: scalars apply to all
        if self._u16_fast:
            # saturating: codes below `low` become 0 (the stubs omit scalars)
            src = cv2.subtract(flat, self.low) if self.low else flat  # type: ignore[call-overload]
            out = cv2.convertScaleAbs(src, alpha=self._scale)
        elif self._lut is not None:
            if self.dtype.itemsize == 1:
                out = cv2.LUT(flat.view(np.uint8), self._lut)
            else:
                out = self._lut[flat.view(np.uint16)]
        else:
            if self.per_frame:
                low, high = float(flat.min()), float(flat.max())
                if high <= low:
                    return np.zeros(frame.shape, np.uint8)
                src = flat
            else:
                low, high = self.low, self.high
                src = np.clip(flat, low, high)
            # convertScaleAbs rounds and saturates but takes |x|: src >= low here.
            scale = 255.0 / (high - low)
            out = cv2.convertScaleAbs(src, alpha=scale, beta=-low * scale)
        return out.reshape(frame.shape)


def to_bgr(frame: np.ndarray) -> np.ndarray:
    """A uint8 frame in the BGR layout OpenCV encoders expect.

    (h, w) gray is replicated (for writers opened in colour), (h, w, 3) is
    taken as RGB, (h, w, 4) as BGRA (see module docstring).
    """
    if frame.ndim == 2:
        return cv2.cvtColor(frame, cv2.COLOR_GRAY2BGR)
    if frame.shape[2] == 3:
        return cv2.cvtColor(frame, cv2.COLOR_RGB2BGR)
    if frame.shape[2] == 4:
        return cv2.cvtColor(frame, cv2.COLOR_BGRA2BGR)
    raise ValueError(f"cannot convert a frame of shape {frame.shape} to BGR")
