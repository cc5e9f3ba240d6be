"""The doctor's checks: each turns a measured figure into OK, WARN or FAIL.

FAIL is kept for what would make the planned run fail or lose frames (no
room on the disk, a data rate above the disk's, rings that do not fit in
memory, a run that did not read back); WARN for what works but with little
margin or in a way the lab should know about. Thresholds are constants
here, so the README and the reasons can name them.
"""

from __future__ import annotations

import os
import shutil
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import psutil

from mesowriter._platform import DEFAULT_SYNC_EVERY, shm_available_bytes
from mesowriter.doctor._disk import DirectProbe, Speed
from mesowriter.doctor._plan import Plan
from mesowriter.doctor._trial import Trial

Status = Literal["ok", "warn", "fail"]
SEVERITY: dict[Status, int] = {"ok": 0, "warn": 1, "fail": 2}

SPACE_MARGIN = 0.10  # warn when less than this fraction of the free space remains
RATE_HEADROOM = 1.5  # warn below this many times the planned rate; fail below 1
SHM_SHARE = 0.8  # warn when rings take more of the free shared memory
RAM_SHARE = 0.5  # warn when the writer takes more of the available RAM
# A writer process's own memory (bench f: 188 MiB private over all processes).
WRITER_PROCESS_BYTES = 200 << 20
# Direct writes below this share of buffered ones are pointed out; they only
# matter where the direct speed leaves the plan too little headroom.
DIRECT_SLOWER = 0.8
MEMORY_FS = frozenset({"tmpfs", "ramfs"})
NETWORK_FS = frozenset({"nfs", "nfs4", "cifs", "smb3", "smbfs", "9p", "afs"})


@dataclass
class Check:
    """One line of the doctor's table, and its figures for `--json`."""

    name: str
    title: str
    status: Status
    figure: str
    reason: str
    data: dict[str, Any] = field(default_factory=dict)

    def line(self) -> dict[str, str]:
        return {
            "name": self.name,
            "title": self.title,
            "status": self.status,
            "figure": self.figure,
            "reason": self.reason,
        }


def size(n: float) -> str:
    """Bytes in binary units, as the OS reports memory and disks."""
    for unit, shift in (("TiB", 40), ("GiB", 30), ("MiB", 20), ("KiB", 10)):
        value = n / (1 << shift)
        if abs(value) >= 1 or unit == "KiB":
            return f"{value:.1f} {unit}" if abs(value) < 100 else f"{value:.0f} {unit}"
    raise AssertionError("unreachable")


def rate(n: float) -> str:
    return f"{n / 1e9:.2f} GB/s"


def duration(seconds: float) -> str:
    if seconds >= 3600:
        return f"{seconds / 3600:.1f} h"
    if seconds >= 60:
        return f"{seconds / 60:.1f} min"
    return f"{seconds:.1f} s"


# -- the folder ------------------------------------------------------------------
def mount_of(folder: str) -> tuple[str, str, str, str]:
    """(filesystem type, device, mount point, options) of the mount holding
    `folder`; empty strings where the OS does not say."""
    target = os.path.normcase(os.path.realpath(folder))
    best = ("", "", "", "")
    for part in psutil.disk_partitions(all=True):
        mount = os.path.normcase(part.mountpoint)
        inside = target == mount or target.startswith(mount.rstrip(os.sep) + os.sep)
        if inside and len(mount) >= len(best[2]):  # a later mount shadows
            best = (part.fstype, part.device, mount, part.opts)
    return best


def filesystem(folder: str) -> Check:
    fstype, device, mount, opts = mount_of(folder)
    data = {"fstype": fstype, "device": device, "mount": mount}
    figure = f"{fstype or 'unknown'} on {device or '?'}"
    kind = fstype.lower()
    if kind in MEMORY_FS:
        return Check(
            "filesystem",
            "filesystem",
            "warn",
            figure,
            f"{folder} is in memory ({fstype}), not on a disk: the data takes "
            "RAM beside the rings and is lost at reboot",
            data,
        )
    if kind in NETWORK_FS or kind.startswith("fuse.") or "remote" in opts.split(","):
        return Check(
            "filesystem",
            "filesystem",
            "warn",
            figure,
            "a network or user-space filesystem: its stalls can outlast what "
            "the ring absorbs; write to a local disk and copy afterwards",
            data,
        )
    reason = "a local filesystem" if fstype else "the OS does not say which filesystem"
    return Check("filesystem", "filesystem", "ok", figure, reason, data)


def direct_io(probe: DirectProbe) -> Check:
    data = {
        "direct": probe.after_write,
        "direct_at_open": probe.at_open,
        "alignment": probe.alignment,
        "error": probe.error,
    }
    if probe.error is not None:
        return Check("direct_io", "direct I/O", "fail", "n/a", probe.error, data)
    if probe.after_write:
        figure = f"yes, {probe.alignment}-byte alignment"
        reason = "unbuffered writes accepted: pixels bypass the page cache"
        return Check("direct_io", "direct I/O", "ok", figure, reason, data)
    when = "at the first write" if probe.at_open else "at open"
    return Check(
        "direct_io",
        "direct I/O",
        "warn",
        "no",
        f"the filesystem refused unbuffered writes {when}: pixels go through "
        f"the page cache, synced every {size(DEFAULT_SYNC_EVERY)}",
        data,
    )


def write_speed(speed: Speed | None, why_not: str) -> Check:
    if speed is None:
        return Check("write_speed", "write speed", "warn", "not measured", why_not)
    data: dict[str, Any] = {
        "direct": speed.direct.figures() if speed.direct else None,
        "buffered": speed.buffered.figures(),
        "round_bytes": speed.round_bytes,
        "block_bytes": speed.block_bytes,
        "writes_in_flight": speed.depth,
        "seconds": round(speed.seconds, 2),
    }
    rounds = len(speed.buffered.gbps)
    how = (
        f"{rounds} rounds of {size(speed.round_bytes)} each way, alternating; "
        f"{size(speed.block_bytes)} writes, {speed.depth} in flight, as the sink"
    )
    buffered = f"buffered {speed.buffered.text()}"
    if speed.direct is None:
        return Check("write_speed", "write speed", "ok", buffered, how, data)
    figure = f"direct {speed.direct.text()}, {buffered}"
    if speed.direct.median < DIRECT_SLOWER * speed.buffered.median:
        how += (
            "; buffered writes were faster here (the data rate line says if it matters)"
        )
    return Check("write_speed", "write speed", "ok", figure, how, data)


def free_space(plan: Plan, folder: str) -> Check:
    free = shutil.disk_usage(folder).free
    need = plan.run_bytes
    minutes = free / plan.run_bytes * plan.minutes
    data = {"free_bytes": free, "needed_bytes": need, "minutes_that_fit": minutes}
    figure = f"{size(need)} needed, {size(free)} free"
    fits = f"room for {duration(minutes * 60)} of this plan"
    if need > free:
        return Check(
            "free_space", "free space", "fail", figure, f"does not fit: {fits}", data
        )
    if need > (1 - SPACE_MARGIN) * free:
        reason = f"less than {SPACE_MARGIN:.0%} of the free space would remain ({fits})"
        return Check("free_space", "free space", "warn", figure, reason, data)
    return Check("free_space", "free space", "ok", figure, fits, data)


# -- memory and cores --------------------------------------------------------------
def ring_bytes(plan: Plan) -> tuple[int | None, str | None]:
    """Shared memory of every ring in the plan, or (None, why not)."""
    try:
        per_tiff = plan.ring_region_bytes()
    except ValueError as exc:
        return None, f"{exc} (raise --ring-gib)"
    return plan.streams * per_tiff + plan.video_streams * plan.ring_bytes, None


def shared_memory(plan: Plan) -> Check:
    rings, error = ring_bytes(plan)
    free = shm_available_bytes()
    data = {"rings_bytes": rings, "shm_free_bytes": free}
    if rings is None:
        return Check("shared_memory", "shared memory", "fail", "n/a", str(error), data)
    n = plan.streams + plan.video_streams
    need = f"{n} ring(s), {size(rings)}"
    if free is None:
        reason = (
            "no separate limit on this OS: rings are backed by RAM and the page file"
        )
        return Check("shared_memory", "shared memory", "ok", need, reason, data)
    figure = f"{need} of {size(free)} free"
    if rings > free:
        reason = "the rings do not fit in the free shared memory: lower --ring-gib"
        return Check("shared_memory", "shared memory", "fail", figure, reason, data)
    if rings > SHM_SHARE * free:
        reason = f"the rings take more than {SHM_SHARE:.0%} of the free shared memory"
        return Check("shared_memory", "shared memory", "warn", figure, reason, data)
    return Check("shared_memory", "shared memory", "ok", figure, "the rings fit", data)


def memory(plan: Plan) -> Check:
    rings, _ = ring_bytes(plan)
    vm = psutil.virtual_memory()
    processes = plan.streams + plan.video_streams
    need = (rings or 0) + processes * WRITER_PROCESS_BYTES
    data = {
        "needed_bytes": need,
        "available_bytes": vm.available,
        "total_bytes": vm.total,
        "writer_process_bytes": WRITER_PROCESS_BYTES,
    }
    figure = f"{size(need)} of {size(vm.available)} available ({size(vm.total)} RAM)"
    each = size(WRITER_PROCESS_BYTES)
    what = f"rings plus {processes} writer process(es) of about {each}"
    if need > vm.available:
        return Check("memory", "RAM", "fail", figure, f"{what}: does not fit", data)
    if need > RAM_SHARE * vm.available:
        reason = (
            f"{what} take more than {RAM_SHARE:.0%} of the available RAM; "
            "MMCore's buffer and the GUI need room too"
        )
        return Check("memory", "RAM", "warn", figure, reason, data)
    return Check("memory", "RAM", "ok", figure, what, data)


def cores(plan: Plan) -> Check:
    """One core for the acquisition process and one per writer process: a
    TIFF writer mostly waits on the disk, but a video writer encodes."""
    logical = os.cpu_count() or 1
    physical = psutil.cpu_count(logical=False)
    want = 1 + plan.streams + plan.video_streams
    data = {"logical": logical, "physical": physical, "wanted": want}
    figure = f"{logical} cores for {want} processes"
    what = f"the acquisition, {plan.streams} TIFF writer(s)"
    if plan.video_streams:
        what += f", {plan.video_streams} video encoder(s) (about a core each)"
    if logical >= want:
        return Check("cores", "cores", "ok", figure, f"a core each for {what}", data)
    reason = f"{what} share {logical} cores"
    reason += (
        ": an encoder that falls behind fills its ring"
        if plan.video_streams
        else ": a writer that waits for a core lets its ring fill"
    )
    return Check("cores", "cores", "warn", figure, reason, data)


# -- codecs ----------------------------------------------------------------------
@dataclass(frozen=True)
class Codec:
    name: str
    title: str
    tag: str
    ext: str
    depth16: bool = False


CODECS = (
    Codec("codec_h264", "H.264", "avc1", ".mp4"),
    Codec("codec_mp4v", "mp4v", "mp4v", ".mp4"),
    Codec("codec_mjpg", "MJPG", "MJPG", ".avi"),
    Codec("codec_ffv1_16bit", "FFV1 16-bit", "FFV1", ".mkv", depth16=True),
)

Probe = Callable[..., bool]


def codecs(plan: Plan) -> list[Check]:
    """Open and write one frame with each codec in a temporary folder."""
    from mesowriter.video import codec_family, configure_opencv_codec, find_openh264
    from mesowriter.video._codecs import fourcc_from_env, probe

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        configure_opencv_codec()
        library = find_openh264()
    notes = [str(w.message) for w in caught]
    env = fourcc_from_env()
    wanted = codec_family(env[1]) if env else None
    checks = []
    for codec in CODECS:
        opens = _opens(probe, codec)
        data: dict[str, Any] = {
            "opens": opens,
            "tag": codec.tag,
            "container": codec.ext,
        }
        status: Status = "ok"
        if codec.tag == "avc1":
            data["openh264"] = str(library) if library else None
            source = f"OpenH264 {library}" if library else "no OpenH264 library found"
            if opens:
                reason = f"opens in {codec.ext} ({source})"
            else:
                reason = f"not in this OpenCV build ({source}): .mp4 gets mp4v"
                if wanted == "h264":
                    status = "warn"
                    reason += f"; {env[0] if env else ''} asks for H.264"
            reason = "; ".join([reason, *notes])
        elif opens:
            reason = f"opens and writes a frame in {codec.ext}"
        elif codec.depth16:
            status = "warn"
            reason = "not in this OpenCV build: 16-bit video is mapped to 8 bits"
        else:
            status = "fail" if plan.video_streams else "warn"
            reason = f"this OpenCV build cannot write {codec.tag}, a portable codec"
        checks.append(
            Check(
                codec.name,
                codec.title,
                status,
                "opens" if opens else "no",
                reason,
                data,
            )
        )
    return checks


def _opens(probe: Probe, codec: Codec) -> bool:
    """Gray first, then colour (some encoders take only colour), as the sink."""
    colours = (False,) if codec.depth16 else (False, True)
    return any(
        probe(codec.tag, codec.ext, is_color=c, depth16=codec.depth16) for c in colours
    )


# -- against the plan --------------------------------------------------------------
def data_rate(plan: Plan, speed: Speed | None) -> Check:
    need = plan.rate
    data: dict[str, Any] = {"planned_bytes_per_second": need}
    if speed is None:
        reason = "the disk's speed was not measured, so the rate cannot be judged"
        return Check("data_rate", "data rate", "warn", rate(need), reason, data)
    series = speed.writer_series
    way = "direct" if speed.direct is not None else "buffered"
    headroom, worst = series.median / (need / 1e9), series.low / (need / 1e9)
    data.update(
        headroom=round(headroom, 2), worst_round_headroom=round(worst, 2), against=way
    )
    times = f"{headroom:.1f}" if headroom >= 1 else f"{headroom:.2f}"
    figure = f"{rate(need)} planned, {times}x headroom ({way})"
    per_stream = plan.frame_bytes * plan.fps
    absorbs = duration(plan.ring_bytes / per_stream)
    hint = ""
    if speed.direct is not None and speed.direct.median < DIRECT_SLOWER * (
        speed.buffered.median
    ):
        hint = (
            f"; buffered writes reached {speed.buffered.median:.2f} GB/s here: "
            "open_stream(direct_io=False) may suit this disk better"
        )
    if headroom < 1:
        fills = plan.streams * plan.ring_bytes / (need - series.median * 1e9)
        reason = (
            f"the disk wrote {series.median:.2f} GB/s ({way}): frames pile up in "
            f"the rings, full after about {duration(fills)}, then the run blocks "
            f"or drops{hint}"
        )
        return Check("data_rate", "data rate", "fail", figure, reason, data)
    if headroom < RATE_HEADROOM:
        reason = (
            f"less than {RATE_HEADROOM}x headroom; a disk's speed swings from "
            f"minute to minute{hint}"
        )
        return Check("data_rate", "data rate", "warn", figure, reason, data)
    if worst < 1:
        reason = (
            f"the slowest round ({series.low:.2f} GB/s) was below the plan; "
            f"the ring absorbs about {absorbs} of such a dip"
        )
        return Check("data_rate", "data rate", "warn", figure, reason, data)
    reason = f"slowest round {worst:.1f}x; the ring absorbs about {absorbs} of a stall"
    return Check("data_rate", "data rate", "ok", figure, reason, data)


def real_run(plan: Plan, trial: Trial | None, why_not: str) -> Check:
    if trial is None:
        return Check("real_run", "real run", "fail", "not run", why_not)
    data = trial.figures()
    sent = trial.frames * trial.streams
    figure = f"{trial.frames_written}/{sent} frames"
    if trial.problems:
        reason = "; ".join(trial.problems[:3])
        return Check("real_run", "real run", "fail", figure, reason, data)
    figure += f" at {trial.fps:.0f} fps, read back"
    streams = (
        f"{trial.streams} of {plan.streams}"
        if trial.streams < plan.streams
        else f"{trial.streams}"
    )
    direct = "direct I/O" if trial.direct_io else "buffered (no direct I/O)"
    what = (
        f"{streams} stream(s) through WriterService, {direct}; "
        "tifffile.memmap reads them and every pixel matches"
    )
    if trial.blocked_seconds > 0:
        reason = (
            f"the ring filled within seconds at {trial.paced_fps:g} fps: the "
            f"producer waited {trial.blocked_seconds:.2f} s ({what})"
        )
        return Check("real_run", "real run", "warn", figure, reason, data)
    return Check("real_run", "real run", "ok", figure, what, data)
