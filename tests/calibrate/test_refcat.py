"""Reference catalog loader: SDSS (depth 8, nJy, flag bits), simcam refcat (proper motions), format 0."""

from __future__ import annotations

import glob
import warnings

import numpy as np
import pytest
from astropy.io import fits
from astropy.table import Table, vstack
from calexpress.calibrate import LoadIndexedReferenceObjectsConfig, LoadIndexedReferenceObjectsTask
from calexpress.calibrate.refcat import ReferenceCatalogError
from calibrate_truth import load_frame


def _sep_deg(ra1, dec1, ra2, dec2):
    r1, d1, r2, d2 = map(np.radians, (ra1, dec1, ra2, dec2))
    c = np.sin(d1) * np.sin(d2) + np.cos(d1) * np.cos(d2) * np.cos(r1 - r2)
    return np.degrees(np.arccos(np.clip(c, -1, 1)))


@pytest.fixture(scope="module")
def sdss_dir(shared_data):
    return shared_data / "refcats" / "sdss_lsst" / "ref_cats" / "cal_ref_cat"


def test_sdss_cone_returns_the_right_stars(sdss_dir):
    loader = LoadIndexedReferenceObjectsTask(ref_cat_dir=str(sdss_dir))
    ra0, dec0, rad = 215.63, 53.05, 0.12
    res = loader.loadSkyCircle((ra0, dec0), rad, filterName="r")
    got = res.refCat
    assert loader.depth == 8
    # brute force over every shard
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        allcat = vstack([Table.read(p) for p in glob.glob(str(sdss_dir / "9*.fits"))])
    sep = _sep_deg(np.degrees(allcat["coord_ra"]), np.degrees(allcat["coord_dec"]), ra0, dec0)
    expected = set(np.asarray(allcat["id"])[sep <= rad])
    assert len(expected) > 100
    assert set(np.asarray(got["id"])) == expected
    assert res.fluxField == "r_flux"
    # flags unpacked from the afw bit column, fluxes in nJy
    assert got["photometric"].dtype == bool and got["resolved"].dtype == bool
    assert 0 < got["resolved"].sum() < len(got)
    raw = fits.getdata(glob.glob(str(sdss_dir / "903282.fits"))[0], 1)
    assert str(got["r_flux"].unit) == "nJy"
    mag = -2.5 * np.log10(np.asarray(got["r_flux"])) + 31.4
    assert 12 < np.nanmedian(mag) < 24
    assert len(raw) > 0
    np.testing.assert_array_equal(got["r_camFlux"], got["r_flux"])


def test_format_version_0_is_converted_from_jy(sdss_dir, tmp_path):
    out = tmp_path / "ref_cats" / "old"
    out.mkdir(parents=True)
    for p in glob.glob(str(sdss_dir / "9*.fits")):
        with fits.open(p) as hdul:
            hdul = fits.HDUList([h.copy() for h in hdul])
        data = hdul[1].data
        for name in data.columns.names:
            if name.endswith("_flux") or name.endswith("_fluxErr"):
                data[name] = data[name] * 1e-9
        hdul[1].header["HIERARCH REFCAT_FORMAT_VERSION"] = 0
        hdul.writeto(out / p.rsplit("/", 1)[1])
    cfg = LoadIndexedReferenceObjectsConfig()
    cfg.ref_dataset_name = "old"
    old = LoadIndexedReferenceObjectsTask(root=str(tmp_path), config=cfg).loadSkyCircle(
        (215.63, 53.05), 0.1, "g"
    )
    new = LoadIndexedReferenceObjectsTask(ref_cat_dir=str(sdss_dir)).loadSkyCircle((215.63, 53.05), 0.1, "g")
    old.refCat.sort("id")
    new.refCat.sort("id")
    np.testing.assert_allclose(old.refCat["g_flux"], new.refCat["g_flux"], rtol=1e-6)


def test_proper_motion_and_pixel_box_match_truth(simcam_dir, simcam_refcat_dir):
    fr = load_frame(simcam_dir, "simcamA_0001003_r")
    loader = LoadIndexedReferenceObjectsTask(ref_cat_dir=str(simcam_refcat_dir))
    res = loader.loadPixelBox((0, 0, 2048, 4096), fr.truth_wcs, "r", fr.header["MJD-AVG"])
    ref = res.refCat
    stars = fr.objects[fr.objects["is_star"] & fr.objects["in_refcat"] & fr.objects["on_detector"]]
    common, i_ref, i_tru = np.intersect1d(np.asarray(ref["id"]), np.asarray(stars["id"]), return_indices=True)
    assert len(common) >= 0.99 * len(stars)
    d_mas = (
        _sep_deg(
            np.degrees(ref["coord_ra"][i_ref]),
            np.degrees(ref["coord_dec"][i_ref]),
            stars["ra"][i_tru],
            stars["dec"][i_tru],
        )
        * 3.6e6
    )
    err_mas = np.hypot(ref["coord_raErr"][i_ref], ref["coord_decErr"][i_ref]) * 206264806.2
    # the catalogue positions carry their quoted errors; after the proper motion they agree with truth
    assert np.median(d_mas / np.maximum(err_mas, 1e-3)) < 1.5
    # without proper motions the fast movers are off by far more than their errors
    raw = loader.loadPixelBox((0, 0, 2048, 4096), fr.truth_wcs, "r", None).refCat
    _, a, b = np.intersect1d(np.asarray(raw["id"]), np.asarray(ref["id"]), return_indices=True)
    moved = (
        _sep_deg(
            np.degrees(raw["coord_ra"][a]),
            np.degrees(raw["coord_dec"][a]),
            np.degrees(ref["coord_ra"][b]),
            np.degrees(ref["coord_dec"][b]),
        )
        * 3.6e6
    )
    assert moved.max() > 50
    # centroids projected with the WCS
    x, y = fr.truth_wcs.all_world2pix(np.degrees(ref["coord_ra"]), np.degrees(ref["coord_dec"]), 0)
    np.testing.assert_allclose(ref["centroid_x"], x, atol=1e-6)
    assert ((ref["centroid_x"] > -301) & (ref["centroid_x"] < 2048 + 300)).all()


def test_missing_catalog_names_the_folder(tmp_path):
    loader = LoadIndexedReferenceObjectsTask(root=str(tmp_path))
    with pytest.raises(ReferenceCatalogError, match="cal_ref_cat"):
        loader.loadSkyCircle((10.0, 10.0), 0.1, "r")


def test_filter_map_and_shard_cache(sdss_dir):
    cfg = LoadIndexedReferenceObjectsConfig()
    cfg.filterMap = {"HSC-R": "r"}
    loader = LoadIndexedReferenceObjectsTask(ref_cat_dir=str(sdss_dir), config=cfg)
    res = loader.loadSkyCircle((215.63, 53.05), 0.05, "HSC-R")
    assert res.fluxField == "r_flux" and "HSC-R_camFlux" in res.refCat.colnames
    misses = loader.cache_misses
    loader.loadSkyCircle((215.63, 53.05), 0.05, "HSC-R")
    assert loader.cache_misses == misses and loader.cache_hits > 0
