"""Astrometric matcher robust to a poor prior WCS.

The reference stars are projected into pixels with the prior WCS.  A grid search over rotation
and scale (bounded by ``maxRotationDeg`` and ``maxScaleError``) transforms the brightest sources;
for each trial every (reference − source) offset is binned and the densest bin (within
``maxOffsetPix``) votes for an offset.  The best trial is kept only if its vote is far above the
chance level expected for unrelated catalogs; it is then refined by nearest-neighbour matching
and an affine least-squares fit, and accepted only if enough pairs agree
(``minMatchedPairs``, ``minFracMatchedPairs``).  Otherwise `MatcherFailure` is raised: the
matcher never returns a solution it cannot support.
"""

from __future__ import annotations

import numpy as np
from calexpress.config import Config, Field, RangeField
from calexpress.task import Struct, Task, TaskError
from scipy.spatial import cKDTree

__all__ = ["MatchPatternConfig", "MatchPatternTask", "MatcherFailure", "fit_affine", "match_xy"]


class MatcherFailure(TaskError):
    """The matcher found no acceptable solution."""


def fit_affine(src: np.ndarray, ref: np.ndarray, weights: np.ndarray | None = None) -> np.ndarray:
    """Least-squares affine transform ``ref ≈ M @ [x, y, 1]``; returns the 2x3 matrix ``M``."""
    design = np.column_stack([src[:, 0], src[:, 1], np.ones(len(src))])
    if weights is not None:
        design = design * weights[:, None]
        ref = ref * weights[:, None]
    coef, *_ = np.linalg.lstsq(design, ref, rcond=None)
    return coef.T


def apply_affine(m: np.ndarray, xy: np.ndarray) -> np.ndarray:
    """Apply a 2x3 affine matrix to (N, 2) points."""
    return xy @ m[:, :2].T + m[:, 2]


def match_xy(
    src_xy: np.ndarray, ref_xy: np.ndarray, radius: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Match each source to its nearest reference within ``radius``, one-to-one (closest wins).

    Returns
    -------
    i_src, i_ref, dist : `numpy.ndarray`
    """
    if len(src_xy) == 0 or len(ref_xy) == 0:
        e = np.zeros(0, dtype=int)
        return e, e, np.zeros(0)
    tree = cKDTree(ref_xy)
    dist, idx = tree.query(src_xy, distance_upper_bound=radius)
    ok = np.isfinite(dist)
    i_src = np.nonzero(ok)[0]
    i_ref = idx[ok]
    d = dist[ok]
    order = np.argsort(d)
    i_src, i_ref, d = i_src[order], i_ref[order], d[order]
    _, first = np.unique(i_ref, return_index=True)
    first = np.sort(first)
    return i_src[first], i_ref[first], d[first]


class MatchPatternConfig(Config):
    """Configuration of `MatchPatternTask` (names after LSST's MatchPessimisticBTask)."""

    numBrightStars = RangeField(
        dtype=int, default=150, min=10, doc="Brightest sources/refs used for the search"
    )
    minMatchedPairs = RangeField(dtype=int, default=15, min=3, doc="Minimum matched pairs for a solution")
    minFracMatchedPairs = RangeField(
        dtype=float,
        default=0.3,
        min=0,
        max=1,
        doc="Minimum fraction of the usable sources (or refs, whichever is fewer) that must match",
    )
    maxOffsetPix = RangeField(dtype=float, default=700.0, min=0, doc="Largest offset searched (pixels)")
    maxRotationDeg = RangeField(dtype=float, default=2.5, min=0, doc="Largest rotation searched (degrees)")
    maxScaleError = RangeField(
        dtype=float, default=0.025, min=0, doc="Largest fractional scale error searched"
    )
    binSizePix = RangeField(dtype=float, default=8.0, min=0.5, doc="Offset histogram bin size (pixels)")
    minVoteSignificance = RangeField(
        dtype=float, default=8.0, min=0, doc="Vote peak must exceed chance by this many Poisson sigma"
    )
    numPairStars = RangeField(dtype=int, default=60, min=5, doc="Brightest sources used for rotation/scale")
    minPairLengthPix = RangeField(dtype=float, default=100.0, min=0, doc="Shortest pair used (pixels)")
    matchRadiusPix = RangeField(dtype=float, default=3.0, min=0.1, doc="Final matching radius (pixels)")
    minMatchDistPixels = Field(dtype=float, default=1.0, doc="Floor of the refinement radius (pixels)")


class MatchPatternTask(Task):
    """Find the source–reference correspondence in pixel space from a rough prior."""

    ConfigClass = MatchPatternConfig
    _DefaultName = "matcher"

    def _rotation_scale(self, s0: np.ndarray, r0: np.ndarray) -> tuple[float, float]:
        """Vote for rotation (deg) and scale with translation-invariant pair vectors."""
        cfg = self.config

        def pairs(p: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            i, j = np.triu_indices(len(p), 1)
            v = p[j] - p[i]
            length = np.hypot(v[:, 0], v[:, 1])
            ok = length > cfg.minPairLengthPix
            return np.log(length[ok]), np.degrees(np.arctan2(v[ok, 1], v[ok, 0]))

        ls, angs = pairs(s0)
        lr, angr = pairs(r0)
        if len(ls) == 0 or len(lr) == 0:
            raise MatcherFailure("too few separated objects for pattern matching")
        order = np.argsort(lr)
        lr, angr = lr[order], angr[order]
        dls = np.log1p(cfg.maxScaleError)
        lo = np.searchsorted(lr, ls - dls)
        hi = np.searchsorted(lr, ls + dls)
        counts = hi - lo
        si = np.repeat(np.arange(len(ls)), counts)
        ri = np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts) + np.repeat(lo, counts)
        dlog = lr[ri] - ls[si]
        dang = np.mod(angr[ri] - angs[si] + 90.0, 180.0) - 90.0  # pair orientation is ambiguous
        ok = np.abs(dang) <= cfg.maxRotationDeg
        dlog, dang = dlog[ok], dang[ok]
        if len(dlog) == 0:
            raise MatcherFailure("no similar pairs between sources and reference stars")
        nrb = max(int(np.ceil(2 * cfg.maxRotationDeg / 0.05)), 1)
        nsb = max(int(np.ceil(2 * dls / 0.0005)), 1)
        h, xe, ye = np.histogram2d(
            dang, dlog, bins=[nrb, nsb], range=[[-cfg.maxRotationDeg, cfg.maxRotationDeg], [-dls, dls]]
        )
        if nrb > 1 and nsb > 1:
            h = h[:-1, :-1] + h[1:, :-1] + h[:-1, 1:] + h[1:, 1:]
            k = np.unravel_index(int(np.argmax(h)), h.shape)
            sel = (dang >= xe[k[0]]) & (dang < xe[k[0] + 2]) & (dlog >= ye[k[1]]) & (dlog < ye[k[1] + 2])
        else:
            sel = np.ones(len(dang), bool)
        return float(np.median(dang[sel])), float(np.exp(np.median(dlog[sel])))

    def matchPixels(
        self,
        src_xy: np.ndarray,
        src_flux: np.ndarray,
        ref_xy: np.ndarray,
        ref_flux: np.ndarray,
        center: tuple[float, float],
    ) -> Struct:
        """Match sources to references given in the (prior) pixel frame.

        Parameters
        ----------
        src_xy : (N, 2) array
            Source centroids (pixels).
        src_flux : (N,) array
            Source brightness (for choosing the brightest).
        ref_xy : (M, 2) array
            Reference positions projected with the prior WCS (pixels).
        ref_flux : (M,) array
            Reference brightness (NaN allowed: treated as faint).
        center : (x, y)
            Rotation centre (the detector centre).

        Returns
        -------
        result : `Struct`
            ``i_src``, ``i_ref`` (matched indices into the inputs), ``dist`` (pixels after the affine
            correction), ``affine`` (2x3: source pixels -> prior reference pixels), ``vote``,
            ``chance`` (expected chance vote), ``rotationDeg``, ``scale``, ``offset``.

        Raises
        ------
        MatcherFailure
            When no solution is supported by the data.
        """
        cfg = self.config
        src_xy = np.asarray(src_xy, float)
        ref_xy = np.asarray(ref_xy, float)
        good_s = np.all(np.isfinite(src_xy), axis=1)
        good_r = np.all(np.isfinite(ref_xy), axis=1)
        s_idx = np.nonzero(good_s)[0]
        r_idx = np.nonzero(good_r)[0]
        if len(s_idx) < cfg.minMatchedPairs or len(r_idx) < cfg.minMatchedPairs:
            raise MatcherFailure(
                f"too few objects to match: {len(s_idx)} sources, {len(r_idx)} reference stars "
                f"(need {cfg.minMatchedPairs})"
            )
        sf = np.nan_to_num(np.asarray(src_flux, float)[s_idx], nan=-np.inf)
        rf = np.nan_to_num(np.asarray(ref_flux, float)[r_idx], nan=-np.inf)
        nb = cfg.numBrightStars
        s_b = s_idx[np.argsort(-sf, kind="stable")[:nb]]
        r_b = r_idx[np.argsort(-rf, kind="stable")[: int(nb * 1.5)]]
        cx, cy = center
        s0 = src_xy[s_b] - [cx, cy]
        r0 = ref_xy[r_b] - [cx, cy]
        th, sc = self._rotation_scale(s0[: cfg.numPairStars], r0[: int(cfg.numPairStars * 1.5)])
        bin_ = cfg.binSizePix
        lim = cfg.maxOffsetPix + bin_
        nbins = int(np.ceil(2 * lim / bin_))
        edges = np.linspace(-lim, lim, nbins + 1)
        area_frac = (2 * bin_) ** 2 / (2 * lim) ** 2
        c, s = np.cos(np.radians(th)), np.sin(np.radians(th))
        rot = np.array([[c, -s], [s, c]])
        t = (s0 @ rot.T) * sc
        d = (r0[:, None, :] - t[None, :, :]).reshape(-1, 2)
        d = d[(np.abs(d[:, 0]) < lim) & (np.abs(d[:, 1]) < lim)]
        h, _, _ = np.histogram2d(d[:, 0], d[:, 1], bins=[edges, edges])
        # 2x2 block sums so that a peak on a bin corner is not split.
        h2 = h[:-1, :-1] + h[1:, :-1] + h[:-1, 1:] + h[1:, 1:]
        k = int(np.argmax(h2))
        vote = float(h2.flat[k])
        ix, iy = np.unravel_index(k, h2.shape)
        sel = (
            (d[:, 0] >= edges[ix])
            & (d[:, 0] < edges[ix + 2])
            & (d[:, 1] >= edges[iy])
            & (d[:, 1] < edges[iy + 2])
        )
        off = tuple(np.median(d[sel], axis=0))
        chance = len(d) * area_frac
        signif = (vote - chance) / np.sqrt(max(chance, 1.0))
        self.log.debug(
            "matcher vote %d (chance %.2f, %.1f sigma) rot %.3f scale %.4f off %s",
            vote,
            chance,
            signif,
            th,
            sc,
            off,
        )
        if signif < cfg.minVoteSignificance or vote < min(cfg.minMatchedPairs, 0.5 * min(len(s_b), len(r_b))):
            raise MatcherFailure(
                f"no pattern match: best vote {int(vote)} pairs vs {chance:.1f} expected by chance "
                f"(searched offsets ≤{cfg.maxOffsetPix:.0f} px, rotation ≤{cfg.maxRotationDeg}°, "
                f"scale ±{100 * cfg.maxScaleError:.1f}%)"
            )
        # Initial affine: rotate/scale about the centre, then offset.
        c, s = np.cos(np.radians(th)), np.sin(np.radians(th))
        lin = sc * np.array([[c, -s], [s, c]])
        t0 = np.array([cx, cy]) + np.array(off) - lin @ np.array([cx, cy])
        affine = np.column_stack([lin, t0])
        # Refine with all usable objects, shrinking the radius.
        radius = 2.0 * bin_
        s_all = s_idx
        r_all = r_idx
        for _ in range(6):
            pred = apply_affine(affine, src_xy[s_all])
            i_s, i_r, dist = match_xy(pred, ref_xy[r_all], radius)
            if len(i_s) < 3:
                break
            affine = fit_affine(src_xy[s_all][i_s], ref_xy[r_all][i_r])
            resid = np.hypot(*(apply_affine(affine, src_xy[s_all][i_s]) - ref_xy[r_all][i_r]).T)
            radius = max(cfg.minMatchDistPixels, min(radius, 3.0 * np.sqrt(np.mean(resid**2)) + 0.5))
        radius = max(radius, cfg.matchRadiusPix)
        pred = apply_affine(affine, src_xy[s_all])
        i_s, i_r, dist = match_xy(pred, ref_xy[r_all], radius)
        i_src, i_ref = s_all[i_s], r_all[i_r]
        # Fraction test on the overlap region: refs that fall inside the source footprint.
        pred_b = apply_affine(affine, src_xy[s_b])
        lo, hi = pred_b.min(axis=0), pred_b.max(axis=0)
        r_in = np.all((ref_xy[r_b] >= lo) & (ref_xy[r_b] <= hi), axis=1).sum()
        n_b_matched = len(np.intersect1d(i_src, s_b))
        need_frac = cfg.minFracMatchedPairs * min(len(s_b), max(r_in, 1))
        if len(i_src) < cfg.minMatchedPairs or n_b_matched < need_frac:
            raise MatcherFailure(
                f"pattern match not confirmed: {len(i_src)} pairs within {radius:.1f} px "
                f"({n_b_matched} of the {len(s_b)} brightest sources; need {cfg.minMatchedPairs} "
                f"and {need_frac:.0f})"
            )
        lin = affine[:, :2]
        return Struct(
            i_src=i_src,
            i_ref=i_ref,
            dist=dist,
            affine=affine,
            vote=int(vote),
            chance=float(chance),
            rotationDeg=float(np.degrees(np.arctan2(lin[1, 0] - lin[0, 1], lin[0, 0] + lin[1, 1]))),
            scale=float(np.sqrt(abs(np.linalg.det(lin)))),
            offset=(float(off[0]), float(off[1])),
            radius=float(radius),
        )
