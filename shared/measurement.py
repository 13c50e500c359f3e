"""Single-frame measurement (after LSST ``SingleFrameMeasurementTask``).

Plugins (LSST names, columns, units): ``base_PixelFlags``, ``base_SdssCentroid``, ``base_NaiveCentroid``,
``base_SdssShape``, ``base_GaussianFlux``, ``base_PsfFlux``, ``base_CircularApertureFlux``, ``base_SkyCoord``,
``base_Variance``, ``base_LocalBackground``, ``base_FootprintArea``.  All of them run vectorised over the
sources through the compiled kernels of `calexpress.measure_plugins`.

Algorithms (what differs from LSST's C++ is said here):

* ``base_SdssCentroid``: the zero of the first moment weighted by a circular Gaussian of the PSF's sigma
  (Newton iterations), i.e. the maximum of the image cross-correlated with the PSF -- what SDSS's
  smoothed-image quadratic fit approximates, without its sub-pixel bias.  Errors from the propagated
  pixel variances.  Flags ``edge``, ``noSecondDerivative``, ``notAtMaximum``, ``resetToPeak``.
  A source whose centre (3x3) is saturated gets its centroid from a PSF fit to the unsaturated wings
  (`calexpress.measure_plugins.saturated_wing_centroid`; flag ``saturatedWings``, calexpress), where LSST
  falls back to the peak: the interpolated plateau and its bleed trails put a first moment 5-10 px off.
* ``base_SdssShape``: adaptive moments (weight = elliptical Gaussian matched to the source), errors from
  the Fisher matrix of a Gaussian model with the mean pixel variance; ``instFlux`` is the matched-Gaussian
  flux; ``psf_xx/yy/xy`` the PSF's adaptive moments at the source.
* ``base_GaussianFlux``: fixed-weight flux with the ``slot_Shape`` moments at ``slot_Centroid``.
* ``base_PsfFlux``: unweighted least-squares amplitude of the PSF model image at the centroid
  (``psfImageMode="grid"``: kernel images on a grid of ``psfGridCell`` px, bilinear in position,
  Lanczos-5 sub-pixel shift; ``"exact"``: ``psf.compute_image`` per source).
* ``base_CircularApertureFlux``: exact circle/pixel overlap sums for radii up to ``maxSincRadius`` (LSST's
  sinc photometry integrates the same exact circle), with a first-order correction for the image slope
  across each cut pixel (``apertureSlopeCorrection``); whole pixels with centres inside the circle beyond
  (LSST's naive sums).
* ``doReplaceWithNoise``: the image with *every* footprint replaced by Gaussian noise (MEANCLIP/STDEVCLIP of
  the image, seed ``exposureId * noiseSeedMultiplier``) is made once; each source reads its own footprint's
  pixels from the real image and all others from that one, which is what LSST's NoiseReplacer does without
  per-source copies.  Deblended children (a `calexpress.footprints.HeavyFootprint` per row in
  ``catalog.heavy_footprints``, keyed by source id) are measured on a stamp holding their own pixels.

Slots: ``table.meta["ALIAS_slot_Centroid"] = "base_SdssCentroid"`` etc.; `get_slot` resolves
``get_slot(table, "Centroid_x")`` to ``table["base_SdssCentroid_x"]``.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from astropy import units as u
from astropy.table import Column, Table

from . import measure_plugins as mp
from .config import ChoiceField, Config, Field, ListField
from .stats import clipped_stats
from .task import Struct, Task, TaskError, timeMethod

__all__ = [
    "ALL_PLUGINS",
    "CHARIMAGE_PLUGINS",
    "SingleFrameMeasurementConfig",
    "SingleFrameMeasurementTask",
    "get_slot",
    "slot_column",
]

#: Plugins implemented here, in execution order (centroids, shapes, fluxes, the rest).
ALL_PLUGINS = [
    "base_SdssCentroid",
    "base_NaiveCentroid",
    "base_PixelFlags",
    "base_SdssShape",
    "base_GaussianFlux",
    "base_PsfFlux",
    "base_CircularApertureFlux",
    "base_SkyCoord",
    "base_Variance",
    "base_LocalBackground",
    "base_FootprintArea",
    "base_LocalPhotoCalib",
    "base_LocalWcs",
]

#: The plugin list CharacterizeImageTask sets (lsst_processccd.md 2.5).
CHARIMAGE_PLUGINS = [
    "base_PixelFlags",
    "base_SdssCentroid",
    "base_SdssShape",
    "base_GaussianFlux",
    "base_PsfFlux",
    "base_CircularApertureFlux",
]

_DEFAULT_PLUGINS = [
    "base_PixelFlags",
    "base_SdssCentroid",
    "base_NaiveCentroid",
    "base_SdssShape",
    "base_GaussianFlux",
    "base_PsfFlux",
    "base_CircularApertureFlux",
    "base_SkyCoord",
    "base_Variance",
    "base_LocalBackground",
]

_SLOT_DEFAULTS = {
    "Centroid": "base_SdssCentroid",
    "Shape": "base_SdssShape",
    "PsfShape": "base_SdssShape_psf",
    "PsfFlux": "base_PsfFlux",
    "ApFlux": "base_CircularApertureFlux_12_0",
    "CalibFlux": "base_CircularApertureFlux_12_0",
    "GaussianFlux": "base_GaussianFlux",
    "ModelFlux": "base_GaussianFlux",
}

_PIXEL_FLAG_PLANES = {
    "interpolated": ("INTRP",),
    "saturated": ("SAT",),
    "cr": ("CR",),
    "bad": ("BAD",),
    "suspect": ("SUSPECT",),
}


class SingleFrameMeasurementConfig(Config):
    """Configuration of `SingleFrameMeasurementTask` (LSST names)."""

    plugins = ListField(dtype=str, default=list(_DEFAULT_PLUGINS), doc="measurement plugins to run")
    slots = ListField(
        dtype=str,
        default=[f"{k}={v}" for k, v in _SLOT_DEFAULTS.items()],
        doc="slot definitions NAME=target (centroid, shape, fluxes)",
    )
    doReplaceWithNoise = Field(dtype=bool, default=True, doc="replace other sources by noise while measuring")
    noiseSource = ChoiceField(
        dtype=str,
        default="measure",
        doc="where the replacement noise comes from",
        allowed={
            "measure": "clipped mean and stdev of the image",
            "variance": "mean of the variance plane, mean 0",
        },
    )
    noiseOffset = Field(dtype=float, default=0.0, doc="added to the replacement noise mean")
    noiseSeedMultiplier = Field(dtype=int, default=1, doc="seed = exposureId * noiseSeedMultiplier")
    # plugin parameters (LSST defaults)
    doSaturatedWingCentroid = Field(
        dtype=bool,
        default=True,
        doc="calexpress: sources with a saturated centre get base_SdssCentroid from a PSF fit to their "
        "unsaturated wings (flag base_SdssCentroid_flag_saturatedWings)",
    )
    saturatedWingBadMaskPlanes = ListField(
        dtype=str,
        default=["SAT", "INTRP", "BAD", "SUSPECT", "NO_DATA", "CR"],
        doc="calexpress: pixels (grown by 1) left out of the saturated-wing centroid fit",
    )
    centroidMaxIter = Field(dtype=int, default=20, doc="SdssCentroid: Newton iterations")
    shapeMaxIter = Field(dtype=int, default=100, doc="base_SdssShape.maxIter")
    shapeTol1 = Field(dtype=float, default=1e-5, doc="base_SdssShape.tol1 (relative moments change)")
    shapeTol2 = Field(dtype=float, default=1e-4, doc="base_SdssShape.tol2 (centroid change, px)")
    shapeMaxShift = Field(dtype=float, default=2.0, doc="base_SdssShape.maxShift (clamped to [2, 10])")
    shapeMaxRadius = Field(dtype=float, default=60.0, doc="largest weight window radius (px)")
    apertureRadii = ListField(
        dtype=float,
        default=[3.0, 4.5, 6.0, 9.0, 12.0, 17.0, 25.0, 35.0, 50.0, 70.0],
        doc="base_CircularApertureFlux.radii (px)",
    )
    maxSincRadius = Field(
        dtype=float,
        default=10.0,
        doc="base_CircularApertureFlux.maxSincRadius: exact overlap up to here, whole pixels beyond",
    )
    apertureSlopeCorrection = Field(
        dtype=bool,
        default=True,
        doc="correct pixels cut by an exact aperture for the image slope across them (first order)",
    )
    psfImageMode = ChoiceField(
        dtype=str,
        default="grid",
        doc="how PSF images for PsfFlux are made",
        allowed={"grid": "kernel images on a grid + Lanczos shift", "exact": "psf.compute_image per source"},
    )
    psfGridCell = Field(dtype=int, default=512, doc="PSF grid spacing (px) for psfImageMode=grid")
    localBackgroundInner = Field(
        dtype=float, default=7.0, doc="base_LocalBackground.annulusInner (PSF sigma)"
    )
    localBackgroundOuter = Field(
        dtype=float, default=15.0, doc="base_LocalBackground.annulusOuter (PSF sigma)"
    )
    localBackgroundBadMaskPlanes = ListField(
        dtype=str, default=["BAD", "SAT", "NO_DATA"], doc="base_LocalBackground.badMaskPlanes"
    )
    varianceScale = Field(dtype=float, default=5.0, doc="base_Variance.scale")
    varianceMaskPlanes = ListField(
        dtype=str, default=["DETECTED", "DETECTED_NEGATIVE", "BAD", "SAT"], doc="base_Variance.mask"
    )

    def validate(self) -> None:
        super().validate()
        unknown = [p for p in self.plugins if p not in ALL_PLUGINS]
        if unknown:
            raise ValueError(f"unknown measurement plugins {unknown}; available: {ALL_PLUGINS}")

    def slot_map(self) -> dict[str, str]:
        """The slots as a dict ``{"Centroid": "base_SdssCentroid", ...}``."""
        out = {}
        for item in self.slots:
            name, _, target = item.partition("=")
            out[name.strip()] = target.strip()
        return out


def slot_column(table: Table, name: str) -> str:
    """Column name behind a slot field, e.g. ``"Centroid_x"`` -> ``"base_SdssCentroid_x"``.

    Accepts ``"slot_Centroid_x"`` too.  Raises `KeyError` naming the slot if it is not defined.
    """
    if name.startswith("slot_"):
        name = name[5:]
    slot, _, rest = name.partition("_")
    target = table.meta.get(f"ALIAS_slot_{slot}")
    if target is None:
        raise KeyError(f"slot {slot!r} is not defined in this catalog (meta ALIAS_slot_{slot})")
    return f"{target}_{rest}" if rest else target


def get_slot(table: Table, name: str) -> Column:
    """The column behind a slot field: ``get_slot(t, "Centroid_x")`` is ``t["base_SdssCentroid_x"]``."""
    return table[slot_column(table, name)]


def _radius_name(r: float) -> str:
    return f"base_CircularApertureFlux_{int(r)}_{int(round((r - int(r)) * 10))}"


class SingleFrameMeasurementTask(Task):
    """Measure every source of a catalog on an exposure (see the module docstring)."""

    ConfigClass = SingleFrameMeasurementConfig
    _DefaultName = "measurement"

    def __init__(
        self,
        config: SingleFrameMeasurementConfig | None = None,
        schema: Any = None,
        algMetadata: dict | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(config=config, **kwargs)
        self.algMetadata = algMetadata if algMetadata is not None else {}

    # ------------------------------------------------------------------------------------------
    @timeMethod
    def run(
        self, catalog: Table, exposure: Any, footprints: Any = None, exposureId: int | None = None
    ) -> Struct:
        """Fill the plugin columns of ``catalog`` (in place) from ``exposure``.

        Parameters
        ----------
        catalog : `astropy.table.Table`
            From `calexpress.detection.make_source_catalog` (``footprint``, ``peak_x``, ``peak_y``
            columns), possibly with deblended children (``parent != 0`` and ``catalog.heavy_footprints``).
        exposure : `calexpress.exposure.Exposure`
            Needs ``psf`` for the PSF-based plugins and ``wcs`` for base_SkyCoord.
        footprints : `calexpress.footprints.FootprintSet`, optional
            Default ``catalog.footprints``.
        exposureId : `int`, optional
            Seed of the replacement noise.

        Returns
        -------
        `Struct` with ``catalog`` (the same table).
        """
        cfg = self.config
        cfg.validate()
        self._kernel_cache = None
        if footprints is None:
            footprints = getattr(catalog, "footprints", None)
        if footprints is None:
            raise TaskError("measurement needs the footprints: pass footprints= or use make_source_catalog")
        n = len(catalog)
        plugins = [p for p in ALL_PLUGINS if p in cfg.plugins]
        for name, target in cfg.slot_map().items():
            catalog.meta[f"ALIAS_slot_{name}"] = target
        self.algMetadata["base_CircularApertureFlux_radii"] = list(cfg.apertureRadii)
        catalog.meta["base_CircularApertureFlux_radii"] = list(cfg.apertureRadii)
        if n == 0:
            self._add_empty_columns(catalog, plugins, exposure)
            return Struct(catalog=catalog)

        img = np.ascontiguousarray(exposure.image, dtype=np.float32)
        var = np.ascontiguousarray(exposure.variance, dtype=np.float32)
        mask = np.ascontiguousarray(exposure.mask, dtype=np.int32)
        labels = np.ascontiguousarray(footprints.labels, dtype=np.int32)
        if labels.shape != img.shape:
            raise TaskError(f"footprint label image {labels.shape} does not match the exposure {img.shape}")
        nr = self._noise_image(img, mask, labels, exposure, exposureId) if cfg.doReplaceWithNoise else img

        parent = np.asarray(catalog["parent"]) if "parent" in catalog.colnames else np.zeros(n, np.int64)
        heavy = getattr(catalog, "heavy_footprints", None) or {}
        ids = np.asarray(catalog["id"])
        is_child = np.array([(parent[i] != 0 and int(ids[i]) in heavy) for i in range(n)], bool)
        fp_index = np.asarray(catalog["footprint"], np.int64)
        own = np.where(fp_index >= 0, fp_index + 1, -1).astype(np.int32)
        px = np.asarray(catalog["peak_x"], np.float64)
        py = np.asarray(catalog["peak_y"], np.float64)

        psf = exposure.psf
        needs_psf = {"base_SdssCentroid", "base_SdssShape", "base_PsfFlux", "base_LocalBackground"} & set(
            plugins
        )
        if needs_psf and psf is None:
            raise TaskError(f"plugins {sorted(needs_psf)} need a PSF; exposure.psf is None")
        sig = float(psf.determinant_radius()) if psf is not None else 1.5
        sigmas = np.full(n, sig)

        cols: dict[str, tuple[np.ndarray, Any, str]] = {}
        groups = [np.flatnonzero(~is_child)]
        stamps = [(img, nr, labels, var, mask, 0, 0)]
        child_rows = np.flatnonzero(is_child)
        res_parts = []
        # parents and isolated sources: measured in place on the full frame
        g = groups[0]
        obox = np.zeros((g.size, 4), np.int64)
        okfp = own[g] > 0
        obox[okfp] = footprints.bboxes[own[g][okfp] - 1]
        res_parts.append(
            (g, self._measure(plugins, exposure, *stamps[0], own[g], px[g], py[g], sigmas[g], own_bbox=obox))
        )
        # deblended children: one stamp each, holding the child's own pixels
        rmax = max(cfg.apertureRadii) + 2 if "base_CircularApertureFlux" in plugins else 8 * sig + 2
        for i in child_rows:
            hf = heavy[int(ids[i])]
            st = self._child_stamp(hf, img, nr, var, mask, int(math.ceil(rmax)))
            arr_img, arr_lab, arr_var, arr_mask, x0, y0 = st
            res = self._measure(
                plugins,
                exposure,
                arr_img,
                arr_img,
                arr_lab,
                arr_var,
                arr_mask,
                x0,
                y0,
                np.array([1], np.int32),
                px[i : i + 1],
                py[i : i + 1],
                sigmas[i : i + 1],
                child_npix=int(hf.mask.sum()),
                child_maskor=int(np.bitwise_or.reduce(arr_mask[arr_lab == 1])) if hf.mask.any() else 0,
                own_bbox=np.array([[0, 0, 0, 0]], np.int64),
            )
            res_parts.append((np.array([i]), res))

        for rows, res in res_parts:
            for name, (vals, unit, doc) in res.items():
                if name not in cols:
                    dtype = vals.dtype
                    fill = False if dtype == np.bool_ else (0 if np.issubdtype(dtype, np.integer) else np.nan)
                    cols[name] = (np.full(n, fill, dtype=dtype), unit, doc)
                cols[name][0][rows] = vals
        for name, (vals, unit, doc) in cols.items():
            if name in ("coord_ra", "coord_dec"):
                catalog[name] = Column(vals, unit=unit, description=doc)
                continue
            catalog[name] = Column(vals, unit=unit, description=doc)
        self.log.debug("Measured %d sources with %s", n, plugins)
        return Struct(catalog=catalog)

    # ------------------------------------------------------------------------------------------
    def _noise_image(self, img, mask, labels, exposure, exposure_id) -> np.ndarray:
        cfg = self.config
        any_fp = labels > 0
        if cfg.noiseSource == "variance":
            mean = 0.0
            std = math.sqrt(float(np.nanmean(exposure.variance)))
        else:
            bad = exposure.get_plane_bitmask("BAD", "SAT", "NO_DATA", "EDGE")
            sub = (slice(None, None, 3), slice(None, None, 3)) if img.size > 2_000_000 else (slice(None),) * 2
            mean, std, _ = clipped_stats(img[sub], ((mask[sub] & bad) != 0) | any_fp[sub])
        mean += cfg.noiseOffset
        seed = int(exposure_id or 0) * int(cfg.noiseSeedMultiplier)
        rng = np.random.default_rng(seed)
        nr = img.copy()
        npx = int(any_fp.sum())
        nr[any_fp] = (mean + std * rng.standard_normal(npx)).astype(np.float32)
        self.metadata["noiseReplacerMean"] = float(mean)
        self.metadata["noiseReplacerStdev"] = float(std)
        return nr

    @staticmethod
    def _child_stamp(hf, img, nr, var, mask, margin):
        ny, nx = img.shape
        b = hf.bbox
        x0, y0 = max(b.x0 - margin, 0), max(b.y0 - margin, 0)
        x1, y1 = min(b.x1 + margin, nx), min(b.y1 + margin, ny)
        st = nr[y0:y1, x0:x1].copy()
        lab = np.zeros(st.shape, np.int32)
        sy, sx = slice(b.y0 - y0, b.y1 - y0), slice(b.x0 - x0, b.x1 - x0)
        st[sy, sx][hf.mask] = np.asarray(hf.image, np.float32)[hf.mask]
        lab[sy, sx][hf.mask] = 1
        return (
            st,
            lab,
            np.ascontiguousarray(var[y0:y1, x0:x1]),
            np.ascontiguousarray(mask[y0:y1, x0:x1]),
            x0,
            y0,
        )

    def _kernel_grid(self, psf, xs, ys) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """PSF kernel images on a grid of ``psfGridCell`` px over the sources: (gx, gy, kernels[iy, ix])."""
        gx, gy = self._grid(xs, ys)
        key = (id(psf), gx.tobytes(), gy.tobytes())
        cache = getattr(self, "_kernel_cache", None)
        if cache is not None and cache[0] == key:
            return cache[1]
        kern = [
            [np.asarray(psf.compute_kernel_image(float(x), float(y)), np.float64) for x in gx] for y in gy
        ]
        out = (gx, gy, np.ascontiguousarray(np.array(kern)))
        self._kernel_cache = (key, out)
        return out

    def _psf_shapes(self, psf, xs, ys) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """PSF adaptive moments at the sources, interpolated from a grid of ``psfGridCell`` px.

        When the PSF uses the generic `calexpress.psf.Psf.compute_shape` (adaptive moments of its kernel
        image), the moments are computed here with the compiled kernel on the cached grid kernels.
        """
        gx, gy = self._grid(xs, ys)
        generic = False
        try:
            from .psf import Psf

            generic = isinstance(psf, Psf) and type(psf).compute_shape is Psf.compute_shape
        except ImportError:  # pragma: no cover
            pass
        if generic:
            _, _, kernels = self._kernel_grid(psf, xs, ys)
            ngy, ngx, size, _ = kernels.shape
            flat = kernels.reshape(ngy * ngx, size, size)
            c = float(size // 2)
            s2 = max(float(psf.determinant_radius()) ** 2, 0.5)
            vals = np.empty((ngy * ngx, 3))
            ones = np.ones((size, size), np.int32)
            varr = np.ones((size, size), np.float32)
            for k in range(flat.shape[0]):
                im = np.ascontiguousarray(flat[k], dtype=np.float32)
                res = mp.adaptive_moments(
                    im,
                    im,
                    ones,
                    np.ones(1, np.int32),
                    varr,
                    np.array([c]),
                    np.array([c]),
                    np.array([s2]),
                    np.array([s2]),
                    100,
                    1e-6,
                    1e-5,
                    2.0,
                    float(size),
                )[0]
                vals[k] = res[0, :3]
            vals = vals.reshape(ngy, ngx, 3)
        else:
            vals = np.array([[psf.compute_shape(float(x), float(y)) for x in gx] for y in gy])  # (ny, nx, 3)
        out = []
        for k in range(3):
            out.append(_bilinear(vals[..., k], gx, gy, xs, ys))
        return out[0], out[1], out[2]

    def _grid(self, xs, ys) -> tuple[np.ndarray, np.ndarray]:
        cell = float(self.config.psfGridCell)

        def axis(v):
            lo, hi = float(np.min(v)), float(np.max(v))
            m = max(int(math.ceil((hi - lo) / cell)), 0) + 1
            return np.linspace(lo, hi, m) if m > 1 else np.array([lo])

        return axis(xs), axis(ys)

    def _psf_images(self, psf, xs, ys) -> np.ndarray:
        if self.config.psfImageMode == "exact":
            ims = [np.asarray(psf.compute_image(float(x), float(y)), np.float64) for x, y in zip(xs, ys)]
            return np.ascontiguousarray(np.stack(ims))
        gx, gy, kernels = self._kernel_grid(psf, xs, ys)
        return mp.psf_images_from_grid(kernels, gx, gy, xs, ys, 5)

    # ------------------------------------------------------------------------------------------
    def _measure(
        self,
        plugins,
        exposure,
        img,
        nr,
        labels,
        var,
        mask,
        x0,
        y0,
        own,
        px,
        py,
        sigmas,
        child_npix=None,
        child_maskor=None,
        own_bbox=None,
    ) -> dict[str, tuple[np.ndarray, Any, str]]:
        """Run the plugins on one image (full frame, or a child's stamp at offset x0, y0)."""
        cfg = self.config
        psf = exposure.psf
        out: dict[str, tuple[np.ndarray, Any, str]] = {}
        pxl, pyl = px - x0, py - y0
        n = px.size

        def put(name, vals, unit=None, doc=""):
            out[name] = (np.asarray(vals), unit, doc)

        # --- centroids
        cx, cy = pxl.copy(), pyl.copy()
        cflag = np.zeros(n, bool)
        if "base_SdssCentroid" in plugins:
            x, y, ex, ey, fe, fns, fnm, frs = mp.gaussian_centroids(
                img, nr, labels, own, var, pxl, pyl, sigmas, cfg.centroidMaxIter
            )
            bad_err = ~(np.isfinite(ex) & np.isfinite(ey))
            cflag = fe | fnm | frs | bad_err
            cx, cy = x, y
            base = "base_SdssCentroid"
            put(f"{base}_x", x + x0, u.pix, "centroid from the PSF-matched first moment")
            put(f"{base}_y", y + y0, u.pix, "centroid from the PSF-matched first moment")
            put(f"{base}_xErr", ex.astype(np.float32), u.pix, "1-sigma uncertainty on x position")
            put(f"{base}_yErr", ey.astype(np.float32), u.pix, "1-sigma uncertainty on y position")
            put(f"{base}_flag", cflag, None, "general failure flag")
            put(f"{base}_flag_edge", fe, None, "object too close to the edge")
            put(f"{base}_flag_noSecondDerivative", fns, None, "vanishing second derivative")
            put(
                f"{base}_flag_almostNoSecondDerivative",
                np.zeros(n, bool),
                None,
                "almost vanishing second derivative",
            )
            put(f"{base}_flag_notAtMaximum", fnm, None, "object is not at a maximum")
            put(f"{base}_flag_resetToPeak", frs, None, "centroid moved too far and was reset to the peak")
            put(f"{base}_flag_badError", bad_err, None, "error on x and/or y position is NaN")
        if "base_NaiveCentroid" in plugins:
            x, y, noc, fe = mp.naive_centroids(img, nr, labels, own, pxl, pyl)
            base = "base_NaiveCentroid"
            put(f"{base}_x", x + x0, u.pix, "unweighted 3x3 centroid")
            put(f"{base}_y", y + y0, u.pix, "unweighted 3x3 centroid")
            put(f"{base}_flag", noc | fe, None, "general failure flag")
            put(f"{base}_flag_noCounts", noc, None, "object has no counts")
            put(f"{base}_flag_edge", fe, None, "object too close to the edge")
            put(f"{base}_flag_resetToPeak", np.zeros(n, bool), None, "centroid reset to the peak")
            if "base_SdssCentroid" not in plugins:
                cx, cy = x, y
        fx, fy = cx + x0, cy + y0  # frame coordinates

        # --- pixel flags
        if "base_PixelFlags" in plugins:
            planes = exposure.mask_planes

            def bits(*names):  # noqa: E306
                return sum(1 << planes[nm] for nm in names if nm in planes)

            if child_maskor is not None:
                fp_or = np.array([child_maskor], np.int64)
            else:
                n_fp = int(labels.max())
                all_or = mp.footprint_mask_or(labels, mask, n_fp)
                fp_or = np.where(own > 0, all_or[np.maximum(own - 1, 0)], 0)
            ctr = mp.center_mask_or(mask, cx, cy)
            off = ctr < 0
            ctr = np.where(off, 0, ctr)
            base = "base_PixelFlags"
            edge_bits = bits("EDGE", "NO_DATA")
            put(f"{base}_flag", off, None, "general failure flag")
            put(f"{base}_flag_offimage", off, None, "source center is off image")
            put(
                f"{base}_flag_edge",
                ((fp_or & edge_bits) != 0) | off,
                None,
                "source is outside usable exposure region (masked EDGE or NO_DATA)",
            )
            for key, names in _PIXEL_FLAG_PLANES.items():
                b = bits(*names)
                put(
                    f"{base}_flag_{key}", (fp_or & b) != 0, None, f"{'/'.join(names)} pixels in the footprint"
                )
            for key in ("interpolated", "saturated", "cr", "suspect"):
                b = bits(*_PIXEL_FLAG_PLANES[key])
                put(
                    f"{base}_flag_{key}Center",
                    (ctr & b) != 0,
                    None,
                    f"{'/'.join(_PIXEL_FLAG_PLANES[key])} pixels in the source center (3x3)",
                )

        # --- saturated stars: centroid from the unsaturated wings (PSF fit with the core masked)
        if "base_SdssCentroid" in plugins and cfg.doSaturatedWingCentroid and psf is not None:
            sat_bit = exposure.mask_planes.get("SAT")
            if sat_bit is not None:
                ctr_sat = (mp.center_mask_or(mask, cx, cy) & (1 << sat_bit)) > 0
                wing = np.zeros(n, bool)
                if ctr_sat.any():
                    planes = exposure.mask_planes
                    unusable = sum(1 << planes[nm] for nm in cfg.saturatedWingBadMaskPlanes if nm in planes)
                    from scipy import ndimage as _ndi

                    fny, fnx = mask.shape

                    def usable_in(ys: slice, xs: slice) -> np.ndarray:
                        # ~binary_dilation((mask & unusable) != 0) on the stamp only: dilate a stamp one
                        # pixel larger (clipped to the frame, whose outside counts as usable) and crop
                        ya, yb = max(ys.start - 1, 0), min(ys.stop + 1, fny)
                        xa, xb = max(xs.start - 1, 0), min(xs.stop + 1, fnx)
                        big = _ndi.binary_dilation((mask[ya:yb, xa:xb] & unusable) != 0, iterations=1)
                        return ~big[
                            ys.start - ya : ys.start - ya + (min(ys.stop, fny) - ys.start),
                            xs.start - xa : xs.start - xa + (min(xs.stop, fnx) - xs.start),
                        ]

                    psf_half = psf.compute_kernel_image(*psf.average_position()).shape[0] // 2
                    cx, cy = cx.copy(), cy.copy()
                    xs = np.asarray(out["base_SdssCentroid_x"][0], np.float64).copy()
                    ys = np.asarray(out["base_SdssCentroid_y"][0], np.float64).copy()
                    exs = np.asarray(out["base_SdssCentroid_xErr"][0]).copy()
                    eys = np.asarray(out["base_SdssCentroid_yErr"][0]).copy()
                    for k in np.flatnonzero(ctr_sat):
                        h = psf_half + 22  # fit radius + the 10-px search + margin
                        jx, jy = int(round(pxl[k])), int(round(pyl[k]))
                        sl = np.s_[max(jy - h, 0) : jy + h + 1, max(jx - h, 0) : jx + h + 1]
                        lab = labels[sl]
                        data = np.where((lab == own[k]) | (lab == 0), img[sl], nr[sl])
                        usable = usable_in(*sl)
                        use = usable & (lab == own[k]) if child_npix is not None else usable
                        xw, yw, exw, eyw, fail = mp.saturated_wing_centroid(
                            data,
                            var[sl],
                            use,
                            psf,
                            pxl[k] + x0,
                            pyl[k] + y0,
                            x0 + max(jx - h, 0),
                            y0 + max(jy - h, 0),
                        )
                        if fail:
                            continue
                        wing[k] = True
                        xs[k], ys[k], exs[k], eys[k] = xw, yw, exw, eyw
                        cx[k], cy[k] = xw - x0, yw - y0
                    base = "base_SdssCentroid"
                    put(f"{base}_x", xs, u.pix, "centroid from the PSF-matched first moment")
                    put(f"{base}_y", ys, u.pix, "centroid from the PSF-matched first moment")
                    put(f"{base}_xErr", exs.astype(np.float32), u.pix, "1-sigma uncertainty on x position")
                    put(f"{base}_yErr", eys.astype(np.float32), u.pix, "1-sigma uncertainty on y position")
                    fx, fy = cx + x0, cy + y0
                put(
                    "base_SdssCentroid_flag_saturatedWings",
                    wing,
                    None,
                    "saturated centre: centroid from a PSF fit to the unsaturated wings (calexpress)",
                )

        # --- shape
        shp = None
        if "base_SdssShape" in plugins:
            s2 = sigmas * sigmas
            res, funw, fshift, fiter, ffail = mp.adaptive_moments(
                img,
                nr,
                labels,
                own,
                var,
                cx,
                cy,
                s2,
                s2,
                cfg.shapeMaxIter,
                cfg.shapeTol1,
                cfg.shapeTol2,
                min(max(cfg.shapeMaxShift, 2.0), 10.0),
                cfg.shapeMaxRadius,
            )
            base = "base_SdssShape"
            put(f"{base}_xx", res[:, 0], u.pix**2, "elliptical Gaussian adaptive moments")
            put(f"{base}_yy", res[:, 1], u.pix**2, "elliptical Gaussian adaptive moments")
            put(f"{base}_xy", res[:, 2], u.pix**2, "elliptical Gaussian adaptive moments")
            put(f"{base}_xxErr", res[:, 6].astype(np.float32), u.pix**2, "standard deviation of xx")
            put(f"{base}_yyErr", res[:, 7].astype(np.float32), u.pix**2, "standard deviation of yy")
            put(f"{base}_xyErr", res[:, 8].astype(np.float32), u.pix**2, "standard deviation of xy")
            put(f"{base}_x", res[:, 3] + x0, u.pix, "elliptical Gaussian adaptive moments centroid")
            put(f"{base}_y", res[:, 4] + y0, u.pix, "elliptical Gaussian adaptive moments centroid")
            put(f"{base}_instFlux", res[:, 5], u.ct, "elliptical Gaussian adaptive moments flux")
            put(f"{base}_instFluxErr", res[:, 9], u.ct, "1-sigma instFlux uncertainty")
            for k, c in enumerate(("xx", "yy", "xy")):
                put(
                    f"{base}_instFlux_{c}_Cov",
                    res[:, 10 + k].astype(np.float32),
                    u.ct * u.pix**2,
                    f"uncertainty covariance between instFlux and {c}",
                )
            if psf is not None:
                pxx, pyy, pxy = self._psf_shapes(psf, fx, fy)
                fpsf = ~np.isfinite(pxx)
            else:
                pxx = pyy = pxy = np.full(n, np.nan)
                fpsf = np.ones(n, bool)
            put(f"{base}_psf_xx", pxx, u.pix**2, "adaptive moments of the PSF model at the object position")
            put(f"{base}_psf_yy", pyy, u.pix**2, "adaptive moments of the PSF model at the object position")
            put(f"{base}_psf_xy", pxy, u.pix**2, "adaptive moments of the PSF model at the object position")
            put(f"{base}_flag", ffail | fpsf, None, "general failure flag, set if anything went wrong")
            put(
                f"{base}_flag_unweightedBad",
                ffail & ~funw,
                None,
                "both weighted and unweighted moments invalid",
            )
            put(f"{base}_flag_unweighted", funw, None, "weighted moments failed; unweighted moments used")
            put(
                f"{base}_flag_shift", fshift, None, "centroid shifted by more than the maximum allowed amount"
            )
            put(f"{base}_flag_maxIter", fiter, None, "too many iterations in adaptive moments")
            put(f"{base}_flag_psf", fpsf, None, "failure in measuring PSF model shape")
            shp = (res[:, 0], res[:, 1], res[:, 2], ffail)

        # --- fluxes
        if "base_GaussianFlux" in plugins:
            if shp is not None:
                wxx, wyy, wxy, sflag = shp
                use_psf = ~np.isfinite(wxx) | sflag
            else:
                wxx = wyy = wxy = np.full(n, np.nan)
                use_psf = np.ones(n, bool)
            s2 = sigmas * sigmas
            wxx = np.where(use_psf, s2, wxx)
            wyy = np.where(use_psf, s2, wyy)
            wxy = np.where(use_psf, 0.0, wxy)
            fl, fe, bad = mp.fixed_gaussian_fluxes(
                img, nr, labels, own, var, cx, cy, wxx, wyy, wxy, cfg.shapeMaxRadius
            )
            base = "base_GaussianFlux"
            put(f"{base}_instFlux", fl, u.ct, "instFlux from Gaussian Flux algorithm")
            put(f"{base}_instFluxErr", fe, u.ct, "1-sigma instFlux uncertainty")
            put(f"{base}_flag", bad | use_psf | cflag, None, "general failure flag")
        if "base_PsfFlux" in plugins:
            ims = self._psf_images(psf, fx, fy)
            fl, fe, ar, fedge, fnone = mp.psf_fluxes(img, nr, labels, own, var, cx, cy, ims)
            base = "base_PsfFlux"
            put(f"{base}_instFlux", fl, u.ct, "instFlux derived from linear least-squares fit of PSF model")
            put(f"{base}_instFluxErr", fe, u.ct, "1-sigma instFlux uncertainty")
            put(f"{base}_area", ar.astype(np.float32), u.pix, "effective area of PSF")
            put(f"{base}_flag", fedge | fnone | cflag, None, "general failure flag")
            put(
                f"{base}_flag_noGoodPixels",
                fnone,
                None,
                "not enough non-rejected pixels in data to attempt the fit",
            )
            put(
                f"{base}_flag_edge",
                fedge,
                None,
                "object was too close to the edge of the image to use the full PSF model",
            )
        if "base_CircularApertureFlux" in plugins:
            radii = np.sort(np.asarray(cfg.apertureRadii, np.float64))
            if own_bbox is None:
                own_bbox = np.zeros((n, 4), np.int64)
            fl, fe, tr = mp.aperture_fluxes(
                img,
                nr,
                labels,
                own,
                var,
                cx,
                cy,
                radii,
                own_bbox,
                float(cfg.maxSincRadius),
                bool(cfg.apertureSlopeCorrection),
            )
            for k, r in enumerate(radii):
                base = _radius_name(r)
                put(f"{base}_instFlux", fl[:, k], u.ct, f"instFlux within {r:g}-pixel aperture")
                put(f"{base}_instFluxErr", fe[:, k], u.ct, "1-sigma instFlux uncertainty")
                put(f"{base}_flag", tr[:, k] | ~np.isfinite(fl[:, k]), None, "general failure flag")
                put(
                    f"{base}_flag_apertureTruncated",
                    tr[:, k],
                    None,
                    "aperture did not fit within measurement image",
                )
                if r <= 10:
                    put(
                        f"{base}_flag_sincCoeffsTruncated",
                        np.zeros(n, bool),
                        None,
                        "full sinc coefficient image did not fit within measurement image",
                    )
        if "base_SkyCoord" in plugins:
            wcs = getattr(exposure, "wcs", None)
            if wcs is not None:
                ra, dec = wcs.all_pix2world(fx, fy, 0)
                put("coord_ra", np.deg2rad(ra), u.rad, "position in ra/dec")
                put("coord_dec", np.deg2rad(dec), u.rad, "position in ra/dec")
        if "base_LocalPhotoCalib" in plugins:
            pc = getattr(exposure, "photo_calib", None)
            cal = np.asarray(getattr(pc, "calibration", np.nan), np.float64) if pc is not None else np.nan
            cal = np.broadcast_to(cal, (n,)).astype(np.float64) if np.ndim(cal) == 0 else np.asarray(cal)
            err = float(getattr(pc, "calibration_err", np.nan)) if pc is not None else np.nan
            put(
                "base_LocalPhotoCalib",
                cal.copy(),
                u.nJy / u.ct,
                "local approximation of the PhotoCalib calibration",
            )
            put("base_LocalPhotoCalibErr", np.full(n, err), u.nJy / u.ct, "error on the local calibration")
            put("base_LocalPhotoCalib_flag", np.full(n, pc is None), None, "set if no PhotoCalib")
        if "base_LocalWcs" in plugins:
            wcs = getattr(exposure, "wcs", None)
            cd = np.full((n, 4), np.nan)
            if wcs is not None and n:
                cd = _local_cd_matrix(wcs, fx, fy)
            for k, nm in enumerate(("1_1", "1_2", "2_1", "2_2")):
                put(
                    f"base_LocalWcs_CDMatrix_{nm}",
                    cd[:, k],
                    u.rad,
                    f"({nm[0]}, {nm[2]}) element of the CDMatrix",
                )
            put("base_LocalWcs_flag", np.full(n, wcs is None), None, "set if no WCS")
        if "base_Variance" in plugins:
            if shp is not None:
                wxx, wyy, wxy = (
                    np.where(np.isfinite(a), a, d)
                    for a, d in ((shp[0], sigmas**2), (shp[1], sigmas**2), (shp[2], 0.0 * sigmas))
                )
            else:
                wxx = wyy = sigmas**2
                wxy = np.zeros(n)
            b = exposure.get_plane_bitmask(*cfg.varianceMaskPlanes)
            med, empty = mp.median_variances(var, mask, b, cx, cy, wxx, wyy, wxy, cfg.varianceScale, 100.0)
            put("base_Variance_value", med, u.ct**2, "variance at object position")
            put("base_Variance_flag", empty, None, "general failure flag")
            put(
                "base_Variance_flag_emptyFootprint",
                empty,
                None,
                "set to True when the footprint has no usable pixels",
            )
        if "base_LocalBackground" in plugins:
            b = exposure.get_plane_bitmask(*cfg.localBackgroundBadMaskPlanes)
            s = float(np.median(sigmas))
            mu, sd, nogood = mp.local_backgrounds(
                img,
                nr,
                labels,
                own,
                mask,
                b,
                cx,
                cy,
                cfg.localBackgroundInner * s,
                cfg.localBackgroundOuter * s,
                3.0,
                3,
            )
            put("base_LocalBackground_instFlux", mu, u.ct, "background in annulus around source")
            put("base_LocalBackground_instFluxErr", sd, u.ct, "1-sigma instFlux uncertainty")
            put("base_LocalBackground_flag", nogood, None, "general failure flag")
            put("base_LocalBackground_flag_noGoodPixels", nogood, None, "no good pixels in the annulus")
            put("base_LocalBackground_flag_noPsf", np.zeros(n, bool), None, "no PSF provided")
        if "base_FootprintArea" in plugins:
            if child_npix is not None:
                area = np.array([child_npix], np.int32)
            else:
                npix = np.bincount(labels.ravel(), minlength=int(own.max()) + 1)
                area = np.where(own > 0, npix[np.maximum(own, 0)], 0).astype(np.int32)
            put(
                "base_FootprintArea_value",
                area,
                u.pix,
                "number of pixels in the source's detection footprint",
            )
        return out

    def _add_empty_columns(self, catalog: Table, plugins: list[str], exposure: Any) -> None:
        """Zero-length columns with the right names and types for an empty catalog."""
        yy, xx = np.mgrid[0:41, 0:41]
        img = (100.0 * np.exp(-0.5 * ((xx - 20) ** 2 + (yy - 20) ** 2) / 4.0)).astype(np.float32)
        lab = np.ones(img.shape, np.int32)
        if exposure.psf is None and {"base_SdssCentroid", "base_SdssShape", "base_PsfFlux"} & set(plugins):
            return
        res = self._measure(
            plugins,
            exposure,
            img,
            img,
            lab,
            np.ones_like(img),
            np.zeros_like(lab),
            0,
            0,
            np.ones(1, np.int32),
            np.array([20.0]),
            np.array([20.0]),
            np.array([2.0]),
            own_bbox=np.array([[0, 0, 41, 41]], np.int64),
        )
        for name, (vals, unit, doc) in res.items():
            catalog[name] = Column(vals[:0], unit=unit, description=doc)


def _local_cd_matrix(wcs: Any, xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
    """Local CD matrix (radians per pixel, tangent plane at each source) by central differences: (n, 4)."""
    h = 0.5
    ra0, dec0 = (np.deg2rad(v) for v in wcs.all_pix2world(xs, ys, 0))
    cols = []
    for dx, dy in ((h, 0.0), (0.0, h)):
        ra_p, dec_p = (np.deg2rad(v) for v in wcs.all_pix2world(xs + dx, ys + dy, 0))
        ra_m, dec_m = (np.deg2rad(v) for v in wcs.all_pix2world(xs - dx, ys - dy, 0))
        dra = (ra_p - ra_m + np.pi) % (2 * np.pi) - np.pi
        cols.append((dra * np.cos(dec0) / (2 * h), (dec_p - dec_m) / (2 * h)))
    # CD_1_1 = dxi/dx, CD_1_2 = dxi/dy, CD_2_1 = deta/dx, CD_2_2 = deta/dy
    return np.stack([cols[0][0], cols[1][0], cols[0][1], cols[1][1]], axis=1)


def _bilinear(grid: np.ndarray, gx: np.ndarray, gy: np.ndarray, xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
    """Bilinear interpolation of ``grid[iy, ix]`` given at ``(gx, gy)``, clamped at the edges."""

    def w(g, v):
        if g.size == 1:
            return np.zeros(v.size, np.int64), np.zeros(v.size)
        f = (v - g[0]) / (g[1] - g[0])
        i = np.clip(np.floor(f).astype(np.int64), 0, g.size - 2)
        return i, np.clip(f - i, 0.0, 1.0)

    ix, tx = w(gx, xs)
    iy, ty = w(gy, ys)
    ix1 = np.minimum(ix + 1, gx.size - 1)
    iy1 = np.minimum(iy + 1, gy.size - 1)
    return (
        (1 - tx) * (1 - ty) * grid[iy, ix]
        + tx * (1 - ty) * grid[iy, ix1]
        + (1 - tx) * ty * grid[iy1, ix]
        + tx * ty * grid[iy1, ix1]
    )
