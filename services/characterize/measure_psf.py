"""MeasurePsfTask: star selection, candidates, reserve, PSF determiner (``lsst_processccd.md`` 2.6-2.7)."""

from __future__ import annotations

import numpy as np
from astropy.table import Column, Table
from calexpress.config import Config, ConfigField, ConfigurableField, Field
from calexpress.task import Struct, Task, TaskError, timeMethod

from .psf_determiner import PsfexPsfDeterminerConfig, fit_pixel_psf, validate_model
from .star_selector import ObjectSizeStarSelectorTask

__all__ = ["MakePsfCandidatesConfig", "MeasurePsfConfig", "MeasurePsfTask", "ReserveSourcesConfig"]


class MakePsfCandidatesConfig(Config):
    """LSST ``MakePsfCandidatesConfig``."""

    kernelSize = Field(dtype=int, default=21, doc="Candidate stamp size (pixels)")
    borderWidth = Field(dtype=int, default=0, doc="Extra border around the stamp (pixels)")


class ReserveSourcesConfig(Config):
    """LSST ``ReserveSourcesConfig``: a random fraction of the PSF stars is kept out of the fit."""

    fraction = Field(dtype=float, default=0.0, doc="Fraction of candidates to reserve")
    seed = Field(dtype=int, default=1, doc="Random seed (added to the exposure id)")


class MeasurePsfConfig(Config):
    """LSST ``MeasurePsfConfig``."""

    starSelector = ConfigurableField(target=ObjectSizeStarSelectorTask, doc="Star selector")
    makePsfCandidates = ConfigField(dtype=MakePsfCandidatesConfig, doc="PSF candidate stamps")
    psfDeterminer = ConfigField(dtype=PsfexPsfDeterminerConfig, doc="PSFEx-like determiner")
    reserve = ConfigField(dtype=ReserveSourcesConfig, doc="Reserved stars")
    photFluxField = Field(
        dtype=str,
        default="base_CircularApertureFlux_9_0_instFlux",
        doc="Star normalisation (PSFEx PHOTFLUX_KEY)",
    )
    centroidField = Field(
        dtype=str, default="base_SdssCentroid", doc="Centroid column prefix (slot_Centroid)"
    )
    shapeField = Field(dtype=str, default="base_SdssShape", doc="Shape column prefix (slot_Shape)")
    badMaskPlanes = Field(
        dtype=str,
        default="INTRP,SAT,CR,BAD,NO_DATA",
        doc="Mask planes given zero weight in the fit (comma list; psfDeterminer.badMaskBits is added)",
    )


def _set_flag(cat: Table, name: str, values: np.ndarray, doc: str) -> None:
    cat[name] = Column(np.asarray(values, bool), description=doc)


class MeasurePsfTask(Task):
    """Select stars and fit a spatially varying PSF (sets ``calib_psf_candidate/used/reserved``)."""

    ConfigClass = MeasurePsfConfig
    _DefaultName = "measurePsf"

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.makeSubtask("starSelector")

    @timeMethod
    def run(self, exposure, sources: Table, expId: int = 0) -> Struct:
        """Measure the PSF of ``exposure`` from ``sources`` (flags are added to ``sources`` in place).

        Returns
        -------
        `Struct` with ``psf`` (`calexpress.psf.PixelPsf`), ``model`` (`PsfexModel`), ``cellSet`` (None),
        ``numGoodStars``, ``numAvailStars``.

        Raises
        ------
        TaskError
            If no usable star is found or the fit fails.
        """
        cfg = self.config
        n = len(sources)
        sel = self.starSelector.run(sources, exposure).selected if n else np.zeros(0, bool)
        cx = np.asarray(sources[f"{cfg.centroidField}_x"], float) if n else np.zeros(0)
        cy = np.asarray(sources[f"{cfg.centroidField}_y"], float) if n else np.zeros(0)
        # candidates: finite stamp maximum within the image
        half = (cfg.makePsfCandidates.kernelSize + 2 * cfg.makePsfCandidates.borderWidth) // 2
        ny, nx = exposure.shape
        inside = (cx - half >= 0) & (cy - half >= 0) & (cx + half < nx) & (cy + half < ny)
        cand = sel & np.isfinite(cx) & np.isfinite(cy) & inside
        reserved = np.zeros(n, bool)
        if cfg.reserve.fraction > 0 and cand.any():
            rng = np.random.default_rng(cfg.reserve.seed + int(expId))
            idx = np.flatnonzero(cand)
            nres = int(round(cfg.reserve.fraction * len(idx)))
            reserved[rng.choice(idx, nres, replace=False)] = True
        _set_flag(
            sources,
            "calib_psf_candidate",
            cand,
            "Flag set if the source was a candidate for PSF determination",
        )
        _set_flag(
            sources, "calib_psf_reserved", reserved, "set if source was reserved from PSF determination"
        )
        fit_idx = np.flatnonzero(cand & ~reserved)
        self.metadata["numAvailStars"] = int(len(fit_idx))
        if len(fit_idx) == 0:
            _set_flag(
                sources,
                "calib_psf_used",
                np.zeros(n, bool),
                "Flag set if the source was actually used for PSF determination",
            )
            raise TaskError("No PSF candidates (star selector found no stars)")
        shape = cfg.shapeField
        width = np.sqrt(
            0.5
            * (
                np.asarray(sources[f"{shape}_xx"], float)[fit_idx]
                + np.asarray(sources[f"{shape}_yy"], float)[fit_idx]
            )
        )
        fwhm = 2.3548 * float(np.nanmedian(width))
        flux = None
        if cfg.photFluxField in sources.colnames:
            flux = np.asarray(sources[cfg.photFluxField], float)[fit_idx]
        planes = [p for p in cfg.badMaskPlanes.split(",") if p] + list(cfg.psfDeterminer.badMaskBits)
        planes = [p for p in dict.fromkeys(planes) if p in exposure.mask_planes]
        bad = (
            (exposure.mask & exposure.get_plane_bitmask(*planes)) != 0
            if planes
            else np.zeros(exposure.shape, bool)
        )
        t_ref = float(np.nanmedian(2 * width**2))
        res = None
        problem = "no fit"
        # lower the spatial order when the fit is not valid over the whole detector (few stars, crowding)
        for order in range(cfg.psfDeterminer.spatialOrder, -1, -1):
            try:
                res = fit_pixel_psf(
                    exposure.image,
                    exposure.variance,
                    bad,
                    cx[fit_idx],
                    cy[fit_idx],
                    flux,
                    cfg.psfDeterminer,
                    fwhm,
                    bbox_shape=exposure.shape,
                    spatial_order=order,
                )
            except RuntimeError as exc:
                problem = str(exc)
                res = None
                continue
            problem = validate_model(res.model.to_psf(), exposure.shape, t_ref)
            if problem is None:
                break
            self.log.warning("PSF model of spatial order %d rejected: %s", order, problem)
            res = None
        if res is None:
            raise TaskError(f"PSF determination failed: {problem}")
        self.metadata["spatialOrder"] = int(res.model.poldeg)
        used = np.zeros(n, bool)
        used[fit_idx[res.used]] = True
        _set_flag(
            sources, "calib_psf_used", used, "Flag set if the source was actually used for PSF determination"
        )
        psf = res.model.to_psf()
        self.metadata.update(
            numGoodStars=int(used.sum()),
            spatialFitChi2=float("nan"),
            avgX=res.model.avg_position[0],
            avgY=res.model.avg_position[1],
        )
        self.log.info("PSF determination using %d/%d stars.", int(used.sum()), len(fit_idx))
        return Struct(
            psf=psf,
            model=res.model,
            cellSet=None,
            numGoodStars=int(used.sum()),
            numAvailStars=int(len(fit_idx)),
        )
