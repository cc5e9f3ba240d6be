"""An acquisition for the recover tests, run as a real child process.

    python tests/_recover_child.py PATH STOP_AFTER SENT

A `CustomWriter` over Micro-Manager's DemoCamera (64x48 uint16) writes a
time-lapse of 2 positions x 2 channels (DAPI, FITC) x 3 z planes with
`axis_order="tpcz"` (12 frames a time point) to PATH, connected on the
acquisition thread. Once STOP_AFTER frames have been handed to the writer,
the acquisition thread waits until the writer processes have committed
every one of them (pixels durable, journalled), saves the frames it
delivered to SENT (an .npz: per position key its frames and their t, c, z
indices), prints `READY <writer pid> ...` and blocks: the test then
SIGKILLs the whole process group (this process is a session leader), so no
process survives to finalise anything. A deterministic crash: the files
hold exactly the first STOP_AFTER frames of the run.
"""

from __future__ import annotations

import sys
import time
from typing import Any

import numpy as np

SHAPE = (48, 64)
LOOPS = 10


def sequence() -> Any:
    import useq

    return useq.MDASequence(
        stage_positions=[(0, 0, 0), (10, 10, 0)],
        channels=["DAPI", "FITC"],
        z_plan={"range": 2, "step": 1},
        time_plan={"interval": 0, "loops": LOOPS},
        axis_order="tpcz",
    )


def main() -> None:
    from pymmcore_plus import CMMCorePlus

    from mesowriter import CustomWriter

    path, stop_after, sent_path = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    core = CMMCorePlus()
    core.loadSystemConfiguration()
    core.setProperty("Camera", "OnCameraCCDXSize", SHAPE[1])
    core.setProperty("Camera", "OnCameraCCDYSize", SHAPE[0])
    core.setProperty("Camera", "Mode", "Noise")  # every frame differs
    core.setExposure(1)
    writer = CustomWriter(path, ring_bytes=64 << 20)
    sent: dict[str, list[tuple[np.ndarray, tuple[int, int, int]]]] = {}

    def stop(img: np.ndarray, event: Any, meta: Any = None) -> None:
        key = event.pos_name or f"p{event.index.get('p', 0)}"
        idx = event.index
        sent.setdefault(key, []).append(
            (img.copy(), (idx.get("t", 0), idx.get("c", 0), idx.get("z", 0)))
        )
        if sum(len(v) for v in sent.values()) < stop_after:
            return
        deadline = time.monotonic() + 30
        streams = writer._streams
        while (
            any(streams[k]._ring.read_cursor < len(v) for k, v in sent.items())
            and time.monotonic() < deadline
        ):
            time.sleep(0.01)
        np.savez(
            sent_path,
            **{f"{k}_frames": np.stack([f for f, _ in v]) for k, v in sent.items()},
            **{f"{k}_index": np.array([i for _, i in v]) for k, v in sent.items()},
        )
        pids = " ".join(str(p) for p in writer.service.workers)
        print(f"READY {pids}", flush=True)
        while True:
            time.sleep(1)

    with writer.attach(core):
        core.mda.events.frameReady.connect(stop)  # after the writer's slot
        core.mda.run(sequence())
    print("FINISHED", flush=True)  # never: the test kills this process first


if __name__ == "__main__":
    main()
