"""An acquisition process for the durability tests, run as a real child.

    python tests/_durability_child.py MODE PATH [ARG]

Frames are tests.conftest.index_frame of SHAPE with metadata {"i": i}.
Lines on stdout tell the test where the child is. MODE:

    powercut N    write frames until the worker's modelled power cut (the
                  `powercut:N` fault) kills the whole process group
    hold          open a stream, write 10 frames, print READY, wait
    orphan        a slow disk: 40 frames wait in the ring; READY; wait to
                  be killed (the orphaned worker then drains slowly)
    orphan-caller the same, for a stream whose caller joins the sidecar
    closing       a slow disk: write 30 frames, print CLOSING, then close()
                  (the test kills this process meanwhile)
    fullring      a tiny ring on a slow disk: write until write() blocks on
                  the full ring, print BLOCKED from a timer, keep writing
    live          write frames paced at 200 fps, printing WROTE i every 50,
                  until killed (the real-ext4 power cut)
"""

from __future__ import annotations

import sys
import threading
import time

SHAPE = (64, 64)


def main() -> None:
    from mesowriter import WriterService
    from mesowriter._spec import SidecarSpec
    from tests.conftest import index_frame

    mode, path = sys.argv[1], sys.argv[2]
    arg = int(sys.argv[3]) if len(sys.argv) > 3 else 0
    faults = {
        "powercut": f"powercut:{arg}",
        "orphan": "slow:0.05",
        "orphan-caller": "slow:0.05",
        "closing": "slow:0.05",
        "fullring": "slow:0.05",
    }
    shape = (256, 256) if mode in ("powercut", "live") else SHAPE
    ring = 300_000 if mode == "fullring" else 64 << 20
    # orphan-caller: a stream whose caller joins the run's sidecar itself
    # (as the handlers do), the run's only file when it opened
    sidecar = (
        SidecarSpec(
            path=f"{path}_frame_metadata.json", members=(("p0", path),), by_caller=True
        )
        if mode == "orphan-caller"
        else None
    )
    with WriterService(ring_bytes=ring) as svc:
        stream = svc.open_stream(
            path,
            shape=shape,
            dtype="uint16",
            frames=None,
            _fault=faults.get(mode),
            sidecar=sidecar,
        )
        print(f"OPEN {svc.workers[0]} {stream.ring.layout.block}", flush=True)
        if mode == "powercut":
            for i in range(10 * arg):
                stream.write(index_frame(i, shape), {"i": i})
                time.sleep(0.002)
        elif mode in ("hold", "orphan", "orphan-caller"):
            for i in range(10 if mode == "hold" else 40):
                stream.write(index_frame(i, shape), {"i": i})
            print("READY", flush=True)
            while True:
                time.sleep(0.05)
        elif mode == "closing":
            for i in range(30):
                stream.write(index_frame(i, shape), {"i": i})
            print("CLOSING", flush=True)
            stream.close()
            print("CLOSED", flush=True)
        elif mode == "fullring":

            def tell() -> None:
                time.sleep(0.5)
                print("BLOCKED", flush=True)

            threading.Thread(target=tell, daemon=True).start()
            for i in range(10_000):
                stream.write(index_frame(i, shape), {"i": i})
        elif mode == "live":
            for i in range(1_000_000):
                stream.write(index_frame(i, shape), {"i": i})
                if i % 50 == 0:
                    print(f"WROTE {i}", flush=True)
                time.sleep(0.005)


if __name__ == "__main__":
    main()
