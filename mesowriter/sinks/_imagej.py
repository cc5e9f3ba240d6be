"""ImageJ hyperstack descriptions, for TIFF names without `.ome`.

ImageJ reads its hyperstack shape from the first IFD's ImageDescription:
`images`, `channels`, `slices`, `frames` in TZC plane order. pymmcore-plus's
OMETiffWriter and the legacy writer wrote such files for `.tif` names, so
mesowriter does too: analysis code and ImageJ see the same axes.
"""

from __future__ import annotations

from mesowriter._layout import ImagejPlan


def imagej_description(
    *,
    frames: int,
    slices: int = 1,
    channels: int = 1,
    rgb: bool = False,
    spacing: float | None = None,
    finterval: float | None = None,
) -> str:
    """The description of a hyperstack of frames x slices x channels planes."""
    lines = ["ImageJ=1.11a", f"images={frames * slices * channels}"]
    if channels > 1:
        lines.append(f"channels={channels}")
    if slices > 1:
        lines.append(f"slices={slices}")
    if frames > 1:
        lines.append(f"frames={frames}")
    lines.append("hyperstack=true")
    if not rgb:
        lines.append("mode=grayscale")
    if spacing is not None:
        lines += [f"spacing={spacing!r}", "unit=micron"]
    if finterval is not None:
        lines.append(f"finterval={finterval!r}")
    lines.append("loop=false")
    return "\n".join(lines) + "\n"


def flat_description(frames: int, *, rgb: bool) -> str:
    """A plain stack of `frames` planes in file order (no hyperstack shape)."""
    return imagej_description(frames=max(frames, 1), rgb=rgb)


def final_description(
    plan: ImagejPlan | None, planes: int, *, whole: bool, rgb: bool
) -> str:
    """The hyperstack when the planes are whole time points of `plan`, else flat.

    `whole`: the file's planes are positions [0, planes) of the plan's TZC
    order with none missing.
    """
    if plan is not None and whole and planes:
        per_t = plan.slices * plan.channels
        if planes % per_t == 0 and planes // per_t <= plan.frames:
            return imagej_description(
                frames=planes // per_t,
                slices=plan.slices,
                channels=plan.channels,
                rgb=rgb,
                spacing=plan.z_step,
                finterval=plan.t_interval,
            )
    return flat_description(planes, rgb=rgb)
