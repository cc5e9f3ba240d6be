"""How fast one process can tone-map and encode camera frames per codec.

Frames are synthetic 12-bit camera images (smooth structure plus shot-like
noise, so neither trivially compressible nor pure noise) in uint16, mapped to
8 bits with the same fixed `ToneMap` the video sink uses; 16-bit FFV1 skips
the mapping. Run `python -m benchmarks.video_encode` for a table.
"""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Callable, Sequence
from typing import Any

import cv2
import numpy as np

from mesowriter.video import ToneMap
from mesowriter.video._codecs import open_writer

DEFAULT_CODECS: list[tuple[str, str, int]] = [
    ("mp4v", ".mp4", 8),
    ("MJPG", ".avi", 8),
    ("FFV1", ".mkv", 8),
    ("FFV1", ".mkv", 16),
]


def camera_frames(size: int, n: int = 8, seed: int = 0) -> list[np.ndarray]:
    """`n` distinct 12-bit frames with drifting structure and noise."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:size, 0:size].astype(np.float32) / size
    frames = []
    for k in range(n):
        base = 1500 + 1200 * np.sin(9 * x + 0.3 * k) * np.cos(7 * y)
        noisy = base + rng.normal(0, 40, base.shape)
        frames.append(np.clip(noisy, 0, 4095).astype(np.uint16))
    return frames


def measure_encoder_fps(
    codec_ext_pairs: Sequence[tuple[str, str] | tuple[str, str, int]],
    size: int,
    frames: int,
) -> list[dict[str, Any]]:
    """Encode `frames` size x size uint16 gray frames per (fourcc, ext[, bits]).

    `bits` is 8 (tone-mapped, the default) or 16 (lossless, FFV1 only).
    Returns one dict per codec: fps and per-frame costs of the whole path.
    """
    source = camera_frames(size)
    tone = ToneMap(np.uint16, bit_depth=12)
    rows = []
    with tempfile.TemporaryDirectory(prefix="mesowriter-bench-") as tmp:
        for pair in codec_ext_pairs:
            fourcc, ext = pair[0], pair[1]
            bits = pair[2] if len(pair) == 3 else 8
            depth16 = bits == 16
            path = os.path.join(tmp, f"bench-{fourcc}-{bits}{ext}")
            writer: Any = open_writer(
                path, fourcc, 30.0, (size, size), is_color=False, depth16=depth16
            )
            if not writer.isOpened():
                rows.append(
                    {"codec": fourcc, "ext": ext, "bits": bits, "error": "open"}
                )
                continue
            tone_s = 0.0
            t0 = time.perf_counter()
            for i in range(frames):
                frame = source[i % len(source)]
                if not depth16:
                    t = time.perf_counter()
                    frame = tone(frame)
                    tone_s += time.perf_counter() - t
                if not writer.write(frame):
                    raise RuntimeError(f"{fourcc} refused frame {i}")
            writer.release()  # includes the final flush in the timing
            total = time.perf_counter() - t0
            rows.append(
                {
                    "codec": fourcc,
                    "ext": ext,
                    "bits": bits,
                    "size": size,
                    "frames": frames,
                    "fps": frames / total,
                    "ms_per_frame": 1e3 * total / frames,
                    "tonemap_ms_per_frame": 1e3 * tone_s / frames,
                    "input_MB_s": frames * size * size * 2 / total / 1e6,
                    "bytes_per_frame": os.path.getsize(path) / frames,
                }
            )
            os.remove(path)
    return rows


def measure_tonemap(size: int, repeats: int = 30) -> list[dict[str, Any]]:
    """Milliseconds per uint16 -> uint8 frame for the candidate mappings."""
    frame = camera_frames(size, n=1)[0]
    tone = ToneMap(np.uint16, bit_depth=12)
    lut = ToneMap(np.uint16, display_range=(0.5, 4095))._lut  # forces the LUT
    assert lut is not None
    scale = 255.0 / 4095.0
    out = np.empty(frame.shape, np.uint8)

    def numpy_float() -> np.ndarray:
        return np.clip(np.rint(frame * np.float32(scale)), 0, 255).astype(np.uint8)

    candidates: dict[str, Callable[[], np.ndarray]] = {
        "ToneMap (as used)": lambda: tone(frame),
        "LUT, fancy index": lambda: lut[frame],
        "np.take(lut, out=)": lambda: np.take(lut, frame, out=out),
        "cv2.convertScaleAbs": lambda: cv2.convertScaleAbs(frame, alpha=scale),
        "numpy float32 clip/rint": numpy_float,
    }
    rows = []
    for name, fn in candidates.items():
        fn()
        t0 = time.perf_counter()
        for _ in range(repeats):
            fn()
        rows.append(
            {
                "method": name,
                "size": size,
                "ms": 1e3 * (time.perf_counter() - t0) / repeats,
            }
        )
    return rows


if __name__ == "__main__":
    for size, n in ((512, 120), (1024, 60)):
        for r in measure_encoder_fps(DEFAULT_CODECS, size, n):
            if "error" in r:
                print(f"{r['codec']:>5} {r['ext']:<5} {r['bits']:>2}-bit  cannot open")
                continue
            print(
                f"{r['codec']:>5} {r['ext']:<5} {r['bits']:>2}-bit {size:>5}px "
                f"{r['fps']:7.1f} fps  {r['ms_per_frame']:6.2f} ms/frame "
                f"(tone map {r['tonemap_ms_per_frame']:.2f})  "
                f"{r['bytes_per_frame'] / 1e3:8.1f} kB/frame"
            )
    for size in (512, 1024, 2048):
        for r in measure_tonemap(size):
            print(f"{r['method']:<28} {size:>5}px {r['ms']:7.3f} ms/frame")
