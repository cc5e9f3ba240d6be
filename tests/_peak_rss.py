"""Run a command and write its peak RSS (KiB) to a file: `_peak_rss.py OUT CMD...`.

A child's peak RSS includes the image it was forked from, so measuring a
command from inside pytest (hundreds of MB) says nothing about the command.
This small process forks it instead; its stdout, stderr and exit code pass
through unchanged.
"""

from __future__ import annotations

import resource
import subprocess
import sys


def main() -> int:
    out, cmd = sys.argv[1], sys.argv[2:]
    code = subprocess.call(cmd)
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    with open(out, "w") as fh:
        fh.write(str(peak))
    return code


if __name__ == "__main__":
    sys.exit(main())
