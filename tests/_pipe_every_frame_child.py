"""Run a stream under the protocol for CPUs without ordered stores.

    MESOWRITER_PIPE_EVERY_FRAME=1 python tests/_pipe_every_frame_child.py PATH

Writes 150 index frames (64x64 uint16) with metadata {"i": i, "tag": "ü"},
SIGKILLs the worker twice mid-run (the replacement must learn from its pipe
which frames it may read), closes, and prints one JSON line: whether the
protocol was active and the report. The test checks the file.
"""

from __future__ import annotations

import json
import os
import signal
import sys

SHAPE = (64, 64)
FRAMES = 150


def main() -> None:
    import msgspec

    from mesowriter import WriterService, _ring
    from tests.conftest import index_frame

    path = sys.argv[1]
    with WriterService(ring_bytes=1 << 20) as svc:
        stream = svc.open_stream(path, shape=SHAPE, dtype="uint16", _fault="slow:0.004")
        for i in range(FRAMES):
            stream.write(index_frame(i, SHAPE), {"i": i, "tag": "ü"})
            if i in (40, 100):
                os.kill(svc.workers[0], signal.SIGKILL)
        report = stream.close()
    out = {
        "stores_in_order": _ring.STORES_IN_ORDER,
        "report": msgspec.to_builtins(report),
    }
    print(json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
