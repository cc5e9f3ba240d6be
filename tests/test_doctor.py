"""`mesowriter doctor`, run as a lab runs it: real folders, real writes, real exits.

Each run is a subprocess; its JSON or table is checked here against what
this test measures on its own (the filesystem `df` names, what an
`AlignedFile` says about direct I/O, what cv2 opens, the free space).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import pytest

from mesowriter._platform import AlignedFile
from mesowriter.doctor import EXIT_CODES, Check, Plan, PlanError, Report, parse_shape
from mesowriter.doctor._checks import data_rate, free_space, size
from mesowriter.doctor._disk import Series, Speed
from mesowriter.doctor._plan import METADATA_BYTES_PER_FRAME
from mesowriter.sinks import sink_class

ROOT = Path(__file__).resolve().parents[1]
CHECKS = [
    "filesystem",
    "direct_io",
    "write_speed",
    "free_space",
    "shared_memory",
    "memory",
    "codec_h264",
    "codec_mp4v",
    "codec_mjpg",
    "codec_ffv1_16bit",
    "cores",
    "data_rate",
    "real_run",
]
SMALL = ["--shape", "256x256", "--fps", "200", "--minutes", "1"]
QUICK = ["--test-gib", "0.25"]


def doctor(*args: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "mesowriter", "doctor", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def doctor_json(*args: str) -> tuple[int, dict[str, Any]]:
    p = doctor(*args, "--json")
    assert p.stdout.strip(), p.stderr
    return p.returncode, json.loads(p.stdout)


def fs_type(path: Path) -> str:
    out = subprocess.run(
        ["df", "--output=fstype", str(path)], capture_output=True, text=True, check=True
    )
    return out.stdout.split()[-1]


def direct_here(folder: Path) -> bool:
    """What an AlignedFile says about direct I/O in `folder`, asked by the test."""
    path = folder / "test-direct.bin"
    f = AlignedFile(str(path), mode="create")
    try:
        return f.direct
    finally:
        f.close()
        path.unlink()


def opens_in_cv2(folder: Path, tag: str, name: str) -> bool:
    """Whether cv2 writes a frame of `tag` into a file with some bytes in it."""
    import cv2

    path = folder / name
    try:
        for color in (False, True):
            fourcc = cv2.VideoWriter.fourcc(*tag)
            w = cv2.VideoWriter(
                str(path), cv2.CAP_FFMPEG, fourcc, 10.0, (64, 64), color
            )
            if w.isOpened():
                w.write(np.zeros((64, 64, 3) if color else (64, 64), np.uint8))
            w.release()
            if path.exists() and path.stat().st_size > 0:
                return True
        return False
    finally:
        path.unlink(missing_ok=True)


@pytest.fixture
def disk_folder(tmp_path: Path) -> Iterator[Path]:
    """A folder on a real disk: tmp_path if it is on one, else one in the repo."""
    if fs_type(tmp_path) not in ("tmpfs", "ramfs", "overlay"):
        yield tmp_path
        return
    folder = Path(tempfile.mkdtemp(prefix="doctor-test-", dir=ROOT))
    try:
        yield folder
    finally:
        shutil.rmtree(folder)


@pytest.fixture
def shm_folder() -> Iterator[Path]:
    if not Path("/dev/shm").is_dir() or fs_type(Path("/dev/shm")) != "tmpfs":
        pytest.skip("needs /dev/shm on tmpfs")
    if shutil.disk_usage("/dev/shm").free < 4 << 30:
        pytest.skip("/dev/shm has no room for the small plan")
    folder = Path(tempfile.mkdtemp(prefix="mesowriter-doctor-test-", dir="/dev/shm"))
    try:
        yield folder
    finally:
        shutil.rmtree(folder)


def by_name(result: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["name"]: c for c in result["checks"]}


def assert_consistent(code: int, result: dict[str, Any]) -> None:
    """Verdict = the worst check, exit code = the verdict's, reasons = the bad lines."""
    statuses = [c["status"] for c in result["checks"]]
    assert set(statuses) <= {"ok", "warn", "fail"}
    worst = "fail" if "fail" in statuses else "warn" if "warn" in statuses else "ok"
    assert result["verdict"] == worst
    assert code == {"ok": 0, "warn": 1, "fail": 2}[worst]
    bad = [c for c in result["checks"] if c["status"] != "ok"]
    assert len(result["reasons"]) == len(bad)
    assert [c["name"] for c in result["checks"]] == CHECKS


# -- real runs ---------------------------------------------------------------------
def test_disk_folder(disk_folder: Path) -> None:
    kind = fs_type(disk_folder)
    free_before = shutil.disk_usage(disk_folder).free
    code, result = doctor_json(str(disk_folder), *SMALL, *QUICK)
    assert_consistent(code, result)
    checks, fig = by_name(result), result["figures"]
    assert not [c for c in result["checks"] if c["status"] == "fail"], result["reasons"]
    assert list(disk_folder.iterdir()) == []  # nothing left behind

    assert fig["filesystem"]["fstype"] == kind
    assert fig["direct_io"]["direct"] is direct_here(disk_folder)
    if kind == "ext4":
        assert fig["direct_io"]["direct"] is True
        assert checks["direct_io"]["status"] == "ok"

    speed = fig["write_speed"]
    assert speed["round_bytes"] == (1 << 28) // 4
    for way in ("direct", "buffered"):
        rounds = speed[way]["rounds_gbps"]
        assert len(rounds) == 4 and all(0.01 < g < 200 for g in rounds), speed
        assert (
            speed[way]["min_gbps"]
            <= speed[way]["median_gbps"]
            <= speed[way]["max_gbps"]
        )

    plan = fig["plan"]
    assert plan["frame_bytes"] == 256 * 256 * 2
    assert plan["rate_bytes_per_second"] == 256 * 256 * 2 * 200
    assert plan["run_bytes"] > 12_000 * 256 * 256 * 2
    assert abs(fig["free_space"]["free_bytes"] - free_before) < 4 << 30
    assert fig["free_space"]["needed_bytes"] == plan["run_bytes"]
    assert fig["memory"]["total_bytes"] == psutil.virtual_memory().total
    assert fig["cores"]["logical"] == os.cpu_count()
    headroom = speed["direct"]["median_gbps"] * 1e9 / plan["rate_bytes_per_second"]
    assert fig["data_rate"]["headroom"] == pytest.approx(headroom, rel=0.01)

    run = fig["real_run"]
    assert run["frames"] == 300 and run["frames_written"] == 300
    assert run["frames_read_back"] == 300 and run["frames_mismatched"] == 0
    assert run["direct_io"] is fig["direct_io"]["direct"]
    assert checks["real_run"]["status"] in ("ok", "warn")

    assert fig["codec_mp4v"]["opens"] is opens_in_cv2(disk_folder, "mp4v", "t.mp4")
    assert fig["codec_h264"]["opens"] is opens_in_cv2(disk_folder, "avc1", "t.mp4")
    assert list(disk_folder.iterdir()) == []


def test_tmpfs_folder_reports_what_aligned_file_says(shm_folder: Path) -> None:
    code, result = doctor_json(str(shm_folder), *SMALL, *QUICK)
    assert_consistent(code, result)
    checks, fig = by_name(result), result["figures"]
    direct = direct_here(shm_folder)  # this kernel may well accept O_DIRECT here
    assert fig["direct_io"]["direct"] is direct
    assert checks["direct_io"]["status"] == ("ok" if direct else "warn")
    assert fig["real_run"]["direct_io"] is direct
    assert fig["filesystem"]["fstype"] == "tmpfs"
    assert checks["filesystem"]["status"] == "warn"
    assert "in memory" in checks["filesystem"]["reason"]
    assert result["verdict"] == "warn" and code == 1
    assert any(r.startswith("filesystem:") for r in result["reasons"])
    assert list(shm_folder.iterdir()) == []


def test_plan_that_does_not_fit_fails_and_stale_files_go(disk_folder: Path) -> None:
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = disk_folder / f".mesowriter-doctor-{dead.pid}-abc"
    live = disk_folder / f".mesowriter-doctor-{os.getpid()}-def"
    for folder in (stale, live):
        folder.mkdir()
        (folder / "speed-0.bin").write_bytes(b"x" * 4096)
    p = doctor(str(disk_folder), *SMALL[:4], "--minutes", "1e9", "--test-gib", "0")
    assert p.returncode == 2, p.stderr
    lines = p.stdout.splitlines()
    space = next(line for line in lines if line.startswith("free space"))
    assert space.split()[2] == "FAIL" and "does not fit" in space
    assert "verdict: FAIL (exit code 2)" in lines
    assert any(line.startswith("  - free space: does not fit") for line in lines)
    assert any(line.startswith("write speed") and " WARN " in line for line in lines)
    for title in ("direct I/O", "shared memory", "RAM", "H.264", "cores", "real run"):
        assert any(line.startswith(title) for line in lines), title
    assert f"note: removed {stale.name}, left by a doctor that died" in lines
    assert not stale.exists() and live.exists()
    shutil.rmtree(live)
    assert list(disk_folder.iterdir()) == []


def test_rate_and_memory_beyond_the_machine_fail(disk_folder: Path) -> None:
    ram = psutil.virtual_memory().total
    if ram > 48 << 30:  # rings of 2048x2048 frames stop at 4096 slots (32 GiB)
        pytest.skip("this machine holds two of the largest rings")
    code, result = doctor_json(
        str(disk_folder),
        *("--shape", "2048x2048", "--fps", "20000", "--minutes", "0.0002"),
        *("--streams", "2", "--ring-gib", "64", *QUICK),
    )
    assert_consistent(code, result)
    checks, fig = by_name(result), result["figures"]
    assert code == 2
    assert fig["data_rate"]["headroom"] < 1
    assert checks["data_rate"]["status"] == "fail"
    assert fig["shared_memory"]["rings_bytes"] > ram
    assert checks["memory"]["status"] == "fail"
    assert checks["shared_memory"]["status"] == "fail"
    assert checks["free_space"]["status"] == "ok"  # 2 x 240 frames of 8 MiB
    assert fig["real_run"]["streams"] == 2
    assert fig["real_run"]["frames_mismatched"] == 0
    assert list(disk_folder.iterdir()) == []


@pytest.mark.parametrize(
    ("sig", "file", "extra"),
    [
        (signal.SIGINT, "speed-0.bin", ["--test-gib", "2", "--rounds", "2"]),
        (signal.SIGTERM, "trial-0.ome.tiff", ["--test-gib", "0", "--fps", "20"]),
    ],
)
def test_interrupted_doctor_removes_its_files(
    disk_folder: Path, sig: signal.Signals, file: str, extra: list[str]
) -> None:
    command = ["doctor", str(disk_folder), "--shape", "256x256", *extra]
    proc = subprocess.Popen(
        [sys.executable, "-m", "mesowriter", *command],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 60
        while not list(disk_folder.glob(f".mesowriter-doctor-*/{file}")):
            assert proc.poll() is None, "the doctor ended before it got there"
            assert time.monotonic() < deadline, "the doctor never got there"
            time.sleep(0.005)
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130, err
    assert "interrupted; its files were removed" in err
    assert list(disk_folder.iterdir()) == []


# -- the command line refuses what it cannot check ----------------------------------
@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["/nonexistent/mesowriter-doctor"], "does not exist"),
        ([".", "--shape", "12by7"], "--shape must be HEIGHTxWIDTH"),
        ([".", "--shape", "0x512"], "--shape must be positive"),
        ([".", "--fps", "abc"], "argument --fps: invalid float value"),
        ([".", "--dtype", "complex64"], "TIFF cannot hold pixels of dtype complex64"),
        ([".", "--streams", "0"], "--streams must be at least 1"),
        ([".", "--bogus"], "unrecognized arguments: --bogus"),
    ],
)
def test_cannot_check_is_one_line_and_exit_3(args: list[str], message: str) -> None:
    p = doctor(*args)
    assert p.returncode == 3
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], p.stderr
    assert lines[0].startswith("mesowriter doctor: error: ")
    assert p.stdout == ""


def test_cannot_check_with_json_says_so_on_stdout(tmp_path: Path) -> None:
    missing = tmp_path / "nope"
    p = doctor(str(missing), "--json")
    assert p.returncode == 3
    assert json.loads(p.stdout) == {"error": f"folder {missing} does not exist"}


# -- the parts, in this process ---------------------------------------------------
def test_plan_counts_the_writers_headers_and_metadata() -> None:
    plan = Plan(shape=(512, 640), dtype="uint16", fps=30, minutes=2, streams=3)
    assert plan.frames == 3600 and plan.frame_bytes == 512 * 640 * 2
    assert plan.rate == 3 * 512 * 640 * 2 * 30
    data = sink_class("ome-tiff").space_needed(plan.spec(3600))
    assert data > 3600 * plan.frame_bytes  # headers and IFDs are counted
    assert plan.run_bytes == 3 * (data + 3600 * METADATA_BYTES_PER_FRAME)
    with pytest.raises(PlanError, match="must be a positive number"):
        Plan(fps=float("nan"))


@pytest.mark.parametrize(
    ("text", "shape"),
    [("2048x2048", (2048, 2048)), (" 480X640 ", (480, 640)), ("3\u00d75", (3, 5))],
)
def test_parse_shape(text: str, shape: tuple[int, int]) -> None:
    assert parse_shape(text) == shape


def test_verdict_is_the_worst_check_and_fails_come_first() -> None:
    def check(name: str, status: str) -> Check:
        return Check(name, name.upper(), status, "fig", f"{name} why")  # type: ignore[arg-type]

    report = Report(
        "/x", Plan(), [check("a", "ok"), check("b", "warn"), check("c", "fail")], 1.0
    )
    assert report.verdict == "fail" and report.exit_code == EXIT_CODES["fail"] == 2
    assert report.reasons == ["C: c why", "B: b why"]
    report.checks = report.checks[:2]
    assert (report.verdict, report.exit_code) == ("warn", 1)
    report.checks = report.checks[:1]
    assert (report.verdict, report.exit_code, report.reasons) == ("ok", 0, [])
    assert "verdict: OK (exit code 0)" in report.render()


@pytest.mark.parametrize(
    ("n", "text"),
    [
        (512, "0.5 KiB"),
        (1 << 30, "1.0 GiB"),
        (1020 << 20, "1020 MiB"),
        (3 << 40, "3.0 TiB"),
    ],
)
def test_size(n: int, text: str) -> None:
    assert size(n) == text


def speed_of(direct: list[float] | None, buffered: list[float]) -> Speed:
    return Speed(
        direct=Series(direct) if direct is not None else None,
        buffered=Series(buffered),
        round_bytes=1 << 26,
        block_bytes=1 << 25,
        depth=4,
        seconds=1.0,
    )


@pytest.mark.parametrize(
    ("direct", "buffered", "status", "words"),
    [
        ([2.0, 2.1, 2.2], [1.0], "ok", "slowest round 2.0x"),
        ([1.2, 1.3, 1.4], [1.0], "warn", "less than 1.5x headroom"),
        ([0.9, 2.0, 2.1], [1.0], "warn", "the slowest round (0.90 GB/s)"),
        ([0.5, 0.6, 0.7], [0.4], "fail", "the disk wrote 0.60 GB/s (direct)"),
        ([0.5, 0.6, 0.7], [2.0], "fail", "open_stream(direct_io=False) may suit"),
        (None, [0.5], "fail", "the disk wrote 0.50 GB/s (buffered)"),
    ],
)
def test_data_rate_thresholds(
    direct: list[float] | None, buffered: list[float], status: str, words: str
) -> None:
    plan = Plan(shape=(1000, 1000), dtype="uint8", fps=1000, minutes=1)  # 1 GB/s
    line = data_rate(plan, speed_of(direct, buffered))
    assert line.status == status and words in line.reason, line.reason


@pytest.mark.parametrize(
    ("factor", "status"), [(2, "ok"), (1.05, "warn"), (0.9, "fail")]
)
def test_free_space_thresholds(
    monkeypatch: pytest.MonkeyPatch, factor: float, status: str
) -> None:
    plan = Plan(shape=(1024, 1024), dtype="uint16", fps=100, minutes=7)
    free = int(plan.run_bytes * factor)
    usage = shutil.disk_usage(ROOT)._replace(free=free)
    monkeypatch.setattr(shutil, "disk_usage", lambda _path: usage)
    line = free_space(plan, str(ROOT))
    assert line.status == status
    assert line.data["minutes_that_fit"] == pytest.approx(7 * factor, rel=1e-6)
