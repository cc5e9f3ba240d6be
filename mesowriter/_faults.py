"""Fault injection for tests: a slow, failing or dying disk, on demand.

Only active when a stream is opened with the private `_fault=` argument;
normal use never reaches this code. Faults are written as
`kind[:arg[:arg]]`, several joined by `,`:

    slow:SECONDS             sleep this long before every write
    fail-after:N[:ERRNO]     the write that would pass N frames raises OSError
                             (default ENOSPC, "No space left on device")
    die-after:N              the worker kills itself (SIGKILL) once N frames
                             are written and journalled
    die-unjournalled:N       the same, but after the write that passes N
                             frames and before its journal lines: frames on
                             disk and linked, yet never confirmed
"""

from __future__ import annotations

import errno
import os
import signal
import time
from dataclasses import dataclass


@dataclass
class Faults:
    slow: float = 0.0
    fail_after: int | None = None
    fail_errno: int = errno.ENOSPC
    die_after: int | None = None
    die_unjournalled: int | None = None

    @classmethod
    def parse(cls, text: str | None, *, resumed: bool = False) -> Faults:
        """`resumed`: a replacement worker, which must not die again."""
        faults = cls()
        for part in filter(None, (text or "").split(",")):
            kind, *args = part.split(":")
            if kind == "slow":
                faults.slow = float(args[0])
            elif kind == "fail-after":
                faults.fail_after = int(args[0])
                if len(args) > 1:
                    faults.fail_errno = int(args[1])
            elif kind == "die-after":
                faults.die_after = int(args[0])
            elif kind == "die-unjournalled":
                faults.die_unjournalled = None if resumed else int(args[0])
            else:
                raise ValueError(f"unknown fault {kind!r}")
        return faults

    def before_write(self, written: int, count: int) -> None:
        """Called with frames written so far and the batch size."""
        if self.slow:
            time.sleep(self.slow)
        if self.fail_after is not None and written + count > self.fail_after:
            raise OSError(self.fail_errno, os.strerror(self.fail_errno))

    def after_write(self, before: int, written: int) -> None:
        """Die between a write and its journal lines, once, at the mark."""
        mark = self.die_unjournalled
        if mark is not None and before < mark <= written:
            _die()

    def after_commit(self, before: int, written: int) -> None:
        """Die when this commit crosses the mark (a replacement never does)."""
        if self.die_after is not None and before < self.die_after <= written:
            _die()


def _die() -> None:
    os.kill(os.getpid(), getattr(signal, "SIGKILL", signal.SIGTERM))
