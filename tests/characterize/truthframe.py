"""Build a characterize-ready exposure from a simcamA truth frame ("perfect ISR" + noise + cosmic rays).

``IMAGE`` (sky + objects, electrons) + ``CR`` deposits + Gaussian noise of variance ``IMAGE + rn^2`` (the
amplifier read noise from ``truth.json``); variance plane ``IMAGE + rn^2``; BAD (dead/hot/defect) and SAT
from the truth ``MASK``.  The noise seed is fixed, so results are reproducible.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from astropy.io import fits
from astropy.table import Table
from calexpress.exposure import Exposure
from calexpress.task import ExposureIdInfo, Struct

FRAMES = ["simcamA_0001001_g_det0", "simcamA_0001002_r_det0", "simcamA_0001003_r_det0"]


def truth_dir(simcam_dir: Path, frame: str) -> Path:
    return Path(simcam_dir) / "truth" / frame


def load_truth(simcam_dir: Path, frame: str) -> dict:
    """Truth planes (IMAGE, SKY, CR, MASK), objects, PSF cube and grid, and truth.json."""
    d = truth_dir(simcam_dir, frame)
    with fits.open(d / "truth_image.fits") as f:
        planes = {k: np.asarray(f[k].data) for k in ("IMAGE", "SKY", "CR", "MASK")}
    objects = Table.read(d / "truth_objects.fits")
    cube = fits.getdata(d / "truth_psf.fits").astype(float)
    grid = Table.read(d / "truth_psf.fits", hdu="GRID")
    info = json.loads((d / "truth.json").read_text())
    return dict(planes=planes, objects=objects, psf_cube=cube, psf_grid=grid, info=info)


def read_noise_map(info: dict, shape: tuple[int, int]) -> np.ndarray:
    """Per-pixel read noise (electrons) from the amplifier layout (four 512-column amps side by side)."""
    amps = sorted(info["amps"])
    rn = np.array([info["amps"][a]["read_noise_e"] for a in amps])
    ncol = shape[1] // len(amps)
    return np.repeat(rn, ncol)[None, :] * np.ones((shape[0], 1))


def make_exposure(truth: dict, seed: int = 1) -> Exposure:
    """The noisy exposure (with sky and cosmic rays) of a truth frame."""
    p = truth["planes"]
    img = p["IMAGE"].astype(np.float64)
    rn = read_noise_map(truth["info"], img.shape)
    var = img + rn**2
    rng = np.random.default_rng(seed)
    noisy = img + p["CR"] + rng.standard_normal(img.shape) * np.sqrt(var)
    exp = Exposure(noisy.astype(np.float32), variance=var.astype(np.float32))
    tm = p["MASK"].astype(np.int32)
    bad = exp.get_plane_bitmask("BAD")
    sat = exp.get_plane_bitmask("SAT")
    exp.mask[(tm & 3) != 0] |= bad
    exp.mask[(tm & 4) != 0] |= sat
    exp.filter = truth["info"]["band"]
    return exp


_CACHE: dict[str, Struct] = {}


def characterize_frame(simcam_dir: Path, frame: str) -> Struct:
    """Run CharacterizeImageTask on a truth frame (cached for the session)."""
    if frame not in _CACHE:
        from calexpress.characterize import CharacterizeImageTask

        truth = load_truth(simcam_dir, frame)
        exposure = make_exposure(truth)
        raw = exposure.image.copy()
        task = CharacterizeImageTask()
        res = task.run(exposure, exposureIdInfo=ExposureIdInfo(int(truth["info"]["expid"]), 41))
        _CACHE[frame] = Struct(
            truth=truth, raw=raw, result=res, task=task, exposure=res.exposure, catalog=res.sourceCat
        )
    return _CACHE[frame]


def match_to_truth(catalog, objects, radius: float = 2.0):
    """Nearest truth object of every source: (index array, distance array)."""
    from scipy.spatial import cKDTree

    tree = cKDTree(np.c_[objects["x"], objects["y"]])
    d, i = tree.query(np.c_[catalog["base_SdssCentroid_x"], catalog["base_SdssCentroid_y"]])
    return i, d
