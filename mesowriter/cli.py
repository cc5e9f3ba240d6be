"""The `mesowriter` command line: demo, bench, stress, inspect, recover."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

import msgspec


def _demo(args: argparse.Namespace) -> int:
    from mesowriter._demo import run_demo

    reports, elapsed = run_demo(args.out, frames=args.frames, size=args.size)
    dropped = 0
    for r in reports:
        dropped += r.frames_dropped
        if args.json:
            print(json.dumps(msgspec.to_builtins(r)))
            continue
        print(f"data:     {r.path}")
        print(f"sidecar:  {r.sidecar}")
        print(f"report:   {r.path}_report.json")
        print(
            f"frames:   {r.frames_written}/{r.frames_expected} written, "
            f"{r.frames_dropped} dropped, finish: {r.finish_reason}"
        )
        print(
            f"speed:    {r.frames_written / elapsed:.0f} fps, "
            f"{r.bytes_written / elapsed / 1e9:.2f} GB/s end to end; "
            f"ring high-water {r.ring_high_water}/{r.ring_slots} slots, "
            f"blocked {r.blocked_seconds:.3f} s, direct I/O {r.sink.get('direct_io')}"
        )
    return 1 if dropped else 0


def _bench(args: argparse.Namespace) -> int:
    from benchmarks.suite import main as bench_main

    return int(bench_main(args.rest))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mesowriter", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="DemoCamera burst through mesowriter")
    demo.add_argument("--out", default="demo-output")
    demo.add_argument("--frames", type=int, default=300)
    demo.add_argument("--size", type=int, default=2048)
    demo.add_argument("--json", action="store_true")
    demo.set_defaults(func=_demo)
    bench = sub.add_parser("bench", help="run the benchmark suite")
    bench.add_argument("rest", nargs=argparse.REMAINDER)
    bench.set_defaults(func=_bench)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
