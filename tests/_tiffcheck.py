"""Checks shared by the layout, recover and parity tests: files read back
as analysis code reads them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import tifffile

from mesowriter.sinks._tiff_format import PAGE


def _frame_shape(series: Any) -> tuple[int, ...]:
    page = series.keyframe
    return tuple(page.shape)


def check_mappable(path: Path, expected: list[np.ndarray] | np.ndarray) -> None:
    """The file's series holds exactly `expected`, in file order, and maps.

    Checked three ways: the series as tifffile reads it, `tifffile.memmap`
    of the whole file, and `numpy.memmap` at the series' data offset with
    the series' shape (the pixels must be one contiguous run). The file
    has one page per frame: nothing else is passed off as a frame.
    """
    n = len(expected)
    frame_shape = expected[0].shape
    dtype = expected[0].dtype
    with tifffile.TiffFile(path) as tf:
        series = tf.series[0]
        offset = series.dataoffset
        shape = tuple(series.shape)
        assert series.dtype == dtype
        assert _frame_shape(series) == frame_shape
        assert offset is not None, "pixels of the series are not contiguous"
        assert offset % PAGE == 0, f"data offset {offset} is not 4096-aligned"
        read = series.asarray().reshape(-1, *frame_shape)
        assert len(tf.pages) == n, "a page that is not a frame of the series"
    assert int(np.prod(shape)) == n * int(np.prod(frame_shape)), (shape, n)
    assert len(read) == n
    mapped = tifffile.memmap(path, mode="r")
    try:
        assert mapped.shape == shape
        flat = mapped.reshape(-1, *frame_shape)
        raw = np.memmap(path, dtype, "r", offset, shape)
        raw_flat = raw.reshape(-1, *frame_shape)
        for k, want in enumerate(expected):
            np.testing.assert_array_equal(read[k], want, err_msg=f"series {k}")
            np.testing.assert_array_equal(flat[k], want, err_msg=f"memmap {k}")
            np.testing.assert_array_equal(raw_flat[k], want, err_msg=f"numpy {k}")
        del raw, raw_flat
    finally:
        del mapped
