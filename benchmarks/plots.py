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

import numpy as np
from matplotlib.figure import Figure

__all__ = [
    "Series",
    "peer_traces",
    "plot_dirty_pages",
    "plot_peer_results",
    "plot_points",
    "plot_rate_rounds",
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
    return _save(fig, path)


def plot_points(
    rows: Sequence[tuple[str, Mapping[str, Any]]],
    path: str | os.PathLike[str],
    *,
    references: Mapping[str, Mapping[str, Any]] | None = None,
    best: str | None = None,
    title: str = "",
    xlabel: str = "GB/s: point = median, bar = min-max over rounds",
) -> Path:
    """One row per writer: its median as a point, its min-max as a bar.

    ``rows`` are ``(label, spread)`` with ``spread`` as made by
    ``benchmarks._rounds.spread`` (``median``, ``min``, ``max``, ``n``).
    ``references`` (the raw configurations) are vertical lines at their
    medians; the ``best`` one is solid, with its min-max shaded, because it
    is the one the writers are held to. A mean over a whole run reads at a
    glance here, where a time series of runs of different lengths does not.
    """
    shown = [(label, s) for label, s in rows if s.get("median") is not None]
    fig = Figure(figsize=(9, 1.4 + 0.45 * max(len(shown), 2)), layout="constrained")
    ax = fig.add_subplot()
    for i, (_label, s) in enumerate(shown):
        med = float(s["median"])
        lo, hi = float(s["min"]), float(s["max"])
        ax.errorbar(
            [med],
            [i],
            xerr=[[med - lo], [hi - med]],
            fmt="o",
            color="C0",
            capsize=4,
        )
        ax.annotate(
            f"{med:.2f} ({lo:.2f}-{hi:.2f}), n={s['n']}",
            (hi, i),
            textcoords="offset points",
            xytext=(6, -3),
            fontsize=8,
        )
    ax.set_yticks(range(len(shown)), [label for label, _ in shown])
    for name, s in (references or {}).items():
        if s.get("median") is None:
            continue
        med = float(s["median"])
        is_best = name == best
        ax.axvline(
            med,
            color="C3" if is_best else "grey",
            linestyle="-" if is_best else "--",
            linewidth=1.5 if is_best else 0.9,
            label=f"{name}{' (best)' if is_best else ''}: {med:.2f}",
        )
        if is_best:
            ax.axvspan(float(s["min"]), float(s["max"]), color="C3", alpha=0.08)
    if references:
        ax.legend(
            title="raw, median",
            loc="center left",
            bbox_to_anchor=(1.01, 0.5),
            fontsize=8,
            title_fontsize=8,
        )
    ax.set_xlim(left=0)
    ax.set_ylim(len(shown) - 0.5, -0.5)
    ax.set_xlabel(xlabel)
    ax.set_title(title, fontsize=10)
    ax.grid(True, axis="x", alpha=0.3)
    return _save(fig, path)


def plot_rate_rounds(
    groups: Mapping[str, Sequence[Series]],
    path: str | os.PathLike[str],
    *,
    title: str = "",
    ylabel: str = "GB/s",
    scale: float = 1e9,
    hlines: Mapping[str, float] | None = None,
) -> Path:
    """Rates over time, every round of each writer in that writer's colour,
    all from t = 0 (the first write) on one time axis, so runs of the same
    bytes compare in length as well as in height; ``hlines``: labelled
    levels (a reference that has no time series, such as fio's median)."""
    fig = Figure(figsize=(8, 4.5), layout="constrained")
    ax = fig.add_subplot()
    for c, (label, rounds) in enumerate(groups.items()):
        for r, pts in enumerate(rounds):
            if not pts:
                continue
            ax.plot(
                [p[0] for p in pts],
                [p[1] / scale for p in pts],
                color=f"C{c}",
                alpha=0.9 if r == 0 else 0.45,
                label=label if r == 0 else None,
            )
    for label, y in (hlines or {}).items():
        ax.axhline(y / scale, color="grey", linestyle="--", linewidth=1, label=label)
    ax.set_xlim(left=0)
    ax.set_ylim(bottom=0)
    ax.set_title(title, fontsize=10)
    ax.set_xlabel("time since the first write (s)")
    ax.set_ylabel(ylabel)
    ax.grid(True, alpha=0.3)
    if hlines or any(any(r) for r in groups.values()):
        ax.legend(loc="lower right", fontsize=8)
    return _save(fig, path)


def _save(fig: Figure, path: str | os.PathLike[str]) -> Path:
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)
    return out


def rate_from_cumulative(
    points: Series, window: float = 0.25
) -> list[tuple[float, float]]:
    """Turn cumulative ``(t, total)`` points into ``(t, rate)`` over ``window`` s.

    A trailing window, the total at its start interpolated, not
    point-to-point differences: 50 ms sampling jitter, or requests that
    complete in a bunch, would otherwise turn into spikes. Points before one
    full window has passed are left out (a burst into a queue in the first
    milliseconds would otherwise read as hundreds of GB/s).
    """
    pts = sorted(points)
    if not pts:
        return []
    ts = np.array([p[0] for p in pts], dtype=float)
    vs = np.array([p[1] for p in pts], dtype=float)
    return [
        (t, (v - float(np.interp(t - window, ts, vs))) / window)
        for t, v in pts
        if t - pts[0][0] >= window
    ]


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
