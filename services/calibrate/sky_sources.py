"""Sky sources (LSST ``SkyObjectsTask``): empty-sky positions added to the catalog with ``sky_source``."""

from __future__ import annotations

from typing import Any

import numpy as np
from astropy.table import Table, vstack
from calexpress.config import Config, Field, ListField, RangeField
from calexpress.task import ExposureIdInfo, Struct, Task

__all__ = ["SkyObjectsConfig", "SkyObjectsTask", "generate_sky_positions"]


def generate_sky_positions(
    mask: np.ndarray, bad_bits: int, n_sources: int, radius: float, n_trials: int, seed: int
) -> np.ndarray:
    """Up to ``n_sources`` (x, y) integer positions whose circle of ``radius`` avoids ``bad_bits`` and
    each other, drawn uniformly (numpy ``RandomState(seed)``, as LSST's afw Random) inside the image
    shrunk by ``int(radius) + 1``."""
    ny, nx = mask.shape
    rng = np.random.RandomState(seed % (2**32))
    r = int(radius) + 1
    bad = (mask & bad_bits) != 0
    yy, xx = np.mgrid[-r : r + 1, -r : r + 1]
    disk = xx**2 + yy**2 <= radius**2
    taken = np.zeros_like(bad)
    out = []
    for _ in range(n_trials):
        if len(out) >= n_sources:
            break
        x = int(rng.uniform(r, nx - r))
        y = int(rng.uniform(r, ny - r))
        sl = (slice(y - r, y + r + 1), slice(x - r, x + r + 1))
        if (bad[sl] & disk).any() or (taken[sl] & disk).any():
            continue
        taken[sl] |= disk
        out.append((x, y))
    return np.array(out, dtype=int).reshape(-1, 2)


class SkyObjectsConfig(Config):
    """Configuration of `SkyObjectsTask` (LSST names and defaults)."""

    avoidMask = ListField(
        dtype=str, default=["DETECTED", "DETECTED_NEGATIVE", "BAD", "NO_DATA"], doc="Mask planes to avoid"
    )
    growMask = RangeField(dtype=int, default=0, min=0, doc="Unused (LSST compatibility)")
    sourceRadius = RangeField(dtype=float, default=8.0, min=0, doc="Radius of sky sources (pixels)")
    nSources = RangeField(dtype=int, default=100, min=0, doc="Number of sky sources")
    nTrialSources = Field(dtype=int, default=None, optional=True, doc="Trials (default nSources*multiplier)")
    nTrialSourcesMultiplier = RangeField(dtype=int, default=5, min=1, doc="Trials per source")


class SkyObjectsTask(Task):
    """Add sky-source rows (``sky_source`` = True, peak at the position, no footprint: ``footprint`` = -1)."""

    ConfigClass = SkyObjectsConfig
    _DefaultName = "skySources"

    def run(
        self, exposure, sources: Table, exposureIdInfo: ExposureIdInfo | None = None, seed: int | None = None
    ) -> Struct:
        cfg = self.config
        info = exposureIdInfo or ExposureIdInfo()
        seed = info.expId if seed is None else seed
        bits = exposure.get_plane_bitmask(*cfg.avoidMask)
        n_trials = cfg.nTrialSources or cfg.nSources * cfg.nTrialSourcesMultiplier
        pos = generate_sky_positions(
            np.asarray(exposure.mask), bits, cfg.nSources, cfg.sourceRadius, n_trials, seed
        )
        if "sky_source" not in sources.colnames:
            sources["sky_source"] = np.zeros(len(sources), bool)
        n = len(pos)
        if n:
            base = info.expId << info.unusedBits if info.unusedBits < 63 else 0
            start = int(np.max(sources["id"]) - base) + 1 if len(sources) else 1
            new = Table()
            for col in sources.colnames:
                c = sources[col]
                if c.dtype.kind == "f":
                    new[col] = np.full((n,) + c.shape[1:], np.nan, c.dtype)
                else:
                    new[col] = np.zeros((n,) + c.shape[1:], c.dtype)
            new["id"] = info.make_ids(n, start=start)
            if "footprint" in new.colnames:
                new["footprint"] = -1
            if "peak_x" in new.colnames:
                new["peak_x"], new["peak_y"] = pos[:, 0], pos[:, 1]
            new["sky_source"] = True
            attrs = {
                k: getattr(sources, k) for k in ("footprints", "heavy_footprints") if hasattr(sources, k)
            }
            merged = vstack([sources, new], metadata_conflicts="silent")
            meta = dict(sources.meta)
            sources.__init__(
                [merged[c] for c in merged.colnames], names=merged.colnames, meta=meta, copy=False
            )
            for k, v in attrs.items():
                setattr(sources, k, v)
        self.log.info("Added %d of %d requested sky sources", n, cfg.nSources)
        return Struct(positions=pos)

    def __init__(self, schema: Any = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
