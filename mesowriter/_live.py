"""Live progress for the command line: one rich table row per stream.

Fed with the "progress" dicts that synthetic cameras and the demo emit
(frames, written, bytes, ring_fill, drops, t, total/duration); rates are
taken between consecutive updates of the same stream.
"""

from __future__ import annotations

from types import TracebackType
from typing import Any

from rich.console import Console
from rich.live import Live
from rich.table import Table


class LiveProgress:
    """`with LiveProgress() as live: live.update(msg)`; draws at 4 Hz."""

    def __init__(self, title: str = "mesowriter", console: Console | None = None):
        self.title = title
        self._rows: dict[str, dict[str, Any]] = {}
        self._prev: dict[str, dict[str, Any]] = {}
        self._live = Live(
            self._table(), console=console or Console(stderr=True), refresh_per_second=4
        )

    def __enter__(self) -> LiveProgress:
        self._live.__enter__()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._live.update(self._table())
        self._live.__exit__(exc_type, exc, tb)
        if not self._live.console.is_terminal:
            self._live.console.line()  # a log file gets the table's last line ended

    def update(self, msg: dict[str, Any]) -> None:
        if msg.get("type", "progress") != "progress":
            return
        name = str(msg.get("name", "stream"))
        prev = self._prev.get(name)
        row = dict(msg)
        if msg.get("final") and msg.get("seconds"):  # the whole run's rate
            row["fps"] = msg["written"] / msg["seconds"]
            row["gbps"] = msg["bytes"] / msg["seconds"] / 1e9
        elif prev is not None and msg["t"] > prev["t"]:
            dt = msg["t"] - prev["t"]
            # the writer's rate, like GB/s (frames received may have stopped)
            row["fps"] = (msg["written"] - prev["written"]) / dt
            row["gbps"] = (msg["bytes"] - prev["bytes"]) / dt / 1e9
        else:
            row["fps"] = row["gbps"] = 0.0
        self._prev[name] = msg
        self._rows[name] = row
        self._live.update(self._table())

    def _table(self) -> Table:
        t = Table(title=self.title)
        for col in (
            "stream",
            "frames",
            "written",
            "fps",
            "GB/s",
            "ring",
            "drops",
            "left",
        ):
            t.add_column(col, justify="right")
        for name, r in self._rows.items():
            left = _time_left(r)
            t.add_row(
                name,
                f"{r['frames']}" + (f"/{r['total']}" if r.get("total") else ""),
                str(r["written"]),
                f"{r['fps']:.0f}",
                f"{r['gbps']:.2f}",
                f"{100 * r['ring_fill']:.0f}%",
                f"[red]{r['drops']}[/]" if r["drops"] else "0",
                "-" if left is None else f"{left:.0f} s",
            )
        return t


def _time_left(r: dict[str, Any]) -> float | None:
    if r.get("duration"):
        return max(0.0, float(r["duration"]) - float(r["t"]))
    if r.get("total") and r.get("fps"):
        return max(0.0, (float(r["total"]) - float(r["frames"])) / float(r["fps"]))
    return None
