"""Catalog FITS round trip: dtypes, values, units, descriptions, flags, meta and slots."""

from __future__ import annotations

import io

import numpy as np
import pytest
from astropy import units as u
from astropy.table import Table
from calexpress.catalog import get_slot_column, read_catalog, set_slot, slot_name, write_catalog
from calexpress.fitsio import FitsReadError


def _catalog(n: int = 50) -> Table:
    rng = np.random.default_rng(4)
    t = Table()
    t["id"] = np.arange(1, n + 1, dtype=np.int64) + (1001 << 32)
    t["parent"] = np.zeros(n, dtype=np.int64)
    t["coord_ra"] = rng.uniform(0, 2 * np.pi, n)
    t["coord_dec"] = rng.uniform(-1, 1, n)
    t["coord_ra"].unit = u.rad
    t["coord_dec"].unit = u.rad
    t["base_SdssCentroid_x"] = rng.uniform(0, 2048, n)
    t["base_SdssCentroid_x"].unit = u.pix
    t["base_SdssCentroid_y"] = rng.uniform(0, 4096, n)
    t["base_SdssCentroid_y"].unit = u.pix
    t["base_PsfFlux_instFlux"] = rng.normal(1e4, 1e3, n)
    t["base_PsfFlux_instFlux"].unit = u.ct
    if n > 3:
        t["base_PsfFlux_instFlux"][3] = np.nan
    t["base_PsfFlux_flux"] = rng.normal(1e4, 1e3, n).astype(np.float32)
    t["base_PsfFlux_flux"].unit = u.nJy
    t["base_SdssShape_xx"] = rng.uniform(1, 5, n).astype(np.float32)
    t["base_SdssShape_xx"].unit = u.pix**2
    t["base_PixelFlags_flag_edge"] = rng.random(n) < 0.2
    t["calib_psf_used"] = rng.random(n) < 0.5
    t["deblend_nChild"] = rng.integers(0, 5, n).astype(np.int32)
    t["small"] = rng.integers(0, 100, n).astype(np.int16)
    t["band"] = np.array(["g"] * n)
    t["cov"] = rng.normal(size=(n, 2, 2)).astype(np.float32)
    for name in t.colnames:
        t[name].description = f"description of {name}"
    t.meta["ALIAS_slot_Centroid"] = "base_SdssCentroid"
    t.meta["ALIAS_slot_PsfFlux"] = "base_PsfFlux"
    t.meta["VISIT"] = 1001
    t.meta["EXPTIME"] = 60.0
    t.meta["some_list"] = [1, 2, 3]
    t.meta["comments"] = ["first comment"]
    return t


def _check(a: Table, b: Table) -> None:
    assert a.colnames == b.colnames
    for name in a.colnames:
        assert b[name].dtype == a[name].dtype, name
        assert b[name].shape == a[name].shape, name
        assert b[name].unit == a[name].unit, name
        assert b[name].description == a[name].description, name
        if a[name].dtype.kind == "f":
            np.testing.assert_array_equal(np.asarray(b[name]), np.asarray(a[name]))  # NaN == NaN here
        else:
            assert np.all(np.asarray(b[name]) == np.asarray(a[name])), name
    assert not any(getattr(b[c], "mask", None) is not None and np.any(b[c].mask) for c in b.colnames)
    assert dict(b.meta) == dict(a.meta)


@pytest.mark.parametrize("n", [50, 0])
def test_catalog_round_trip_path_and_fileobj(tmp_path, n):
    t = _catalog(n)
    path = tmp_path / "src.fits"
    write_catalog(t, str(path))
    _check(t, read_catalog(str(path)))
    buf = io.BytesIO()
    write_catalog(t, buf)
    _check(t, read_catalog(io.BytesIO(buf.getvalue())))
    gz = tmp_path / "src.fits.gz"
    write_catalog(t, str(gz))
    _check(t, read_catalog(str(gz)))


def test_slots():
    t = _catalog(5)
    assert slot_name(t, "Centroid") == "base_SdssCentroid"
    assert get_slot_column(t, "Centroid", "_x") is t["base_SdssCentroid_x"]
    set_slot(t, "Shape", "base_SdssShape")
    assert slot_name(t, "slot_Shape") == "base_SdssShape"
    with pytest.raises(KeyError, match="defined slots"):
        slot_name(t, "ApFlux")


def test_truncated_catalog(tmp_path):
    t = _catalog(2000)
    path = tmp_path / "src.fits"
    write_catalog(t, str(path))
    bad = tmp_path / "bad.fits"
    bad.write_bytes(path.read_bytes()[:-3000])
    with pytest.raises(FitsReadError, match="bad.fits"):
        read_catalog(str(bad))
