"""afw-style clipped statistics against an independent numpy implementation."""

from __future__ import annotations

import numpy as np
import pytest
from calexpress import stats


def _reference(values, nsigma=3.0, niter=3):
    v = values[np.isfinite(values)].astype(np.float64)
    q1, med, q3 = np.percentile(v, [25, 50, 75])
    center, hwidth = med, nsigma * 0.741301109 * (q3 - q1)
    for _ in range(niter):
        s = v[(v >= center - hwidth) & (v <= center + hwidth)]
        center, sd = s.mean(), s.std(ddof=1)
        hwidth = nsigma * sd
    return center, sd, s.size


@pytest.mark.parametrize("n", [1, 2, 3, 4, 7, 100, 1001])
def test_percentiles_match_numpy_linear(n):
    rng = np.random.default_rng(n)
    for trial in range(10):
        a = rng.normal(size=n).astype(np.float32)
        if trial % 2:
            a = np.round(a * 2)  # many ties
        got = stats.percentiles(a, [0.0, 0.25, 0.5, 0.75, 1.0])
        np.testing.assert_allclose(got, np.percentile(a.astype(np.float64), [0, 25, 50, 75, 100]), rtol=1e-12)


def test_clipped_stats_matches_reference_with_outliers_nan_and_mask():
    rng = np.random.default_rng(1)
    a = rng.normal(100.0, 5.0, size=(512, 300)).astype(np.float32)
    a[::7, ::3] += 200.0
    a[5, 5] = np.nan
    a[6, 6] = np.inf
    mean, sd, n = stats.clipped_stats(a)
    rm, rs, rn = _reference(a)
    assert n == rn
    assert mean == pytest.approx(rm, rel=1e-12)
    assert sd == pytest.approx(rs, rel=1e-9)
    assert abs(mean - 100.0) < 0.05 and abs(sd - 5.0) < 0.1
    mask = np.zeros(a.shape, np.int32)
    mask[::7, ::3] = 4
    mean2, sd2, n2 = stats.clipped_stats(a, mask, bad_bits=4)
    keep = (mask & 4) == 0
    rm2, rs2, rn2 = _reference(a[keep])
    assert (mean2, n2) == (pytest.approx(rm2, rel=1e-12), rn2)
    # boolean masks exclude True pixels
    assert stats.clipped_stats(a, mask.astype(bool))[2] == n2
    # bits not asked for do not exclude
    assert stats.clipped_stats(a, mask, bad_bits=2)[2] == n


def test_clipped_stats_empty_and_helpers():
    mean, sd, n = stats.clipped_stats(np.full((4, 4), np.nan))
    assert n == 0 and np.isnan(mean) and np.isnan(sd)
    a = np.arange(101, dtype=np.float32)
    assert stats.median(a) == 50.0
    assert stats.iqr(a) == 50.0
    assert stats.robust_sigma(a) == pytest.approx(0.741301109 * 50.0)


def test_grid_clipped_stats_matches_per_cell():
    rng = np.random.default_rng(3)
    img = rng.normal(10.0, 2.0, size=(130, 170)).astype(np.float32)
    img[rng.random(img.shape) < 0.01] += 500
    mask = (rng.random(img.shape) < 0.05).astype(np.int32) * 8
    xe = np.array([0, 40, 90, 170])
    ye = np.array([0, 65, 130])
    val, var, npix = stats.grid_clipped_stats(img, mask, 8, xe, ye)
    for j in range(2):
        for i in range(3):
            cell = (slice(ye[j], ye[j + 1]), slice(xe[i], xe[i + 1]))
            m, s, n = stats.clipped_stats(img[cell], mask[cell], 8)
            assert val[j, i] == pytest.approx(m, rel=1e-12)
            assert var[j, i] == pytest.approx(s * s / n, rel=1e-9)
            assert npix[j, i] == n
