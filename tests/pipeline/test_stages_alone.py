"""Each stage alone, in memory, gives what ProcessCcdTask and processCcd.py give (issue 2, point 6)."""

from __future__ import annotations

import numpy as np
from calexpress import Butler
from calexpress.calibrate import CalibrateTask
from calexpress.characterize import CharacterizeImageTask
from calexpress.isr import IsrTask
from calexpress.pipeline.cmdline import apply_camera_overrides
from calexpress.pipeline.processCcd import ProcessCcdConfig, ProcessCcdTask, exposure_id_info
from cli_support import EXAMPLE


def _assert_same_exposure(a, b):
    np.testing.assert_array_equal(a.image, b.image)
    np.testing.assert_array_equal(a.mask, b.mask)
    np.testing.assert_array_equal(a.variance, b.variance)


def _assert_same_catalog(a, b):
    assert a.colnames == b.colnames
    assert len(a) == len(b)
    for name in ("id", "parent", "base_SdssCentroid_x", "base_PsfFlux_instFlux", "coord_ra"):
        np.testing.assert_array_equal(np.asarray(a[name]), np.asarray(b[name]))


def test_stages_alone_equal_processccd(obs_test_output, tmp_path):
    out, proc = obs_test_output
    assert proc.returncode == 0, proc.stderr[-2000:]
    butler = Butler(str(tmp_path / "scratch"), parents=[str(EXAMPLE)])
    config = ProcessCcdConfig()
    apply_camera_overrides(config, butler.camera)
    ref = butler.dataRef("raw", visit=1)
    id_info = exposure_id_info(ref)
    isr_inputs = {"defects": ref.get("defects")}

    # the three stages, one after the other, with no repository
    post_isr = IsrTask(config=config.isr).run(ref.get("raw"), **isr_inputs).exposure
    char = CharacterizeImageTask(config=config.charImage).run(post_isr, exposureIdInfo=id_info)
    calib = CalibrateTask(config=config.calibrate).run(
        char.exposure, exposureIdInfo=id_info, background=char.background, icSourceCat=char.sourceCat
    )
    # ProcessCcdTask in memory
    whole = ProcessCcdTask(config=config).run(ref.get("raw"), exposureIdInfo=id_info, **isr_inputs)
    _assert_same_exposure(calib.exposure, whole.exposure)
    _assert_same_catalog(calib.sourceCat, whole.calibRes.sourceCat)
    _assert_same_catalog(char.sourceCat, whole.charRes.sourceCat)

    # and processCcd.py through the repository
    written = Butler(str(out))
    _assert_same_exposure(calib.exposure, written.get("calexp", visit=1))
    _assert_same_catalog(calib.sourceCat, written.get("src", visit=1))
    np.testing.assert_allclose(
        calib.background.get_image(post_isr.image.shape),
        written.get("calexpBackground", visit=1).get_image(post_isr.image.shape),
        rtol=0, atol=1e-4,
    )
