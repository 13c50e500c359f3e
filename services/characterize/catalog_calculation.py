"""Catalog calculation (LSST ``CatalogCalculationTask``: extendedness and footprint area).

Used only when ``calexpress.catalog_calc`` is not available.
"""

from __future__ import annotations

import numpy as np
from astropy.table import Column, Table
from calexpress.config import Config, Field, ListField
from calexpress.task import Struct, Task, timeMethod

__all__ = ["CatalogCalculationConfig", "CatalogCalculationTask"]


class CatalogCalculationConfig(Config):
    """Plugins and the extendedness parameters (LSST defaults)."""

    plugins = ListField(
        dtype=str,
        default=["base_ClassificationExtendedness", "base_FootprintArea"],
        doc="Catalog-calculation plugins",
    )
    fluxRatio = Field(dtype=float, default=0.925, doc="Extendedness: model/psf flux ratio threshold")
    modelErrFactor = Field(dtype=float, default=0.0, doc="Extendedness: model error factor")
    psfErrFactor = Field(dtype=float, default=0.0, doc="Extendedness: PSF error factor")


class CatalogCalculationTask(Task):
    """Compute extendedness and footprint areas from measured columns."""

    ConfigClass = CatalogCalculationConfig
    _DefaultName = "catalogCalculation"

    @timeMethod
    def run(self, catalog: Table) -> Struct:
        cfg = self.config
        n = len(catalog)
        if "base_ClassificationExtendedness" in cfg.plugins:
            model_name = catalog.meta.get("ALIAS_slot_ModelFlux", "base_GaussianFlux")
            psf_name = catalog.meta.get("ALIAS_slot_PsfFlux", "base_PsfFlux")
            mf = (
                np.asarray(catalog[f"{model_name}_instFlux"], float)
                if f"{model_name}_instFlux" in catalog.colnames
                else np.full(n, np.nan)
            )
            pf = (
                np.asarray(catalog[f"{psf_name}_instFlux"], float)
                if f"{psf_name}_instFlux" in catalog.colnames
                else np.full(n, np.nan)
            )
            me = np.asarray(
                catalog[f"{model_name}_instFluxErr"]
                if f"{model_name}_instFluxErr" in catalog.colnames
                else np.zeros(n),
                float,
            )
            pe = np.asarray(
                catalog[f"{psf_name}_instFluxErr"]
                if f"{psf_name}_instFluxErr" in catalog.colnames
                else np.zeros(n),
                float,
            )
            flag = ~np.isfinite(mf) | ~np.isfinite(pf)
            for name in (f"{model_name}_flag", f"{psf_name}_flag"):
                if name in catalog.colnames:
                    flag |= np.asarray(catalog[name], bool)
            value = np.where(
                cfg.fluxRatio * mf + cfg.modelErrFactor * me < pf + cfg.psfErrFactor * pe, 0.0, 1.0
            )
            value[flag] = np.nan
            catalog["base_ClassificationExtendedness_value"] = Column(
                value, description="Set to 1 for extended sources, 0 for point sources."
            )
            catalog["base_ClassificationExtendedness_flag"] = Column(
                flag, description="Set to 1 for any fatal failure."
            )
        if "base_FootprintArea" in cfg.plugins:
            fps = getattr(catalog, "footprints", None)
            if fps is not None and "footprint" in catalog.colnames:
                npix = np.asarray(fps.npix)[np.asarray(catalog["footprint"], int)]
            else:
                npix = np.zeros(n, np.int32)
            catalog["base_FootprintArea_value"] = Column(
                np.asarray(npix, np.int32),
                description="Number of pixels in the source's detection footprint.",
                unit="pix",
            )
        return Struct(catalog=catalog)
