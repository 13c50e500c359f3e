"""Pattern matcher: finds the solution from a prior off by 2', 2 deg, 2 %; never a false one."""

from __future__ import annotations

import numpy as np
import pytest
from calexpress.calibrate import LoadIndexedReferenceObjectsTask, MatcherFailure, MatchPatternTask
from calibrate_truth import load_frame, perturbed_wcs, truth_source_catalog

CENTER = (1023.5, 2047.5)


def _refs(simcam_refcat_dir, fr, wcs):
    loader = LoadIndexedReferenceObjectsTask(ref_cat_dir=str(simcam_refcat_dir))
    loader.config.pixelMargin = 700
    return loader.loadPixelBox((0, 0, 2048, 4096), wcs, fr.header["FILTER"], fr.header["MJD-AVG"]).refCat


@pytest.mark.parametrize("shift,rot,scale", [(120.0, 2.0, 1.02), (-120.0, -2.0, 0.98), (0.0, 0.0, 1.0)])
def test_finds_solution_from_bad_prior(simcam_dir, simcam_refcat_dir, shift, rot, scale):
    fr = load_frame(simcam_dir, "simcamA_0001002_r")
    cat = truth_source_catalog(fr)
    cat = cat[cat["slot_ApFlux_instFlux"] / cat["slot_ApFlux_instFluxErr"] > 40]
    prior = perturbed_wcs(fr.truth_wcs, shift, rot, scale)
    ref = _refs(simcam_refcat_dir, fr, prior)
    m = MatchPatternTask().matchPixels(
        np.column_stack([cat["slot_Centroid_x"], cat["slot_Centroid_y"]]),
        cat["slot_ApFlux_instFlux"],
        np.column_stack([ref["centroid_x"], ref["centroid_y"]]),
        ref["r_flux"],
        CENTER,
    )
    # every match pairs a source with its own truth star
    truth_ids = np.asarray(cat["truth_id"])[m.i_src]
    ref_ids = np.asarray(ref["id"])[m.i_ref]
    assert len(m.i_src) >= 30
    assert np.mean(truth_ids == ref_ids) >= 0.95
    assert abs(abs(m.rotationDeg) - abs(rot)) < 0.1


def test_no_false_solution_on_random_catalogs():
    rng = np.random.default_rng(42)
    task = MatchPatternTask()
    failures = 0
    for _ in range(20):
        src = rng.uniform([0, 0], [2048, 4096], (150, 2))
        ref = rng.uniform([-300, -300], [2348, 4396], (800, 2))
        with pytest.raises(MatcherFailure) as info:
            task.matchPixels(src, rng.uniform(1, 100, 150), ref, rng.uniform(1, 100, 800), CENTER)
        assert "\n" not in str(info.value)
        failures += 1
    assert failures == 20


def test_no_false_solution_against_mirrored_field(simcam_dir, simcam_refcat_dir):
    """Real sources against the real refcat mirrored in x (a realistic but different star field)."""
    fr = load_frame(simcam_dir, "simcamA_0001003_r")
    cat = truth_source_catalog(fr)
    cat = cat[cat["slot_ApFlux_instFlux"] / cat["slot_ApFlux_instFluxErr"] > 40]
    ref = _refs(simcam_refcat_dir, fr, fr.truth_wcs)
    with pytest.raises(MatcherFailure):
        MatchPatternTask().matchPixels(
            np.column_stack([cat["slot_Centroid_x"], cat["slot_Centroid_y"]]),
            cat["slot_ApFlux_instFlux"],
            np.column_stack([2047.0 - ref["centroid_x"], ref["centroid_y"]]),
            ref["r_flux"],
            CENTER,
        )
