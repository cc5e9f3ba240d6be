"""Metadata never costs a frame: whatever acquisition code hands over, JSON comes out.

`MetadataEncoder.encode` must return bytes that `json.loads` parses for any
input, mark what it cannot encode value by value, keep NaN/inf as the tokens
Python's json reads back, and count all of it. End to end, a numpy scalar in
`MDAEvent.metadata` (which made pydantic's JSON dump raise and lost the
frame) reaches the sidecar through the real DemoCamera.
"""

from __future__ import annotations

import collections
import dataclasses
import datetime as dt
import decimal
import json
import math
import pickle
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import useq

from mesowriter import CustomWriter
from mesowriter._metadata import (
    MAX_DEPTH,
    MAX_TEXT,
    METADATA_ERROR,
    UNENCODABLE,
    MetadataEncoder,
    plain_json,
    sequence_json,
)


class BadRepr:
    def __repr__(self) -> str:
        raise RuntimeError("repr refuses")


class BadDump:
    """A pydantic look-alike whose dump raises."""

    def model_dump(self, **kwargs: Any) -> Any:
        raise ValueError("dump refuses")

    def __repr__(self) -> str:
        return "BadDump()"


class BadStr(str):
    def __str__(self) -> str:
        raise RuntimeError("str refuses")


class HugeRepr:
    def __repr__(self) -> str:
        return "x" * 1_000_000


class RaisingEverything:
    """Unknown type, repr raises, __eq__/__hash__ raise: still one marker."""

    def __repr__(self) -> str:
        raise KeyError("no")

    def __eq__(self, other: object) -> bool:
        raise RuntimeError("no")

    __hash__ = None  # type: ignore[assignment]


@dataclasses.dataclass
class Point:
    x: float
    y: float


def _encode(metadata: Any) -> tuple[Any, MetadataEncoder, bytes]:
    enc = MetadataEncoder()
    out = enc.encode(metadata)
    assert isinstance(out, bytes)
    return json.loads(out), enc, out


def _counts(enc: MetadataEncoder) -> tuple[int, int, int]:
    return enc.fallbacks, enc.frames_replaced, enc.nonfinite


def _markers(tree: Any) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = []
    stack = [tree]
    while stack:
        o = stack.pop()
        if isinstance(o, dict):
            if UNENCODABLE in o:
                found.append(o)
            stack.extend(o.values())
        elif isinstance(o, list):
            stack.extend(o)
    return found


def _frame_meta() -> dict[str, Any]:
    """A pymmcore-plus frame-dict as the DemoCamera delivers it (FIELD.md)."""
    seq = useq.MDASequence(time_plan={"interval": 0, "loops": 3})
    event = next(iter(seq))
    return {
        "format": "frame-dict",
        "version": "1.0",
        "runner_time_ms": 23.88,
        "camera_device": "Camera",
        "property_values": (),
        "exposure_ms": 10.0,
        "pixel_size_um": 1.0,
        "mda_event": event,
        "hardware_triggered": True,
        "images_remaining_in_buffer": 0,
        "camera_metadata": {
            "Binning": "1",
            "Camera": "Camera",
            "ElapsedTime-ms": "21.87",
            "ImageNumber": "1",
            "PixelType": "GRAY16",
            "TimeReceivedByCore": "2026-11-24 10:02:53.583564",
        },
    }


# -- clean input -------------------------------------------------------------------


def test_clean_frame_metadata_is_plain_json_and_uncounted() -> None:
    tree, enc, _ = _encode(_frame_meta())
    assert _counts(enc) == (0, 0, 0)
    assert tree["mda_event"]["index"] == {"t": 0}
    assert "sequence" not in tree["mda_event"]
    assert tree["property_values"] == []
    assert enc.encode(None) == b"{}" and enc.encode({}) == b"{}"


def test_a_real_null_is_not_a_nan() -> None:
    meta = _frame_meta()
    meta["position"] = {"x": 1.0, "y": 2.0, "z": None}
    tree, enc, out = _encode(meta)
    assert tree["position"]["z"] is None and _counts(enc) == (0, 0, 0)
    assert b"NaN" not in out


# -- numpy --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "value, expected",
    [
        (np.int8(-3), -3),
        (np.int16(300), 300),
        (np.int32(-70000), -70000),
        (np.int64(2**40), 2**40),
        (np.uint8(255), 255),
        (np.uint16(65535), 65535),
        (np.uint32(2**32 - 1), 2**32 - 1),
        (np.uint64(2**64 - 1), 2**64 - 1),
        (np.float16(0.5), 0.5),
        (np.float32(1.25), 1.25),
        (np.float64(2.5), 2.5),
        (np.bool_(True), True),
        (np.str_("text"), "text"),
        (np.datetime64("2026-11-24"), "2026-11-24"),
    ],
    ids=lambda v: type(v).__name__,
)
def test_numpy_scalars_become_numbers(value: Any, expected: Any) -> None:
    tree, enc, _ = _encode({"v": value, "nested": {"list": [value]}})
    assert tree == {"v": expected, "nested": {"list": [expected]}}
    assert _counts(enc) == (0, 0, 0)


def test_numpy_complex_is_marked_not_fatal() -> None:
    tree, enc, _ = _encode({"c": np.complex64(1 + 2j), "ok": 1})
    assert tree["ok"] == 1
    assert tree["c"][UNENCODABLE] == "complex" and tree["c"]["repr"] == "(1+2j)"
    assert _counts(enc) == (1, 0, 0)


def test_numpy_arrays() -> None:
    tree, enc, _ = _encode(
        {
            "a": np.arange(6, dtype=np.uint16).reshape(2, 3),
            "f": np.array([0.5, np.nan, np.inf]),
            "empty": np.zeros((0, 3)),
            "objects": np.array([1, object()], dtype=object),
        }
    )
    assert tree["a"] == [[0, 1, 2], [3, 4, 5]]
    assert tree["f"][0] == 0.5 and math.isnan(tree["f"][1]) and tree["f"][2] == math.inf
    assert tree["empty"] == []
    assert tree["objects"][0] == 1 and tree["objects"][1][UNENCODABLE] == "object"
    assert _counts(enc) == (1, 0, 2)


# -- NaN and infinity ----------------------------------------------------------------


def test_nonfinite_floats_are_kept_as_tokens_at_any_depth() -> None:
    meta = {
        "top": math.nan,
        "list": [1.0, math.inf, [-math.inf]],
        "deep": {"a": {"b": {"c": [np.float32("nan"), np.float64("-inf")]}}},
        "null": None,
        "tuple": (math.nan,),
    }
    tree, enc, out = _encode(meta)
    assert b"NaN" in out and b"Infinity" in out and b"-Infinity" in out
    assert math.isnan(tree["top"]) and math.isnan(tree["tuple"][0])
    assert tree["list"] == [1.0, math.inf, [-math.inf]]
    c = tree["deep"]["a"]["b"]["c"]
    assert math.isnan(c[0]) and c[1] == -math.inf
    assert tree["null"] is None
    assert _counts(enc) == (0, 0, 6)


def test_nonfinite_in_an_event_and_a_dataclass() -> None:
    event = useq.MDAEvent(index={"t": 2}, x_pos=math.nan, metadata={"g": math.inf})
    tree, enc, _ = _encode({"mda_event": event, "pt": Point(math.nan, 1.0)})
    assert math.isnan(tree["mda_event"]["x_pos"])
    assert tree["mda_event"]["metadata"]["g"] == math.inf
    assert math.isnan(tree["pt"]["x"]) and tree["pt"]["y"] == 1.0
    assert _counts(enc) == (0, 0, 3)


def test_nonfinite_counter_accumulates_over_frames() -> None:
    enc = MetadataEncoder()
    for _ in range(3):
        json.loads(enc.encode({"v": math.nan, "w": None}))
    assert enc.nonfinite == 3 and enc.fallbacks == 0


# -- what cannot be encoded ---------------------------------------------------


def test_circular_references_are_marked_where_they_close() -> None:
    d: dict[str, Any] = {"name": "loop"}
    d["self"] = d
    lst: list[Any] = [1]
    lst.append(lst)
    tree, enc, _ = _encode({"d": d, "l": lst, "ok": 2})
    assert tree["ok"] == 2
    assert tree["d"]["name"] == "loop" and tree["d"]["self"][UNENCODABLE] == "dict"
    assert tree["d"]["self"]["error"] == "circular reference"
    assert tree["l"][0] == 1 and tree["l"][1][UNENCODABLE] == "list"
    assert _counts(enc) == (2, 0, 0)


def test_shared_but_acyclic_values_are_not_cycles() -> None:
    shared = {"x": 1}
    tree, enc, _ = _encode({"a": shared, "b": [shared, shared], "n": math.nan})
    assert tree["a"] == {"x": 1} and tree["b"] == [{"x": 1}, {"x": 1}]
    assert _counts(enc) == (0, 0, 1)


def test_raising_repr_model_dump_and_str() -> None:
    tree, enc, _ = _encode(
        {
            "repr": BadRepr(),
            "dump": BadDump(),
            "str_subclass": BadStr("text"),
            "everything": RaisingEverything(),
            "ok": "fine",
        }
    )
    assert tree["ok"] == "fine"
    assert tree["repr"][UNENCODABLE].endswith("BadRepr") and "repr" not in tree["repr"]
    assert tree["dump"]["error"] == "ValueError: dump refuses"
    assert tree["dump"]["repr"] == "BadDump()"
    assert tree["str_subclass"] == "text"  # its text, never its own __str__
    assert "repr" not in tree["everything"]
    assert _counts(enc) == (3, 0, 0)


def test_markers_are_bounded() -> None:
    tree, enc, out = _encode({"big": HugeRepr(), "set_of_junk": {object()}})
    assert len(tree["big"]["repr"]) == MAX_TEXT and tree["big"]["repr"].endswith("...")
    assert len(out) < 2000
    assert tree["set_of_junk"][0][UNENCODABLE] == "object"
    assert _counts(enc) == (2, 0, 0)


def test_keys_that_are_not_strings() -> None:
    tree, enc, _ = _encode(
        {
            "s": 0,
            7: "int",
            np.int64(8): "numpy int",
            2.5: "float",
            (1, 2): "tuple",
            None: "none",
            frozenset({1}): "frozenset",
        }
    )
    assert tree["s"] == 0 and tree["7"] == "int" and tree["8"] == "numpy int"
    assert tree["2.5"] == "float"
    assert tree["(1, 2)"] == "tuple" and tree["None"] == "none"
    assert tree["frozenset({1})"] == "frozenset"
    assert _counts(enc) == (3, 0, 0)  # tuple, None, frozenset keys


def test_keys_that_collide_once_stringified_are_all_kept() -> None:
    tree, enc, _ = _encode({1: "int", "1": "str", (1,): object()})
    assert sorted(tree) == ["(1,)", "1", "1~2"]
    assert {tree["1"], tree["1~2"]} == {"int", "str"}
    assert _counts(enc) == (2, 0, 0)  # the tuple key and the object value


def test_bytes_sets_and_other_library_types() -> None:
    tree, enc, _ = _encode(
        {
            "bytes": b"\x00\xff",
            "bytearray": bytearray(b"ab"),
            "memoryview": memoryview(b"ab"),
            "set": {3, 1, 2},
            "frozenset": frozenset({"a"}),
            "decimal": decimal.Decimal("1.5"),
            "uuid": uuid.UUID(int=1),
            "when": dt.datetime(2026, 11, 24, 10, 2, 53),
            "path": Path("/data/run 1"),
            "deque": collections.deque([1]),
            "nan": math.nan,  # forces the careful path for everything above
        }
    )
    assert tree["bytes"] == "AP8=" and tree["bytearray"] == "YWI="  # base64
    assert tree["memoryview"] == "YWI="
    assert sorted(tree["set"]) == [1, 2, 3] and tree["frozenset"] == ["a"]
    assert tree["decimal"] == "1.5"
    assert tree["uuid"] == "00000000-0000-0000-0000-000000000001"
    assert tree["when"] == "2026-11-24T10:02:53" and tree["path"] == "/data/run 1"
    assert tree["deque"][UNENCODABLE] == "collections.deque"
    assert _counts(enc) == (1, 0, 1)


def test_the_fast_and_careful_paths_agree_on_every_known_type() -> None:
    meta = {
        "bytes": b"\x00\xff",
        "set": {1},
        "decimal": decimal.Decimal("1.5"),
        "when": dt.datetime(2026, 11, 24, 10, 2, 53, tzinfo=dt.timezone.utc),
        "delta": dt.timedelta(seconds=2),
        "path": Path("/a"),
        "np": np.float32(0.5),
        "event": useq.MDAEvent(index={"t": 1}, channel={"config": "DAPI"}),
        "point": Point(1.0, 2.0),
    }
    fast, enc, _ = _encode(meta)
    careful, enc2, _ = _encode({**meta, "nan": math.nan})
    careful.pop("nan")
    assert fast == careful
    assert _counts(enc) == (0, 0, 0) and _counts(enc2) == (0, 0, 1)


def test_huge_ints_and_lone_surrogates() -> None:
    tree, enc, _ = _encode(
        {"big": 2**70, "huge": 10**5000, "s": "ok\ud800", "\udc00": 1, "fine": "é"}
    )
    assert tree["big"] == 2**70 and tree["fine"] == "é"
    assert tree["huge"][UNENCODABLE] == "int" and "4300" in tree["huge"]["error"]
    assert tree["s"][UNENCODABLE] == "str"
    assert tree["'\\udc00'"] == 1
    assert _counts(enc) == (3, 0, 0)


def test_a_huge_nested_structure() -> None:
    deep: list[Any] = []
    cur = deep
    for _ in range(100_000):
        nxt: list[Any] = []
        cur.append(nxt)
        cur = nxt
    wide = {f"k{i}": [i, float(i), str(i)] for i in range(20_000)}
    tree, enc, _ = _encode({"deep": deep, "wide": wide})
    assert tree["wide"]["k19999"] == [19999, 19999.0, "19999"]
    depth, node = 0, tree["deep"]
    while isinstance(node, list):
        node, depth = node[0], depth + 1
    assert node[UNENCODABLE] == "list" and "deeper" in node["error"]
    assert depth == MAX_DEPTH - 1  # the top dict is level 0
    assert _counts(enc) == (1, 0, 0)


def test_metadata_that_is_not_a_dict() -> None:
    for value, expected in (([1, 2], [1, 2]), ("text", "text"), (np.arange(2), [0, 1])):
        tree, enc, _ = _encode(value)
        assert tree == expected and _counts(enc) == (0, 0, 0)
    tree, enc, _ = _encode(object())
    assert tree[UNENCODABLE] == "object" and _counts(enc) == (1, 0, 0)


def test_a_mapping_whose_items_raise_is_one_marker() -> None:
    class Broken(collections.abc.Mapping):  # type: ignore[type-arg]
        def __getitem__(self, key: Any) -> Any:
            raise KeyError(key)

        def __iter__(self) -> Any:
            raise RuntimeError("cannot iterate")

        def __len__(self) -> int:
            return 1

    tree, enc, _ = _encode({"m": Broken(), "ok": 1})
    assert tree["ok"] == 1 and tree["m"][UNENCODABLE].endswith("Broken")
    assert _counts(enc) == (1, 0, 0)


def test_whole_frame_error_when_even_the_careful_path_fails(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import mesowriter._metadata as md

    def broken(*args: Any, **kwargs: Any) -> str:
        raise MemoryError("no memory for the JSON text")

    monkeypatch.setattr(md.json, "dumps", broken)
    enc = MetadataEncoder()
    out = enc.encode({"x": object()})
    monkeypatch.undo()
    assert json.loads(out) == {
        METADATA_ERROR: "MemoryError: no memory for the JSON text"
    }
    assert _counts(enc) == (0, 1, 0)


def test_base_exceptions_pass() -> None:
    class Interrupting:
        def model_dump(self, **kwargs: Any) -> Any:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        MetadataEncoder().encode({"x": Interrupting()})


# -- a live MDAEvent -------------------------------------------------------------------


def test_live_event_with_numpy_metadata_is_encoded_without_fallback() -> None:
    event = useq.MDAEvent(index={"t": 4}, metadata={"trial": np.int64(4)})
    tree, enc, _ = _encode({"mda_event": event})
    assert tree["mda_event"]["metadata"] == {"trial": 4}
    assert tree["mda_event"]["index"] == {"t": 4}
    assert _counts(enc) == (0, 0, 0)


def test_live_event_with_hostile_metadata_keeps_its_plain_fields() -> None:
    cyc: dict[str, Any] = {}
    cyc["me"] = cyc
    event = useq.MDAEvent(
        index={"t": 1, "c": 0},
        channel={"config": "DAPI"},
        metadata={"trial": np.int64(1), "hw": BadRepr(), "cyc": cyc},
    )
    tree, enc, _ = _encode({"mda_event": event, "ok": True})
    ev = tree["mda_event"]
    assert ev["index"] == {"t": 1, "c": 0} and ev["channel"]["config"] == "DAPI"
    assert ev["metadata"]["trial"] == 1
    assert len(_markers(ev["metadata"])) == 2
    assert _counts(enc) == (2, 0, 0)


def test_recorded_democamera_metadata_round_trips_through_pickle() -> None:
    meta = pickle.loads(pickle.dumps(_frame_meta()))
    tree, enc, _ = _encode(meta)
    assert tree["camera_metadata"]["PixelType"] == "GRAY16" and enc.fallbacks == 0


# -- sequence and summary metadata ---------------------------------------------


def test_plain_json_drops_what_cannot_be_json() -> None:
    cyc: dict[str, Any] = {"a": 1}
    cyc["me"] = cyc
    tree, dropped = plain_json(
        {
            "hw": object(),
            "n": np.int64(3),
            "items": [object(), 1, BadRepr()],
            "cyc": cyc,
            (1, 2): "bad key",
            "nan": math.nan,
        }
    )
    assert tree["n"] == 3 and tree["items"] == [1] and tree["cyc"] == {"a": 1}
    assert math.isnan(tree["nan"]) and "hw" not in tree
    assert dropped == 5
    assert plain_json(object()) == (None, 1)
    assert plain_json({"a": [1, "b"]}) == ({"a": [1, "b"]}, 0)


def test_sequence_json_keeps_the_layout_without_live_objects() -> None:
    seq = useq.MDASequence(
        time_plan={"interval": 0, "loops": 3},
        channels=["DAPI", "FITC"],
        z_plan={"range": 2, "step": 1},
        stage_positions=[
            useq.Position(x=1, name="A"),
            useq.Position(x=2, sequence=useq.MDASequence(metadata={"dev": object()})),
        ],
        metadata={"hw": object(), "n": np.int64(2), "ok": "yes"},
    )
    data, dropped = sequence_json(seq)
    assert data is not None and dropped == 2
    assert data["metadata"] == {"n": 2, "ok": "yes"}
    assert data["time_plan"]["loops"] == 3
    assert [c["config"] for c in data["channels"]] == ["DAPI", "FITC"]
    assert data["stage_positions"][0]["name"] == "A"
    assert data["stage_positions"][1]["sequence"]["metadata"] == {}
    clean = useq.MDASequence(time_plan={"interval": 0, "loops": 3}, channels=["DAPI"])
    assert sequence_json(clean) == (clean.model_dump(mode="json"), 0)
    assert sequence_json(None) == (None, 0)


def test_sequence_json_with_a_circular_metadata_value() -> None:
    cyc: dict[str, Any] = {}
    cyc["me"] = cyc
    seq = useq.MDASequence(time_plan={"interval": 0, "loops": 2}, metadata={"c": cyc})
    data, dropped = sequence_json(seq)
    assert data is not None and data["time_plan"]["loops"] == 2
    # pydantic copies the outer dict; the cycle closes one level further down
    assert data["metadata"]["c"] in ({}, {"me": {}}) and dropped == 1
    json.dumps(data)


def test_sequence_json_never_raises() -> None:
    class Exploding:
        def model_dump(self, **kwargs: Any) -> Any:
            raise RuntimeError("no")

    assert sequence_json(Exploding()) == (None, 1)


# -- end to end, through the real DemoCamera ------------------------------------------


# A list of events reaches handlers as pymmcore-plus's GeneratorMDASequence,
# whose `sizes` warns when CustomWriter plans its files (not this test's subject).
@pytest.mark.filterwarnings("ignore:This sequence is a placeholder:UserWarning")
def test_numpy_trial_numbers_in_event_metadata_reach_the_sidecar(
    core: Any, tmp_path: Path
) -> None:
    path = tmp_path / "trials.ome.tiff"
    events = [
        useq.MDAEvent(index={"t": i}, metadata={"trial": np.int64(i)}) for i in range(5)
    ]
    with CustomWriter(path, ring_bytes=64 << 20) as writer:
        core.mda.run(events, output=writer)
    report = writer.reports["p0"]
    assert report.frames_written == 5 and report.frames_dropped == 0
    assert report.metadata_fallbacks == 0
    sidecar = json.loads(Path(f"{path}_frame_metadata.json").read_text())
    trials = [m["mda_event"]["metadata"]["trial"] for m in sidecar["p0"]]
    assert trials == [0, 1, 2, 3, 4]


# NaN tokens are not JSON to strict parsers: the journal must keep the record
# (it parses records by their prefix), so no frame after a NaN is lost.
def test_nan_metadata_through_the_writer_keeps_every_frame(tmp_path: Path) -> None:
    from mesowriter import WriterService

    path = tmp_path / "nan.ome.tiff"
    with WriterService(ring_bytes=8 << 20, workers=1) as svc:
        stream = svc.open_stream(path, shape=(8, 8), dtype="uint16", frames=4)
        for i in range(4):
            value = math.nan if i == 1 else float(i)
            stream.write(np.full((8, 8), i, np.uint16), {"i": i, "v": value})
        report = stream.close(check=False)
    sidecar = json.loads(Path(f"{path}_frame_metadata.json").read_text())
    assert [m["i"] for m in sidecar["p0"]] == [0, 1, 2, 3]
    assert math.isnan(sidecar["p0"][1]["v"])
    assert report.frames_written == 4 and report.frames_dropped == 0
