"""How long and how much memory `build_ome_xml` needs for a large file.

Records are realistic DemoCamera burst metadata (~0.8 KB of JSON each, as
pymmcore-plus delivers them with `mda_event` reduced to JSON) for a complete
T x C x Z sequence. They are streamed from a generator, as the sink streams
them from its journal, so the figures are what finalisation itself costs.
Time is measured without tracemalloc (it slows Python down), memory in a
second run with it.

    .venv/bin/python benchmarks/ome_scale.py [frames]
"""

from __future__ import annotations

import json
import sys
import time
import tracemalloc
from collections.abc import Iterator
from typing import Any

from mesowriter.sinks._omexml import build_ome_xml

CHANNELS = ["DAPI", "FITC", "Cy5", "Rhodamine"]
NZ = 10
PROPS = [
    {"dev": "Dichroic", "prop": "Label", "val": "400DCLP"},
    {"dev": "Emission", "prop": "Label", "val": "Chroma-HQ620"},
    {"dev": "Excitation", "prop": "Label", "val": "Chroma-D360"},
    {"dev": "Core", "prop": "Shutter", "val": "White Light Shutter"},
]


def _sequence(frames: int) -> dict[str, Any]:
    loops = max(frames // (len(CHANNELS) * NZ), 1)
    return {
        "metadata": {},
        "axis_order": ["t", "p", "c", "z"],
        "stage_positions": [],
        "grid_plan": None,
        "channels": [{"config": c, "group": "Channel"} for c in CHANNELS],
        "time_plan": {"interval": 0.0, "loops": loops},
        "z_plan": {"range": NZ - 1.0, "step": 1.0},
    }


def _records(frames: int) -> Iterator[tuple[int, bytes]]:
    nc = len(CHANNELS)
    for i in range(frames):
        t, rest = divmod(i, nc * NZ)
        c, z = divmod(rest, NZ)
        ms = 10.0 + 2.013 * i
        meta = {
            "format": "frame-dict",
            "version": "1.0",
            "runner_time_ms": ms,
            "camera_device": "Camera",
            "property_values": PROPS,
            "exposure_ms": 2.0,
            "pixel_size_um": 1.0,
            "mda_event": {
                "index": {"t": t, "c": c, "z": z},
                "channel": {"config": CHANNELS[c], "group": "Channel"},
                "min_start_time": 0.0,
                "z_pos": z - 4.5,
                "metadata": {},
                "action": {"type": "acquire_image"},
                "keep_shutter_open": False,
                "reset_event_timer": i == 0,
            },
            "hardware_triggered": True,
            "images_remaining_in_buffer": i % 7,
            "camera_metadata": {
                "Binning": "1",
                "Camera": "Camera",
                "ElapsedTime-ms": f"{ms - 1.9:.2f}",
                "Height": "2048",
                "ImageNumber": str(i),
                "PixelType": "GRAY16",
                "ROI-X-start": "0",
                "ROI-Y-start": "0",
                "TimeReceivedByCore": f"2026-11-24 12:21:{3 + i // 500_000:02d}."
                f"{(i * 2013) % 1_000_000:06d}",
                "Width": "2048",
            },
        }
        yield i, json.dumps(meta).encode()


def _build(frames: int) -> str:
    return build_ome_xml(
        shape=(2048, 2048),
        dtype="<u2",
        records=_records(frames),
        sequence=_sequence(frames),
        position_key="p0",
        image_name="scale",
    )


def measure_ome_finalise(frames: int = 100_000) -> dict[str, Any]:
    """Seconds and peak extra MB of `build_ome_xml` for `frames` records."""
    meta_bytes = sum(len(r) for _, r in _records(min(frames, 1000)))
    t0 = time.perf_counter()
    xml = _build(frames)
    seconds = time.perf_counter() - t0
    xml_chars = len(xml)
    del xml
    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    _build(frames)
    peak = tracemalloc.get_traced_memory()[1] - base
    tracemalloc.stop()
    return {
        "frames": frames,
        "seconds": round(seconds, 2),
        "peak_extra_mb": round(peak / 1e6, 1),
        "xml_mb": round(xml_chars / 1e6, 1),
        "metadata_json_bytes_per_frame": round(meta_bytes / min(frames, 1000)),
    }


def measure_stream_finalise(
    frames: int = 100_000, folder: str | None = None
) -> dict[str, Any]:
    """The same records through a real stream: the writer's close, measured.

    Tiny 8x8 frames carry the metadata, so the figure is finalisation
    (OME-XML with every plane and the frame-metadata annotation, the sidecar)
    and not pixel I/O. The writer process's RSS is sampled during `close()`.
    """
    import os
    import tempfile
    import threading

    import numpy as np
    import psutil

    from mesowriter import WriterService

    with tempfile.TemporaryDirectory(dir=folder) as tmp:
        path = os.path.join(tmp, "scale.ome.tiff")
        with WriterService(ring_bytes=64 << 20, handle_signals=False) as svc:
            stream = svc.open_stream(
                path,
                shape=(8, 8),
                dtype="uint16",
                frames=frames,
                sequence=_sequence(frames),
            )
            worker = psutil.Process(svc.workers[0])
            pixels = np.zeros((8, 8), np.uint16)
            for _, meta in _records(frames):
                stream.write(pixels, json.loads(meta))
            done = threading.Event()
            deadline = time.monotonic() + 600
            while stream.frames_written < frames:  # the pixels are on disk
                if stream.error is not None:
                    raise stream.error
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{stream.frames_written}/{frames} written")
                done.wait(0.01)
            base = worker.memory_info().rss
            peak = [base]

            def sample() -> None:
                while not done.wait(0.02):
                    peak[0] = max(peak[0], worker.memory_info().rss)

            sampler = threading.Thread(target=sample)
            sampler.start()
            t0 = time.perf_counter()
            try:
                report = stream.close()
            finally:
                seconds = time.perf_counter() - t0
                done.set()
                sampler.join()
        xml_bytes = report.sink.get("description_bytes", 0)
    return {
        "frames": frames,
        "frames_written": report.frames_written,
        "close_seconds": round(seconds, 2),
        "worker_peak_extra_mb": round((peak[0] - base) / 1e6, 1),
        "xml_mb": round(xml_bytes / 1e6, 1),
    }


if __name__ == "__main__":
    print(measure_ome_finalise(int(sys.argv[1]) if len(sys.argv) > 1 else 100_000))
