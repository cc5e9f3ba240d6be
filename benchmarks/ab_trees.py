"""A/B of mesowriter source trees against fio, alternated in one run.

    git archive <commit> | tar -x -C /tmp/old     (and the same for /tmp/new)
    python -m benchmarks.ab_trees --dir /scratch --rounds 6 \\
        old=/tmp/old:4 new=/tmp/new:4 new8=/tmp/new:8

Each variant is NAME=TREE:WRITE_DEPTH. A round runs fio (io_uring, 16 x 64
MiB in flight, fsync at the end: bench (a)'s likely ceiling), then each
variant followed by fio again, in an order rotated every round; a variant's
ratio is its GB/s over the mean of the fio runs right before and after it
(the bench's own schedule and bracketed ratios, `benchmarks/_rounds.py`).
Each variant runs in a process of its own with PYTHONPATH=TREE, so its
writer processes import that tree's code. This machine's disk swings 2x
from minute to minute; only the ratios to the neighbouring fio runs, over
several rounds, say anything.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

FIO = "fio"


def _one(args: argparse.Namespace) -> int:
    """Run inside the variant's process: one stream, print its figures."""
    import mesowriter
    from benchmarks._producer import Producer, StreamJob

    shape = _shape(args.shape)
    frames = _frames(args.gib, shape)
    path = os.path.join(args.dir, "ab.ome.tiff")
    with Producer(args.ring_mib << 20) as producer:
        try:
            r = producer.stream(StreamJob(path, shape, frames, write_depth=args.depth))
        finally:
            for suffix in ("", "_frame_metadata.json", "_report.json"):
                Path(path + suffix).unlink(missing_ok=True)
    rep = r["report"]
    figures = {
        "gbps": r["gbps"],
        "blocked_seconds": rep["blocked_seconds"],
        "commits": rep["sink"].get("commits"),
        "frames_written": rep["frames_written"],
        "write_us_p99": round(r["write"]["us_p99"]),
        "write_us_max": round(r["write"]["us_max"]),
        "code": os.path.dirname(os.path.dirname(mesowriter.__file__)),
    }
    print(json.dumps(figures))
    return 0


def _shape(text: str) -> tuple[int, int]:
    height, _, width = text.partition("x")
    return int(height), int(width)


def _frames(gib: float, shape: tuple[int, int]) -> int:
    return int(gib * (1 << 30)) // (shape[0] * shape[1] * 2)


def _fio(scratch: str, gib: float, shape: tuple[int, int]) -> float:
    from benchmarks._raw import fio_write
    from benchmarks.suite import tiff_reserved_bytes

    frames = _frames(gib, shape)
    path = Path(scratch) / "ab-fio.bin"
    try:
        return float(
            fio_write(
                path,
                frames * shape[0] * shape[1] * 2,
                block_bytes=64 << 20,
                iodepth=16,
                prealloc_bytes=tiff_reserved_bytes(shape, frames),
            )["gbps"]
        )
    finally:
        path.unlink(missing_ok=True)


def _variant(text: str) -> tuple[str, str, int]:
    name, _, rest = text.partition("=")
    tree, _, depth = rest.rpartition(":")
    if not name or name == FIO or not tree or not depth.isdigit():
        raise argparse.ArgumentTypeError(f"{text!r}: want NAME=TREE:WRITE_DEPTH")
    return name, tree, int(depth)


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("variants", nargs="*", type=_variant)
    ap.add_argument("--dir", required=True, help="scratch folder on the disk")
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--gib", type=float, default=8.0)
    ap.add_argument("--shape", default="2048x2048", help="frame HEIGHTxWIDTH")
    ap.add_argument("--ring-mib", type=int, default=1024)
    ap.add_argument("--one", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--depth", type=int, default=4, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.one:
        return _one(args)
    if not args.variants:
        ap.error("give at least one NAME=TREE:WRITE_DEPTH")
    # Here, not at the top: a variant's process imports this file from its
    # own tree's `benchmarks`, which may predate these.
    from benchmarks._rounds import bracketed_ratios, run_rounds, schedule, spread

    shape = _shape(args.shape)
    runners: dict[str, Callable[[], dict[str, Any]]] = {
        name: _tree_runner(args, tree, depth) for name, tree, depth in args.variants
    }
    runners[FIO] = lambda: {"gbps": _fio(args.dir, args.gib, shape)}
    names = [name for name, _, _ in args.variants]
    plan = schedule(args.rounds, [FIO], names, bracket=FIO)
    trail: list[list[tuple[str, dict[str, Any] | None]]] = []
    _, failures = run_rounds(plan, runners, on_result=_print_run, trail=trail)
    rates = [[(n, None if r is None else r["gbps"]) for n, r in row] for row in trail]
    for name in names:
        s = spread(bracketed_ratios(rates, name, FIO))
        if s["n"]:
            print(
                f"{name}: median {s['median']:.3f} ({s['min']:.3f}-{s['max']:.3f}) "
                f"of the fio runs around it, {s['n']} rounds"
            )
    for failure in failures:
        print(f"round {failure['round']} {failure['name']} failed:")
        print(failure["traceback"])
    return 0


def _tree_runner(
    args: argparse.Namespace, tree: str, depth: int
) -> Callable[[], dict[str, Any]]:
    """One stream run by `tree`'s code, in a process of its own."""

    def run() -> dict[str, Any]:
        # As a script, from the scratch folder: the tree comes first on the
        # path (for this process and the writer processes it spawns).
        cmd = [sys.executable, os.path.abspath(__file__), "--one"]
        cmd += ["--dir", args.dir, "--gib", str(args.gib), "--shape", args.shape]
        cmd += ["--ring-mib", str(args.ring_mib), "--depth", str(depth)]
        env = {**os.environ, "PYTHONPATH": os.path.abspath(tree)}
        out = subprocess.run(cmd, env=env, cwd=args.dir, capture_output=True, text=True)
        if out.returncode != 0:
            raise RuntimeError(out.stderr[-2000:])
        figures: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
        return figures

    return run


def _print_run(r: int, name: str, res: dict[str, Any] | None) -> None:
    gbps = "failed" if res is None else f"{res['gbps']:.2f} GB/s"
    extra = "" if res is None or name == FIO else f" {res}"
    print(f"round {r} {name:8s} {gbps}{extra}", flush=True)


if __name__ == "__main__":
    raise SystemExit(main())
