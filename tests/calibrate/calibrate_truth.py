"""Helpers for the calibrate tests (imported as ``calibrate_truth``): simcamA truth-based inputs."""

from __future__ import annotations

import json
import types
import warnings
from pathlib import Path

import numpy as np
from astropy.io import fits
from astropy.table import Table
from astropy.wcs import WCS

FRAMES = ["simcamA_0001001_g", "simcamA_0001002_r", "simcamA_0001003_r"]

#: simcamA colour terms (truth.json colour_term: g 0.03 in g-r, r -0.02 in g-r).
SIMCAM_COLORTERMS = {"g": ("g", "r", 0.03), "r": ("r", "g", 0.02)}


def load_frame(simcam_dir: Path, frame: str) -> types.SimpleNamespace:
    """Raw header, header WCS, truth WCS, truth.json and truth objects of one simcamA frame."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        header = fits.getheader(simcam_dir / "raw" / f"{frame}.fits.fz", 1)
        tdir = simcam_dir / "truth" / f"{frame}_det0"
        truth_wcs = WCS(fits.getheader(tdir / "truth_wcs.fits"))
        objects = Table.read(tdir / "truth_objects.fits")
        header_wcs = WCS(header)
    truth = json.loads((tdir / "truth.json").read_text())
    return types.SimpleNamespace(
        header=header, header_wcs=header_wcs, truth_wcs=truth_wcs, truth=truth, objects=objects, frame=frame
    )


def truth_source_catalog(fr: types.SimpleNamespace, seed: int = 1, sky_e: float = 620.0) -> Table:
    """A measured-like source catalog: truth positions and fluxes with realistic noise.

    Centroid error ~ FWHM/(2.35 S/N) (x3 for galaxies), flux error from Poisson + sky in a
    ~60-pixel effective area; S/N > 5 kept; saturated objects dropped.
    """
    rng = np.random.default_rng(seed)
    to = fr.objects[fr.objects["on_detector"] & ~fr.objects["saturated"]]
    fe = np.asarray(to["flux_e"], float)
    err = np.sqrt(fe + sky_e * 60.0)
    snr = fe / err
    fwhm_pix = np.asarray(to["psf_fwhm_arcsec"], float) / 0.2
    sig = fwhm_pix / 2.35 / snr * np.where(to["is_star"], 1.0, 3.0)
    cat = Table()
    cat["id"] = np.arange(1, len(to) + 1, dtype=np.int64)
    cat["parent"] = np.zeros(len(to), np.int64)
    cat["truth_id"] = to["id"]
    cat["slot_Centroid_x"] = np.asarray(to["x"]) + rng.normal(0, 1, len(to)) * sig
    cat["slot_Centroid_y"] = np.asarray(to["y"]) + rng.normal(0, 1, len(to)) * sig
    cat["slot_Centroid_xErr"] = sig
    cat["slot_Centroid_yErr"] = sig
    flux = fe + rng.normal(0, 1, len(to)) * err
    for name in ("slot_ApFlux", "slot_CalibFlux", "base_PsfFlux"):
        cat[f"{name}_instFlux"] = flux
        cat[f"{name}_instFluxErr"] = err
    cat["base_ClassificationExtendedness_value"] = (~np.asarray(to["is_star"], bool)).astype(float)
    return cat[flux / err > 5]


def fake_exposure(fr: types.SimpleNamespace, wcs: WCS) -> types.SimpleNamespace:
    """The attributes of an Exposure that the astrometry/photometry code reads."""
    return types.SimpleNamespace(
        wcs=wcs,
        image=np.zeros((4096, 2048), np.float32),
        filter=fr.header["FILTER"],
        visit_info=None,
        metadata=fr.header.copy(),
        photo_calib=None,
    )


def perturbed_wcs(wcs: WCS, shift_arcsec: float = 0.0, rot_deg: float = 0.0, scale: float = 1.0) -> WCS:
    """Copy of ``wcs`` with CRVAL shifted east, the CD matrix rotated and scaled."""
    w = wcs.deepcopy()
    th = np.radians(rot_deg)
    rot = np.array([[np.cos(th), -np.sin(th)], [np.sin(th), np.cos(th)]])
    w.wcs.cd = scale * rot @ w.wcs.cd
    ra, dec = w.wcs.crval
    w.wcs.crval = [ra + shift_arcsec / 3600.0 / np.cos(np.radians(dec)), dec]
    w.wcs.set()
    return w


def grid_offsets_mas(wcs: WCS, truth_wcs: WCS, nx: int = 2048, ny: int = 4096, n: int = 20) -> np.ndarray:
    """On-sky distance (mas) between two WCSs on an n x n pixel grid over the detector."""
    gx, gy = np.meshgrid(np.linspace(0, nx - 1, n), np.linspace(0, ny - 1, n))
    a = wcs.all_pix2world(gx.ravel(), gy.ravel(), 0)
    b = truth_wcs.all_pix2world(gx.ravel(), gy.ravel(), 0)
    dra = (a[0] - b[0] + 180) % 360 - 180
    return np.hypot(dra * np.cos(np.radians(b[1])), a[1] - b[1]) * 3.6e6


def truth_exposure(
    simcam_dir: Path, fr: types.SimpleNamespace, seed: int = 5, wcs: WCS | None = None, psf: str = "gaussian"
):
    """A 'perfect ISR' Exposure: truth IMAGE + Gaussian noise (Poisson + read), truth SKY subtracted,
    mask from the truth MASK (BAD, SAT), header WCS (or ``wcs``) and a PSF: ``"gaussian"`` of the truth
    FWHM, or ``"truth"``: the truth PSF image at the detector centre (a constant `PixelPsf`)."""
    from calexpress.exposure import Exposure
    from calexpress.psf import GaussianPsf

    tdir = simcam_dir / "truth" / f"{fr.frame}_det0"
    with fits.open(tdir / "truth_image.fits") as hdul:
        img = hdul["IMAGE"].data.astype(np.float64)
        sky = hdul["SKY"].data.astype(np.float64)
        tmask = hdul["MASK"].data.astype(np.int32)
        grid = fits.getdata(tdir / "truth_psf.fits", "GRID")
    rng = np.random.default_rng(seed)
    var = img + 36.0
    image = (img + rng.normal(0, 1, img.shape) * np.sqrt(var) - sky).astype(np.float32)
    exp = Exposure(
        image,
        variance=var.astype(np.float32),
        metadata=fr.header.copy(),
        wcs=fr.header_wcs.deepcopy() if wcs is None else wcs,
        filter=fr.header["FILTER"],
    )
    exp.mask[(tmask & 1) != 0] |= exp.get_plane_bitmask("BAD")
    exp.mask[(tmask & 4) != 0] |= exp.get_plane_bitmask("SAT")
    if psf == "truth":
        from calexpress.psf import PixelPsf

        cube = fits.getdata(tdir / "truth_psf.fits", 0).astype(np.float64)
        img = cube[len(cube) // 2]
        exp.psf = PixelPsf(img[None] / img.sum(), 1.0, 0, (1024.0, 2048.0), (2048.0, 4096.0), img.shape[0])
    else:
        exp.psf = GaussianPsf(float(np.median(grid["fwhm_px"])) / 2.3548, 41)
    return exp


def simcam_calibrate_task(refcat_dir: Path, **config):
    """CalibrateTask with the simcamA refcat and colour terms (what the simcamA camera config sets)."""
    from calexpress.calibrate import CalibrateConfig, CalibrateTask, LoadIndexedReferenceObjectsTask

    cfg = CalibrateConfig()
    cfg.doApCorr = False
    cfg.photoCal.colortermSpecs = {
        "simcam_refcat:g": "g,r,0.0,0.03,0.0",
        "simcam_refcat:r": "r,g,0.0,0.02,0.0",
    }
    for k, v in config.items():
        setattr(cfg, k, v)
    loader = LoadIndexedReferenceObjectsTask(ref_cat_dir=str(refcat_dir))
    loader.config.ref_dataset_name = "simcam_refcat"
    return CalibrateTask(config=cfg, astromRefObjLoader=loader, photoRefObjLoader=loader)


def isr_simcam_raw(simcam_dir, frame: str):
    """IsrTask on one simcamA raw with the camera's ISR overrides and the calib/ masters."""
    from calexpress.calibs import CrosstalkCalib, Defects, Linearizer
    from calexpress.camera import get_camera
    from calexpress.exposure import Exposure
    from calexpress.isr import IsrTask, IsrTaskConfig, apply_camera_overrides

    cam = get_camera("simcamA")
    raw = cam.read_raw(simcam_dir / "raw" / f"{frame}.fits.fz")
    task = IsrTask(config=apply_camera_overrides(IsrTaskConfig(), cam))
    c = simcam_dir / "calib"
    return task.run(
        raw,
        bias=Exposure.read(c / "bias_det0.fits"),
        dark=Exposure.read(c / "dark_det0.fits"),
        flat=Exposure.read(c / f"flat_{raw.filter}_det0.fits"),
        defects=Defects.read(c / "defects_det0.fits"),
        linearizer=Linearizer.read(c / "linearizer.yaml"),
        crosstalk=CrosstalkCalib.read(c / "crosstalk.yaml"),
        camera=cam,
    ).exposure
