"""SDSS-style template deblender (after LSST meas_deblender's ``SourceDeblendTask``).

For a footprint with several peaks each peak gets a symmetric template,
``T_k(x) = min(I(x), I(2 p_k − x))`` over the footprint (zero where the mirror pixel leaves it),
optionally made monotonically non-increasing outwards from the peak.  The parent's pixels are then
shared in proportion to the templates, ``child_k = I · T_k / Σ_j T_j``; "stray" flux (pixels where every
template is zero) goes to the nearest peak.  Each child becomes a new catalog row (``parent`` = the
parent's id) with a `calexpress.footprints.HeavyFootprint` holding its pixels; the parent gets
``deblend_nChild``.  The HeavyFootprints are attached to the catalog as
``sourceCat.heavy_footprints`` (dict: child id -> HeavyFootprint) for the measurement task.
"""

from __future__ import annotations

from typing import Any

import numba
import numpy as np
from astropy.table import Table, vstack
from calexpress.config import Config, Field, ListField, RangeField
from calexpress.task import ExposureIdInfo, Struct, Task, timeMethod

__all__ = ["SourceDeblendConfig", "SourceDeblendTask", "deblend_footprint"]


@numba.njit(cache=True)
def _monotonic(t: np.ndarray, px: int, py: int) -> np.ndarray:  # pragma: no cover - compiled
    """Make a template non-increasing outwards from the peak (SDSS 'monotonic' step).

    Pixels are visited in order of Chebyshev distance from the peak; each is capped by its
    neighbour one step towards the peak.
    """
    ny, nx = t.shape
    out = t.copy()
    rmax = max(px, nx - 1 - px, py, ny - 1 - py)
    for r in range(1, rmax + 1):
        for y in range(max(py - r, 0), min(py + r, ny - 1) + 1):
            for x in range(max(px - r, 0), min(px + r, nx - 1) + 1):
                if max(abs(x - px), abs(y - py)) != r:
                    continue
                sy = y - (1 if y > py else (-1 if y < py else 0))
                sx = x - (1 if x > px else (-1 if x < px else 0))
                if out[y, x] > out[sy, sx]:
                    out[y, x] = out[sy, sx]
    return out


def _half_pixel_centre(data: np.ndarray, px: int, py: int) -> tuple[int, int]:
    """Twice the 3x3 first-moment centre around the peak, rounded (mirror centre in half pixels)."""
    ny, nx = data.shape
    y0, y1, x0, x1 = max(py - 1, 0), min(py + 2, ny), max(px - 1, 0), min(px + 2, nx)
    box = np.clip(data[y0:y1, x0:x1], 0, None)
    tot = box.sum()
    if tot <= 0:
        return 2 * px, 2 * py
    gy, gx = np.mgrid[y0:y1, x0:x1]
    cx = float((box * gx).sum() / tot)
    cy = float((box * gy).sum() / tot)
    cx, cy = min(max(cx, px - 0.5), px + 0.5), min(max(cy, py - 0.5), py + 0.5)
    return int(round(2 * cx)), int(round(2 * cy))


def deblend_footprint(
    img: np.ndarray, mask: np.ndarray, peaks_xy: np.ndarray, monotonic: bool = True
) -> list[np.ndarray]:
    """Split a footprint's pixels among its peaks.

    Parameters
    ----------
    img : 2-D array
        Background-subtracted pixel values in the footprint's bbox.
    mask : 2-D bool array
        Footprint pixels.
    peaks_xy : (n, 2) int array
        Peak positions relative to the bbox.
    monotonic : `bool`
        Apply the monotonic template constraint.

    Returns
    -------
    children : list of 2-D arrays
        Each child's pixel values (sum over children = ``img`` on the footprint).
    """
    ny, nx = img.shape
    data = np.where(mask, img, 0.0).astype(np.float64)
    yy, xx = np.nonzero(mask)
    templates = []
    for px, py in peaks_xy:
        # mirror about the nearest half-pixel of the 3x3 centroid (not the integer peak)
        cx2, cy2 = _half_pixel_centre(data, int(px), int(py))
        xm, ym = cx2 - xx, cy2 - yy
        ok = (xm >= 0) & (xm < nx) & (ym >= 0) & (ym < ny)
        ok[ok] &= mask[ym[ok], xm[ok]]
        t = np.zeros((ny, nx))
        vals = np.zeros(len(xx))
        vals[ok] = np.minimum(data[yy[ok], xx[ok]], data[ym[ok], xm[ok]])
        t[yy, xx] = np.clip(vals, 0, None)
        if monotonic:
            t = _monotonic(t, int(px), int(py))
        templates.append(t)
    tsum = np.sum(templates, axis=0)
    children = []
    stray = mask & (tsum <= 0)
    if stray.any():
        sy, sx = np.nonzero(stray)
        d2 = (sx[None, :] - peaks_xy[:, 0:1]) ** 2 + (sy[None, :] - peaks_xy[:, 1:2]) ** 2
        nearest = np.argmin(d2, axis=0)
    with np.errstate(divide="ignore", invalid="ignore"):
        for k, t in enumerate(templates):
            child = np.where(tsum > 0, data * t / tsum, 0.0)
            if stray.any():
                sel = nearest == k
                child[sy[sel], sx[sel]] = data[sy[sel], sx[sel]]
            children.append(child)
    return children


class SourceDeblendConfig(Config):
    """Configuration of `SourceDeblendTask` (LSST names and defaults)."""

    maxNumberOfPeaks = RangeField(dtype=int, default=0, min=0, doc="Only the brightest N peaks (0 = all)")
    maxFootprintArea = RangeField(dtype=int, default=1000000, min=0, doc="Skip larger footprints (pixels)")
    maxFootprintSize = RangeField(
        dtype=int, default=0, min=0, doc="Skip footprints with a larger bbox side (0=any)"
    )
    minFootprintAxisRatio = RangeField(dtype=float, default=0.0, min=0, doc="Skip thinner footprints")
    tinyFootprintSize = RangeField(
        dtype=int, default=2, min=0, doc="Children with a smaller footprint: no template"
    )
    monotonicTemplate = Field(dtype=bool, default=True, doc="Monotonic templates (SDSS)")
    minPeakSeparation = RangeField(
        dtype=float, default=1.5, min=0, doc="Drop peaks closer than this (pixels)"
    )
    maskPlanes = ListField(dtype=str, default=["SAT", "INTRP", "NO_DATA"], doc="Planes counted by maskLimits")
    notDeblendedMask = Field(dtype=str, default="NOT_DEBLENDED", doc="Mask plane for skipped footprints")
    catchFailures = Field(dtype=bool, default=False, doc="Continue after a failure on one footprint")


class SourceDeblendTask(Task):
    """Deblend multi-peak footprints into child sources."""

    ConfigClass = SourceDeblendConfig
    _DefaultName = "deblend"

    def __init__(self, schema: Any = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)

    @timeMethod
    def run(self, exposure, sources: Table, exposureIdInfo: ExposureIdInfo | None = None) -> Struct:
        """Deblend in place: adds child rows to ``sources`` (see the module docstring).

        ``sources`` needs ``id``, ``parent``, ``footprint`` and ``sources.footprints`` (a FootprintSet),
        as made by `calexpress.detection.make_source_catalog`.
        """
        cfg = self.config
        fps = getattr(sources, "footprints", None)
        n = len(sources)
        for name, dtype in (
            ("deblend_nChild", np.int32),
            ("deblend_tooManyPeaks", bool),
            ("deblend_parentTooBig", bool),
            ("deblend_skipped", bool),
            ("deblend_masked", bool),
            ("deblend_deblendedAsPsf", bool),
        ):
            if name not in sources.colnames:
                sources[name] = np.zeros(n, dtype)
        if "deblend_nPeaks" not in sources.colnames:
            sources["deblend_nPeaks"] = np.ones(n, np.int32)
        heavy = getattr(sources, "heavy_footprints", None) or {}
        if fps is None or n == 0:
            sources.heavy_footprints = heavy
            return Struct(nChildren=0, heavy_footprints=heavy)
        from calexpress.footprints import HeavyFootprint

        image = np.asarray(exposure.image)
        mask_arr = np.asarray(exposure.mask) if getattr(exposure, "mask", None) is not None else None
        mask_bits = (
            exposure.get_plane_bitmask(*cfg.maskPlanes) if mask_arr is not None and cfg.maskPlanes else 0
        )
        if mask_arr is None:
            mask_arr = np.zeros((1, 1), np.int32)
        masked = np.asarray(sources["deblend_masked"]).copy()
        ids = np.asarray(sources["id"], np.int64)
        id_info = exposureIdInfo or ExposureIdInfo()
        next_n = int(ids.max() - (id_info.expId << id_info.unusedBits if id_info.unusedBits < 63 else 0)) + 1
        child_rows: dict[str, list] = {
            c: [] for c in ("parent", "footprint", "peak_x", "peak_y", "peak_value", "peak_significance")
        }
        n_child = np.asarray(sources["deblend_nChild"]).copy()
        too_many = np.asarray(sources["deblend_tooManyPeaks"]).copy()
        too_big = np.asarray(sources["deblend_parentTooBig"]).copy()
        skipped = np.asarray(sources["deblend_skipped"]).copy()
        new_heavy: list = []
        fp_col = np.asarray(sources["footprint"])
        parent_col = np.asarray(sources["parent"])
        for row in np.nonzero((parent_col == 0) & (fps.n_peaks[fp_col] > 1))[0]:
            i = int(fp_col[row])
            bb = fps.bbox(i)
            if (cfg.maxFootprintSize and max(bb.width, bb.height) > cfg.maxFootprintSize) or (
                fps.npix[i] > cfg.maxFootprintArea
            ):
                too_big[row] = skipped[row] = True
                continue
            peaks = fps.peaks(i)
            if cfg.maxNumberOfPeaks and len(peaks) > cfg.maxNumberOfPeaks:
                too_many[row] = True
                peaks = peaks[: cfg.maxNumberOfPeaks]
            keep: list[int] = []
            masked_seen = False
            for k in range(len(peaks)):
                # one peak per masked (saturated/interpolated) region: the others are bleed/core artefacts
                pxk, pyk = int(peaks["x"][k]), int(peaks["y"][k])
                box = mask_arr[max(pyk - 2, 0) : pyk + 3, max(pxk - 2, 0) : pxk + 3]
                if mask_bits and np.any(box & mask_bits):
                    if masked_seen:
                        masked[row] = True
                        continue
                    masked_seen = True
                if all(
                    np.hypot(peaks["x"][k] - peaks["x"][j], peaks["y"][k] - peaks["y"][j])
                    >= cfg.minPeakSeparation
                    for j in keep
                ):
                    keep.append(k)
            peaks = peaks[keep]
            if len(peaks) < 2:
                continue
            m = fps.mask(i)
            sub = image[bb.slices]
            pxy = np.column_stack([peaks["x"] - bb.x0, peaks["y"] - bb.y0]).astype(int)
            try:
                children = deblend_footprint(sub, m, pxy, cfg.monotonicTemplate)
            except Exception:
                if not cfg.catchFailures:
                    raise
                skipped[row] = True
                continue
            n_child[row] = len(children)
            for k, child in enumerate(children):
                cmask = m & (child != 0)
                new_heavy.append(HeavyFootprint(bbox=bb, mask=cmask, image=child.astype(np.float32)))
                child_rows["parent"].append(ids[row])
                child_rows["footprint"].append(i)
                child_rows["peak_x"].append(int(peaks["x"][k]))
                child_rows["peak_y"].append(int(peaks["y"][k]))
                child_rows["peak_value"].append(float(peaks["value"][k]))
                child_rows["peak_significance"].append(float(peaks["significance"][k]))
        sources["deblend_nChild"] = n_child
        sources["deblend_tooManyPeaks"] = too_many
        sources["deblend_parentTooBig"] = too_big
        sources["deblend_skipped"] = skipped
        sources["deblend_masked"] = masked
        nc = len(child_rows["parent"])
        if nc:
            new = Table()
            new_ids = id_info.make_ids(nc, start=next_n)
            for col in sources.colnames:
                c = sources[col]
                if col == "id":
                    new[col] = new_ids
                elif col in child_rows:
                    new[col] = np.asarray(child_rows[col], dtype=c.dtype)
                elif col == "deblend_nPeaks":
                    new[col] = np.ones(nc, c.dtype)
                elif c.dtype.kind == "f":
                    new[col] = np.full((nc,) + c.shape[1:], np.nan, c.dtype)
                else:
                    new[col] = np.zeros((nc,) + c.shape[1:], c.dtype)
            fps_attr = sources.footprints
            merged = vstack([sources, new], metadata_conflicts="silent")
            _extend_inplace(sources, merged)
            sources.footprints = fps_attr
            for cid, hf in zip(new_ids, new_heavy):
                heavy[int(cid)] = hf
        sources.heavy_footprints = heavy
        self.log.info(
            "Deblended: of %d sources, %d were deblended, creating %d children, %d total",
            n,
            int(np.sum(n_child > 0)),
            nc,
            len(sources),
        )
        return Struct(nChildren=nc, heavy_footprints=heavy)


def _extend_inplace(table: Table, merged: Table) -> None:
    """Make ``table`` hold the rows of ``merged`` (same columns), keeping the object identity."""
    if len(table) == len(merged):
        return
    cols = [merged[c] for c in merged.colnames]
    meta = dict(table.meta)
    table.__init__(cols, names=merged.colnames, meta=meta, copy=False)
