"""Names are data, not paths: what a position or camera name can do to a file name.

Each reproduction from the field is an assertion here, and properties that
must hold for any string are checked with hypothesis: no separator, never
outside the folder, never reserved, within the byte bound, idempotent.
"""

from __future__ import annotations

import ntpath
import os
import posixpath
import string
import unicodedata

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mesowriter._names import (
    MAX_COMPONENT_BYTES,
    is_reserved_on_windows,
    safe_component,
    unique_components,
    unique_keys,
)

PROPERTY = settings(
    max_examples=400,
    database=None,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
# Names as they come: any text, weighted towards the characters that matter.
NASTY = '/\\.:<>"|?* \x00\x1f\x7f\u202e\u200b\u2028~-_CoNuPrAxLm1\u00b9\u00b2\u00b3'
names = st.one_of(
    st.text(),
    st.text(alphabet=NASTY + string.ascii_letters, max_size=40),
    st.text(min_size=60, max_size=200),
    st.sampled_from(["con", "CON.txt", "lpt1", "COM\u00b9.log", "nul ", "..", ".", ""]),
)


# -- the reproductions ------------------------------------------------------------


def _stays_a_direct_child(folder: str, part: str) -> bool:
    for mod in (posixpath, ntpath):
        joined = mod.normpath(mod.join(folder, part))
        if mod.dirname(joined) != mod.normpath(folder):
            return False
    return True


@pytest.mark.parametrize(
    "name",
    ["../../../../elsewhere/victim", "a/b", "/abs/path", "../escape", "..\\..\\win"],
)
def test_separators_and_traversal_stay_in_the_folder(name: str) -> None:
    out = safe_component(name)
    assert "/" not in out and "\\" not in out
    assert _stays_a_direct_child("/data/run", out)
    assert _stays_a_direct_child("C:\\data\\run", out)
    # the data file of that position is still beside the others
    path = f"/data/run/run_{out}.ome.tif"
    assert posixpath.dirname(posixpath.normpath(path)) == "/data/run"


def test_a_position_named_like_an_unnamed_positions_key_gets_its_own_key() -> None:
    keys = unique_keys(["p1", None]).names  # position 0 named "p1", position 1 not
    assert keys[1] == "p1"  # readers take data["p<index>"] for unnamed positions
    assert len(set(keys)) == 2
    keys = unique_keys([None, "p0"]).names
    assert keys == ["p0", "p0_2"]
    result = unique_keys([None, "p0", "A", "A", None])
    assert result.names == ["p0", "p0_2", "A", "A_2", "p4"]
    assert [c.index for c in result.changes] == [1, 3]


def test_unique_keys_keep_names_that_are_not_file_safe() -> None:
    # keys are JSON strings: only distinct, never rewritten
    result = unique_keys(["a/b", "a_b", "x:y", None])
    assert result.names == ["a/b", "a_b", "x:y", "p3"] and not result.changes


def test_colon_makes_no_alternate_data_stream() -> None:
    assert safe_component("pos:stream") == "pos_stream"
    assert safe_component("file.txt:$DATA") == "file.txt_$DATA"


def test_characters_windows_refuses_are_replaced_before_the_run() -> None:
    assert safe_component('a<b>c"d|e?f*g') == "a_b_c_d_e_f_g"


def test_control_and_invisible_characters() -> None:
    assert safe_component("a\x00b") == "a_b"
    assert safe_component("line\nbreak\ttab") == "line_break_tab"
    assert safe_component("evil\u202etxt.exe") == "evil_txt.exe"  # bidi override
    assert safe_component("zero\u200bwidth") == "zero_width"


@pytest.mark.parametrize(
    "name, expected",
    [
        ("CON", "_CON"),
        ("con", "_con"),
        ("Nul", "_Nul"),
        ("aux.txt", "_aux.txt"),
        ("PRN.tar.gz", "_PRN.tar.gz"),
        ("COM0", "_COM0"),
        ("com9.log", "_com9.log"),
        ("LPT1", "_LPT1"),
        ("lpt\u00b9", "_lpt\u00b9"),
        ("COM\u00b3.x", "_COM\u00b3.x"),
        ("CON .txt", "_CON .txt"),
        ("CONIN$", "_CONIN$"),
        ("nul.", "nul_"),  # the trailing dot goes, and with it the device
    ],
)
def test_windows_device_names(name: str, expected: str) -> None:
    assert is_reserved_on_windows(name) or name == "nul."
    assert safe_component(name) == expected
    assert not is_reserved_on_windows(safe_component(name))


@pytest.mark.parametrize("name", ["CONSOLE", "com10", "LPT", "xcon", "con-1", "COM_1"])
def test_names_that_merely_look_like_devices_are_kept(name: str) -> None:
    assert not is_reserved_on_windows(name) and safe_component(name) == name


@pytest.mark.parametrize(
    "name, expected",
    [(".", "_"), ("..", "__"), ("...", "___"), ("a.", "a_"), ("b ", "b_"), ("", "_")],
)
def test_dots_spaces_and_empty(name: str, expected: str) -> None:
    assert safe_component(name) == expected


@pytest.mark.parametrize(
    "name",
    ["p0", "p12", "Pos-01_A", "cell 3", "A1", "well_B03.site2", "Zelle ä", "位置1"],
)
def test_ordinary_names_are_unchanged(name: str) -> None:
    assert safe_component(name) == name
    result = unique_components([name])
    assert result.names == [name] and not result.changes


def test_long_names_are_cut_within_the_bound_and_stay_distinct() -> None:
    a = "position-" + "x" * 200 + "-a"
    b = "position-" + "x" * 200 + "-b"
    sa, sb = safe_component(a), safe_component(b)
    assert len(sa.encode()) <= MAX_COMPONENT_BYTES
    assert sa != sb and sa.startswith("position-xxx")
    wide = "\u00e9" * 100  # two bytes each: cut on a character boundary
    out = safe_component(wide)
    assert len(out.encode()) <= MAX_COMPONENT_BYTES
    assert out.encode().decode() == out


def test_the_bound_leaves_room_for_the_longest_companion_file() -> None:
    stem = "s" * (255 - 1 - MAX_COMPONENT_BYTES - len(".ome.tiff") - 32)
    part = safe_component("x" * 500)
    longest = f"{stem}_{part}.ome.tiff_frame_metadata.json.tmp-4194304"
    assert len(longest.encode()) <= 255 and len(stem) >= 140


def test_unicode_forms_are_one_name() -> None:
    nfd = unicodedata.normalize("NFD", "Zelle ä")
    assert safe_component(nfd) == "Zelle ä"
    result = unique_components(["Zelle ä", nfd])
    assert len({n.casefold() for n in result.names}) == 2


def test_unique_components_after_sanitising_and_without_case() -> None:
    result = unique_components(["a/b", "a_b", "A_B", "p1", "P1", "p1"])
    assert result.names == ["a_b_2", "a_b", "A_B_3", "p1", "P1_2", "p1_3"]
    changed = {c.index: c for c in result.changes}
    assert set(changed) == {0, 2, 4, 5}
    assert "separator" in changed[0].reasons[0]
    assert any("share the file name" in r for r in changed[2].reasons)
    assert len(result.describe()) == 4


def test_unique_components_prefers_names_that_needed_no_change() -> None:
    # "a_b" was typed as it can be written; the sanitised "a/b" yields to it
    assert unique_components(["a/b", "a_b"]).names == ["a_b_2", "a_b"]
    assert unique_components(["a_b", "a/b"]).names == ["a_b", "a_b_2"]


def test_unique_components_suffix_keeps_the_bound() -> None:
    long = "y" * 300
    result = unique_components([long, long, long])
    assert len({n.casefold() for n in result.names}) == 3
    assert all(len(n.encode()) <= MAX_COMPONENT_BYTES for n in result.names)


def test_unique_components_suffixes_skip_names_already_taken() -> None:
    result = unique_components(["a", "a_2", "A"])
    assert result.names == ["a", "a_2", "A_3"]


def test_camera_names_from_a_multi_camera_rig() -> None:
    result = unique_components(["Camera", "camera", "Multi Camera", "Cam:1", "Cam_1"])
    assert result.names == ["Camera", "camera_2", "Multi Camera", "Cam_1_2", "Cam_1"]


# -- properties for any string -------------------------------------------------------


def _assert_safe(out: str) -> None:
    assert out and out not in (".", "..")
    assert not set(out) & set('/\\<>:"|?*')
    assert all(
        unicodedata.category(c) not in ("Cc", "Cf", "Cs", "Zl", "Zp") for c in out
    )
    assert not out.endswith((".", " "))
    assert not is_reserved_on_windows(out)
    assert len(out.encode("utf-8")) <= MAX_COMPONENT_BYTES
    assert unicodedata.normalize("NFC", out) == out
    assert _stays_a_direct_child("/data/run", out)
    assert _stays_a_direct_child("C:\\data\\run", out)
    assert os.path.basename(os.path.join("folder", out)) == out


@PROPERTY
@given(names)
def test_property_safe_component(name: str) -> None:
    out = safe_component(name)
    _assert_safe(out)
    assert safe_component(out) == out  # idempotent
    assert safe_component(name) == out  # deterministic


@PROPERTY
@given(st.lists(names, max_size=12))
def test_property_unique_components(batch: list[str]) -> None:
    result = unique_components(batch)
    assert len(result.names) == len(batch)
    for out in result.names:
        _assert_safe(out)
    folded = [unicodedata.normalize("NFKC", n.casefold()) for n in result.names]
    assert len(set(folded)) == len(folded)
    assert unique_components(batch) == result  # deterministic
    changed = {c.index for c in result.changes}
    for i, (name, out) in enumerate(zip(batch, result.names, strict=True)):
        assert (name != out) == (i in changed)


@PROPERTY
@given(st.lists(st.one_of(st.none(), st.just(""), names), max_size=12))
def test_property_unique_keys(batch: list[str | None]) -> None:
    result = unique_keys(batch)
    assert len(set(result.names)) == len(batch)
    for i, (name, key) in enumerate(zip(batch, result.names, strict=True)):
        if not name:
            assert key == f"p{i}"
        elif i not in {c.index for c in result.changes}:
            assert key == name
