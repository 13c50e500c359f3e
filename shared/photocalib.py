"""Photometric calibration (LSST ``afw.image.PhotoCalib`` with a constant calibration)."""

from __future__ import annotations

import math

import numpy as np

__all__ = ["AB_ZERO_POINT_NJY", "PhotoCalib"]

#: AB magnitude of 1 nJy: ``m = -2.5 log10(f / nJy) + 31.4``.
AB_ZERO_POINT_NJY = 31.4
_LN10_04 = 0.4 * math.log(10.0)


class PhotoCalib:
    """Conversion from instrumental counts to nanojansky: ``flux_nJy = instFlux * calibration``.

    Parameters
    ----------
    calibration : `float`
        nJy per count (per electron after ISR).
    calibration_err : `float`
        Its 1-sigma error, nJy per count.
    """

    def __init__(self, calibration: float, calibration_err: float = 0.0) -> None:
        calibration = float(calibration)
        if not (calibration > 0 and math.isfinite(calibration)):
            raise ValueError(f"calibration must be positive and finite, got {calibration}")
        self.calibration = calibration
        self.calibration_err = float(calibration_err)

    def __repr__(self) -> str:
        return f"PhotoCalib(calibration={self.calibration!r}, calibration_err={self.calibration_err!r})"

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, PhotoCalib)
            and self.calibration == other.calibration
            and self.calibration_err == other.calibration_err
        )

    @classmethod
    def from_zero_point(cls, zp_mag: float, zp_err: float = 0.0) -> PhotoCalib:
        """Calibration whose zero point (AB mag of 1 count) is ``zp_mag``."""
        cal = 10.0 ** (-0.4 * (zp_mag - AB_ZERO_POINT_NJY))
        return cls(cal, cal * _LN10_04 * zp_err)

    @property
    def zero_point(self) -> float:
        """AB magnitude of a source giving 1 count."""
        return AB_ZERO_POINT_NJY - 2.5 * math.log10(self.calibration)

    @property
    def zero_point_err(self) -> float:
        """1-sigma error of `zero_point`, magnitudes."""
        return self.calibration_err / (self.calibration * _LN10_04)

    def instflux_to_nanojansky(self, flux, flux_err=None):
        """Counts to nJy; with ``flux_err`` returns ``(flux_nJy, err_nJy)`` (LSST error propagation:
        ``err = sqrt((flux_err * c)**2 + (flux * c_err)**2)``)."""
        flux = np.asarray(flux, dtype=float) if np.ndim(flux) else float(flux)
        value = flux * self.calibration
        if flux_err is None:
            return value
        flux_err = np.asarray(flux_err, dtype=float) if np.ndim(flux_err) else float(flux_err)
        err = np.hypot(flux_err * self.calibration, flux * self.calibration_err)
        return value, err

    def instflux_to_magnitude(self, flux, flux_err=None):
        """Counts to AB magnitude; with ``flux_err`` returns ``(mag, mag_err)``. Non-positive flux -> NaN."""
        with np.errstate(divide="ignore", invalid="ignore"):
            njy = self.instflux_to_nanojansky(flux, flux_err)
            if flux_err is None:
                return -2.5 * np.log10(np.where(np.asarray(njy) > 0, njy, np.nan)) + AB_ZERO_POINT_NJY
            value, err = njy
            mag = -2.5 * np.log10(np.where(np.asarray(value) > 0, value, np.nan)) + AB_ZERO_POINT_NJY
            mag_err = err / (np.abs(value) * _LN10_04)
            if np.ndim(mag) == 0:
                return float(mag), float(mag_err)
            return mag, mag_err

    def magnitude_to_instflux(self, mag):
        """AB magnitude to counts."""
        return 10.0 ** (-0.4 * (np.asarray(mag, dtype=float) - AB_ZERO_POINT_NJY)) / self.calibration

    def to_header(self, header) -> None:
        """Write ``PHOTCALIB`` / ``PHOTCERR`` (nJy per count) into a FITS header."""
        header["HIERARCH PHOTCALIB"] = (self.calibration, "[nJy/count] photometric calibration")
        header["PHOTCERR"] = (self.calibration_err, "[nJy/count] error of PHOTCALIB")

    @classmethod
    def from_header(cls, header) -> PhotoCalib | None:
        """Read ``PHOTCALIB`` / ``PHOTCERR``; None when absent or not positive."""
        value = header.get("PHOTCALIB")
        try:
            value = float(value)
        except (TypeError, ValueError):
            return None
        if not (value > 0 and math.isfinite(value)):
            return None
        return cls(value, float(header.get("PHOTCERR", 0.0) or 0.0))
