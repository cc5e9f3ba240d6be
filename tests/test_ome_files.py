"""OME-XML of real files written through mesowriter, read back as users read them.

Every file here goes through a WriterService worker or CustomWriter with the
DemoCamera; each final OME-XML is validated against the OME schema with
ome-types, read by tifffile as an OME series, summarised by `inspect_file`,
and its sidecar rebuilt from the XML alone must equal the writer's sidecar
byte for byte.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import ome_types
import pytest
import tifffile
import useq
from conftest import index_frame

from mesowriter import CustomWriter, WriterService
from mesowriter._inspect import export_sidecar, inspect_file
from mesowriter.sinks._omexml import provisional_ome_xml

ROOT = Path(__file__).resolve().parents[1]


def read_ome(path: Path) -> tuple[Any, str, tuple[int, ...], np.ndarray]:
    """(validated OME model, tifffile axes, shape, pixels) of a data file."""
    with tifffile.TiffFile(path) as tf:
        assert tf.is_ome and tf.is_bigtiff
        xml = tf.ome_metadata
        series = tf.series[0]
        axes, shape, data = series.axes, series.shape, series.asarray()
        assert len(tf.pages) == int(np.prod(shape[:-2]))
    assert xml is not None
    # analysis memory-maps the whole stack: the same pixels, without a copy
    np.testing.assert_array_equal(np.asarray(tifffile.memmap(path, mode="r")), data)
    return ome_types.from_xml(xml, validate=True), axes, shape, data


def sidecar_bytes(path: Path) -> bytes:
    return Path(f"{path}_frame_metadata.json").read_bytes()


def assert_round_trip(
    path: Path, tmp_path: Path, run: Path | None = None
) -> dict[str, list[Any]]:
    """The sidecar rebuilt from the OME-XML alone equals the writer's: byte
    for byte for a one-file run, that file's list of the run's one sidecar
    (`run`) otherwise."""
    out = tmp_path / f"{path.name}.exported.json"
    data = export_sidecar(path, out)
    if run is None:
        assert out.read_bytes() == sidecar_bytes(path)
        assert data == json.loads(sidecar_bytes(path))
    else:
        combined = json.loads(sidecar_bytes(run))
        assert {k: combined[k] for k in data} == data
    return data


def planes_match_sidecar(ome: Any, metas: list[dict[str, Any]], letters: str) -> None:
    """Each Plane's TheT/TheZ/TheC follow its frame's event index; units set."""
    planes = ome.images[0].pixels.planes
    assert len(planes) == len(metas)
    t0 = metas[0]["runner_time_ms"]
    for plane, meta in zip(planes, metas, strict=True):
        index = meta["mda_event"]["index"]
        for axis, attr in zip("tzc", ("the_t", "the_z", "the_c"), strict=True):
            if axis in letters:
                assert getattr(plane, attr) == index.get(axis, 0)
        assert plane.delta_t == pytest.approx(meta["runner_time_ms"] - t0)
        assert plane.delta_t_unit.value == "ms"
        assert plane.exposure_time == meta["exposure_ms"]
        assert plane.exposure_time_unit.value == "ms"
        pos = meta["position"]
        assert (plane.position_x, plane.position_y, plane.position_z) == (
            pos["x"],
            pos["y"],
            pos["z"],
        )
        assert plane.position_z_unit.value == "\u00b5m"


# -- WriterService streams -------------------------------------------------------


def timelapse_meta(i: int) -> dict[str, Any]:
    return {
        "runner_time_ms": 5.0 + 20.0 * i,
        "exposure_ms": 7.5,
        "pixel_size_um": 0.65,
        "position": {"x": 100.0 + i, "y": -3.25, "z": 12.0},
        "mda_event": {"index": {"t": i}, "min_start_time": 0.02 * i},
        "camera_metadata": {
            "ElapsedTime-ms": f"{3.0 + 20.0 * i:.2f}",
            "Note": "\u00e9",
        },
        "user": {"nested": [1, 2.5, None, "x<&>"], "flag": i % 2 == 0},
    }


def test_time_lapse_stream_xml_inspect_and_sidecar(tmp_path: Path) -> None:
    n, shape = 30, (16, 24)
    path = tmp_path / "tl.ome.tiff"
    seq = useq.MDASequence(time_plan={"interval": 0.02, "loops": n})
    summary = {"datetime": "2026-11-24 12:21:03.250000", "image_infos": []}
    with WriterService(ring_bytes=8 << 20) as svc:
        stream = svc.open_stream(
            path,
            shape=shape,
            dtype="uint16",
            frames=n,
            sequence=seq.model_dump(mode="json"),
            summary=summary,
        )
        for i in range(n):
            assert stream.write(index_frame(i, shape), timelapse_meta(i))
        report = stream.close()
    assert report.frames_written == n

    ome, axes, got_shape, data = read_ome(path)
    assert (axes, got_shape) == ("TYX", (n, *shape))
    for i in range(n):
        np.testing.assert_array_equal(data[i], index_frame(i, shape))
    image = ome.images[0]
    px = image.pixels
    assert (px.size_t, px.size_z, px.size_c) == (n, 1, 1)
    assert px.physical_size_x == px.physical_size_y == 0.65
    assert px.time_increment == 0.02
    assert image.acquisition_date.isoformat().startswith("2026-11-24T12:21:03.25")
    metas = json.loads(sidecar_bytes(path))["p0"]
    planes_match_sidecar(ome, metas, "t")

    assert_round_trip(path, tmp_path)
    info = inspect_file(path)
    assert info["kind"] == "ome-tiff" and info["axes"] == "TYX"
    assert info["shape"] == [n, *shape] and info["dtype"] == "uint16"
    assert info["frames_in_file"] == info["frames_declared"] == n
    assert info["provisional"] is False and info["frame_metadata"] is True
    assert info["time_source"] == "ome:DeltaT"
    assert info["time_span_s"] == pytest.approx((n - 1) * 0.020)
    assert info["effective_fps"] == pytest.approx(50.0)
    assert (info["frames_received"], info["frames_written"]) == (n, n)
    assert info["frames_dropped"] == 0 and info["finish_reason"] == "completed"
    assert info["physical_size_x_um"] == 0.65


def test_cli_inspect_json_and_sidecar_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "cli.ome.tiff"
    with WriterService(ring_bytes=8 << 20) as svc:
        stream = svc.open_stream(path, shape=(8, 8), dtype="uint8")
        for i in range(12):
            stream.write(index_frame(i, (8, 8), "uint8"), timelapse_meta(i))
        stream.close()
    out = tmp_path / "again.json"
    cmd = [sys.executable, "-m", "mesowriter", "inspect", str(path)]
    p = subprocess.run(
        [*cmd, "--json", "--sidecar", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert p.returncode == 0, p.stderr
    info = json.loads(p.stdout)
    assert info["frames_in_file"] == 12 and info["sidecar_frames"] == 12
    assert info["effective_fps"] == pytest.approx(50.0)
    assert out.read_bytes() == sidecar_bytes(path)
    # refuses to overwrite without --overwrite; the text form names each value
    p = subprocess.run(
        [*cmd, "--sidecar", str(out)], cwd=ROOT, capture_output=True, text=True
    )
    assert p.returncode == 1 and "exists" in p.stderr
    p = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert p.returncode == 0 and "frames_dropped:" in p.stdout


def test_dropped_frames_xml_declares_only_written(tmp_path: Path) -> None:
    shape = (64, 64)
    path = tmp_path / "drop.ome.tiff"
    with WriterService(ring_bytes=200_000, policy="drop") as svc:
        stream = svc.open_stream(path, shape=shape, dtype="uint16", _fault="slow:0.05")
        kept = [
            stream.write(index_frame(i, shape), timelapse_meta(i)) for i in range(30)
        ]
        report = stream.close(check=False)
    dropped = [i for i, k in enumerate(kept) if not k]
    assert dropped and report.dropped_indices == dropped
    ome, axes, got_shape, data = read_ome(path)
    written = [i for i, k in enumerate(kept) if k]
    assert axes == "TYX" and got_shape == (len(written), *shape)
    for k, i in enumerate(written):
        np.testing.assert_array_equal(data[k], index_frame(i, shape))
    assert len(ome.images[0].pixels.planes) == len(written)
    assert_round_trip(path, tmp_path)
    info = inspect_file(path)
    assert info["frames_in_file"] == info["frames_declared"] == len(written)
    assert info["frames_received"] == 30 and info["frames_dropped"] == len(dropped)
    assert info["dropped_indices"] == dropped


def test_export_refuses_files_without_frame_metadata(tmp_path: Path) -> None:
    plain = tmp_path / "plain.ome.tif"
    tifffile.imwrite(
        plain, np.zeros((2, 4, 4), np.uint8), ome=True, photometric="minisblack"
    )
    with pytest.raises(ValueError, match="frame-metadata"):
        export_sidecar(plain, tmp_path / "x.json")
    info = inspect_file(plain)
    assert info["frame_metadata"] is False and info["frames_declared"] == 2
    assert info["report"] is None and info["frames_dropped"] is None
    with pytest.raises(FileNotFoundError):
        inspect_file(tmp_path / "missing.ome.tiff")
    # what a crash mid-run leaves: the provisional XML, no frame metadata yet
    prov = tmp_path / "prov.ome.tif"
    xml = provisional_ome_xml(shape=(4, 4), dtype="uint8", frames=2, image_name="p")
    tifffile.imwrite(
        prov,
        np.zeros((2, 4, 4), np.uint8),
        description=xml,
        metadata=None,
        photometric="minisblack",
    )
    with pytest.raises(ValueError, match="mesowriter recover"):
        export_sidecar(prov, tmp_path / "x.json")
    info = inspect_file(prov)
    assert info["provisional"] is True and info["frames_declared"] == 2
    assert info["axes"] == "TYX" and info["frames_in_file"] == 2


def test_video_inspect(tmp_path: Path) -> None:
    from mesowriter import VideoOptions

    path = tmp_path / "v.avi"
    with WriterService(ring_bytes=8 << 20) as svc:
        stream = svc.open_stream(
            path,
            shape=(48, 64),
            dtype="uint8",
            video=VideoOptions(fps=25.0, fourcc="MJPG"),
        )
        for i in range(10):
            stream.write(
                index_frame(i, (48, 64), "uint8"), {"runner_time_ms": 40.0 * i}
            )
        stream.close()
    info = inspect_file(path)
    assert info["kind"] == "video" and info["frames_in_file"] == 10
    assert (info["width"], info["height"], info["fps"]) == (64, 48, 25.0)
    assert info["fourcc"] == "MJPG" and info["codec"] == "MJPG"
    assert info["time_source"] == "sidecar:runner_time_ms"
    assert info["effective_fps"] == pytest.approx(25.0)
    assert info["frames_written"] == 10 and info["finish_reason"] == "completed"


# -- CustomWriter with the DemoCamera ------------------------------------------


def test_time_positions_channels_z_one_file_per_position(
    core: Any, tmp_path: Path
) -> None:
    seq = useq.MDASequence(
        axis_order="tpcz",
        stage_positions=[(0.0, 0.0, 0.0), (10.0, 20.0, 0.0)],
        time_plan={"interval": 0, "loops": 2},
        channels=["DAPI", "FITC"],
        z_plan={"range": 2.0, "step": 1.0},
    )
    with CustomWriter(tmp_path / "run.ome.tiff", ring_bytes=64 << 20) as writer:
        core.mda.run(seq, output=writer)
    combined = json.loads(sidecar_bytes(tmp_path / "run.ome.tiff"))
    assert sorted(combined) == ["p0", "p1"]
    for key, (x, y) in (("p0", (0.0, 0.0)), ("p1", (10.0, 20.0))):
        path = tmp_path / f"run_{key}.ome.tiff"
        ome, axes, shape, _ = read_ome(path)
        assert len(ome.images) == 1
        assert axes == "TCZYX" and shape == (2, 2, 3, 192, 256)
        px = ome.images[0].pixels
        assert [c.name for c in px.channels] == ["DAPI", "FITC"]
        assert px.physical_size_x == core.getPixelSizeUm()
        assert px.physical_size_z == 1.0
        assert ome.images[0].acquisition_date is not None
        metas = combined[key]
        planes_match_sidecar(ome, metas, "tcz")
        plane = px.planes[-1]
        assert (plane.the_t, plane.the_c, plane.the_z) == (1, 1, 2)
        assert plane.position_x == pytest.approx(x, abs=0.1)
        assert plane.position_y == pytest.approx(y, abs=0.1)
        run = tmp_path / "run.ome.tiff"
        assert assert_round_trip(path, tmp_path, run) == {key: metas}
        info = inspect_file(path)
        assert info["channels"] == ["DAPI", "FITC"] and info["frames_declared"] == 12


def test_grid_plan_tiles_share_the_file(core: Any, tmp_path: Path) -> None:
    core.setProperty("Camera", "OnCameraCCDXSize", 32)
    core.setProperty("Camera", "OnCameraCCDYSize", 24)
    seq = useq.MDASequence(
        axis_order="tgc",
        time_plan={"interval": 0, "loops": 2},
        grid_plan={"rows": 1, "columns": 2},
        channels=["DAPI", "FITC"],
    )
    path = tmp_path / "grid.ome.tiff"
    with CustomWriter(path) as writer:
        core.mda.run(seq, output=writer)
    ome, axes, shape, _ = read_ome(path)
    assert axes == "TRCYX" and shape == (2, 2, 2, 24, 32)  # R: tiles (modulo)
    px = ome.images[0].pixels
    assert [c.name for c in px.channels] == ["DAPI", "FITC"]
    metas = json.loads(sidecar_bytes(path))["p0"]
    for plane, meta in zip(px.planes, metas, strict=True):
        index = meta["mda_event"]["index"]
        assert (plane.the_t, plane.the_z, plane.the_c) == (
            index["t"],
            index["g"],
            index["c"],
        )
        assert plane.position_x == meta["position"]["x"]
    assert {p.position_x for p in px.planes[:4]} != {px.planes[0].position_x}
    assert_round_trip(path, tmp_path)


def test_positions_with_their_own_grids(core: Any, tmp_path: Path) -> None:
    core.setProperty("Camera", "OnCameraCCDXSize", 32)
    core.setProperty("Camera", "OnCameraCCDYSize", 24)
    grid = {"rows": 1, "columns": 2}
    seq = useq.MDASequence(
        channels=["FITC"],
        stage_positions=[
            useq.Position(x=0, y=0, sequence=useq.MDASequence(grid_plan=grid)),
            useq.Position(
                x=500, y=0, name="B", sequence=useq.MDASequence(grid_plan=grid)
            ),
        ],
    )
    with CustomWriter(tmp_path / "run.ome.tiff") as writer:
        core.mda.run(seq, output=writer)
    for key in ("p0", "B"):
        path = tmp_path / f"run_{key}.ome.tiff"
        ome, axes, shape, _ = read_ome(path)
        assert (axes, shape) == ("RYX", (2, 24, 32))
        assert [c.name for c in ome.images[0].pixels.channels] == ["FITC"]
        assert_round_trip(path, tmp_path, tmp_path / "run.ome.tiff")


def test_canceled_run_declares_exactly_the_frames_written(
    core: Any, tmp_path: Path
) -> None:
    seq = useq.MDASequence(
        axis_order="tc",
        time_plan={"interval": 0, "loops": 20},
        channels=["DAPI", "FITC"],
    )
    seen = [0]

    def cancel_after_five(*_: Any) -> None:
        seen[0] += 1
        if seen[0] == 5:
            core.mda.cancel()

    core.mda.events.frameReady.connect(cancel_after_five)
    path = tmp_path / "cancel.ome.tiff"
    with CustomWriter(path) as writer, writer.attach(core):
        core.mda.run(seq)
    report = writer.reports["p0"]
    n = report.frames_written
    assert report.finish_reason == "canceled" and 5 <= n < 40
    ome, axes, shape, _ = read_ome(path)
    assert axes == "TYX" and shape == (n, 192, 256)  # incomplete: a flat stack
    px = ome.images[0].pixels
    assert (px.size_t, px.size_c, px.size_z) == (n, 1, 1)
    assert [p.the_t for p in px.planes] == list(range(n))
    assert px.channels[0].name is None  # mixed channels: none named
    assert len(assert_round_trip(path, tmp_path)["p0"]) == n
    info = inspect_file(path)
    assert info["frames_declared"] == info["frames_in_file"] == n
    assert info["finish_reason"] == "canceled"
