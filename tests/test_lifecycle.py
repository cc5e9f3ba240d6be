"""Writers that are never closed, as mesofield uses them, keep nothing alive.

A GUI session runs acquisitions all day and never closes its writers. The
process-wide service keeps at most one idle writer process and one warm
pool between runs (so the next run starts in milliseconds), reaps both
after its idle time, and leaves nothing at interpreter exit: no process, no
shared memory, no resource-tracker warning.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tifffile
import useq

ROOT = Path(__file__).resolve().parent.parent

SESSION = """
import gc, json, os, sys, time
import psutil, useq
from pymmcore_plus import CMMCorePlus
import mesowriter
from mesowriter import CustomWriter

out = sys.argv[1]
mesowriter.configure_shared_service(idle_timeout=float(sys.argv[2]))
core = CMMCorePlus()
core.loadSystemConfiguration()
core.setProperty("Camera", "OnCameraCCDXSize", 64)
core.setProperty("Camera", "OnCameraCCDYSize", 48)
core.setExposure(1)
seq = useq.MDASequence(time_plan={"interval": 0, "loops": 20})

def writers():
    me = psutil.Process()
    return [p.pid for p in me.children(recursive=True)
            if "resource_tracker" not in " ".join(p.cmdline())]

def ours():
    return sorted(n for n in os.listdir("/dev/shm") if n.startswith("psm_"))

start = ours()
after = []
for i in range(10):
    writer = CustomWriter(os.path.join(out, f"run{i}.ome.tif"))  # never closed
    thread = core.run_mda(seq, output=writer, block=False)
    thread.join()
    del writer
    gc.collect()
    after.append({"writers": len(writers()), "blocks": len(set(ours()) - set(start))})
deadline = time.monotonic() + 30
while (writers() or set(ours()) - set(start)) and time.monotonic() < deadline:
    time.sleep(0.1)
idle = {"writers": len(writers()), "blocks": len(set(ours()) - set(start)),
        "service_running": mesowriter.shared_service().running}
# the rig is used again after the reap: it starts again by itself
writer = CustomWriter(os.path.join(out, "again.ome.tif"))
core.run_mda(seq, output=writer, block=False).join()
print(json.dumps({"after": after, "idle": idle}), flush=True)
"""


def test_ten_runs_with_writers_never_closed_leave_nothing(tmp_path: Path) -> None:
    script = tmp_path / "session.py"
    script.write_text(SESSION)
    before = {n for n in os.listdir("/dev/shm") if n.startswith("psm_")}
    out = subprocess.run(
        [sys.executable, str(script), str(tmp_path), "1.5"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout.strip().splitlines()[-1])
    for state in result["after"]:  # between runs: warm, but never more
        assert state["writers"] <= 1 and state["blocks"] <= 1, result
    assert result["idle"] == {"writers": 0, "blocks": 0, "service_running": False}
    # at exit (the last run's warm pool and worker still up): nothing left
    assert "resource_tracker" not in out.stderr and "leaked" not in out.stderr
    after = {n for n in os.listdir("/dev/shm") if n.startswith("psm_")}
    assert not (after - before)
    for i in [*range(10), "again"]:
        path = (
            tmp_path / f"run{i}.ome.tif" if i != "again" else tmp_path / "again.ome.tif"
        )
        with tifffile.TiffFile(path) as tf:
            assert len(tf.pages) == 20
        report = json.loads(Path(f"{path}_report.json").read_bytes())
        assert report["frames_written"] == 20 and report["frames_dropped"] == 0


def test_a_warm_start_takes_milliseconds(tmp_path: Path) -> None:
    # behaviour, not timing (timing is make bench): the second stream gets the
    # first one's warm region back, in the same block, cursors at zero
    from mesowriter import WriterService

    with WriterService(ring_bytes=16 << 20) as svc:
        a = svc.open_stream(tmp_path / "a.ome.tif", shape=(32, 32), dtype="u2")
        block, offset = a.ring.layout.block, a.ring.layout.offset
        a.write(np.ones((32, 32), np.uint16))
        a.close()
        b = svc.open_stream(tmp_path / "b.ome.tif", shape=(16, 16), dtype="u2")
        assert (b.ring.layout.block, b.ring.layout.offset) == (block, offset)
        assert (b.ring.write_cursor, b.ring.read_cursor, b.ring.received) == (0, 0, 0)
        # all warm rings busy: a stream still opens, with a block of its own
        c = svc.open_stream(tmp_path / "c.ome.tif", shape=(32, 32), dtype="u2")
        assert c.ring.layout.block != block
        for s, shape in ((b, (16, 16)), (c, (32, 32))):
            for i in range(5):
                s.write(np.full(shape, i, np.uint16))
            assert s.close().frames_written == 5
        assert len(svc.open_seconds) == 3


@pytest.mark.parametrize("depth", [1, 3])
def test_the_write_depth_setting_is_honoured(tmp_path: Path, depth: int) -> None:
    from mesowriter import WriterService

    with WriterService(ring_bytes=32 << 20, write_depth=depth) as svc:
        s = svc.open_stream(tmp_path / "d.ome.tif", shape=(256, 256), dtype="u2")
        for i in range(40):
            s.write(np.full((256, 256), i, np.uint16))
        report = s.close()
    assert report.sink["write_depth"] == depth and report.frames_written == 40
    with pytest.raises(ValueError, match="write_depth"):
        WriterService(write_depth=0)


def test_live_objects_in_the_sequence_metadata_keep_the_layout(
    core: object, tmp_path: Path
) -> None:
    import threading
    import warnings

    from mesowriter import CustomWriter

    class Hardware:  # mesofield puts its live hardware objects here
        def __init__(self) -> None:
            self.lock = threading.Lock()  # nothing JSON can hold

    seq = useq.MDASequence(
        channels=["DAPI", "FITC"],
        time_plan={"interval": 0, "loops": 2},
        metadata={"hardware": Hardware(), "subject": "m1"},
    )
    path = tmp_path / "live.ome.tif"
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no warning per run
        with CustomWriter(path) as writer:
            core.mda.run(seq, output=writer)  # type: ignore[attr-defined]
    with tifffile.TiffFile(path) as tf:
        assert tf.series[0].axes == "TCYX" and tf.series[0].shape[:2] == (2, 2)
        assert 'Name="DAPI"' in (tf.ome_metadata or "")
    report = writer.reports["p0"]
    assert any("sequence's metadata" in n for n in report.notes)
