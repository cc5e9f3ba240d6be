"""Files that lie: `inspect` and `recover` answer one line, exit 2, no traceback.

Real files written by mesowriter are corrupted on purpose (truncated, bytes
flipped, sizes forged, XML with a DOCTYPE, tag counts and offsets beyond the
file, tampered frame-metadata annotations and journals). Each must be
refused quickly, with little memory, by one line naming the file; the
reproductions run as real subprocesses whose peak memory is measured.
"""

from __future__ import annotations

import io
import json
import random
import re
import shutil
import struct
import subprocess
import sys
import tempfile
import time
import tracemalloc
from collections.abc import Callable
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path
from typing import Any, NamedTuple

import msgspec
import numpy as np
import pytest

from mesowriter import WriterService, cli
from mesowriter._journal import JournalHeader
from mesowriter._spec import StreamSpec
from mesowriter._untrusted import (
    BadFileError,
    check_ome,
    check_stream_spec,
    parse_xml,
    read_journal_header,
    read_tiff,
)
from tests.conftest import index_frame

ROOT = Path(__file__).resolve().parents[1]
SECONDS = 5.0  # per inspection, as a subprocess (interpreter start included)
PEAK_KB = 200 * 1024  # peak RSS of the subprocess (tifffile alone: ~40 MB)
PEAK_TRACED = 32 << 20  # Python allocations of one in-process inspection


# -- real files, written by mesowriter -------------------------------------------------


@pytest.fixture(scope="module")
def good(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("good")
    gray, rgb = folder / "gray.ome.tiff", folder / "rgb.ome.tif"
    imagej = folder / "stack.tif"
    with WriterService(ring_bytes=8 << 20, workers=1) as svc:
        a = svc.open_stream(gray, shape=(16, 16), dtype="uint16", frames=6)
        b = svc.open_stream(rgb, shape=(8, 8, 3), dtype="uint8")
        c = svc.open_stream(imagej, shape=(8, 8), dtype="uint16", frames=4)
        for i in range(6):
            meta = {"i": i, "camera_metadata": {"ElapsedTime-ms": f"{10.0 * i}"}}
            a.write(index_frame(i, (16, 16)), meta)
        for i in range(3):
            b.write(index_frame(i, (8, 8, 3), "uint8"), {"i": i})
        for i in range(4):
            c.write(index_frame(i, (8, 8)), {"i": i})
        for stream in (a, b, c):
            stream.close()
    return {"gray": gray, "rgb": rgb, "imagej": imagej}


def _copy(src: Path, dst: Path) -> Path:
    shutil.copyfile(src, dst)
    return dst


def _ifd0(data: bytes) -> tuple[int, dict[int, int]]:
    """IFD 0's offset and where each of its entries sits (BigTIFF, little end)."""
    first = struct.unpack_from("<Q", data, 8)[0]
    n = struct.unpack_from("<Q", data, first)[0]
    where = {}
    for j in range(n):
        at = first + 8 + 20 * j
        where[struct.unpack_from("<H", data, at)[0]] = at
    return first, where


def _chain(data: bytes) -> list[tuple[int, int]]:
    """(IFD offset, first strip offset) of each IFD (BigTIFF, little end)."""
    out = []
    offset = struct.unpack_from("<Q", data, 8)[0]
    while offset:
        n = struct.unpack_from("<Q", data, offset)[0]
        strip = 0
        for j in range(n):
            tag, _, _, value = struct.unpack_from("<HHQQ", data, offset + 8 + 20 * j)
            if tag == 273:
                strip = value
        out.append((offset, strip))
        offset = struct.unpack_from("<Q", data, offset + 8 + 20 * n)[0]
    return out


def _xml(path: Path) -> str:
    data = path.read_bytes()
    _, where = _ifd0(data)
    count, offset = struct.unpack_from("<QQ", data, where[270] + 4)
    return data[offset : offset + count].rstrip(b"\x00").decode()


def _with_xml(src: Path, dst: Path, edit: Callable[[str], str]) -> Path:
    """A copy of `src` whose IFD 0 points at `edit(its OME-XML)`, appended."""
    data = bytearray(src.read_bytes())
    _, where = _ifd0(bytes(data))
    new = edit(_xml(src)).encode() + b"\x00"
    struct.pack_into("<QQ", data, where[270] + 4, len(new), len(data))
    dst.write_bytes(bytes(data) + new)
    return dst


def _patched(src: Path, dst: Path, offset: int, fmt: str, *values: int) -> Path:
    data = bytearray(src.read_bytes())
    struct.pack_into(fmt, data, offset, *values)
    dst.write_bytes(bytes(data))
    return dst


# -- running the command ---------------------------------------------------------------


class Run(NamedTuple):
    code: int
    stdout: str
    stderr: str
    seconds: float
    peak_kb: int | None


def _subprocess(*args: str, timeout: float = 30.0) -> Run:
    """`python -m mesowriter ARGS`, with its peak RSS (via `_peak_rss.py`)."""
    cmd = [sys.executable, "-m", "mesowriter", *args]
    peak_file = Path(tempfile.mkstemp(prefix="peak-")[1])
    if sys.platform != "win32":
        cmd = [sys.executable, str(ROOT / "tests" / "_peak_rss.py"), str(peak_file)]
        cmd += [sys.executable, "-m", "mesowriter", *args]
    t0 = time.monotonic()
    try:
        p = subprocess.run(
            cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout
        )
        text = peak_file.read_text()
    finally:
        peak_file.unlink()
    seconds = time.monotonic() - t0
    return Run(p.returncode, p.stdout, p.stderr, seconds, int(text) if text else None)


def _in_process(*args: str) -> Run:
    """`cli.main(ARGS)` here: fast, with its Python allocations traced."""
    out, err = io.StringIO(), io.StringIO()
    tracemalloc.start()
    t0 = time.monotonic()
    try:
        with redirect_stdout(out), redirect_stderr(err):
            code = cli.main(list(args))
    finally:
        seconds = time.monotonic() - t0
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    assert peak < PEAK_TRACED, f"{args}: {peak} bytes traced"
    return Run(code, out.getvalue(), err.getvalue(), seconds, None)


def _assert_refused(run: Run, path: Path | str, *, bounded: bool = True) -> str:
    """Exit 2, one line on stderr naming the file, no traceback, in bounds."""
    assert run.code == 2, run
    assert "Traceback" not in run.stderr + run.stdout
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1 and str(path) in lines[0], run.stderr
    if bounded:
        assert run.seconds < SECONDS, run
        if run.peak_kb is not None:
            assert run.peak_kb < PEAK_KB, run
    return lines[0]


# -- the reproductions, as a user runs them --------------------------------------------


@pytest.mark.parametrize("size_t", ["100000000", "1000000000"])
def test_forged_plane_count_answers_fast_with_little_memory(
    good: dict[str, Path], tmp_path: Path, size_t: str
) -> None:
    path = _with_xml(
        good["gray"], tmp_path / "forged.ome.tiff",
        lambda x: x.replace('SizeT="6"', f'SizeT="{size_t}"'),
    )  # fmt: skip
    assert path.stat().st_size < 64 * 1024
    run = _subprocess("inspect", str(path))
    line = _assert_refused(run, path)
    assert f"declares {size_t} planes" in line
    assert run.seconds < 2.0  # main: 5.7 s and 1.57 GB for 1e8, MemoryError for 1e9


ENTITY_BOMB = (
    '<!DOCTYPE OME [<!ENTITY a "aaaaaaaaaa">'
    + "".join(
        f'<!ENTITY {c} "{("&" + p + ";") * 10}">'
        for p, c in zip("abcdefgh", "bcdefghi", strict=True)
    )
    + "]>"
)
EXTERNAL_ENTITY = '<!DOCTYPE OME [<!ENTITY x SYSTEM "file:///etc/passwd">]>'


@pytest.mark.parametrize("doctype", [ENTITY_BOMB, EXTERNAL_ENTITY], ids=["bomb", "xxe"])
def test_xml_with_a_doctype_is_refused(
    good: dict[str, Path], tmp_path: Path, doctype: str
) -> None:
    entity = "i" if doctype is ENTITY_BOMB else "x"

    def edit(xml: str) -> str:
        xml = xml.replace("?>\n", "?>\n" + doctype, 1)
        return xml.replace('Name="gray.ome.tiff"', f'Name="&{entity};"')

    path = _with_xml(good["gray"], tmp_path / "doctype.ome.tiff", edit)
    line = _assert_refused(_subprocess("inspect", str(path)), path)
    assert "DOCTYPE" in line
    out = tmp_path / "side.json"
    run = _subprocess("inspect", str(path), "--sidecar", str(out))
    _assert_refused(run, path)
    assert not out.exists()


def test_huge_tag_count_and_a_terabyte_description(
    good: dict[str, Path], tmp_path: Path
) -> None:
    data = good["gray"].read_bytes()
    first, where = _ifd0(data)
    tags = _patched(good["gray"], tmp_path / "tags.ome.tiff", first, "<Q", 1 << 40)
    assert "claims" in _assert_refused(_subprocess("inspect", str(tags)), tags)
    tib = _patched(
        good["gray"], tmp_path / "tib.ome.tiff", where[270] + 4, "<Q", 1 << 40
    )
    line = _assert_refused(_subprocess("inspect", str(tib)), tib)
    assert "tag 270" in line
    # recover may rebuild such a file from its header block, or refuse it:
    # either way in bounded time and memory, never a 1 TiB read or a traceback
    run = _subprocess("recover", str(tib))
    assert run.code in (0, 2) and "Traceback" not in run.stderr, run
    assert run.seconds < SECONDS and (run.peak_kb or 0) < PEAK_KB, run
    if run.code == 2:
        _assert_refused(run, tib)


@pytest.mark.parametrize("kind", ["text", "empty", "folder", "missing", "png"])
def test_what_is_not_a_tiff(tmp_path: Path, kind: str) -> None:
    path = tmp_path / "x.ome.tiff"
    if kind == "text":
        path.write_text("just some words, not a TIFF\n" * 40)
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "folder":
        path.mkdir()
    elif kind == "png":
        path.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(1000))
    for verb in ("inspect", "recover"):
        _assert_refused(_subprocess(verb, str(path)), path)


def test_json_output_on_bad_input(good: dict[str, Path], tmp_path: Path) -> None:
    path = _with_xml(
        good["gray"], tmp_path / "j.ome.tiff",
        lambda x: x.replace('SizeT="6"', 'SizeT="100000000"'),
    )  # fmt: skip
    run = _subprocess("inspect", str(path), "--json")
    assert run.code == 2 and not run.stderr.strip()
    answer = json.loads(run.stdout)
    assert answer["path"] == str(path) and answer["exit"] == 2
    assert "100000000" in answer["error"]


def test_good_files_still_inspect(good: dict[str, Path]) -> None:
    for name, frames in (("gray", 6), ("rgb", 3), ("imagej", 4)):
        run = _subprocess("inspect", str(good[name]), "--json")
        assert run.code == 0, run.stderr
        info = json.loads(run.stdout)
        assert info["frames_in_file"] == info["frames_declared"] == frames
        assert info["reader_warnings"] == []


def test_forged_imagej_plane_count(good: dict[str, Path], tmp_path: Path) -> None:
    data = good["imagej"].read_bytes()
    counts = b"images=4\nframes=4\n"
    at = data.rindex(counts)  # the final description (the provisional one is stale)
    for forged_counts, expect in (
        (b"images=999\nfr=444\n", "declares 999 planes"),  # same length
        (b"images=9999999999\n", "declares 9999999999 planes"),
        (b"images=4\nframes=-4\n", "not a count"),
    ):
        forged = tmp_path / "forged.tif"
        forged.write_bytes(data[:at] + forged_counts[:18] + data[at + 18 :])
        run = _subprocess("inspect", str(forged))
        assert expect in _assert_refused(run, forged)


def test_help_documents_the_exit_codes() -> None:
    run = _subprocess("inspect", "--help")
    assert run.code == 0 and "2  bad input" in run.stdout


# -- many corruptions, in-process (fast) -----------------------------------------------


def _inspect_all_ways(path: Path, tmp_path: Path) -> list[Run]:
    out = tmp_path / f"{path.name}.sidecar.json"
    runs = [
        _in_process("inspect", str(path)),
        _in_process("inspect", str(path), "--sidecar", str(out), "--overwrite"),
    ]
    for run in runs:
        assert run.code in (0, 2), run
        assert "Traceback" not in run.stderr
        assert run.seconds < SECONDS
        if run.code == 2:
            lines = run.stderr.strip().splitlines()
            assert len(lines) == 1 and str(path) in lines[0], run.stderr
    return runs


def test_truncations(good: dict[str, Path], tmp_path: Path) -> None:
    src = good["gray"]
    data = src.read_bytes()
    xml_at = struct.unpack_from("<Q", data, _ifd0(data)[1][270] + 12)[0]
    cuts = {1, 7, 8, 15, 16, 17, 100, 4095, 4096, 8191, 8192, 8200}
    for ifd, strip in _chain(data):
        cuts |= {ifd + 4, ifd + 100, strip + 1, strip + 100}
    cuts |= {xml_at - 1, xml_at, xml_at + 100, len(data) - 2, len(data) - 1}
    for cut in sorted(c for c in cuts if 0 < c < len(data)):
        path = tmp_path / f"cut{cut}.ome.tiff"
        path.write_bytes(data[:cut])
        for run in _inspect_all_ways(path, tmp_path):
            assert run.code == 2, (cut, run)  # each cut breaks a declared size


def test_random_byte_flips(good: dict[str, Path], tmp_path: Path) -> None:
    rng = random.Random(20261201)
    src = good["gray"]
    data = src.read_bytes()
    first, where = _ifd0(data)
    xml_at = struct.unpack_from("<Q", data, where[270] + 12)[0]
    ifd1 = struct.unpack_from("<Q", data, first + 8 + 20 * len(where))[0]
    regions = [
        (0, 16),  # header
        (first, first + 8 + 20 * len(where) + 8),  # IFD 0
        (ifd1, ifd1 + 300),  # IFD 1
        (xml_at, len(data)),  # the final OME-XML
    ]
    refused = 0
    for k in range(60):
        lo, hi = regions[k % len(regions)]
        buf = bytearray(data)
        for _ in range(rng.randint(1, 4)):
            buf[rng.randrange(lo, hi)] ^= 1 << rng.randrange(8)
        path = tmp_path / f"flip{k}.ome.tiff"
        path.write_bytes(bytes(buf))
        refused += sum(run.code == 2 for run in _inspect_all_ways(path, tmp_path))
    assert refused > 20  # most flips in the structure are caught


@pytest.mark.parametrize(
    "edit, expect",
    [
        (lambda x: x.replace('SizeX="16"', 'SizeX="-5"'), "SizeX"),
        (lambda x: x.replace('SizeT="6"', 'SizeT="1e8"'), "SizeT"),
        (lambda x: x.replace('SizeT="6"', 'SizeT="' + "9" * 40 + '"'), "SizeT"),
        (lambda x: x.replace('SizeT="6"', 'SizeT="7"'), "holds 6 images"),
        (lambda x: x.replace('Type="uint16"', 'Type="uint99"'), "Type"),
        (lambda x: x.replace('PlaneCount="6"', 'PlaneCount="9999999"'), "PlaneCount"),
        (lambda x: x.replace('IFD="0"', 'IFD="4000000000"'), "IFD 4000000000"),
        (lambda x: x.replace('SamplesPerPixel="1"', 'SamplesPerPixel="999"'), "Samp"),
        (lambda x: x.replace('DeltaT="10.0"', 'DeltaT="soon"'), "DeltaT"),
        (lambda x: x.replace("<Pixels ", "<Pixels PhysicalSizeX='nan' "), "Physical"),
        (lambda x: x[: len(x) // 2], "cannot be parsed"),
        (lambda x: x.replace("<Image", "<a>" * 100 + "<Image"), "nests deeper"),
        (lambda x: "\xff" + x, "UTF-8"),
    ],
    ids=[
        "negative", "exponent", "forty-digits", "one-plane-too-many", "type",
        "planecount", "tiffdata-ifd", "samples", "deltat", "physicalsize",
        "half-xml", "deep-xml", "latin1",
    ],
)  # fmt: skip
def test_forged_ome_numbers(
    good: dict[str, Path], tmp_path: Path, edit: Callable[[str], str], expect: str
) -> None:
    def apply(xml: str) -> str:
        out = edit(xml)
        assert out != xml
        return out

    if expect == "UTF-8":
        data = bytearray(good["gray"].read_bytes())
        _, where = _ifd0(bytes(data))
        offset = struct.unpack_from("<Q", data, where[270] + 12)[0]
        data[offset + 60] = 0xFF  # inside the XML declaration's text
        path = tmp_path / "latin1.ome.tiff"
        path.write_bytes(bytes(data))
    else:
        path = _with_xml(good["gray"], tmp_path / "forged.ome.tiff", apply)
    run = _in_process("inspect", str(path))
    assert run.code == 2 and expect in run.stderr, run.stderr
    _assert_refused(run, path)


def test_ifd_loop_and_overlap(good: dict[str, Path], tmp_path: Path) -> None:
    data = good["gray"].read_bytes()
    first, where = _ifd0(data)
    next_at = first + 8 + 20 * len(where)
    loop = _patched(good["gray"], tmp_path / "loop.ome.tiff", next_at, "<Q", first)
    assert "loops" in _assert_refused(_in_process("inspect", str(loop)), loop)
    # IFD 1 links back into IFD 0, one byte further each time: overlap
    ifd1 = struct.unpack_from("<Q", data, next_at)[0]
    n1 = struct.unpack_from("<Q", data, ifd1)[0]
    back = _patched(
        good["gray"], tmp_path / "back.ome.tiff", ifd1 + 8 + 20 * n1, "<Q", first
    )
    _assert_refused(_in_process("inspect", str(back)), back)


def test_strips_beyond_the_file(good: dict[str, Path], tmp_path: Path) -> None:
    data = good["gray"].read_bytes()
    _, where = _ifd0(data)
    size = len(data)
    for tag, value in ((273, size - 10), (279, 1 << 62), (273, 1 << 63)):
        path = _patched(
            good["gray"], tmp_path / f"strip{tag}.ome.tiff", where[tag] + 12, "<Q",
            value,
        )  # fmt: skip
        run = _in_process("inspect", str(path))
        assert "pixel data" in _assert_refused(run, path)
    short = _patched(
        good["gray"], tmp_path / "short.ome.tiff", where[279] + 12, "<Q", 3
    )
    assert "bytes of pixels" in _assert_refused(
        _in_process("inspect", str(short)), short
    )


# -- tampered frame-metadata annotations (inspect --sidecar) ---------------------------


@pytest.mark.parametrize(
    "edit",
    [
        lambda v: v.replace("\n[1,0,", "\n[1,7,"),  # an undefined template
        lambda v: v.replace("\n[1,0,0,", "\n[1,0,99,"),  # a leaf that does not exist
        lambda v: v.replace('"frames":6', '"frames":7'),  # a wrong frame count
        lambda v: v.replace("\n[1,0,", "\nnot json ["),  # garbage
        lambda v: v.replace('{"template":0,"record":', '{"templ":0,"rec":'),
        lambda v: v.replace('"version":1', '"version":"1"'),
        lambda v: v.replace("\n[2,0,", "\n" + "[2,0]\n" * 1 + "[2,0,"),
    ],
    ids=["template", "leaf", "count", "garbage", "keys", "version", "extra-line"],
)
def test_tampered_annotation(
    good: dict[str, Path], tmp_path: Path, edit: Callable[[str], str]
) -> None:
    def apply(xml: str) -> str:
        out = edit(xml)
        assert out != xml
        return out

    path = _with_xml(good["gray"], tmp_path / "ann.ome.tiff", apply)
    run = _in_process("inspect", str(path), "--sidecar", str(tmp_path / "s.json"))
    _assert_refused(run, path)
    assert not (tmp_path / "s.json").exists()


def test_annotation_that_would_expand_without_bound(
    good: dict[str, Path], tmp_path: Path
) -> None:
    def bomb(xml: str) -> str:
        head, rest = xml.split("<Value>", 1)
        value, tail = rest.split("</Value>", 1)
        header = value.split("\n", 1)[0]
        template = '{"template":0,"record":{"pad":"' + "x" * 200_000 + '"}}'
        lines = "\n".join(f"[{i},0]" for i in range(20_000))
        return f"{head}<Value>{header}\n{template}\n{lines}</Value>{tail}"

    path = _with_xml(good["gray"], tmp_path / "expand.ome.tiff", bomb)
    run = _in_process("inspect", str(path), "--sidecar", str(tmp_path / "s.json"))
    assert "expand" in _assert_refused(run, path)


# -- the checks themselves -------------------------------------------------------------


def test_read_tiff_on_a_good_file(good: dict[str, Path]) -> None:
    facts = read_tiff(good["gray"])
    assert facts.bigtiff and facts.byteorder == "<" and facts.ifds == 6
    assert facts.first is not None and (facts.first.width, facts.first.height) == (
        16,
        16,
    )
    assert facts.first.data_bytes == 16 * 16 * 2 and facts.stopped is None
    root = parse_xml(facts.description or b"", source="gray")
    planes = check_ome(root, source="gray", file_size=facts.file_size, ifds=6)
    assert planes.planes == 6 and planes.plane_bytes == (512,)


def test_read_tiff_classic_and_big_endian(tmp_path: Path) -> None:
    import tifffile

    for name, kwargs in (
        ("classic.tif", {}),
        ("big.tif", {"byteorder": ">"}),
        ("bigtiff.tif", {"bigtiff": True, "byteorder": ">"}),
        ("tiles.tif", {"tile": (16, 16)}),
    ):
        path = tmp_path / name
        tifffile.imwrite(
            path, np.zeros((3, 32, 32), np.uint16), photometric="minisblack", **kwargs
        )
        facts = read_tiff(path)
        assert facts.ifds == 3 and facts.first is not None, name
        assert facts.first.width == 32 and facts.first.bits == 16, name


def test_read_tiff_lenient_keeps_the_valid_prefix(
    good: dict[str, Path], tmp_path: Path
) -> None:
    # what a crash leaves: IFD 0 points at the provisional XML page, and the
    # file ends inside frame 2's pixels
    data = bytearray(good["gray"].read_bytes())
    _, where = _ifd0(bytes(data))
    struct.pack_into("<QQ", data, where[270] + 4, 4095, 4096)
    cut = tmp_path / "crash.ome.tiff"
    cut.write_bytes(bytes(data[: _chain(bytes(data))[2][1] + 100]))
    with pytest.raises(BadFileError, match="IFD 2"):
        read_tiff(cut)
    facts = read_tiff(cut, strict=False)
    assert facts.ifds == 2 and facts.stopped is not None and "IFD 2" in facts.stopped


def test_parse_xml_limits() -> None:
    ok = parse_xml(b"<a><b/></a>\x00\x00", source="s")
    assert ok.tag == "a"
    with pytest.raises(BadFileError, match="more than 8"):
        parse_xml("<a>" + "x" * 20 + "</a>", source="s", max_bytes=8)
    with pytest.raises(BadFileError, match="DOCTYPE"):
        parse_xml('<!DOCTYPE a [<!ENTITY e "x">]><a>&e;</a>', source="s")
    with pytest.raises(BadFileError, match="DOCTYPE"):
        parse_xml("<!doctype a><a/>", source="s")
    with pytest.raises(BadFileError, match="nests deeper"):
        parse_xml("<a>" * 100 + "</a>" * 100, source="s")
    with pytest.raises(BadFileError, match="cannot be parsed"):
        parse_xml("<a>&undefined;</a>", source="s")
    with pytest.raises(BadFileError, match="no element"):
        parse_xml("", source="s")


# -- journals --------------------------------------------------------------------------


def _spec(**changes: Any) -> StreamSpec:
    base: dict[str, Any] = {
        "stream_id": 1,
        "path": "/data/run.ome.tiff",
        "kind": "ome-tiff",
        "shape": (16, 16),
        "dtype": "<u2",
        "frames": 6,
    }
    base.update(changes)
    return StreamSpec(**base)


@pytest.mark.parametrize(
    "changes, expect",
    [
        ({"shape": (-16, 16)}, "implausible edge"),
        ({"shape": (0, 16)}, "implausible edge"),
        ({"shape": (16,)}, "not (height, width"),
        ({"shape": (16, 16, 3, 3)}, "not (height, width"),
        ({"shape": (1 << 30, 16)}, "implausible edge"),
        ({"shape": (65536, 65536, 16)}, "bytes each"),
        ({"dtype": "O"}, "plain numeric"),
        ({"dtype": "V16"}, "plain numeric"),
        ({"dtype": "S4"}, "plain numeric"),
        ({"dtype": "i4,f8"}, "plain numeric"),
        ({"dtype": "(2,)u2"}, "plain numeric"),
        ({"dtype": "not-a-dtype"}, "not a numpy dtype"),
        ({"dtype": "u" * 100}, "not a dtype name"),
        ({"kind": "pdf"}, "kind"),
        ({"frames": -1}, "frame count"),
    ],
)
def test_check_stream_spec_refuses(changes: dict[str, Any], expect: str) -> None:
    with pytest.raises(ValueError, match=re.escape(expect)) as info:
        check_stream_spec(_spec(**changes), source="run.ome.tiff_journal.ndjson")
    assert str(info.value).startswith("run.ome.tiff_journal.ndjson: ")


def test_check_stream_spec_accepts_what_writers_make() -> None:
    for changes in (
        {},
        {"shape": (2048, 2048)},
        {"shape": (480, 640, 3), "dtype": "|u1", "kind": "video"},
        {"dtype": ">f8", "frames": None},
    ):
        check_stream_spec(_spec(**changes), source="j")


def test_recover_refuses_a_forged_journal_header(
    good: dict[str, Path], tmp_path: Path
) -> None:
    path = _copy(good["gray"], tmp_path / "victim.ome.tiff")
    journal = Path(f"{path}_journal.ndjson")
    header = msgspec.json.encode(JournalHeader(1, _spec(shape=(-16, 16))))
    journal.write_bytes(header + b'\n{"i":0,"k":0,"m":{}}\n')
    before = path.read_bytes()
    line = _assert_refused(_subprocess("recover", str(path)), path)
    assert "journal" in line and "shape" in line
    assert path.read_bytes() == before and journal.exists()
    journal.write_bytes(b'{"mesowriter_journal":1,"spec":{"dtype":"O"')
    with pytest.raises(BadFileError, match="no complete header"):
        read_journal_header(str(journal))
    journal.write_bytes(b'{"mesowriter_journal":1}\n')
    with pytest.raises(BadFileError, match="not a mesowriter journal header"):
        read_journal_header(str(journal))
    _assert_refused(_in_process("recover", str(path)), path)
