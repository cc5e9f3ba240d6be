"""An acquisition process for the crash tests, run as a real child process.

    python tests/_crash_child.py MODE PATH FRAMES

Writes FRAMES index frames (tests.conftest.index_frame, 48x40 uint16) with
metadata {"i": i, "tag": "ü"} into PATH, waits until the worker has them
on disk, prints one line `READY <worker pid> <ring shm name> <frames on
disk>` and then waits to be signalled. MODE:

    wait      the test signals this process; SIGTERM / SIGINT must leave
              the `with WriterService()` block and finalise the file
    dead      the worker SIGKILLs itself after FRAMES // 2 frames
              (die-after) and is not replaced: file, journal and ring are
              left as a crash leaves them
    torn      the same, but the worker dies after writing the batch that
              passes FRAMES // 2 and before journalling it
"""

from __future__ import annotations

import sys
import time

SHAPE = (48, 40)


def main() -> None:
    from mesowriter import WriterError, WriterService
    from tests.conftest import index_frame

    mode, path, frames = sys.argv[1], sys.argv[2], int(sys.argv[3])
    half = frames // 2
    faults = {"dead": f"die-after:{half}", "torn": f"die-unjournalled:{half}"}
    fault = faults.get(mode)
    svc = WriterService(ring_bytes=8 << 20, restart_workers=fault is None)
    with svc:
        stream = svc.open_stream(
            path, shape=SHAPE, dtype="uint16", frames=frames * 2, _fault=fault
        )
        pid = svc.workers[0]
        for i in range(frames):
            try:
                stream.write(index_frame(i, SHAPE), {"i": i, "tag": "ü"})
            except WriterError:
                break  # the worker is gone
            if fault:
                time.sleep(0.005)  # paced: several commits before the mark
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and (
            stream.error is None if fault else stream._ring.read_cursor < frames
        ):
            time.sleep(0.01)
        on_disk = stream._ring.read_cursor
        print(f"READY {pid} {stream.ring.layout.block} {on_disk}", flush=True)
        while True:
            time.sleep(0.05)


if __name__ == "__main__":
    main()
