"""The `mesowriter` command line: demo, bench, stress, inspect, recover, doctor."""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

import msgspec


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors may be one line with an exit code of
    their own: the doctor's scripts tell "could not check" from a verdict."""

    one_line_exit: int | None = None

    def error(self, message: str) -> NoReturn:
        if self.one_line_exit is None:
            super().error(message)
        self.exit(self.one_line_exit, f"{self.prog}: error: {message}\n")


def _demo(args: argparse.Namespace) -> int:
    from mesowriter._demo import run_demo
    from mesowriter._spec import report_path

    if args.json:
        reports, elapsed = run_demo(args.out, frames=args.frames, size=args.size)
    else:
        from mesowriter._live import LiveProgress

        with LiveProgress("mesowriter demo") as live:
            reports, elapsed = run_demo(
                args.out, frames=args.frames, size=args.size, on_progress=live.update
            )
    for r in reports:
        if args.json:
            print(json.dumps(msgspec.to_builtins(r)))
            continue
        print(f"data:     {r.path}")
        print(f"sidecar:  {r.sidecar}")
        print(f"report:   {report_path(r.path)}")
        print(
            f"frames:   {r.frames_written}/{r.frames_expected} written, "
            f"{r.frames_dropped} dropped, finish: {r.finish_reason}"
        )
        fps = r.frames_written / r.seconds if r.seconds > 0 else 0.0
        print(
            f"speed:    {fps:.0f} fps, {r.throughput_gbps:.2f} GB/s from the first "
            f"frame to the closed file ({elapsed:.1f} s in all, with the writer "
            f"process starting); ring high-water {r.ring_high_water}/"
            f"{r.ring_slots} slots, blocked {r.blocked_seconds:.3f} s, "
            f"direct I/O {r.sink.get('direct_io')}"
        )
        for problem in r.problems():
            print(f"problem:  {problem}")
    return 0 if all(r.ok for r in reports) else 1


def _bench(args: argparse.Namespace) -> int:
    root = str(Path(__file__).resolve().parents[1])
    if root not in sys.path:  # benchmarks/ lives beside the package, not in it
        sys.path.insert(0, root)
    from benchmarks.suite import main as bench_main

    return int(bench_main(args.rest))


def _stress(args: argparse.Namespace) -> int:
    """Run the chosen scenarios; exit 1 if a frame was dropped or memory grew."""
    import shutil

    from mesowriter import stress

    scenarios = (
        ["soak", "multi", "burst"] if args.scenario == "all" else [args.scenario]
    )
    parent = Path(args.dir) if args.dir else None
    if parent is not None:
        parent.mkdir(parents=True, exist_ok=True)
    out = Path(tempfile.mkdtemp(prefix="mesowriter-stress-", dir=parent))
    results: dict[str, Any] = {}
    try:
        for name in scenarios:
            kwargs: dict[str, Any] = {}
            if name == "soak":
                kwargs.update(minutes=args.minutes, fps=args.fps)
                if args.size:
                    kwargs["size"] = args.size
            elif name == "multi":
                kwargs = {"seconds": args.seconds, "scale": (args.size or 2048) / 2048}
            else:
                size = args.size or 2048
                kwargs["size"] = size
                kwargs["ring_mib"] = max(32, int(1024 * (size / 2048) ** 2))
            run = getattr(stress, name)
            if args.json:
                results[name] = run(out / name, **kwargs)
            else:
                from mesowriter._live import LiveProgress

                with LiveProgress(f"mesowriter stress {name}") as live:
                    results[name] = run(out / name, on_message=live.update, **kwargs)
                _print_stress(name, results[name])
    finally:
        if not args.keep:
            shutil.rmtree(out, ignore_errors=True)
    if args.json:
        slim = {
            k: {kk: vv for kk, vv in v.items() if kk != "memory_trace"}
            for k, v in results.items()
        }
        for v in slim.values():
            for cam in v["cameras"]:
                cam.pop("series", None)
        print(json.dumps(slim))
    return 0 if all(r["ok"] for r in results.values()) else 1


def _print_stress(name: str, res: dict[str, Any]) -> None:
    mem = res["memory"]
    for cam in res["cameras"]:
        rep = cam["report"]
        print(
            f"{name}/{cam['camera']['name']}: {rep['frames_written']}/"
            f"{rep['frames_received']} written, {rep['frames_dropped']} dropped, "
            f"{cam['fps_sent']:.1f} fps, ring high-water {rep['ring_high_water']}/"
            f"{rep['ring_slots']}"
        )
    burst = res.get("burst")
    if burst is not None:
        fps = burst["reached_fps"]
        print(
            f"{name}: burst of {burst['reached_frames']} frames at "
            + (
                "n/a"
                if fps is None
                else f"{fps:.0f} fps, {burst['reached_gbps']:.1f} GB/s"
            )
            + f" (asked {burst['burst_fps']:.0f} fps)"
        )
    for problem in res["errors"]:
        print(f"{name}: problem: {problem}")
    growth = mem.get("anon_growth_bytes")
    print(
        f"{name}: peak RSS {mem['peak_rss_bytes'] / 2**20:.0f} MiB, peak dirty "
        f"{(mem['peak_dirty_bytes'] or 0) / 2**20:.0f} MiB, anon growth "
        + ("n/a" if growth is None else f"{growth / 2**20:+.1f} MiB")
        + f" -> {'OK' if res['ok'] else 'FAILED'}"
    )


EXIT_OK, EXIT_FAILED, EXIT_BAD_INPUT = 0, 1, 2
_EXIT_CODES = """exit codes (inspect, recover):
  0  done
  1  the input was read, but the command could not finish: an output
     exists or cannot be written, nothing to recover (no frame on disk,
     journal gone)
  2  bad input: no such file, a folder, an empty or malformed file, a file
     that claims more than it holds (sizes, tag counts, planes), XML with a
     DOCTYPE; one line on stderr names the file and the problem (JSON on
     stdout with --json); MESOWRITER_TRACEBACK=1 shows the traceback"""


def _failed(args: argparse.Namespace, verb: str, exc: BaseException) -> int:
    """Say in one line why `verb` failed on args.path; return the exit code.

    JSON on stdout with --json. Bad input (exit 2) is anything the file's
    content caused: BadFileError from the checks, and any other exception
    raised while reading it (IndexError, struct.error, a parse error, ...),
    since a malformed file must never end in a traceback. Exit 1 is for
    failures not caused by the input (an output that exists or cannot be
    written, nothing to recover).
    """
    import os

    from mesowriter._untrusted import BadFileError

    if isinstance(exc, BadFileError):
        code, message = EXIT_BAD_INPUT, str(exc)
    elif isinstance(exc, OSError) or type(exc).__name__ == "RecoverError":
        code, message = EXIT_FAILED, str(exc)  # the input was checked first
    else:  # something in the file broke a reader: still one line
        code = EXIT_BAD_INPUT
        message = f"{args.path}: malformed file ({type(exc).__name__}: {exc})"
    message = " ".join(message.split())[:2000]  # one line, whatever it held
    if args.path not in message:
        message = f"{args.path}: {message}"
    if os.environ.get("MESOWRITER_TRACEBACK"):
        import traceback

        traceback.print_exception(exc)
    if args.json:
        print(json.dumps({"path": args.path, "error": message, "exit": code}))
    else:
        print(f"cannot {verb}: {message}", file=sys.stderr)
    return code


def _check_recover_input(path: str) -> None:
    """What `recover` needs checked before it touches anything: a regular
    file that is a TIFF, and (if there is one) a journal header that could be
    real. The IFD chain is walked without `strict`: a crash may leave a
    broken tail, which recover cuts; its valid prefix is what counts."""
    import os

    from mesowriter._spec import journal_path
    from mesowriter._untrusted import read_journal_header, read_tiff

    read_tiff(path, strict=False)
    journal = journal_path(path)
    if os.path.exists(journal) and not _never_durable(journal):
        read_journal_header(journal)


def _never_durable(journal: str) -> bool:
    """An empty journal, or one of zeros: a power cut before its first sync
    (recover goes by the file's header block, its frames' metadata lost)."""
    import os
    import stat

    st = os.stat(journal)  # follows a link: a regular file is all we read
    if not stat.S_ISREG(st.st_mode):
        return False  # read_journal_header refuses it with the reason
    if st.st_size == 0:
        return True
    with open(journal, "rb") as fh:
        head = fh.read(4096)
    return not head.strip(b"\x00")


def _recover(args: argparse.Namespace) -> int:
    from mesowriter._recover import recover

    try:
        _check_recover_input(args.path)
        result = recover(args.path, overwrite_sidecar=not args.keep_sidecar)
    except Exception as exc:
        return _failed(args, "recover", exc)
    if args.json:
        print(json.dumps(dataclasses.asdict(result)))
        return 0
    print(f"data:     {result.path}")
    print(
        f"frames:   {result.frames_declared} declared "
        f"({result.frames_on_disk} linked in the file, "
        f"{result.frames_in_journal} journalled)"
    )
    if result.recovered:
        print(f"sidecar:  {result.sidecar}")
        print(f"report:   {result.report}")
    for note in result.notes:
        print(f"note:     {note}")
    return 0


def _inspect(args: argparse.Namespace) -> int:
    """Print a file's summary; with --sidecar, rebuild its sidecar from the XML."""
    from mesowriter._inspect import export_sidecar, inspect_file
    from mesowriter._untrusted import check_input_file

    try:
        check_input_file(args.path)
        info = inspect_file(args.path)
        if args.sidecar:
            data = export_sidecar(args.path, args.sidecar, overwrite=args.overwrite)
            info["sidecar_exported"] = args.sidecar
            info["sidecar_frames"] = sum(len(v) for v in data.values())
    except Exception as exc:
        return _failed(args, "inspect", exc)
    if args.json:
        print(json.dumps(info))
        return 0
    for key, value in info.items():
        if key == "dropped_indices" and value and len(value) > 20:
            value = f"{value[:20]} ... ({len(value)} in all)"
        print(f"{key + ':':20} {value}")
    return 0


def _doctor(args: argparse.Namespace) -> int:
    """Check a rig against a planned run; exit 0 ok, 1 warn, 2 fail, 3 no check."""
    from mesowriter.doctor import (
        EXIT_CANNOT_CHECK,
        EXIT_INTERRUPTED,
        Plan,
        PlanError,
        parse_shape,
        run_doctor,
    )

    def gib(value: float, option: str) -> int:
        if not (math.isfinite(value) and value >= 0):
            raise PlanError(f"{option} must be a number >= 0, got {value}")
        return int(value * 2**30)

    def say(message: str) -> None:
        print(f"doctor: {message}", file=sys.stderr, flush=True)

    try:
        plan = Plan(
            shape=parse_shape(args.shape),
            dtype=args.dtype,
            fps=args.fps,
            minutes=args.minutes,
            streams=args.streams,
            video_streams=args.video_streams,
            ring_bytes=gib(args.ring_gib, "--ring-gib"),
        )
        report = run_doctor(
            args.folder,
            plan,
            test_bytes=gib(args.test_gib, "--test-gib"),
            rounds=args.rounds,
            progress=None if args.json else say,
        )
    except PlanError as exc:
        if args.json:
            print(json.dumps({"error": str(exc)}))
        print(f"mesowriter doctor: error: {exc}", file=sys.stderr)
        return EXIT_CANNOT_CHECK
    except (KeyboardInterrupt, SystemExit):  # Ctrl-C; SIGTERM (see run_doctor)
        print("mesowriter doctor: interrupted; its files were removed", file=sys.stderr)
        return EXIT_INTERRUPTED
    print(json.dumps(report.to_json()) if args.json else report.render())
    return report.exit_code


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mesowriter", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    demo = sub.add_parser("demo", help="DemoCamera burst through mesowriter")
    demo.add_argument("--out", default="demo-output")
    demo.add_argument("--frames", type=int, default=300)
    demo.add_argument("--size", type=int, default=2048)
    demo.add_argument("--json", action="store_true")
    demo.set_defaults(func=_demo)
    bench = sub.add_parser("bench", help="run the benchmark suite")
    bench.add_argument("rest", nargs=argparse.REMAINDER)
    bench.set_defaults(func=_bench)
    rec = sub.add_parser(
        "recover",
        help="finalise an OME-TIFF left by a dead acquisition",
        epilog=_EXIT_CODES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    rec.add_argument("path", help="the data file (its journal lies beside it)")
    rec.add_argument(
        "--keep-sidecar",
        action="store_true",
        help="do not replace an existing sidecar",
    )
    rec.add_argument("--json", action="store_true")
    rec.set_defaults(func=_recover)
    ins = sub.add_parser(
        "inspect",
        help="summarise an OME-TIFF or video file",
        epilog=_EXIT_CODES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ins.add_argument("path", help="the data file")
    ins.add_argument(
        "--sidecar", metavar="OUT", help="rebuild the sidecar from the OME-XML alone"
    )
    ins.add_argument("--overwrite", action="store_true", help="replace OUT")
    ins.add_argument("--json", action="store_true")
    ins.set_defaults(func=_inspect)
    st = sub.add_parser("stress", help="soak, multi-camera and burst runs")
    st.add_argument(
        "scenario", nargs="?", default="all", choices=["all", "soak", "multi", "burst"]
    )
    st.add_argument("--minutes", type=float, default=10.0, help="soak length")
    st.add_argument("--fps", type=float, default=100.0, help="soak frame rate")
    st.add_argument("--seconds", type=float, default=30.0, help="multi length")
    st.add_argument(
        "--size",
        type=int,
        default=None,
        help="frame edge (default: soak 512, multi and burst 2048)",
    )
    st.add_argument("--dir", default=None, help="where files go (on the disk)")
    st.add_argument("--keep", action="store_true", help="keep the files")
    st.add_argument("--json", action="store_true")
    st.set_defaults(func=_stress)
    _add_doctor(sub)
    return parser


# The planned run (defaults: the README's headline camera for an hour) and
# the size of the speed test.
_DOCTOR_OPTIONS: tuple[tuple[str, type, Any, str], ...] = (
    ("--shape", str, "2048x2048", "frame HEIGHTxWIDTH"),
    ("--dtype", str, "uint16", "pixel type (numpy name)"),
    ("--fps", float, 100.0, "frames per second"),
    ("--minutes", float, 60.0, "length of the run"),
    ("--streams", int, 1, "TIFF cameras of that shape and rate"),
    ("--video-streams", int, 0, "video cameras beside them (about a core each)"),
    ("--ring-gib", float, 1.0, "shared-memory ring per stream"),
    ("--test-gib", float, 2.0, "GiB written each way to measure speed; 0 skips"),
    ("--rounds", int, 4, "alternating rounds of the speed test"),
)


def _add_doctor(sub: Any) -> None:
    doc = sub.add_parser(
        "doctor",
        help="check a rig against a planned run before it starts",
        description="Check a rig in the folder a run will write to: direct I/O "
        "and write speed, free space, shared memory and RAM for the rings, "
        "codecs, cores, the planned data rate, and a short real run read back. "
        "Everything it writes is removed.",
        epilog="exit codes: 0 ok, 1 warn (the run should work; read the "
        "reasons), 2 fail (the planned run would not fit: space, rate, memory; "
        "or a check failed), 3 nothing checked (bad option, missing folder), "
        "130 interrupted (Ctrl-C, SIGTERM)",
    )
    doc.one_line_exit = 3  # EXIT_CANNOT_CHECK, without importing the doctor
    doc.add_argument(
        "folder", nargs="?", default=".", help="where the run will write (default: .)"
    )
    for flag, kind, default, text in _DOCTOR_OPTIONS:
        doc.add_argument(flag, type=kind, default=default, help=f"{text} ({default})")
    doc.add_argument("--json", action="store_true", help="one JSON object on stdout")
    doc.set_defaults(func=_doctor, parser=doc)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["bench"]:  # the suite parses its own options (--quick, ...)
        return _bench(argparse.Namespace(rest=argv[1:]))
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra:  # as parse_args, but from the subcommand's parser (its exit code)
        getattr(args, "parser", parser).error(
            f"unrecognized arguments: {' '.join(extra)}"
        )
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
