"""Runs every check in order and gives the verdict.

Whatever the doctor writes in the user's folder lives in one folder of its
own (`.mesowriter-doctor-<pid>-<random>`), removed at the end, on Ctrl-C or
SIGTERM too: both unwind through `finally` (SIGTERM as KeyboardInterrupt,
or during the real run as the SystemExit that `WriterService` raises). One
left by a doctor that was killed outright is removed by the next doctor once
its process is gone.
"""

from __future__ import annotations

import _thread
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import psutil

from mesowriter._platform import install_shutdown_handler
from mesowriter.doctor import _checks as c
from mesowriter.doctor._checks import SEVERITY, Check, Status
from mesowriter.doctor._disk import DirectProbe, Speed, measure_speed, probe_direct
from mesowriter.doctor._plan import Plan, PlanError
from mesowriter.doctor._trial import Trial, run_trial, trial_size

WORKDIR_PREFIX = ".mesowriter-doctor-"
EXIT_CODES: dict[Status, int] = {"ok": 0, "warn": 1, "fail": 2}
EXIT_CANNOT_CHECK = 3  # a bad option, a missing folder: nothing was checked
EXIT_INTERRUPTED = 130
DEFAULT_TEST_BYTES = 2 << 30  # each way: direct, then buffered
DEFAULT_ROUNDS = 4
SPACE_RESERVE = 1 << 30  # the doctor's own files never take the last GiB
MIN_TEST_BYTES = 16 << 20

Progress = Callable[[str], None]


@dataclass
class Report:
    """The checks, the verdict they add up to, and how to print both."""

    folder: str
    plan: Plan
    checks: list[Check]
    seconds: float
    notes: list[str] = field(default_factory=list)

    @property
    def verdict(self) -> Status:
        return max((ch.status for ch in self.checks), key=SEVERITY.__getitem__)

    @property
    def exit_code(self) -> int:
        return EXIT_CODES[self.verdict]

    @property
    def reasons(self) -> list[str]:
        """Why the verdict is not "ok": failures first, then warnings."""
        bad = [ch for ch in self.checks if ch.status != "ok"]
        bad.sort(key=lambda ch: -SEVERITY[ch.status])
        return [f"{ch.title}: {ch.reason}" for ch in bad]

    def to_json(self) -> dict[str, Any]:
        figures: dict[str, Any] = {
            "folder": self.folder,
            "plan": self.plan.figures(),
            "seconds": round(self.seconds, 2),
            "notes": self.notes,
        }
        figures.update({ch.name: ch.data for ch in self.checks})
        return {
            "verdict": self.verdict,
            "checks": [ch.line() for ch in self.checks],
            "figures": figures,
            "reasons": self.reasons,
        }

    def render(self) -> str:
        plan = self.plan
        head = [
            f"mesowriter doctor: {self.folder} ({self.seconds:.1f} s)",
            f"plan: {plan.describe()}: {c.rate(plan.rate)}, "
            f"{c.size(plan.run_bytes)} with headers and metadata",
            "",
        ]
        rows = [("check", "status", "figure", "reason")] + [
            (ch.title, ch.status.upper(), ch.figure, ch.reason) for ch in self.checks
        ]
        widths = [max(len(r[i]) for r in rows) for i in range(3)]
        table = [
            "  ".join(cell.ljust(w) for cell, w in zip(r[:3], widths, strict=True))
            + "  "
            + r[3]
            for r in rows
        ]
        tail = ["", f"verdict: {self.verdict.upper()} (exit code {self.exit_code})"]
        tail += [f"  - {reason}" for reason in self.reasons]
        tail += [f"note: {n}" for n in self.notes]
        return "\n".join(head + table + tail)


def check_folder(folder: str) -> str:
    """The folder, absolute; PlanError (one line) if it is not a folder."""
    path = os.path.abspath(os.path.expanduser(folder))
    if not os.path.exists(path):
        raise PlanError(f"folder {path} does not exist")
    if not os.path.isdir(path):
        raise PlanError(f"{path} is not a folder")
    return path


def run_doctor(
    folder: str,
    plan: Plan,
    *,
    test_bytes: int = DEFAULT_TEST_BYTES,
    rounds: int = DEFAULT_ROUNDS,
    progress: Progress | None = None,
) -> Report:
    """Check the rig in `folder` against `plan`; every file written is removed."""
    say = progress or (lambda _msg: None)
    path = check_folder(folder)
    if rounds < 1:
        raise PlanError(f"--rounds must be at least 1, got {rounds}")
    if test_bytes < 0:
        raise PlanError("--test-gib must be >= 0")
    t0 = time.perf_counter()
    notes = [f"removed {n}, left by a doctor that died" for n in remove_stale(path)]
    uninstall = install_shutdown_handler(_interrupt)
    try:
        say("checking the folder, memory, cores and codecs")
        fs, free = c.filesystem(path), c.free_space(plan, path)
        memory = [c.shared_memory(plan), c.memory(plan)]
        codecs = [*c.codecs(plan), c.cores(plan)]
        probe, speed, trial, why_speed, why_trial = _write_tests(
            path, plan, test_bytes, rounds, say, notes
        )
    finally:
        uninstall()
    checks = [
        fs,
        c.direct_io(probe),
        c.write_speed(speed, why_speed),
        free,
        *memory,
        *codecs,
        c.data_rate(plan, speed),
        c.real_run(plan, trial, why_trial),
    ]
    return Report(path, plan, checks, time.perf_counter() - t0, notes)


def _write_tests(
    folder: str,
    plan: Plan,
    test_bytes: int,
    rounds: int,
    say: Progress,
    notes: list[str],
) -> tuple[DirectProbe, Speed | None, Trial | None, str, str]:
    """Direct I/O, write speed and the trial run, all inside one workdir."""
    try:
        workdir = tempfile.mkdtemp(prefix=f"{WORKDIR_PREFIX}{os.getpid()}-", dir=folder)
    except OSError as exc:
        why = f"cannot create a file in {folder}: {exc}"
        return DirectProbe(False, False, 0, why), None, None, why, why
    try:
        say("probing direct I/O")
        probe = probe_direct(workdir)
        if probe.error is not None:
            return probe, None, None, probe.error, probe.error
        speed, why_speed = _speed(workdir, probe, test_bytes, rounds, say)
        trial, why_trial = _trial(workdir, plan, say)
        return probe, speed, trial, why_speed, why_trial
    finally:
        try:
            shutil.rmtree(workdir)
        except OSError as exc:
            notes.append(f"could not remove {workdir}: {exc}")


def _room(folder: str) -> int:
    return max(shutil.disk_usage(folder).free - SPACE_RESERVE, 0)


def _speed(
    workdir: str, probe: DirectProbe, test_bytes: int, rounds: int, say: Progress
) -> tuple[Speed | None, str]:
    if test_bytes == 0:
        return None, "skipped (--test-gib 0)"
    per_way = min(test_bytes, _room(workdir) * rounds)  # one round's file at a time
    if per_way < MIN_TEST_BYTES:
        return None, f"no room to measure: {c.size(_room(workdir))} free past 1 GiB"
    say(f"measuring write speed: {c.size(per_way)} each way in {rounds} rounds")
    return measure_speed(
        workdir, per_way, rounds, direct=probe.after_write, progress=say
    ), ""


def _trial(workdir: str, plan: Plan, say: Progress) -> tuple[Trial | None, str]:
    room = _room(workdir)
    streams, frames = trial_size(plan, room)
    if frames == 0:
        return None, f"no room for a short run: {c.size(room)} free past 1 GiB"
    say(f"real run: {frames} frames x {streams} stream(s) through WriterService")
    return run_trial(plan, workdir, streams, frames), ""


def remove_stale(folder: str) -> list[str]:
    """Remove workdirs of doctors whose process is gone (killed outright)."""
    removed: list[str] = []
    try:
        names = os.listdir(folder)
    except OSError:
        return removed  # unreadable: mkdtemp will say why
    for name in names:
        if not name.startswith(WORKDIR_PREFIX):
            continue
        pid = name[len(WORKDIR_PREFIX) :].split("-", 1)[0]
        if pid.isdigit() and not psutil.pid_exists(int(pid)):
            shutil.rmtree(os.path.join(folder, name), ignore_errors=True)
            removed.append(name)
    return removed


def _interrupt(reason: str) -> None:
    """SIGTERM, SIGHUP or a closed console: unwind as Ctrl-C does, so every
    `finally` removes its files (a console event arrives on another thread)."""
    if threading.current_thread() is threading.main_thread():
        raise KeyboardInterrupt(reason)
    _thread.interrupt_main()
