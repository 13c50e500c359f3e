"""IsrTask on the obs_test raws (issue 3, acceptance point 5)."""

from __future__ import annotations

import numpy as np
import pytest
from calexpress.calibs import Defects
from calexpress.camera import get_camera
from calexpress.isr import IsrTask, IsrTaskConfig, apply_camera_overrides

# raw prescan medians measured on all three visits (reference doc section 1.1, step 4a)
OSCAN = {"00": 964.0, "01": 971.0, "10": 1042.0, "11": 1005.0}


@pytest.fixture(scope="module")
def obs_test_runs(obs_test_repo):
    cam = get_camera("obs_test")
    defects = Defects.read(obs_test_repo / "defects" / "defects.fits")
    out = {}
    for visit, band in ((1, "g"), (2, "g"), (3, "r")):
        raw = cam.read_raw(obs_test_repo / "raw" / f"raw_v{visit}_f{band}.fits.gz")
        raw_prescan = {
            a.name: float(np.median(raw.image[a.raw_serial_overscan_bbox.slices]))
            for a in raw.detector.amplifiers
        }
        raw_data = {
            a.name: float(np.median(raw.image[a.raw_data_bbox.slices])) for a in raw.detector.amplifiers
        }
        task = IsrTask(config=apply_camera_overrides(IsrTaskConfig(), cam))
        out[visit] = (task.run(raw, defects=defects).exposure, defects, raw_prescan, raw_data)
    return out


@pytest.mark.parametrize("visit", [1, 2, 3])
def test_trim_overscan_defects(obs_test_runs, visit):
    exp, defects, raw_prescan, raw_data = obs_test_runs[visit]
    assert exp.image.shape == (2000, 1018)
    for amp in exp.detector.amplifiers:
        level = exp.metadata[f"ISR_OSCAN_LEVEL{amp.name}"]
        assert level == OSCAN[amp.name] == raw_prescan[amp.name]
        # output = (raw - prescan level) * gain, checked on the amp median
        ours = float(np.median(exp.image[amp.bbox.slices]))
        assert ours == pytest.approx((raw_data[amp.name] - level) * amp.gain, rel=2e-3)
    assert len(defects) == 504 and defects.npixels == 1364
    dmask = defects.to_mask(exp.image.shape)
    assert int(dmask.sum()) == 1364
    bad = (exp.mask & exp.get_plane_bitmask("BAD")) != 0
    intrp = (exp.mask & exp.get_plane_bitmask("INTRP")) != 0
    assert bad[dmask].all() and intrp[dmask].all()
    assert int(bad.sum()) == 1364
    # the 1x861 bad column (x=848, y=1000..1860) is interpolated from its neighbours
    col = exp.image[1000:1861, 848]
    neighbours = 0.5 * (exp.image[1000:1861, 846] + exp.image[1000:1861, 850])
    assert abs(float(np.median(col - neighbours))) < 5.0
    assert not np.isnan(exp.image).any()
    # raw max ~61k < 65535: no SAT (as in LSST)
    assert not (exp.mask & exp.get_plane_bitmask("SAT")).any()
    # LSST's rough zero point with the default fluxMag0T1: 28 + 2.5 log10(15 s)
    assert 2.5 * np.log10(exp.photo_calib.calibration) == pytest.approx(31.4 - (28 + 2.5 * np.log10(15.0)))


def test_variance_is_signal_plus_read_noise(obs_test_runs):
    exp = obs_test_runs[1][0]
    for amp in exp.detector.amplifiers:
        sl = amp.bbox.slices
        good = (exp.mask[sl] == 0) & (exp.image[sl] > 0)
        expected = exp.image[sl][good] + amp.read_noise**2
        assert np.allclose(exp.variance[sl][good], expected, rtol=1e-5)


def test_run_data_ref_on_gen2_repo(obs_test_repo):
    """The Gen2 repository as it is: defects found through its calib registry, no bias/flat asked for."""
    from calexpress.butler import Butler

    butler = Butler(str(obs_test_repo))
    cfg = apply_camera_overrides(IsrTaskConfig(), butler.camera)
    cfg.doWrite = False
    task = IsrTask(config=cfg)
    exp = task.runDataRef(butler.dataRef("raw", visit=3)).exposure
    assert exp.image.shape == (2000, 1018) and exp.filter == "r"
    assert int(((exp.mask & exp.get_plane_bitmask("BAD")) != 0).sum()) == 1364
    assert task.metadata["NUMINTERPOLATED"] == 1364
