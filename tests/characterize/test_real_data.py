"""obs_test visit 1 (through the butler, with calexpress.isr) and Nickel frames (acceptance 6)."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def test_obs_test_visit1(obs_test_repo, tmp_path):
    from calexpress import Butler
    from calexpress.characterize import CharacterizeImageTask
    from calexpress.isr import IsrTask
    from calexpress.pipeline.cmdline import apply_camera_overrides
    from calexpress.pipeline.processCcd import ProcessCcdConfig
    from cli_support import EXAMPLE

    butler = Butler(str(tmp_path / "out"), parents=[str(EXAMPLE)])
    config = ProcessCcdConfig()
    apply_camera_overrides(config, butler.camera)
    ref = butler.dataRef("raw", visit=1)
    post = IsrTask(config=config.isr).run(ref.get("raw"), defects=ref.get("defects")).exposure
    charConfig = config.charImage
    charConfig.doWriteExposure = True
    task = CharacterizeImageTask(config=charConfig)
    ref.put(post, "postISRCCD")
    res = task.runDataRef(ref)  # doUnpersist: reads postISRCCD, as the characterize service does
    cat = res.sourceCat
    assert int(np.sum(cat["calib_psf_used"])) >= 10
    assert 2.0 < task.metadata["psfFwhm"] < 8.0
    # LSST ids: visit << 23 + n (expBits 41)
    assert int(cat["id"][0]) >> 23 == 1
    assert np.all(np.isnan(cat["coord_ra"]))
    written = butler.get("icSrc", visit=1)
    assert len(written) == len(cat)
    np.testing.assert_allclose(
        np.asarray(written["base_PsfFlux_instFlux"]), np.asarray(cat["base_PsfFlux_instFlux"])
    )
    icexp = butler.get("icExp", visit=1)
    assert icexp.psf is not None
    np.testing.assert_allclose(
        icexp.psf.compute_kernel_image(500.0, 1000.0),
        res.exposure.psf.compute_kernel_image(500.0, 1000.0),
        atol=1e-6,
    )
    assert len(butler.get("icExpBackground", visit=1)) == 3


@pytest.mark.parametrize("frame", ["d1048", "d1059"])
def test_nickel(nickel_dir, frame):
    """Nickel science frames (overscan-only ISR): a PSF from real stars and an icSrc catalog."""
    from calexpress.camera import get_camera
    from calexpress.characterize import CharacterizeImageTask
    from calexpress.isr import IsrTask, IsrTaskConfig

    cam = get_camera("nickel")
    raw = cam.read_raw(nickel_dir / "raw" / f"{frame}.fits")
    cfg = IsrTaskConfig()
    for name in ("doBias", "doDark", "doFlat", "doDefect", "doLinearize", "doCrosstalk"):
        if hasattr(cfg, name):
            setattr(cfg, name, False)
    post = IsrTask(config=cfg).run(raw, camera=cam).exposure
    task = CharacterizeImageTask()
    res = task.run(post)
    cat = res.sourceCat
    nused = int(np.sum(cat["calib_psf_used"]))
    assert nused >= 5
    # seeing 2-3 arcsec at 0.37"/px
    assert 4.0 < task.metadata["psfFwhm"] < 10.0
    assert len(cat) >= nused


def test_simcam_raw_through_isr(simcam_dir):
    """simcamA raw 1003 -> calexpress.isr -> CharacterizeImageTask, against the truth."""
    import warnings

    from astropy.io import fits
    from calexpress.calibs import CrosstalkCalib, Defects, Linearizer
    from calexpress.camera import get_camera
    from calexpress.characterize import CharacterizeImageTask
    from calexpress.isr import IsrTask, IsrTaskConfig, apply_camera_overrides
    from calexpress.psf import adaptive_moments
    from scipy import ndimage
    from truthframe import load_truth

    cal = simcam_dir / "calib"
    cam = get_camera("simcamA")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        calibs = dict(
            bias=fits.getdata(cal / "bias_det0.fits", "IMAGE"),
            dark=fits.getdata(cal / "dark_det0.fits", "IMAGE"),
            flat=fits.getdata(cal / "flat_r_det0.fits", "IMAGE"),
            defects=Defects.read(cal / "defects_det0.fits"),
            linearizer=Linearizer.read(cal / "linearizer.yaml", detector=0),
            crosstalk=CrosstalkCalib.read(cal / "crosstalk.yaml", detector=0),
        )
        truth = load_truth(simcam_dir, "simcamA_0001003_r_det0")
    raw = cam.read_raw(simcam_dir / "raw" / "simcamA_0001003_r.fits.fz")
    exp = IsrTask(config=apply_camera_overrides(IsrTaskConfig(), cam)).run(raw, **calibs).exposure
    task = CharacterizeImageTask()
    res = task.run(exp)
    cube, grid = truth["psf_cube"], truth["psf_grid"]
    dt = []
    for k in range(len(grid)):
        ixx, iyy, _ = exp.psf.compute_shape(float(grid["x"][k]), float(grid["y"][k]))
        txx, tyy, _, _, _ = adaptive_moments(cube[k])
        dt.append((ixx + iyy) / (txx + tyy) - 1)
    dt = np.array(dt)
    assert task.metadata["numPsfStars"] >= 30
    assert abs(np.median(dt)) <= 0.003
    assert np.sqrt(np.mean(dt**2)) <= 0.01
    sky = truth["planes"]["SKY"]
    away = ~ndimage.binary_dilation((truth["planes"]["MASK"] & 4) != 0, iterations=50)
    bg = res.background.get_image(exp.shape)
    assert np.sqrt(np.mean((bg - sky)[away] ** 2)) <= 0.1 * np.sqrt(np.median(exp.variance))
    cr = truth["planes"]["CR"]
    strong = (cr >= 5 * np.sqrt(exp.variance)) & ((truth["planes"]["MASK"] & 7) == 0)
    flagged = (exp.mask & exp.get_plane_bitmask("CR")) != 0
    assert (flagged & strong).sum() / strong.sum() >= 0.98
