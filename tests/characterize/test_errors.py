"""Bad inputs give a clear TaskError (no star, too many cosmic rays), not a crash."""

from __future__ import annotations

import numpy as np
import pytest
from calexpress.characterize import CharacterizeImageTask
from calexpress.exposure import Exposure
from calexpress.task import TaskError


def test_no_stars_is_a_task_error():
    rng = np.random.default_rng(1)
    img = (100 + rng.standard_normal((400, 300)) * 10).astype(np.float32)
    exp = Exposure(img, variance=np.full(img.shape, 100, np.float32))
    with pytest.raises(TaskError, match="No PSF candidates"):
        CharacterizeImageTask().run(exp)


def test_simple_psf_without_measurement():
    """doMeasurePsf=False: the Gaussian PSF of installSimplePsf is kept and aperture corrections skipped."""
    rng = np.random.default_rng(2)
    img = (100 + rng.standard_normal((400, 300)) * 10).astype(np.float32)
    exp = Exposure(img, variance=np.full(img.shape, 100, np.float32))
    task = CharacterizeImageTask()
    task.config.doMeasurePsf = False
    task.config.doApCorr = False
    res = task.run(exp)
    assert abs(res.exposure.psf.determinant_radius() - 1.5) < 1e-6
    assert len(res.background) == 3
