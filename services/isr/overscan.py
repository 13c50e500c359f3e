"""Overscan fitting (after LSST ``ip_isr`` ``OverscanCorrectionTask``), on numpy arrays.

The serial overscan of an amplifier is a ``(rows, columns)`` array beside the data.  Scalar fit types
(``MEDIAN``, ``MEAN``, ``MEANCLIP``) give one level per amplifier; vector types give one level per row:
``MEDIAN_PER_ROW`` (the row's median), ``POLY``/``CHEB``/``LEG`` (a polynomial of ``order`` in the row
coordinate fitted to the row means, with ``numSigmaClip`` rejection).
"""

from __future__ import annotations

import numpy as np
from calexpress.config import ChoiceField, Config, Field, ListField
from calexpress.stats import clipped_stats
from numpy.polynomial import chebyshev, legendre, polynomial

__all__ = ["OverscanConfig", "collapse_parallel_overscan", "fit_overscan"]

_SCALAR = ("MEDIAN", "MEAN", "MEANCLIP")
_VECTOR = ("MEDIAN_PER_ROW", "POLY", "CHEB", "LEG")


class OverscanConfig(Config):
    """Overscan fit configuration (LSST ``OverscanCorrectionTaskConfig`` names and defaults)."""

    fitType = ChoiceField(
        dtype=str,
        doc="How to model the overscan",
        default="MEDIAN",
        allowed={
            "POLY": "polynomial of `order` in the row coordinate",
            "CHEB": "Chebyshev series of `order`",
            "LEG": "Legendre series of `order`",
            "MEAN": "one mean per amplifier",
            "MEANCLIP": "one clipped mean per amplifier",
            "MEDIAN": "one median per amplifier",
            "MEDIAN_PER_ROW": "the median of every row",
        },
    )
    order = Field(dtype=int, doc="Order of the POLY/CHEB/LEG fit", default=1)
    numSigmaClip = Field(
        dtype=float, doc="Rejection threshold (sigma) for clipped statistics and fits", default=3.0
    )
    maskPlanes = ListField(
        dtype=str, doc="Mask planes to reject (unused: overscan outliers are clipped)", default=["SAT"]
    )
    overscanIsInt = Field(
        dtype=bool, doc="Treat the overscan as integer for MEDIAN (LSST: convertI)", default=True
    )


def _row_outliers(ov: np.ndarray, nsigma: float) -> np.ndarray:
    """Per-row outlier mask: |v - row median| > nsigma * 0.7413 * row IQR (LSST's vector-mode rejection)."""
    q1, med, q3 = np.percentile(ov, [25, 50, 75], axis=1)
    width = nsigma * 0.741301109 * (q3 - q1)
    return np.abs(ov - med[:, None]) > np.maximum(width, 1e-6)[:, None]


def fit_overscan(
    ov: np.ndarray, config: OverscanConfig, max_dev: float = 1000.0
) -> tuple[np.ndarray, float, float]:
    """Fit an amplifier's serial overscan.

    Parameters
    ----------
    ov : `numpy.ndarray`
        Overscan pixels ``(rows, columns)``, ADU, already trimmed of skipped columns.
    config : `OverscanConfig`
        Fit type, order and clipping.
    max_dev : `float`
        Pixels further than this from the overall median are ignored (LSST ``overscanMaxDev``).

    Returns
    -------
    model : `numpy.ndarray`
        The level per row (float32, length ``rows``; constant for scalar fits).
    level : `float`
        Median of the model (``ISR_OSCAN_LEVEL``).
    noise : `float`
        Clipped standard deviation of the overscan about the model (read noise in ADU).
    """
    ov = np.asarray(ov, dtype=np.float32)
    nrow = ov.shape[0]
    fit_type = config.fitType
    med_all = float(np.median(ov))
    good = np.abs(ov - med_all) <= max_dev
    if fit_type in _SCALAR:
        vals = ov[good]
        if fit_type == "MEDIAN":
            if config.overscanIsInt:
                vals = np.floor(vals + 0.5)  # LSST converts the overscan to integers first
            level = float(np.median(vals))
        elif fit_type == "MEAN":
            level = float(vals.mean())
        else:
            level = clipped_stats(vals, nsigma=config.numSigmaClip)[0]
        model = np.full(nrow, level, dtype=np.float32)
    elif fit_type in _VECTOR:
        import warnings

        if fit_type == "MEDIAN_PER_ROW":
            # the row's median (pixels beyond max_dev ignored): robust by itself
            if good.all():
                rowval = np.median(ov, axis=1)
            else:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", RuntimeWarning)
                    rowval = np.nanmedian(np.where(good, ov, np.nan), axis=1)
        else:
            bad = ~good | _row_outliers(ov, config.numSigmaClip)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)
                rowval = np.nanmean(np.where(bad, np.nan, ov), axis=1)
        ok = np.isfinite(rowval)
        rows = np.arange(nrow, dtype=float)
        if not ok.any():
            raise ValueError("overscan has no usable pixels")
        if fit_type == "MEDIAN_PER_ROW":
            if not ok.all():
                rowval = np.interp(rows, rows[ok], rowval[ok])
            model = rowval.astype(np.float32)
        else:
            x = 2.0 * rows / nrow - 1.0  # LSST fits on [-1, 1)
            fitter = {"POLY": polynomial.polyfit, "CHEB": chebyshev.chebfit, "LEG": legendre.legfit}[fit_type]
            evaluate = {"POLY": polynomial.polyval, "CHEB": chebyshev.chebval, "LEG": legendre.legval}[
                fit_type
            ]
            use = ok.copy()
            for _ in range(3):
                coeffs = fitter(x[use], rowval[use], config.order)
                resid = rowval - evaluate(x, coeffs)
                sig = 1.4826 * np.median(np.abs(resid[use] - np.median(resid[use])))
                new = ok & (np.abs(resid) <= config.numSigmaClip * max(sig, 1e-6))
                if new.sum() <= config.order or np.array_equal(new, use):
                    break
                use = new
            model = evaluate(x, coeffs).astype(np.float32)
    else:
        raise ValueError(f"unknown overscan fitType {fit_type!r}")
    resid = ov[:: max(1, nrow // 1024)] - model[:: max(1, nrow // 1024), None]
    noise = clipped_stats(resid, nsigma=3.0, niter=3)[1]
    return model, float(np.median(model)), float(noise)


def collapse_parallel_overscan(pov: np.ndarray, nsigma: float = 3.0) -> np.ndarray:
    """Per-column level of a parallel overscan ``(rows, columns)``: the median of each column."""
    pov = np.asarray(pov, dtype=np.float32)
    return np.median(pov, axis=0).astype(np.float32)
