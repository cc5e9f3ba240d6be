"""PNG plots of benchmark time series (Agg, no display needed).

Everything goes through ``plot_series``, which takes ``{label: [(t, value)]}``,
so mesowriter's own traces (ring fill, throughput) and the peers' traces
(dirty pages) land on the same axes with the same code. ``Figure`` is used
directly instead of pyplot so no global backend state is touched.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure

__all__ = [
    "Series",
    "peer_traces",
    "plot_dirty_pages",
    "plot_peer_results",
    "plot_ring_fill",
    "plot_series",
    "plot_throughput",
    "rate_from_cumulative",
    "rate_from_events",
]

Series = Sequence[tuple[float, float]]
_MIB = float(1 << 20)


def plot_series(
    series: Mapping[str, Series],
    path: str | os.PathLike[str],
    *,
    title: str = "",
    ylabel: str = "",
    xlabel: str = "time (s)",
    scale: float = 1.0,
    hlines: Mapping[str, float] | None = None,
    step: bool = False,
) -> Path:
    """Plot several ``(t, value)`` series on one axes and save a PNG.

    ``scale`` divides every value (e.g. bytes -> MiB); ``hlines`` draws
    labelled reference levels such as the raw disk ceiling or ring capacity.
    """
    fig = Figure(figsize=(8, 4.5), layout="constrained")
    ax = fig.add_subplot()
    for label, pts in series.items():
        if not pts:
            continue
        ts = [p[0] for p in pts]
        vs = [p[1] / scale for p in pts]
        if step:
            ax.step(ts, vs, where="post", label=label)
        else:
            ax.plot(ts, vs, label=label)
    for label, y in (hlines or {}).items():
        ax.axhline(y / scale, linestyle="--", linewidth=1, color="grey")
        ax.annotate(
            label,
            (0, y / scale),
            xycoords=("axes fraction", "data"),
            textcoords="offset points",
            xytext=(4, 3),
            fontsize=8,
        )
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(True, alpha=0.3)
    if any(series.values()):
        ax.legend(loc="best", fontsize=8)
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)
    return out


def rate_from_cumulative(
    points: Series, window: float = 0.25
) -> list[tuple[float, float]]:
    """Turn cumulative ``(t, total)`` points into ``(t, rate)`` over ``window`` s.

    A trailing window, not point-to-point differences, so 50 ms sampling
    jitter does not turn into spikes; points before one full window has
    passed are left out (a burst into a queue in the first milliseconds
    would otherwise read as hundreds of GB/s).
    """
    pts = sorted(points)
    out: list[tuple[float, float]] = []
    if not pts:
        return out
    start = pts[0][0]
    j = 0
    for t, v in pts:
        if t - start < window:
            continue
        while j < len(pts) - 1 and pts[j][0] < t - window:
            j += 1
        t0, v0 = pts[j]
        if t > t0:
            out.append((t, (v - v0) / (t - t0)))
    return out


def rate_from_events(
    times: Sequence[float], nbytes_each: int, window: float = 0.25
) -> list[tuple[float, float]]:
    """Bytes/s over time from per-frame completion times (e.g. frame_times)."""
    cum = [(0.0, 0.0)] + [
        (t, float((i + 1) * nbytes_each)) for i, t in enumerate(times)
    ]
    return rate_from_cumulative(cum, window)


def plot_throughput(
    series: Mapping[str, Series],
    path: str | os.PathLike[str],
    *,
    ceiling_bps: float | None = None,
    title: str = "throughput",
) -> Path:
    """Plot ``{label: [(t, bytes_per_s)]}`` in GB/s, with the raw-disk ceiling."""
    hl = {"raw O_DIRECT": ceiling_bps} if ceiling_bps else None
    return plot_series(series, path, title=title, ylabel="GB/s", scale=1e9, hlines=hl)


def plot_ring_fill(
    series: Mapping[str, Series],
    path: str | os.PathLike[str],
    *,
    capacity: float | None = None,
    unit: str = "slots",
    title: str = "ring fill",
) -> Path:
    """Plot ``{label: [(t, occupied)]}``; a flat line under capacity is healthy."""
    hl = {"capacity": capacity} if capacity else None
    return plot_series(
        series, path, title=title, ylabel=f"occupied ({unit})", hlines=hl, step=True
    )


def plot_dirty_pages(
    series: Mapping[str, Series],
    path: str | os.PathLike[str],
    *,
    title: str = "system dirty pages",
) -> Path:
    """Plot ``{label: [(t, dirty_bytes)]}`` in MiB, several writers together."""
    return plot_series(series, path, title=title, ylabel="Dirty (MiB)", scale=_MIB)


def peer_traces(
    r: Mapping[str, Any], window: float = 0.25
) -> tuple[list[tuple[float, float]], list[tuple[float, float]]]:
    """A peer's (dirty bytes, accepted bytes/s) over time from its result dict."""
    off = r.get("t_offset", 0.0)
    dirty = [
        (s["t"] - off, float(s["dirty_bytes"]))
        for s in r["series"]
        if s.get("dirty_bytes") is not None
    ]
    nbytes = r["bytes"] // max(r["frames"], 1)
    return dirty, rate_from_events(r["frame_times"], nbytes, window)


def plot_peer_results(
    results: Sequence[Mapping[str, Any]], outdir: str | os.PathLike[str]
) -> list[Path]:
    """Dirty-page and accepted-throughput plots for ``peers`` result dicts."""
    out = Path(outdir)
    dirty: dict[str, list[tuple[float, float]]] = {}
    rate: dict[str, list[tuple[float, float]]] = {}
    ceiling = None
    for r in results:
        if "series" not in r:  # raw baseline: a single figure, not a trace
            ceiling = r.get("gbps", 0.0) * 1e9 or None
            continue
        dirty[r["name"]], rate[r["name"]] = peer_traces(r)
    return [
        plot_dirty_pages(dirty, out / "dirty_pages.png"),
        plot_throughput(
            rate,
            out / "throughput_accepted.png",
            ceiling_bps=ceiling,
            title="frames accepted by the writer (acquisition side)",
        ),
    ]
