"""The real chain on simcamA raws: IsrTask -> CharacterizeImageTask -> CalibrateTask, against truth.

Uses the simcamA camera config's ISR overrides and the calibrate settings the camera config should carry
(refcat, colour terms, ``photoCal.apertureToTotal = "catalog"``).
"""

from __future__ import annotations

import numpy as np
import pytest
from calexpress.task import ExposureIdInfo
from calibrate_truth import FRAMES, grid_offsets_mas, isr_simcam_raw, load_frame, simcam_calibrate_task

char_mod = pytest.importorskip("calexpress.characterize.characterizeImage")


@pytest.mark.parametrize("frame", FRAMES)
def test_raw_to_calexp_against_truth(simcam_dir, simcam_refcat_dir, frame):
    fr = load_frame(simcam_dir, frame)
    exp_id = ExposureIdInfo(int(frame.split("_")[1]))
    post = isr_simcam_raw(simcam_dir, frame)
    char = char_mod.CharacterizeImageTask().run(post, exp_id)
    task = simcam_calibrate_task(simcam_refcat_dir, doApCorr=True)
    task.photoCal.config.apertureToTotal = "catalog"
    res = task.run(char.exposure, exp_id, background=char.background, icSourceCat=char.sourceCat)
    exp = res.exposure
    d = grid_offsets_mas(exp.wcs, fr.truth_wcs)
    assert np.sqrt(np.mean(d**2)) <= 10.0 and d.max() <= 30.0, (np.sqrt(np.mean(d**2)), d.max())
    md = exp.metadata
    assert md["MAGZERO_NOBJ"] >= 50
    dz = md["MAGZERO"] - fr.truth["photometry"]["zp_e_per_s"]
    # issue 5, acceptance 2: within 5 mmag of the truth (measured -0.2 / -3.3 / +1.3 mmag); the 12-px ->
    # total term from the stacked curve of growth is 16-35 mmag (truth PSF: 34.2 / 27.9 / 16.1)
    assert abs(dz) <= 0.005, f"MAGZERO - truth = {1000 * dz:.1f} mmag"
    assert 0.012 < md["MAGZERO_APCORR"] < 0.040
    assert md["NPSFSTAR"] > 10 and "calib_psf_used" in res.sourceCat.colnames
    assert res.sourceCat["calib_psf_used"].sum() >= 0.8 * md["NPSFSTAR"]
