"""Layout inference: from a sequence and its frames to files, axes and planes.

Format-free: the OME-XML writer, the ImageJ description and `recover` all ask
the same questions here. Which file does an event's frame go to? Do the frames
a file received form the sequence's T x C x Z (x grid) hypercube, or whole
units of its outermost axis (a canceled or crashed run that stopped between
time points)? Where does a frame go in an ImageJ hyperstack (TZC order)?

The rule everywhere: a layout declares only planes that were written. Frames
that form no hypercube are a flat stack in acquisition order, and each
plane's t/c/z index stays in its metadata.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

__all__ = [
    "ImagejPlan",
    "Layout",
    "Plane",
    "file_key_for_event",
    "flat_layout",
    "hypercube_layout",
    "imagej_plan",
    "plane_from_metadata",
]

_AXES = ("t", "p", "g", "c", "z")


def file_key_for_event(event_index: Mapping[str, int], pos_name: str | None) -> str:
    """Return the key of the file (and sidecar list) an event's frame goes to.

    The key is `pos_name`, else `"p{index['p']}"` (`"p0"` without a position
    axis), as pymmcore-plus's writers and the legacy sidecar key positions.
    Grid tiles (axis `g`) are deliberately *not* split into files: like
    pymmcore-plus, which keeps `g` as an array dimension of its position, all
    tiles of a position share its file and its sidecar list, and the OME-XML
    exposes `g` as a modulo "tile" axis (`R` in tifffile) when it can. An empty
    `pos_name` counts as no name, since it cannot name a file.
    """
    if pos_name:
        return pos_name
    return f"p{int(event_index.get('p', 0))}"


# -- what each frame says about its plane -----------------------------------------


@dataclass(slots=True)
class Plane:
    """What a plane description needs from one frame's metadata."""

    index: tuple[int, int, int, int, int] | None  # (t, p, g, c, z)
    runner_ms: float | None
    camera_ms: float | None
    exposure_ms: float | None
    x: float | None
    y: float | None
    z: float | None
    channel: str | None


EMPTY_PLANE = Plane(None, None, None, None, None, None, None, None)


def _number(v: Any) -> float | None:
    if type(v) is float or type(v) is int:
        f = float(v)
        return f if math.isfinite(f) else None
    return None


def positive_number(v: Any) -> float | None:
    f = _number(v)
    return f if f is not None and f > 0 else None


def _str_or_none(v: Any) -> str | None:
    return v if type(v) is str else None


def event_index(meta: Mapping[str, Any]) -> dict[str, int] | None:
    """The MDA event index a frame's metadata carries, if it is well-formed."""
    ev = meta.get("mda_event")
    idx = ev.get("index") if type(ev) is dict else None
    if type(idx) is dict and all(k in _AXES and type(v) is int for k, v in idx.items()):
        return idx
    return None


def plane_from_metadata(meta: dict[str, Any]) -> Plane:
    ev = meta.get("mda_event")
    ev = ev if type(ev) is dict else {}
    idx = event_index(meta)
    index = None
    if idx is not None:
        g = idx.get
        index = (g("t", 0), g("p", 0), g("g", 0), g("c", 0), g("z", 0))
    cam = meta.get("camera_metadata")
    camera_ms = None
    if type(cam) is dict and type(cam.get("ElapsedTime-ms")) is str:
        try:
            camera_ms = float(cam["ElapsedTime-ms"])
        except ValueError:
            pass
        if camera_ms is not None and not math.isfinite(camera_ms):
            camera_ms = None
    pos = meta.get("position")
    pos = pos if type(pos) is dict else {}
    ch = ev.get("channel")
    return Plane(
        index,
        _number(meta.get("runner_time_ms")),
        camera_ms,
        _number(meta.get("exposure_ms")),
        _number(pos.get("x", ev.get("x_pos"))),
        _number(pos.get("y", ev.get("y_pos"))),
        _number(pos.get("z", ev.get("z_pos"))),
        _str_or_none(ch.get("config")) if type(ch) is dict else None,
    )


# -- layouts ------------------------------------------------------------------------


@dataclass(slots=True)
class Layout:
    """How planes map onto the OME hypercube."""

    order: str  # OME DimensionOrder
    sizes: dict[str, int]  # "T"/"Z"/"C" -> size (channels, not samples)
    coords: list[tuple[int, int, int]]  # per IFD: (TheT, TheZ, TheC)
    in_order: bool  # plane k is at linear index k: one TiffData suffices
    channel_names: list[str | None]
    modulo: tuple[str, int] | None  # (OME letter carrying the grid, tiles)
    z_step: float | None
    t_interval: float | None
    complete: bool = True  # False: whole units of the outermost axis only

    @property
    def is_flat(self) -> bool:
        return self.order == "XYCZT" and self.sizes["Z"] == self.sizes["C"] == 1


def flat_layout(planes: list[Plane]) -> Layout:
    names = {p.channel for p in planes}
    name = names.pop() if len(names) == 1 else None
    return Layout(
        order="XYCZT",
        sizes={"T": max(len(planes), 1), "Z": 1, "C": 1},
        coords=[(k, 0, 0) for k in range(len(planes))],
        in_order=True,
        channel_names=[name],
        modulo=None,
        z_step=None,
        t_interval=None,
        complete=False,
    )


def _sequence(sequence: dict[str, Any]) -> Any:
    import useq

    try:
        return useq.MDASequence.model_validate(sequence)
    except Exception:
        return None


def position_plan(
    sequence: dict[str, Any], p: int
) -> tuple[dict[str, int], list[str], list[str | None], dict[str, Any]] | None:
    """Sizes, acquisition order (outer first) and channel names at position p."""
    seq = _sequence(sequence)
    if seq is None:
        return None
    main = {k: v for k, v in seq.sizes.items() if v and k != "p"}
    order = [str(a) for a in seq.axis_order if a in main]
    plans = sequence
    sizes = main
    channels = seq.channels
    if seq.stage_positions and p < len(seq.stage_positions):
        sub = seq.stage_positions[p].sequence
        if sub is not None:
            sizes = {k: v or main.get(k, 0) for k, v in sub.sizes.items() if k != "p"}
            sizes = {k: v for k, v in sizes.items() if v}
            order = [a for a in order if a in sizes]
            order += [str(a) for a in sub.axis_order if a in sizes and a not in order]
            if sub.channels:
                channels = sub.channels
            plans = dict(sequence)
            sub_dump = sub.model_dump(mode="json")
            for k in ("z_plan", "time_plan"):
                if sub_dump.get(k):
                    plans[k] = sub_dump[k]
    elif seq.stage_positions and p >= len(seq.stage_positions):
        return None
    names: list[str | None] = [c.config for c in channels]
    return sizes, order, names, plans


def hypercube_layout(sequence: dict[str, Any], planes: list[Plane]) -> Layout | None:
    """The hypercube the planes form, or None.

    The frames must form the sequence's full hypercube for their position,
    or whole units of its outermost axis (time points, usually): then that
    axis is declared as long as the units written (`complete` is False).
    """
    if not planes:
        return None
    first = planes[0].index
    if first is None:
        return None
    p = first[1]
    if any(pl.index is None or pl.index[1] != p for pl in planes):
        return None
    plan = position_plan(sequence, p)
    if plan is None:
        return None
    sizes, order, names, plans = plan
    if any(a not in ("t", "g", "c", "z") for a in sizes):
        return None
    axes = [a for a in order if sizes[a] > 1]
    letter = {"t": "T", "c": "C", "z": "Z"}
    letters = {a: letter[a] for a in axes if a != "g"}
    modulo = None
    fold_into = None
    if "g" in axes:
        free = [x for x in "TZC" if x not in letters.values()]
        if free:
            letters["g"] = free[0]
            modulo = (free[0], sizes["g"])
        else:
            at = axes.index("g")
            if at == 0:
                return None  # grid outermost of four axes: no OME slot for it
            fold_into = axes[at - 1]
            modulo = (letters[fold_into], sizes["g"])
            axes.remove("g")
    inner_first = [letters[a] for a in reversed(axes)]
    inner_first += [x for x in "ZCT" if x not in inner_first]
    dim = {"T": 1, "Z": 1, "C": 1}
    for a in axes:
        dim[letters[a]] = sizes[a] * (sizes["g"] if a == fold_into else 1)
    n = len(planes)
    limits = dict(sizes)
    complete = True
    total = dim["T"] * dim["Z"] * dim["C"]
    if n != total:
        # Whole units of the outermost axis (not a grid, nor one folded)?
        outer = axes[0] if axes else None
        if outer is None or outer == "g" or outer == fold_into or modulo:
            return None
        inner = total // dim[letters[outer]]
        if n % inner or n > total:
            return None
        dim[letters[outer]] = n // inner
        limits[outer] = n // inner
        complete = False
    pos = {"t": 0, "g": 2, "c": 3, "z": 4}
    s0, s1 = dim[inner_first[0]], dim[inner_first[1]]
    seen = bytearray(n)
    coords: list[tuple[int, int, int]] = []
    in_order = True
    ng = sizes.get("g", 1)
    for k, pl in enumerate(planes):
        idx = pl.index
        assert idx is not None
        v = {"T": 0, "Z": 0, "C": 0}
        for a in ("t", "g", "c", "z"):
            i = idx[pos[a]]
            if i >= limits.get(a, 1):
                return None
            if a in letters:
                v[letters[a]] = i
        if fold_into is not None:
            v[letters[fold_into]] = idx[pos[fold_into]] * ng + idx[2]
        lin = v[inner_first[0]] + s0 * (v[inner_first[1]] + s1 * v[inner_first[2]])
        if seen[lin]:
            return None
        seen[lin] = 1
        in_order = in_order and lin == k
        coords.append((v["T"], v["Z"], v["C"]))
    channel_names: list[str | None] = [None] * dim["C"]
    if letters.get("c") == "C":
        channel_names = [names[i] if i < len(names) else None for i in range(dim["C"])]
    elif dim["C"] == 1:  # one channel (or none): name it when all frames agree
        used = {pl.channel for pl in planes}
        channel_names = [used.pop() if len(used) == 1 else None]
    z_step = None
    if letters.get("z") == "Z" and type(plans.get("z_plan")) is dict:
        z_step = positive_number(plans["z_plan"].get("step"))
    t_interval = None
    if letters.get("t") == "T" and fold_into != "t":
        tp = plans.get("time_plan")
        if type(tp) is dict:
            t_interval = positive_number(tp.get("interval"))
    return Layout(
        order="XY" + "".join(inner_first),
        sizes=dim,
        coords=coords,
        in_order=in_order,
        channel_names=channel_names,
        modulo=modulo,
        z_step=z_step,
        t_interval=t_interval,
        complete=complete,
    )


# -- ImageJ hyperstacks ----------------------------------------------------------------


@dataclass(frozen=True)
class ImagejPlan:
    """An ImageJ hyperstack of one position: planes in T, Z, C order."""

    frames: int  # T
    slices: int  # Z
    channels: int  # C
    acquisition_order: tuple[str, ...]  # outer first, axes of size > 1
    channel_names: tuple[str | None, ...]
    z_step: float | None
    t_interval: float | None

    @property
    def images(self) -> int:
        return self.frames * self.slices * self.channels

    @property
    def reordered(self) -> bool:
        """True when acquisition order differs from ImageJ's TZC file order."""
        rank = {"t": 0, "z": 1, "c": 2}
        ranks = [rank[a] for a in self.acquisition_order]
        return ranks != sorted(ranks)

    def position(self, index: Mapping[str, int]) -> int | None:
        """The file position (plane number) of an event index, or None."""
        t, z, c = index.get("t", 0), index.get("z", 0), index.get("c", 0)
        if not (
            0 <= t < self.frames and 0 <= z < self.slices and 0 <= c < self.channels
        ):
            return None
        return (t * self.slices + z) * self.channels + c


def imagej_plan(sequence: dict[str, Any] | None, p: int) -> ImagejPlan | None:
    """The ImageJ hyperstack of position p, or None if it has no such shape.

    ImageJ stores planes in TZC order whatever the acquisition order, so a
    t/c/z acquisition is reordered in the file. Grid tiles and axes other
    than t, z and c have no ImageJ dimension: such sequences are written
    as a flat stack in acquisition order.
    """
    if sequence is None:
        return None
    plan = position_plan(sequence, p)
    if plan is None:
        return None
    sizes, order, names, plans = plan
    if any(a not in ("t", "c", "z") for a in sizes if sizes[a] > 1):
        return None
    z_step = None
    if sizes.get("z", 1) > 1 and type(plans.get("z_plan")) is dict:
        z_step = positive_number(plans["z_plan"].get("step"))
    t_interval = None
    tp = plans.get("time_plan")
    if sizes.get("t", 1) > 1 and type(tp) is dict:
        t_interval = positive_number(tp.get("interval"))
    c = sizes.get("c", 1)
    return ImagejPlan(
        frames=sizes.get("t", 1),
        slices=sizes.get("z", 1),
        channels=c,
        acquisition_order=tuple(a for a in order if sizes.get(a, 1) > 1),
        channel_names=tuple(names[i] if i < len(names) else None for i in range(c)),
        z_step=z_step,
        t_interval=t_interval,
    )
