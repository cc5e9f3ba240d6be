"""Alternating rounds, and the statistics the bench reports from them.

On the shared virtual disk the same job swings 2x from minute to minute
(FIELD.md section 6), so a figure from one run, or a ratio of two runs made
minutes apart, says little. The bench therefore runs every configuration
once per round, references first and then the writers under test, for
several rounds, and reports each one's median and spread (min-max) and the
ratio of runs made side by side in the same round. Where one reference is
the likely ceiling (`bracket`), it also runs right before and right after
each subject, and the subject's ratio is taken to the mean of those two
runs: seconds apart, not the tens of seconds a round lasts, within which the
disk often changes pace.
"""

from __future__ import annotations

import statistics
import traceback
from collections.abc import Callable, Mapping, Sequence
from typing import Any

__all__ = [
    "Spread",
    "best_reference",
    "bracketed_ratios",
    "ratios",
    "rotated",
    "run_rounds",
    "schedule",
    "spread",
    "versus_best",
]

Spread = dict[str, Any]  # {"median", "min", "max", "n", "values"}
Values = Sequence[float | None]


def rotated(items: Sequence[str], k: int) -> list[str]:
    """``items`` rotated left by ``k``: round k starts with a different one."""
    if not items:
        return []
    k %= len(items)
    return [*items[k:], *items[:k]]


def schedule(
    rounds: int,
    references: Sequence[str],
    subjects: Sequence[str],
    bracket: str | None = None,
) -> list[list[str]]:
    """Run order: each round runs every reference, then every subject.

    Both lists are rotated by one each round, so no configuration always
    runs first, or always right after the same neighbour (a disk that has
    just absorbed a burst writes the next one differently). A `bracket`
    reference runs last of the references and again after each subject,
    so that every subject has one of its runs on either side.
    """
    if rounds < 1:
        raise ValueError("rounds must be at least 1")
    if bracket is None:
        return [[*rotated(references, r), *rotated(subjects, r)] for r in range(rounds)]
    if bracket not in references:
        raise ValueError(f"bracket {bracket!r} is not one of the references")
    others = [name for name in references if name != bracket]
    plan = []
    for r in range(rounds):
        row = [*rotated(others, r), bracket]
        for subject in rotated(subjects, r):
            row += [subject, bracket]
        plan.append(row)
    return plan


def run_rounds(
    plan: Sequence[Sequence[str]],
    runners: Mapping[str, Callable[[], dict[str, Any]]],
    *,
    on_result: Callable[[int, str, dict[str, Any] | None], None] | None = None,
    trail: list[list[tuple[str, dict[str, Any] | None]]] | None = None,
) -> tuple[dict[str, list[dict[str, Any] | None]], list[dict[str, Any]]]:
    """Run ``plan`` (from ``schedule``).

    Returns ``{name: [its first result in each round]}`` and the failures.
    A run that raises leaves ``None`` in its round and a failure record
    (round, name, traceback): one failed run must not cost the other
    configurations their figures. ``trail``, if given, receives each round's
    runs in the order they ran, repeated names included.
    """
    out: dict[str, list[dict[str, Any] | None]] = {
        name: [None] * len(plan) for row in plan for name in row
    }
    failures: list[dict[str, Any]] = []
    for r, row in enumerate(plan):
        ran: list[tuple[str, dict[str, Any] | None]] = []
        if trail is not None:
            trail.append(ran)
        for name in row:
            res: dict[str, Any] | None = None
            try:
                res = runners[name]()
            except Exception as exc:
                failures.append(
                    {
                        "round": r,
                        "name": name,
                        "error": repr(exc),
                        "traceback": traceback.format_exc(),
                    }
                )
            if name not in {n for n, _ in ran}:
                out[name][r] = res
            ran.append((name, res))
            if on_result is not None:
                on_result(r, name, res)
    return out, failures


def spread(values: Values) -> Spread:
    """Median, min and max of the values that exist (``None``: a failed run)."""
    got = [float(v) for v in values if v is not None]
    return {
        "median": statistics.median(got) if got else None,
        "min": min(got) if got else None,
        "max": max(got) if got else None,
        "n": len(got),
        "values": list(values),
    }


def ratios(num: Values, den: Values) -> list[float | None]:
    """Per-round ratios ``num[r] / den[r]``; ``None`` where either run failed."""
    if len(num) != len(den):
        raise ValueError("one value per round on both sides")
    return [
        None if a is None or b is None or b <= 0 else a / b
        for a, b in zip(num, den, strict=True)
    ]


def best_reference(references: Mapping[str, Values]) -> str | None:
    """The reference with the highest median: the ceiling a writer is held to."""
    medians = {k: spread(v)["median"] for k, v in references.items()}
    known = {k: m for k, m in medians.items() if m is not None}
    return max(known, key=lambda k: known[k]) if known else None


def versus_best(subject: Values, references: Mapping[str, Values]) -> dict[str, Any]:
    """``subject`` against the best reference, round by round.

    The best is chosen by median over all rounds; each round's ratio divides
    the subject's run by that reference's run of the same round.
    """
    best = best_reference(references)
    per_round = ratios(subject, references[best]) if best is not None else []
    return {"best": best, "ratios": per_round, "ratio": spread(per_round)}


def bracketed_ratios(
    trail: Sequence[Sequence[tuple[str, float | None]]], subject: str, bracket: str
) -> list[float | None]:
    """Per round: `subject`'s run over the mean of the `bracket` runs right
    before and right after it (one of them where the other failed)."""
    out: list[float | None] = []
    for row in trail:
        ratio = None
        for i, (name, value) in enumerate(row):
            if name != subject or value is None:
                continue
            around = [
                row[j][1]
                for j in (i - 1, i + 1)
                if 0 <= j < len(row) and row[j][0] == bracket
            ]
            refs = [v for v in around if v is not None and v > 0]
            if refs:
                ratio = value / statistics.fmean(refs)
        out.append(ratio)
    return out
