"""OME-XML built by the TIFF sink: schema validity, layout, tifffile, sidecar."""

from __future__ import annotations

import importlib.util
import json
import math
import re
import time
from pathlib import Path
from typing import Any

import numpy as np
import ome_types
import pytest
import tifffile
import useq

from mesowriter._layout import file_key_for_event
from mesowriter.sinks._omexml import (
    build_ome_xml,
    provisional_ome_xml,
    sidecar_from_ome_xml,
)

HAVE_VALIDATOR = any(importlib.util.find_spec(m) for m in ("lxml", "xmlschema"))
SHAPE = (4, 6)


def validate(xml: str) -> ome_types.OME:
    """Schema-validate when a validator is installed, else parse the model."""
    return ome_types.from_xml(xml, validate=HAVE_VALIDATOR)


def test_schema_validator_available() -> None:
    if not HAVE_VALIDATOR:
        pytest.skip("lxml/xmlschema missing: OME-XML only parsed, not validated")


def meta_for(event: useq.MDAEvent, i: int, **extra: Any) -> dict[str, Any]:
    """Frame metadata shaped like pymmcore-plus's FrameMetaV1 for a burst."""
    return {
        "format": "frame-dict",
        "version": "1.0",
        "runner_time_ms": 10.0 + 12.5 * i,
        "camera_device": "Camera",
        "property_values": [],
        "exposure_ms": 10.0,
        "pixel_size_um": 0.65,
        "mda_event": event.model_dump(
            mode="json", exclude={"sequence"}, exclude_none=True
        ),
        "hardware_triggered": True,
        "images_remaining_in_buffer": 0,
        "camera_metadata": {
            "Binning": "1",
            "Camera": "Camera",
            "ElapsedTime-ms": f"{8.0 + 12.5 * i:.2f}",
            "Height": str(SHAPE[0]),
            "ImageNumber": str(i),
            "PixelType": "GRAY16",
            "TimeReceivedByCore": f"2026-11-24 12:21:03.{i % 1000000:06d}",
            "Width": str(SHAPE[1]),
        },
        **extra,
    }


def run(seq: useq.MDASequence) -> dict[str, list[dict[str, Any]]]:
    """Split a sequence's frames into files the way the handler will."""
    files: dict[str, list[dict[str, Any]]] = {}
    for i, ev in enumerate(seq):
        key = file_key_for_event(dict(ev.index), ev.pos_name)
        files.setdefault(key, []).append(meta_for(ev, i))
    return files


def build(
    metas: list[Any],
    seq: useq.MDASequence | None,
    shape: tuple[int, ...] = SHAPE,
    dtype: str = "<u2",
    key: str = "p0",
    raw: list[bytes] | None = None,
    **kw: Any,
) -> str:
    records = raw if raw is not None else [json.dumps(m).encode() for m in metas]
    return build_ome_xml(
        shape=shape,
        dtype=dtype,
        records=iter(list(enumerate(records))),  # a one-shot iterator
        sequence=None if seq is None else seq.model_dump(mode="json"),
        position_key=key,
        image_name="test",
        **kw,
    )


def write_tiff(path: Path, xml: str, n: int, shape: tuple[int, ...] = SHAPE) -> None:
    """N pages whose pixels all equal their IFD index; IFD 0 carries `xml`."""
    dtype = "u1" if len(shape) == 3 else "u2"
    with tifffile.TiffWriter(path, bigtiff=True) as tw:
        for i in range(n):
            tw.write(
                np.full(shape, i, dtype),
                description=xml if i == 0 else None,
                metadata=None,
                contiguous=False,
            )


def read_series(path: Path) -> tuple[str, tuple[int, ...], np.ndarray]:
    with tifffile.TiffFile(path) as tf:
        assert tf.is_ome
        s = tf.series[0]
        assert s.kind == "ome"
        return s.axes, s.shape, s.asarray()


def pixels(xml: str) -> Any:
    return validate(xml).images[0].pixels


TCZ = useq.MDASequence(
    time_plan={"interval": 0.5, "loops": 2},
    channels=["DAPI", "FITC"],
    z_plan={"range": 2, "step": 1},
    axis_order="tpcz",
)


def test_complete_tcz(tmp_path: Path) -> None:
    metas = run(TCZ)["p0"]
    xml = build(metas, TCZ)
    px = pixels(xml)
    assert px.dimension_order.value == "XYZCT"
    assert (px.size_t, px.size_c, px.size_z) == (2, 2, 3)
    assert [c.name for c in px.channels] == ["DAPI", "FITC"]
    assert px.physical_size_x == pytest.approx(0.65)
    assert px.physical_size_z == pytest.approx(1.0)
    assert len(px.tiff_data_blocks) == 1 and px.tiff_data_blocks[0].plane_count == 12
    planes = [(p.the_t, p.the_c, p.the_z) for p in px.planes]
    assert planes == [(e.index["t"], e.index["c"], e.index["z"]) for e in TCZ]
    p1 = px.planes[1]
    assert p1.delta_t == pytest.approx(12.5) and p1.delta_t_unit.value == "ms"
    assert p1.exposure_time == 10.0 and p1.position_z == 0.0
    assert validate(xml).images[0].acquisition_date is not None
    path = tmp_path / "tcz.ome.tif"
    write_tiff(path, xml, 12)
    axes, shape, data = read_series(path)
    assert (axes, shape) == ("TCZYX", (2, 2, 3, *SHAPE))
    assert data[1, 0, 2, 0, 0] == 8  # t=1, c=0, z=2 was the 9th frame
    assert sidecar_from_ome_xml(xml) == {"p0": metas}


def test_ctz_order(tmp_path: Path) -> None:
    seq = TCZ.model_copy(update={"axis_order": ("c", "t", "z")})
    metas = run(seq)["p0"]
    xml = build(metas, seq)
    px = pixels(xml)
    assert px.dimension_order.value == "XYZTC"
    assert [(p.the_c, p.the_t, p.the_z) for p in px.planes][:4] == [
        (0, 0, 0),
        (0, 0, 1),
        (0, 0, 2),
        (0, 1, 0),
    ]
    path = tmp_path / "ctz.ome.tif"
    write_tiff(path, xml, 12)
    axes, shape, data = read_series(path)
    assert (axes, shape) == ("CTZYX", (2, 2, 3, *SHAPE))
    assert data[1, 0, 2, 0, 0] == 8  # c=1, t=0, z=2 was the 9th frame


def test_incomplete_run_is_a_flat_stack(tmp_path: Path) -> None:
    metas = run(TCZ)["p0"][:7]  # stops inside the second time point
    xml = build(metas, TCZ)
    px = pixels(xml)
    assert (px.size_t, px.size_c, px.size_z) == (7, 1, 1)
    assert [p.the_t for p in px.planes] == list(range(7))
    path = tmp_path / "cut.ome.tif"
    write_tiff(path, xml, 7)
    axes, shape, data = read_series(path)
    assert (axes, shape) == ("TYX", (7, *SHAPE))
    assert list(data[:, 0, 0]) == list(range(7))
    assert sidecar_from_ome_xml(xml)["p0"] == metas


def test_whole_time_points_keep_the_hypercube(tmp_path: Path) -> None:
    # a run canceled (or crashed) between time points keeps T x C x Z and the
    # channel names, with T as long as the time points written
    seq = useq.MDASequence(
        time_plan={"interval": 0.5, "loops": 5},
        channels=["DAPI", "FITC"],
        z_plan={"range": 2, "step": 1},
        axis_order="tpcz",
    )
    metas = run(seq)["p0"][:12]
    xml = build(metas, seq)
    px = pixels(xml)
    assert (px.size_t, px.size_c, px.size_z) == (2, 2, 3)
    assert [c.name for c in px.channels] == ["DAPI", "FITC"]
    assert '"complete":false' in xml
    path = tmp_path / "whole.ome.tif"
    write_tiff(path, xml, 12)
    axes, shape, data = read_series(path)
    assert (axes, shape) == ("TCZYX", (2, 2, 3, *SHAPE))
    assert data[1, 1, 2, 0, 0] == 11


def test_no_sequence_and_user_metadata(tmp_path: Path) -> None:
    metas: list[Any] = [{"user": i, "note": "x"} for i in range(3)] + [{}, {}]
    xml = build(metas, None, key="cam1")
    px = pixels(xml)
    assert (px.size_t, px.size_c, px.size_z) == (5, 1, 1)
    assert px.planes[0].delta_t is None
    path = tmp_path / "plain.ome.tif"
    write_tiff(path, xml, 5)
    assert read_series(path)[:2] == ("TYX", (5, *SHAPE))
    assert sidecar_from_ome_xml(xml) == {"cam1": metas}


def test_rgb(tmp_path: Path) -> None:
    seq = useq.MDASequence(time_plan={"interval": 0, "loops": 3})
    metas = run(seq)["p0"]
    shape = (*SHAPE, 3)
    xml = build(metas, seq, shape=shape, dtype="u1")
    px = pixels(xml)
    assert (px.size_t, px.size_c, px.type.value) == (3, 3, "uint8")
    assert px.channels[0].samples_per_pixel == 3
    path = tmp_path / "rgb.ome.tif"
    write_tiff(path, xml, 3, shape)
    axes, shape_read, data = read_series(path)
    assert (axes, shape_read) == ("TYXS", (3, *shape))
    assert list(data[:, 0, 0, 1]) == [0, 1, 2]


def test_out_of_order_frames_get_one_tiffdata_per_plane(tmp_path: Path) -> None:
    metas = run(TCZ)["p0"]
    perm = [3, 0, 1, 2, 4, 5, 11, 10, 9, 8, 7, 6]
    shuffled = [metas[i] for i in perm]
    xml = build(shuffled, TCZ)
    px = pixels(xml)
    assert len(px.tiff_data_blocks) == 12
    path = tmp_path / "perm.ome.tif"
    write_tiff(path, xml, 12)
    data = read_series(path)[2]
    flat = data.reshape(12, -1)[:, 0]
    assert [perm[v] for v in flat] == list(range(12))  # planes back in t,c,z order
    assert sidecar_from_ome_xml(xml)["p0"] == shuffled


def test_duplicate_frames_are_flat() -> None:
    metas = run(TCZ)["p0"]
    metas = metas[:11] + metas[:1]  # 12 frames, one index twice, one missing
    assert pixels(build(metas, TCZ)).size_t == 12


def test_positions_and_grid_share_a_file(tmp_path: Path) -> None:
    seq = useq.MDASequence(
        stage_positions=[(0, 0, 0), useq.Position(x=9, y=9, name="A")],
        grid_plan=useq.GridRowsColumns(rows=1, columns=2),
        time_plan={"interval": 0, "loops": 3},
        axis_order="tpgcz",
    )
    files = run(seq)
    assert sorted(files) == ["A", "p0"]
    assert file_key_for_event({"p": 3, "g": 1}, None) == "p3"
    assert file_key_for_event({"p": 3}, "") == "p3"
    metas = files["A"]
    xml = build(metas, seq, key="A")
    path = tmp_path / "grid.ome.tif"
    write_tiff(path, xml, 6)
    axes, shape, data = read_series(path)
    assert (axes, shape) == ("TRYX", (3, 2, *SHAPE))
    assert data[2, 1, 0, 0] == 5
    assert pixels(xml).planes[1].position_x == pytest.approx(9.5)
    assert sidecar_from_ome_xml(xml) == {"A": metas}


def test_grid_folded_into_time(tmp_path: Path) -> None:
    seq = useq.MDASequence(
        grid_plan=useq.GridRowsColumns(rows=1, columns=2),
        time_plan={"interval": 0, "loops": 2},
        channels=["DAPI", "FITC"],
        z_plan={"range": 1, "step": 1},
        axis_order="tgcz",
    )
    metas = run(seq)["p0"]
    xml = build(metas, seq)
    assert (pixels(xml).size_t, pixels(xml).size_c) == (4, 2)
    path = tmp_path / "fold.ome.tif"
    write_tiff(path, xml, 16)
    axes, shape, data = read_series(path)
    assert (axes, shape) == ("TRCZYX", (2, 2, 2, 2, *SHAPE))
    assert data[1, 0, 1, 0, 0, 0] == 10  # t=1, g=0, c=1, z=0


ODD = [
    "a < b & c > d \"quoted\" 'single' ]]> </Value>",
    "µm ünïcödé 日本 🙂",
    "ctrl \x00\x01\x08\x0b\x1f tab\t nl\n cr\r del\x7f c1\x85 nonchar\ufffe\uffff",
    "&amp; &#10; <!-- x --> <![CDATA[y]]>",
]


def test_escaping_and_exact_round_trip(tmp_path: Path) -> None:
    metas: list[Any] = []
    for i, s in enumerate(ODD):
        metas.append(
            {
                s: s,
                "n": [1, 1.0, True, None, -0.0, 0.0, 2**70, 1e-300],
                "nested": {"": {}, "k<&>": [{"b": 1, "a": 2}], "v": i},
                "f": -0.0 if i % 2 else 0.0,
                "num": 1 if i % 2 else 1.0,
                "flag": True if i % 2 else 1,
            }
        )
    metas += [[1, 2], "text", None, {}]
    raw = [
        json.dumps(m, ensure_ascii=bool(i % 2)).encode() for i, m in enumerate(metas)
    ]
    raw.append(b"not json \xff <&>")
    raw.append(b'{"nan": NaN, "inf": -Infinity}')
    xml = build([], None, raw=raw, key='k "<&>" µ')
    assert xml.isascii()
    validate(xml)
    path = tmp_path / "odd.ome.tif"
    write_tiff(path, xml, len(raw))
    with tifffile.TiffFile(path) as tf:
        assert tf.is_ome and tf.series[0].shape == (len(raw), *SHAPE)
    got = sidecar_from_ome_xml(xml)['k "<&>" µ']
    assert json.dumps(got[: len(metas)]) == json.dumps(metas)  # key order, types
    for a, b in zip(got, metas, strict=False):
        if isinstance(b, dict) and "f" in b:
            assert math.copysign(1, a["f"]) == math.copysign(1, b["f"])
            assert type(a["num"]) is type(b["num"])
            assert type(a["flag"]) is type(b["flag"])
    assert got[-2] == {"mesowriter_raw_metadata": "not json \ufffd <&>"}
    assert math.isnan(got[-1]["nan"]) and got[-1]["inf"] == -math.inf


def test_factoring_keeps_it_compact() -> None:
    metas = run(TCZ)["p0"]
    xml = build(metas, TCZ)
    text = xml[xml.index("FrameMetadata") :]
    assert len(text) < 0.5 * sum(len(json.dumps(m)) for m in metas)


def test_provisional(tmp_path: Path) -> None:
    for frames in (0, 1, 5):
        xml = provisional_ome_xml(
            shape=SHAPE, dtype="<u2", frames=frames, image_name="é<&>" * 2000
        )
        assert len(xml) < 3000
        px = pixels(xml)
        assert px.size_t == max(frames, 1)
        assert (px.metadata_only is not None) == (frames == 0)
    path = tmp_path / "prov.ome.tif"
    write_tiff(
        path, provisional_ome_xml(shape=SHAPE, dtype="u2", frames=5, image_name="x"), 7
    )
    axes, shape, _ = read_series(path)
    assert (axes, shape) == ("TYX", (5, *SHAPE))  # the 2 uncommitted pages stay out
    with pytest.raises(ValueError):
        sidecar_from_ome_xml(
            provisional_ome_xml(shape=SHAPE, dtype="u2", frames=1, image_name="x")
        )


def test_no_frames() -> None:
    xml = build([], TCZ)
    assert pixels(xml).metadata_only is not None
    assert sidecar_from_ome_xml(xml) == {"p0": []}


def test_5000_frames_is_fast() -> None:
    seq = useq.MDASequence(
        time_plan={"interval": 0, "loops": 1250},
        channels=["DAPI", "FITC"],
        z_plan={"range": 1, "step": 1},
    )
    metas = run(seq)["p0"]
    raw = [json.dumps(m).encode() for m in metas]
    t0 = time.perf_counter()
    xml = build([], seq, raw=raw)
    elapsed = time.perf_counter() - t0
    assert elapsed < 3.0
    assert re.search(r'SizeT="1250"', xml) and xml.count("<Plane ") == 5000
    assert sidecar_from_ome_xml(xml)["p0"] == metas


def test_leaves_that_compare_equal_keep_their_json_type() -> None:
    values: list[Any] = [1, 1.0, True, 0.0, -0.0, [1], [1.0], [True], 0, False]
    metas = [{"a": {"v": v, "w": [{"y": 1, "x": 2}]}} for v in values]
    metas.append({"a": {"v": 1, "w": [{"x": 2, "y": 1}]}})  # same, key order differs
    got = sidecar_from_ome_xml(build(metas, None))["p0"]
    assert json.dumps(got) == json.dumps(metas)
    assert [type(m["a"]["v"]) for m in got] == [type(v) for v in values] + [int]
    assert math.copysign(1, got[4]["a"]["v"]) == -1
