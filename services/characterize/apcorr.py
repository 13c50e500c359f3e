"""Aperture corrections: ``MeasureApCorrTask`` and ``ApplyApCorrTask`` (``lsst_processccd.md`` 2.8).

The aperture correction of a flux ``<name>_instFlux`` is the ratio ``refFlux / flux`` of the reference
(12-px aperture, ``slot_CalibFlux``) to that flux for the PSF stars, fitted over the detector with a
triangular Chebyshev polynomial of order 2 and 4 passes of 3-sigma clipping.  The map is stored on the
exposure as ``exposure.ap_corr_map``: ``{"<name>_instFlux": field, "<name>_instFluxErr": constant field}``.
"""

from __future__ import annotations

import numpy as np
from astropy.table import Column, Table
from calexpress.config import Config, Field, ListField
from calexpress.fields import ChebyshevBoundedField
from calexpress.geom import Box
from calexpress.task import Struct, Task, TaskError, timeMethod

__all__ = [
    "ApplyApCorrConfig",
    "ApplyApCorrTask",
    "MeasureApCorrConfig",
    "MeasureApCorrTask",
    "DEFAULT_APCORR_NAMES",
]

#: Fluxes registered with ``shouldApCorr=True`` in LSST's default plugins.
DEFAULT_APCORR_NAMES = ["base_PsfFlux", "base_GaussianFlux"]


class MeasureApCorrConfig(Config):
    """LSST ``MeasureApCorrConfig`` (fitConfig flattened: ``orderX``, ``orderY``, ``triangular``)."""

    refFluxName = Field(
        dtype=str, default="base_CircularApertureFlux_12_0", doc="Reference flux (slot_CalibFlux)"
    )
    sourceSelectorFlag = Field(
        dtype=str, default="calib_psf_used", doc="Sources used (the 'flagged' selector)"
    )
    minDegreesOfFreedom = Field(dtype=int, default=1, doc="Reduce the order until N - nterms >= this")
    orderX = Field(dtype=int, default=2, doc="Chebyshev order in x")
    orderY = Field(dtype=int, default=2, doc="Chebyshev order in y")
    triangular = Field(dtype=bool, default=True, doc="Only terms with ix + iy <= max order")
    numIter = Field(dtype=int, default=4, doc="Clipping iterations")
    numSigmaClip = Field(dtype=float, default=3.0, doc="Clipping threshold (sigma)")
    allowFailure = ListField(dtype=str, default=[], doc="Flux names whose failure is only logged")
    doWeight = Field(
        dtype=bool,
        default=True,
        doc="calexpress: weight the fit by 1/(sigma_ratio^2 + weightFloor^2) (LSST: unweighted)",
    )
    weightFloor = Field(dtype=float, default=0.005, doc="Relative error added in quadrature to each ratio")
    fluxNames = ListField(dtype=str, default=list(DEFAULT_APCORR_NAMES), doc="Fluxes to correct")


class MeasureApCorrTask(Task):
    """Fit the aperture-correction map of every flux in ``config.fluxNames``."""

    ConfigClass = MeasureApCorrConfig
    _DefaultName = "measureApCorr"

    @timeMethod
    def run(self, exposure, catalog: Table, centroidField: str = "base_SdssCentroid") -> Struct:
        """Return `Struct` with ``apCorrMap`` (dict of `ChebyshevBoundedField`); sets ``apcorr_*_used``.

        Raises
        ------
        TaskError
            If a flux cannot be fitted (too few stars) and it is not in ``allowFailure``.
        """
        cfg = self.config
        ny, nx = exposure.shape
        bbox = Box(0, 0, nx, ny)
        x = np.asarray(catalog[f"{centroidField}_x"], float)
        y = np.asarray(catalog[f"{centroidField}_y"], float)
        ref = np.asarray(catalog[f"{cfg.refFluxName}_instFlux"], float)
        ref_err = (
            np.asarray(catalog[f"{cfg.refFluxName}_instFluxErr"], float)
            if f"{cfg.refFluxName}_instFluxErr" in catalog.colnames
            else np.zeros(len(catalog))
        )
        ref_ok = np.isfinite(ref) & (ref > 0)
        if f"{cfg.refFluxName}_flag" in catalog.colnames:
            ref_ok &= ~np.asarray(catalog[f"{cfg.refFluxName}_flag"], bool)
        selected = np.asarray(catalog[cfg.sourceSelectorFlag], bool) & ref_ok
        used_any = np.zeros(len(catalog), bool)
        ap_map: dict[str, ChebyshevBoundedField] = {}
        for name in cfg.fluxNames:
            col = f"{name}_instFlux"
            if col not in catalog.colnames:
                continue
            flux = np.asarray(catalog[col], float)
            good = selected & np.isfinite(flux) & (flux > 0)
            if f"{name}_flag" in catalog.colnames:
                good &= ~np.asarray(catalog[f"{name}_flag"], bool)
            flux_err = (
                np.asarray(catalog[f"{col}Err"], float)
                if f"{col}Err" in catalog.colnames
                else np.zeros(len(catalog))
            )
            with np.errstate(invalid="ignore", divide="ignore"):
                rel = np.sqrt((ref_err / ref) ** 2 + (flux_err / flux) ** 2 + cfg.weightFloor**2)
            weights = np.where(np.isfinite(rel) & (rel > 0), 1.0 / rel, 0.0) if cfg.doWeight else None
            try:
                field, rms, used = self._fit(x, y, ref, flux, good, bbox, weights)
            except (ValueError, TaskError) as exc:
                msg = f"Unable to measure aperture correction for '{name}': {exc}"
                if name in cfg.allowFailure:
                    self.log.warning(msg)
                    continue
                raise TaskError(msg) from exc
            ap_map[col] = field
            ap_map[f"{name}_instFluxErr"] = ChebyshevBoundedField(np.array([[rms]]), bbox)
            catalog[f"apcorr_{name}_used"] = Column(
                used, description=f"set if source was used in measuring aperture correction of {name}"
            )
            used_any |= used
            self.log.info("Aperture correction for %s: RMS %.4f from %d stars", name, rms, int(used.sum()))
        catalog["apcorr_slot_CalibFlux_used"] = Column(
            used_any,
            description="set if source was used in measuring aperture correction of the reference flux",
        )
        return Struct(apCorrMap=ap_map)

    def _fit(
        self, x, y, ref, flux, good, bbox, weights=None
    ) -> tuple[ChebyshevBoundedField, float, np.ndarray]:
        cfg = self.config
        n = int(good.sum())
        ox, oy = cfg.orderX, cfg.orderY

        def nterms(a: int, b: int) -> int:
            iy, ix = np.mgrid[: b + 1, : a + 1]
            return int(((ix + iy) <= max(a, b)).sum()) if cfg.triangular else (a + 1) * (b + 1)

        while n - nterms(ox, oy) < cfg.minDegreesOfFreedom:
            if ox == 0 and oy == 0:
                raise TaskError(f"only {n} stars for the aperture correction")
            ox, oy = max(ox - 1, 0), max(oy - 1, 0)
        idx = np.flatnonzero(good)
        z = ref[idx] / flux[idx]
        keep = np.ones(len(idx), bool)
        w = None if weights is None else weights[idx]
        field = ChebyshevBoundedField.fit(
            x[idx], y[idx], z, bbox, ox, oy, triangular=cfg.triangular, weights=w
        )
        rms = float(np.std(z - field.evaluate(x[idx], y[idx])))
        for _ in range(cfg.numIter):
            resid = z - field.evaluate(x[idx], y[idx])
            rms = float(np.sqrt(np.mean(resid[keep] ** 2)))
            # clip on a robust sigma (1.4826 MAD): the RMS itself is inflated by the outliers (blends)
            if w is None:
                sig = 1.4826 * float(np.median(np.abs(resid[keep] - np.median(resid[keep]))))
                new = np.abs(resid) <= cfg.numSigmaClip * max(sig, 1e-12)
            else:  # normalised residuals
                zn = resid * w
                sig = 1.4826 * float(np.median(np.abs(zn[keep] - np.median(zn[keep]))))
                new = np.abs(zn) <= cfg.numSigmaClip * max(sig, 1e-12)
            if new.sum() - nterms(ox, oy) < cfg.minDegreesOfFreedom:
                break
            keep = new
            field = ChebyshevBoundedField.fit(
                x[idx][keep],
                y[idx][keep],
                z[keep],
                bbox,
                ox,
                oy,
                triangular=cfg.triangular,
                weights=None if w is None else w[keep],
            )
        resid = z - field.evaluate(x[idx], y[idx])
        rms = float(np.sqrt(np.mean(resid[keep] ** 2)))
        used = np.zeros(len(x), bool)
        used[idx[keep]] = True
        return field, rms, used


class ApplyApCorrConfig(Config):
    """LSST ``ApplyApCorrConfig``."""

    ignoreList = ListField(dtype=str, default=[], doc="Flux names not to correct")
    doFlagApCorrFailures = Field(dtype=bool, default=True, doc="Set <name>_flag when the correction fails")


class ApplyApCorrTask(Task):
    """Multiply fluxes (and, naively, their errors) by the aperture correction at each source."""

    ConfigClass = ApplyApCorrConfig
    _DefaultName = "applyApCorr"

    @timeMethod
    def run(self, catalog: Table, apCorrMap: dict, centroidField: str = "base_SdssCentroid") -> Struct:
        """Correct ``catalog`` in place; adds ``<name>_apCorr``, ``<name>_apCorrErr``, ``<name>_flag_apCorr``.

        Parameters
        ----------
        catalog : `astropy.table.Table`
        apCorrMap : `dict`
            ``exposure.ap_corr_map`` (``"<name>_instFlux"`` and ``"<name>_instFluxErr"`` fields).
        centroidField : `str`
            Position columns prefix (``slot_Centroid``).
        """
        if len(catalog) and f"{centroidField}_x" in catalog.colnames:
            x = np.asarray(catalog[f"{centroidField}_x"], float)
            y = np.asarray(catalog[f"{centroidField}_y"], float)
        else:
            x = y = np.zeros(len(catalog))
        names = [k[: -len("_instFlux")] for k in apCorrMap if k.endswith("_instFlux")]
        done = []
        for name in names:
            if name in self.config.ignoreList or f"{name}_instFlux" not in catalog.colnames:
                continue
            field = apCorrMap[f"{name}_instFlux"]
            err_field = apCorrMap.get(f"{name}_instFluxErr")
            xs = np.where(np.isfinite(x), x, 0.0)
            ys = np.where(np.isfinite(y), y, 0.0)
            corr = np.atleast_1d(np.asarray(field.evaluate(xs, ys), float)) if len(catalog) else np.zeros(0)
            corr_err = (
                np.atleast_1d(np.asarray(err_field.evaluate(xs, ys), float))
                if err_field is not None and len(catalog)
                else np.zeros(len(catalog))
            )
            bad = ~np.isfinite(corr) | (corr <= 0) | ~np.isfinite(x) | ~np.isfinite(y)
            corr = np.where(bad, 1.0, corr)
            catalog[f"{name}_apCorr"] = Column(corr, description=f"aperture correction applied to {name}")
            catalog[f"{name}_apCorrErr"] = Column(
                corr_err, description=f"standard deviation of aperture correction applied to {name}"
            )
            catalog[f"{name}_flag_apCorr"] = Column(
                bad, description=f"set if unable to aperture correct {name}"
            )
            catalog[f"{name}_instFlux"][:] = np.asarray(catalog[f"{name}_instFlux"], float) * corr
            if f"{name}_instFluxErr" in catalog.colnames:
                catalog[f"{name}_instFluxErr"][:] = np.asarray(catalog[f"{name}_instFluxErr"], float) * corr
            if self.config.doFlagApCorrFailures and f"{name}_flag" in catalog.colnames:
                catalog[f"{name}_flag"][:] = np.asarray(catalog[f"{name}_flag"], bool) | bad
            done.append(name)
        self.log.info("Applying aperture corrections to %d instFlux fields", len(done))
        return Struct(catalog=catalog, corrected=done)
