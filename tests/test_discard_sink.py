"""The discarding sink: reachable only by `kind="discard"`, never by a name.

It exists for the bench's pipeline ceiling and for fast end-to-end tests; a
lab script that named a file `run.discard` (or anything else) must get a
real file or a clear refusal, never a stream that keeps nothing.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from mesowriter import WriterService
from mesowriter.sinks import kind_for_path, sink_class, sink_for_path, split_suffix
from mesowriter.sinks._discard import DiscardSink
from mesowriter.sinks._tiff import TIFF_SUFFIXES
from mesowriter.sinks._video import VIDEO_SUFFIXES


@pytest.fixture
def tmp() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="mesowriter-discard-") as d:
        yield Path(d)


def _names() -> list[str]:
    """Every suffix a sink knows, odd cases and near misses of 'discard'."""
    suffixes = [*TIFF_SUFFIXES, *VIDEO_SUFFIXES, ".discard", ".null", ".bin", ""]
    stems = ["run", "discard", "/data/discard", "run.discard"]
    out = []
    for stem in stems:
        for s in suffixes:
            out += [stem + s, stem + s.upper()]
    return out


def test_registered_under_its_kind_without_suffixes() -> None:
    assert sink_class("discard") is DiscardSink
    assert DiscardSink.kind == "discard"
    assert DiscardSink.suffixes == ()


@pytest.mark.parametrize("name", _names())
def test_no_file_name_chooses_it(name: str) -> None:
    assert not DiscardSink.matches(name)
    try:
        cls = sink_for_path(name)
    except ValueError:
        return  # refused outright: also fine
    assert cls is not DiscardSink
    assert kind_for_path(name) != "discard"
    split_suffix(name)  # never trips over a sink without suffixes


def test_short_discard_run_end_to_end(tmp: Path) -> None:
    path = tmp / "dummy"
    frames = 200
    with WriterService(ring_bytes=4 << 20, handle_signals=False) as svc:
        stream = svc.open_stream(
            path, kind="discard", shape=(128, 128), dtype="uint16", frames=frames
        )
        frame = np.zeros((128, 128), np.uint16)
        for i in range(frames):
            assert stream.write(frame, {"i": i})
        report = stream.close()
    assert report.frames_written == frames and report.frames_dropped == 0
    assert report.error is None
    assert report.sink["frames_discarded"] == frames
    assert report.bytes_written == frames * frame.nbytes
    assert not path.exists()  # no data file; only the worker's companions
    assert {p.name for p in tmp.iterdir()} <= {
        "dummy_report.json",
        "dummy_frame_metadata.json",
    }
