"""The command line, run as a user runs it: real subprocesses, exit codes, files."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _run(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "mesowriter", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_demo_json_exit_zero(tmp_path: Path) -> None:
    p = _run(
        "demo", "--frames", "20", "--size", "256", "--json", "--out", str(tmp_path)
    )
    assert p.returncode == 0, p.stderr
    rep = json.loads(p.stdout.strip().splitlines()[-1])
    assert rep["frames_written"] == 20 and rep["frames_dropped"] == 0
    assert Path(rep["path"]).is_file()


def test_demo_live_view_ends_with_the_final_figures(tmp_path: Path) -> None:
    p = _run("demo", "--frames", "20", "--size", "256", "--out", str(tmp_path))
    assert p.returncode == 0, p.stderr
    # the live table (stderr) ends on the finished stream: 20 of 20 written
    last_row = [line for line in p.stderr.splitlines() if "demo p0" in line][-1]
    cells = [c.strip() for c in last_row.strip("│ ").split("│")]
    assert cells[:3] == ["demo p0", "20/20", "20"] and cells[6] == "0", cells
    assert float(cells[3]) > 0  # the run's fps, not the last sample's
    out = p.stdout
    assert "frames:   20/20 written, 0 dropped, finish: completed" in out
    assert "from the first frame to the closed file" in out


def test_stress_burst_json(tmp_path: Path) -> None:
    p = _run("stress", "burst", "--size", "128", "--json", "--dir", str(tmp_path))
    assert p.returncode == 0, p.stderr
    res = json.loads(p.stdout)["burst"]
    assert res["ok"] and res["frames_dropped"] == 0
    burst = res["burst"]
    assert burst["ring_high_water"] >= 1
    # 20 fps for 5 s plus the burst frames: the burst really happened
    assert res["cameras"][0]["frames_sent"] >= 95 + 0.9 * burst["burst_frames"]
    assert not list(tmp_path.iterdir())  # files removed without --keep


def test_bench_quick_writes_results(tmp_path: Path) -> None:
    p = _run(
        "bench",
        "--quick",
        "--gib",
        "0.03",
        "--size",
        "256",
        "--only",
        "ad",
        "--cost-frames",
        "30",
        "--dir",
        str(tmp_path),
        "--out",
        str(tmp_path / "out"),
    )
    assert p.returncode == 0, p.stdout + p.stderr
    res = json.loads((tmp_path / "out" / "results.json").read_text())
    assert res["a"]["subjects"]["mesowriter"]["verify_ok"]
    assert res["a"]["mesowriter_gbps"] > 0
    assert res["a"]["raw_gbps"] > 0 and res["d"]["bare_memcpy_s"] > 0
    assert (tmp_path / "out" / "throughput.png").stat().st_size > 1000
    assert (tmp_path / "out" / "results.md").read_text().count("|") > 8
