"""Video encoding fps: the encoder in this process vs WriterService streams.

For each frame size and each codec this OpenCV build can open, measures

- `in-process`: tone map + encode in the calling process
  (`benchmarks.video_encode.measure_encoder_fps`), i.e. what the legacy
  CV2Writer cost the acquisition process;
- `service`: the same frames through 1, 2 and N parallel video streams of a
  WriterService (one writer process each), fed round-robin from this
  process with policy "block", timed from the first `Stream.write` until
  every stream is closed (so the final flush counts). `total_fps` is the sum
  over streams; `fps_per_stream` the mean.

`run_video_bench` is called by `benchmarks/suite.py` (`make bench`);
`python -m benchmarks.video_bench` prints a short table.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.video_encode import (  # noqa: E402
    DEFAULT_CODECS,
    camera_frames,
    measure_encoder_fps,
)
from mesowriter import VideoOptions, WriterService  # noqa: E402
from mesowriter.video._codecs import probe  # noqa: E402

RING_BYTES = 64 << 20


def working_codecs(
    codecs: Sequence[tuple[str, str, int]] = DEFAULT_CODECS,
) -> list[tuple[str, str, int]]:
    """The (fourcc, ext, bits) entries this OpenCV build can encode."""
    return [
        (fourcc, ext, bits)
        for fourcc, ext, bits in codecs
        if probe(fourcc, ext, is_color=False, depth16=bits == 16)
    ]


def service_fps(
    fourcc: str,
    ext: str,
    bits: int,
    size: tuple[int, int],
    frames: int,
    streams: int,
    folder: str,
) -> dict[str, Any]:
    """`streams` parallel video streams of `frames` frames each, one process each."""
    height, width = size
    source = [f[:height, :width] for f in camera_frames(max(size))]
    opts = VideoOptions(fourcc=fourcc, bit_depth=12, lossless=bits == 16)
    with WriterService(
        ring_bytes=RING_BYTES,
        workers=streams,
        max_workers=streams,
        handle_signals=False,
    ) as service:
        opened = [
            service.open_stream(
                os.path.join(folder, f"s{streams}-{k}-{fourcc}-{bits}{ext}"),
                shape=(height, width),
                dtype="uint16",
                frames=frames,
                overwrite=True,
                video=opts,
            )
            for k in range(streams)
        ]
        processes = len({s.worker.process.pid for s in opened})
        t0 = time.perf_counter()
        for i in range(frames):
            frame = source[i % len(source)]
            for stream in opened:
                stream.write(frame)
        reports = [s.close() for s in opened]
        elapsed = time.perf_counter() - t0
    for r in reports:
        os.remove(r.path)
    return {
        "mode": "service",
        "codec": reports[0].sink["codec"],
        "ext": ext,
        "bits": bits,
        "size": [height, width],
        "streams": streams,
        "processes": processes,
        "frames": frames,
        "total_fps": streams * frames / elapsed,
        "fps_per_stream": frames / elapsed,
        "blocked_seconds": sum(r.blocked_seconds for r in reports),
        "all_written": all(r.ok and r.frames_written == frames for r in reports),
    }


def run_video_bench(
    sizes: Sequence[tuple[int, int]] = ((1024, 1024), (512, 512)),
    codecs: Sequence[tuple[str, str, int]] = DEFAULT_CODECS,
    frames: int = 120,
    parallel: Sequence[int] | None = None,
) -> list[dict[str, Any]]:
    """Encode fps per codec and size: in-process vs 1, 2, N parallel streams.

    `codecs` are (fourcc, ext, bits) with bits 8 (fixed 12-bit tone map) or
    16 (lossless FFV1); ones this build cannot open are reported with
    `"error": "unavailable"`. `parallel` defaults to (1, 2, cpu count).
    Sizes are (height, width) and must be square for the in-process run.
    """
    n_cpu = os.cpu_count() or 1
    counts = sorted(set(parallel or (1, 2, n_cpu)))
    usable = set(working_codecs(codecs))
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="mesowriter-video-bench-") as folder:
        for size in sizes:
            height, width = size
            if height != width:
                raise ValueError(f"sizes must be square, got {size}")
            for fourcc, ext, bits in codecs:
                base = {"codec": fourcc, "ext": ext, "bits": bits, "size": [*size]}
                if (fourcc, ext, bits) not in usable:
                    rows.append({**base, "mode": "in-process", "error": "unavailable"})
                    continue
                inproc = measure_encoder_fps([(fourcc, ext, bits)], height, frames)[0]
                rows.append(
                    {
                        **base,
                        "mode": "in-process",
                        "streams": 1,
                        "processes": 0,
                        "frames": frames,
                        "total_fps": inproc["fps"],
                        "fps_per_stream": inproc["fps"],
                    }
                )
                for n in counts:
                    row = service_fps(fourcc, ext, bits, size, frames, n, folder)
                    row["vs_in_process"] = row["total_fps"] / inproc["fps"]
                    rows.append(row)
    return rows


def format_rows(rows: Sequence[dict[str, Any]]) -> str:
    """A plain-text table of `run_video_bench` rows."""
    lines = [
        f"{'codec':>5} {'ext':<4} {'bits':>4} {'size':>9} {'mode':<10} "
        f"{'streams':>7} {'total fps':>9} {'fps/stream':>10} {'x in-proc':>9}"
    ]
    for r in rows:
        size = "x".join(str(s) for s in r["size"])
        head = f"{r['codec']:>5} {r['ext']:<4} {r['bits']:>4} {size:>9} "
        if "error" in r:
            lines.append(head + f"{r['mode']:<10} {r['error']}")
            continue
        ratio = f"{r['vs_in_process']:9.2f}" if "vs_in_process" in r else " " * 9
        lines.append(
            head + f"{r['mode']:<10} {r['streams']:>7} {r['total_fps']:9.1f} "
            f"{r['fps_per_stream']:10.1f} {ratio}"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    print(format_rows(run_video_bench(frames=60)))
