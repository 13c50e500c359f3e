"""Background model against the truth SKY (issue 4, acceptance 2)."""

from __future__ import annotations

import numpy as np
from scipy import ndimage


def test_background_vs_truth_sky(char_any):
    truth = char_any.truth
    bg = char_any.result.background.get_image(char_any.exposure.shape)
    sky = truth["planes"]["SKY"]
    sat = (truth["planes"]["MASK"] & 4) != 0
    away = ~ndimage.binary_dilation(sat, iterations=50)
    noise = float(np.sqrt(np.median(char_any.exposure.variance)))
    diff = (bg - sky)[away]
    assert np.sqrt(np.mean(diff**2)) <= 0.1 * noise
    # three components: initial + one re-estimate per PSF iteration (LSST's icExpBackground)
    assert len(char_any.result.background) == 3


def test_background_subtracted(char_any):
    """The characterised image is sky-free: clipped median of source-free pixels ~ 0."""
    exp = char_any.exposure
    free = (exp.mask & exp.get_plane_bitmask("DETECTED", "BAD", "SAT", "CR")) == 0
    noise = float(np.sqrt(np.median(exp.variance)))
    assert abs(float(np.median(exp.image[free]))) < 0.05 * noise
    assert "BGMEAN" in exp.metadata and "BGVAR" in exp.metadata
