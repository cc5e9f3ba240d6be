"""Names are data, not paths: position and camera names made into file-name parts.

A sequence's position names and a rig's camera names become parts of file
names (`run.ome.tif` -> `run_<name>.ome.tif`). They come from user code and
saved sequences, so a name must never be able to leave the output folder
(`../../elsewhere/victim`), make sub-folders (`a/b`), open an NTFS alternate
data stream (`a:b`), fail only after the camera ran (`<>|?*"` on Windows),
or make two positions share one file (`p1` and an unnamed position 1; `A`
and `a` on a case-insensitive file system). Files move between operating
systems, so every rule of every platform applies everywhere.

Pure functions, no file system access:

- `safe_component(name)`: one safe path component, deterministic, idempotent,
  unchanged for ordinary names (`p0`, `Pos-01_A`, `cell 3`);
- `unique_components(names)`: safe and pairwise distinct, compared as
  case-insensitive file systems compare, with what was changed and why;
- `unique_keys(names)`: distinct sidecar/position keys (JSON strings, not
  paths): a position's name, else `p{index}`.

Length bound: `MAX_COMPONENT_BYTES` = 64 UTF-8 bytes. The longest name a
component ends up in is a companion of its data file,
`<stem>_<component>.ome.tiff_frame_metadata.json`: 1 + 64 + 9 + 20 bytes,
which leaves over 150 of the 255 bytes most file systems allow for the
user's own stem (temporary files get unpredictable names cut to fit, see
`mesowriter._platform.temp_sibling`).
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

__all__ = [
    "MAX_COMPONENT_BYTES",
    "NameChange",
    "UniqueNames",
    "is_reserved_on_windows",
    "safe_component",
    "unique_components",
    "unique_keys",
]

MAX_COMPONENT_BYTES = 64
REPLACEMENT = "_"
_EMPTY = "_"
_HASH_CHARS = 8  # hex digits of the name's hash kept when a name is cut
_WINDOWS_FORBIDDEN = frozenset('<>:"|?*')
_SEPARATORS = frozenset("/\\")
# Control, format (bidi overrides, zero-width), surrogate and line/paragraph
# separator characters: invisible or misleading in a file name, or invalid.
_BAD_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Zl", "Zp"})
_SUPERSCRIPT_DIGITS = "\u00b9\u00b2\u00b3"  # Windows treats COM¹ like COM1
_RESERVED = re.compile(
    r"(CON|PRN|AUX|NUL|CONIN\$|CONOUT\$|(COM|LPT)[0-9" + _SUPERSCRIPT_DIGITS + r"])",
    re.IGNORECASE,
)


@dataclass(frozen=True)
class NameChange:
    """One name that did not come out as given, and why."""

    index: int
    original: str | None
    result: str
    reasons: tuple[str, ...]


@dataclass(frozen=True)
class UniqueNames:
    """`names[i]` is what input `i` became; `changes` lists those that changed."""

    names: list[str]
    changes: list[NameChange] = field(default_factory=list)

    def describe(self) -> list[str]:
        """One line per changed name, for a warning or a report."""
        return [
            f"{c.original!r} -> {c.result!r}: {'; '.join(c.reasons)}"
            for c in self.changes
        ]


def is_reserved_on_windows(name: str) -> bool:
    """Whether Windows takes `name` for a device (CON, nul.txt, COM1 .log, ...).

    The part before the first dot counts, with trailing spaces ignored, in
    any case; the superscript digits ¹²³ count as digits.
    """
    stem = name.split(".", 1)[0].rstrip(" ")
    return _RESERVED.fullmatch(stem) is not None


def safe_component(name: str) -> str:
    """`name` as exactly one path component that is safe on every platform.

    Each character that is a path separator, forbidden on Windows
    (`<>:"|?*`) or a control/format/separator character becomes `_`; a
    trailing dot or space becomes `_` (Windows drops them); an empty name
    becomes `_`; a name Windows reserves for a device gets a `_` in front; a
    name longer than `MAX_COMPONENT_BYTES` in UTF-8 is cut and ends in `-`
    and 8 hex digits of its hash, so different long names stay different.
    Names are NFC-normalised first. Ordinary names come back unchanged,
    and `safe_component(safe_component(x)) == safe_component(x)`.
    """
    return _sanitise(name)[0]


def unique_components(names: Sequence[str]) -> UniqueNames:
    """Safe components that are pairwise distinct as file systems compare them.

    Two results never differ only in case or Unicode form (Windows and macOS
    file systems would make them one file). A name that comes out of
    `safe_component` unchanged keeps it; the others, and later duplicates,
    get the first free suffix `_2`, `_3`, ... (`a/b` next to `a_b` becomes
    `a_b_2`). Deterministic: the same list always gives the same result.
    """
    return _unique([(n, *_sanitise(n)) for n in names])


def unique_keys(names: Sequence[str | None]) -> UniqueNames:
    """Distinct sidecar keys of positions: the name, else `p{index}`.

    Keys are JSON strings, not paths, so they are not sanitised, only made
    distinct (exactly, case counts): an unnamed position keeps `p{index}`,
    which readers such as mesofield's take as `data["p0"]`, and a named
    position whose name is taken (by another name or by an unnamed
    position's `p{index}`) gets the first free suffix `_2`, `_3`, ....
    """
    keys = [n if n else f"p{i}" for i, n in enumerate(names)]
    taken: set[str] = {k for n, k in zip(names, keys, strict=True) if not n}
    out: list[str] = list(keys)
    changes: list[NameChange] = []
    for i, (name, key) in enumerate(zip(names, keys, strict=True)):
        if not name:
            continue
        if key in taken:
            new = _first_free(key, taken.__contains__, safe=False)
            changes.append(
                NameChange(i, name, new, (f"the key {key!r} is already taken",))
            )
            key = new
        taken.add(key)
        out[i] = key
    return UniqueNames(out, changes)


# -- internals --------------------------------------------------------------------


def _sanitise(name: str) -> tuple[str, list[str]]:
    """The safe component of `name` and the reasons it differs, if it does."""
    reasons: list[str] = []
    text = _lone_surrogates_replaced(name)
    if text != name:
        reasons.append("contains lone surrogates (bytes that were not UTF-8)")
    text = unicodedata.normalize("NFC", text)
    chars: list[str] = []
    found: dict[str, bool] = {}
    for ch in text:
        if ch in _SEPARATORS:
            found["contains a path separator (/ or \\)"] = True
        elif ch in _WINDOWS_FORBIDDEN:
            found['contains a character Windows forbids (<>:"|?*)'] = True
        elif unicodedata.category(ch) in _BAD_CATEGORIES:
            found["contains a control or invisible character"] = True
        else:
            chars.append(ch)
            continue
        chars.append(REPLACEMENT)
    reasons.extend(found)
    text = "".join(chars)
    stripped = text.rstrip(". ")
    if stripped != text:
        if not stripped:
            reasons.append("is '.', '..' or only dots and spaces")
        else:
            reasons.append("ends with a dot or a space")
        text = stripped + REPLACEMENT * (len(text) - len(stripped))
    if not text:
        reasons.append("is empty")
        text = _EMPTY
    if is_reserved_on_windows(text):
        reasons.append("is a device name on Windows (CON, NUL, COM1, ...)")
        text = REPLACEMENT + text
    if len(text.encode("utf-8")) > MAX_COMPONENT_BYTES:
        reasons.append(f"is longer than {MAX_COMPONENT_BYTES} bytes in UTF-8")
        digest = hashlib.sha256(name.encode("utf-8", "surrogatepass")).hexdigest()
        text = _cut(text, MAX_COMPONENT_BYTES - 1 - _HASH_CHARS)
        text = f"{text}-{digest[:_HASH_CHARS]}"
    if text != name and not reasons:
        reasons.append("is not in Unicode normal form C")
    return text, reasons


def _lone_surrogates_replaced(name: str) -> str:
    """Lone surrogates (from undecodable bytes) cannot be file names: `_`."""
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return "".join(REPLACEMENT if "\ud800" <= ch <= "\udfff" else ch for ch in name)
    return name


def _cut(text: str, max_bytes: int) -> str:
    """The longest prefix of `text` within `max_bytes` UTF-8 bytes."""
    data = text.encode("utf-8")[:max_bytes]
    return data.decode("utf-8", "ignore")


def _fold(name: str) -> str:
    """How case-insensitive, normalising file systems compare names (or
    stricter: NFKC also equates compatibility forms such as `ﬁ` and `fi`)."""
    return unicodedata.normalize("NFKC", unicodedata.normalize("NFC", name).casefold())


def _first_free(base: str, is_taken: Callable[[str], bool], *, safe: bool) -> str:
    """`base` + `_n` for the smallest n >= 2 that is not taken."""
    n = 2
    while True:
        suffix = f"_{n}"
        if safe:
            room = MAX_COMPONENT_BYTES - len(suffix)
            candidate = safe_component(_cut(base, room) + suffix)
        else:
            candidate = base + suffix
        if not is_taken(candidate):
            return candidate
        n += 1


def _unique(items: list[tuple[str, str, list[str]]]) -> UniqueNames:
    """Make sanitised names distinct; names that needed no change go first."""
    out: list[str | None] = [None] * len(items)
    reasons: list[list[str]] = [list(r) for _, _, r in items]
    taken: set[str] = set()
    first_owner: dict[str, int] = {}
    # Pass 1: a name the user wrote exactly as it can be written keeps it.
    for i, (_, safe, why) in enumerate(items):
        key = _fold(safe)
        if not why and key not in taken:
            out[i] = safe
            taken.add(key)
            first_owner[key] = i
    # Pass 2: the rest, in order, each taking the first free name.
    for i, (_, safe, _) in enumerate(items):
        if out[i] is not None:
            continue
        key = _fold(safe)
        if key not in taken:
            out[i] = safe
            taken.add(key)
            first_owner[key] = i
            continue
        new = _first_free(safe, lambda c: _fold(c) in taken, safe=True)
        owner = first_owner[key]
        reasons[i].append(
            f"would share the file name {safe!r} with name {owner} "
            f"({items[owner][0]!r}; names are compared without case)"
        )
        out[i] = new
        taken.add(_fold(new))
    names = [n for n in out if n is not None]
    changes = [
        NameChange(i, items[i][0], names[i], tuple(reasons[i]))
        for i in range(len(items))
        if names[i] != items[i][0]
    ]
    return UniqueNames(names, changes)
