"""Catalog calculation plugins (after LSST ``CatalogCalculationTask``).

* ``base_ClassificationExtendedness``: ``value = 0`` (point source) if
  ``fluxRatio * modelFlux + modelErrFactor * modelFluxErr < psfFlux + psfErrFactor * psfFluxErr``, else 1;
  the flag is set when either flux is NaN or either slot's flag is set (``fluxRatio=0.925``, error factors 0).
* ``base_FootprintArea``: ``base_FootprintArea_value`` = number of pixels of the source's footprint
  (the parent footprint from the `FootprintSet`; a deblended child's own `HeavyFootprint` mask).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from astropy import units as u
from astropy.table import Column, Table

from .config import Config, Field, ListField
from .measurement import slot_column
from .task import Struct, Task, timeMethod

__all__ = [
    "CatalogCalculationConfig",
    "CatalogCalculationTask",
    "classification_extendedness",
    "footprint_area",
]


class CatalogCalculationConfig(Config):
    """Configuration of `CatalogCalculationTask`."""

    plugins = ListField(
        dtype=str,
        default=["base_ClassificationExtendedness", "base_FootprintArea"],
        doc="catalog calculation plugins to run",
    )
    fluxRatio = Field(dtype=float, default=0.925, doc="base_ClassificationExtendedness.fluxRatio")
    modelErrFactor = Field(dtype=float, default=0.0, doc="base_ClassificationExtendedness.modelErrFactor")
    psfErrFactor = Field(dtype=float, default=0.0, doc="base_ClassificationExtendedness.psfErrFactor")

    def validate(self) -> None:
        super().validate()
        unknown = set(self.plugins) - {"base_ClassificationExtendedness", "base_FootprintArea"}
        if unknown:
            raise ValueError(f"unknown catalog calculation plugins {sorted(unknown)}")


def _flux_and_flag(table: Table, slot: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    base = slot_column(table, slot)
    flux = np.asarray(table[f"{base}_instFlux"], np.float64)
    err = (
        np.asarray(table[f"{base}_instFluxErr"], np.float64)
        if f"{base}_instFluxErr" in table.colnames
        else np.zeros(len(table))
    )
    flag = (
        np.asarray(table[f"{base}_flag"], bool)
        if f"{base}_flag" in table.colnames
        else np.zeros(len(table), bool)
    )
    return flux, err, flag


def classification_extendedness(
    table: Table, fluxRatio: float = 0.925, modelErrFactor: float = 0.0, psfErrFactor: float = 0.0
) -> None:
    """Add ``base_ClassificationExtendedness_value`` (0 star, 1 extended, NaN if undefined) and ``_flag``."""
    mflux, merr, mflag = _flux_and_flag(table, "ModelFlux")
    pflux, perr, pflag = _flux_and_flag(table, "PsfFlux")
    bad = mflag | pflag | ~np.isfinite(mflux) | ~np.isfinite(pflux)
    with np.errstate(invalid="ignore"):
        ext = (fluxRatio * mflux + modelErrFactor * merr >= pflux + psfErrFactor * perr).astype(np.float64)
    ext[~(np.isfinite(mflux) & np.isfinite(pflux))] = np.nan
    table["base_ClassificationExtendedness_value"] = Column(
        ext, description="Set to 1 for extended sources, 0 for point sources."
    )
    table["base_ClassificationExtendedness_flag"] = Column(bad, description="Set to 1 for any fatal failure.")


def footprint_area(table: Table, footprints: Any = None) -> None:
    """Add ``base_FootprintArea_value``: pixels of each source's footprint (children: their heavy mask)."""
    footprints = footprints if footprints is not None else getattr(table, "footprints", None)
    n = len(table)
    area = np.zeros(n, np.int32)
    if footprints is not None and "footprint" in table.colnames:
        idx = np.asarray(table["footprint"], np.int64)
        ok = (idx >= 0) & (idx < len(footprints))
        area[ok] = footprints.npix[idx[ok]]
    heavy = getattr(table, "heavy_footprints", None) or {}
    if heavy:
        ids = np.asarray(table["id"])
        for i in range(n):
            hf = heavy.get(int(ids[i]))
            if hf is not None:
                area[i] = int(np.count_nonzero(hf.mask))
    table["base_FootprintArea_value"] = Column(
        area, unit=u.pix, description="Number of pixels in the source's detection footprint."
    )


class CatalogCalculationTask(Task):
    """Run the catalog-level plugins on a measured catalog."""

    ConfigClass = CatalogCalculationConfig
    _DefaultName = "catalogCalculation"

    def __init__(
        self, config: CatalogCalculationConfig | None = None, schema: Any = None, **kwargs: Any
    ) -> None:
        super().__init__(config=config, **kwargs)

    @timeMethod
    def run(self, measCat: Table, footprints: Any = None) -> Struct:
        """Add the plugin columns to ``measCat`` in place."""
        cfg = self.config
        cfg.validate()
        if "base_ClassificationExtendedness" in cfg.plugins:
            classification_extendedness(measCat, cfg.fluxRatio, cfg.modelErrFactor, cfg.psfErrFactor)
        if "base_FootprintArea" in cfg.plugins:
            footprint_area(measCat, footprints)
        return Struct(catalog=measCat)
