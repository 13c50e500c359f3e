"""Catalog calculation: extendedness separates stars from galaxies; footprint area."""

from __future__ import annotations

import math

import numpy as np
from calexpress.catalog_calc import CatalogCalculationTask
from calexpress.detection import SourceDetectionConfig, SourceDetectionTask
from calexpress.measurement import SingleFrameMeasurementTask
from meas_simutil import make_exposure, pixel_gaussian, star_field


def test_extendedness_and_area():
    rng = np.random.default_rng(71)
    shape = (400, 400)
    sigma = 1.7
    # a star and a "galaxy" (a Gaussian 2.5x wider than the PSF), both bright
    model, noisy, var = star_field(shape, [100.0], [200.0], [2e5], sigma, 100.0, rng)
    gal = pixel_gaussian(shape, 300.0, 200.0, 2.5 * sigma, 2e5)
    noisy = noisy + (gal + rng.normal(size=shape) * np.sqrt(gal)).astype(np.float32)
    exp = make_exposure(noisy, var + gal.astype(np.float32), sigma)
    cfg = SourceDetectionConfig()
    cfg.reEstimateBackground = False
    cat = SourceDetectionTask(cfg).run(None, exp).sources
    assert len(cat) == 2
    SingleFrameMeasurementTask().run(cat, exp)
    CatalogCalculationTask().run(cat)
    star = int(np.argmin(np.abs(cat["base_SdssCentroid_x"] - 100)))
    galaxy = 1 - star
    assert cat["base_ClassificationExtendedness_value"][star] == 0
    assert cat["base_ClassificationExtendedness_value"][galaxy] == 1
    assert not cat["base_ClassificationExtendedness_flag"].any()
    assert list(cat["base_FootprintArea_value"]) == [cat.footprints.npix[k] for k in cat["footprint"]]
    assert cat["base_FootprintArea_value"][galaxy] > cat["base_FootprintArea_value"][star]
    assert math.isfinite(cat["base_GaussianFlux_instFlux"][galaxy])
