"""TAN-SIP WCS fitter with iterative outlier rejection.

The reference positions are projected gnomonically about CRVAL to intermediate world
coordinates (ξ, η); each is fitted as a full 2-D polynomial of the pixel offsets from CRPIX.  The
linear part gives the CD matrix, the higher orders (mapped through CD⁻¹) the SIP A/B
coefficients; the constant part moves CRVAL and the fit is repeated.  The inverse AP/BP
polynomials (one order higher) are fitted on a grid covering the detector.
"""

from __future__ import annotations

import numpy as np
from astropy.wcs import WCS, Sip
from calexpress.config import Config, Field, RangeField
from calexpress.task import Struct, Task, TaskError

__all__ = ["FitTanSipWcsConfig", "FitTanSipWcsTask", "fit_tan_sip", "gnomonic", "sip_order_of"]


def gnomonic(
    ra_deg: np.ndarray, dec_deg: np.ndarray, crval: tuple[float, float]
) -> tuple[np.ndarray, np.ndarray]:
    """Project to the tangent plane at ``crval`` (degrees in, degrees out; FITS TAN convention)."""
    ra, dec = np.radians(ra_deg), np.radians(dec_deg)
    a0, d0 = np.radians(crval[0]), np.radians(crval[1])
    cosc = np.sin(d0) * np.sin(dec) + np.cos(d0) * np.cos(dec) * np.cos(ra - a0)
    xi = np.cos(dec) * np.sin(ra - a0) / cosc
    eta = (np.cos(d0) * np.sin(dec) - np.sin(d0) * np.cos(dec) * np.cos(ra - a0)) / cosc
    return np.degrees(xi), np.degrees(eta)


def _deproject(xi_deg: float, eta_deg: float, crval: tuple[float, float]) -> tuple[float, float]:
    xi, eta = np.radians(xi_deg), np.radians(eta_deg)
    a0, d0 = np.radians(crval[0]), np.radians(crval[1])
    rho = np.hypot(xi, eta)
    c = np.arctan(rho)
    if rho == 0:
        return crval
    dec = np.arcsin(np.cos(c) * np.sin(d0) + eta * np.sin(c) * np.cos(d0) / rho)
    ra = a0 + np.arctan2(xi * np.sin(c), rho * np.cos(d0) * np.cos(c) - eta * np.sin(d0) * np.sin(c))
    return float(np.degrees(ra) % 360.0), float(np.degrees(dec))


def _terms(order: int, min_order: int = 0) -> list[tuple[int, int]]:
    return [(p, t - p) for t in range(min_order, order + 1) for p in range(t, -1, -1)]


def _design(u: np.ndarray, v: np.ndarray, terms: list[tuple[int, int]], norm: float) -> np.ndarray:
    un, vn = u / norm, v / norm
    return np.column_stack([un**p * vn**q for p, q in terms])


def sip_order_of(wcs: WCS | None) -> int:
    """Order of a WCS's SIP A polynomial (1 when it has none)."""
    if wcs is None or wcs.sip is None:
        return 1
    return int(wcs.sip.a_order)


def fit_tan_sip(
    x: np.ndarray,
    y: np.ndarray,
    ra_deg: np.ndarray,
    dec_deg: np.ndarray,
    order: int,
    crpix: tuple[float, float],
    crval: tuple[float, float],
    bbox: tuple[float, float, float, float],
    weights: np.ndarray | None = None,
    prior_wcs: WCS | None = None,
    prior_sigma_pix: float = 0.0,
) -> WCS:
    """Fit a TAN-SIP WCS (pixel origin 0) to matched pixel and sky positions.

    Parameters
    ----------
    x, y : arrays
        0-based pixel positions.
    ra_deg, dec_deg : arrays
        Reference positions (degrees).
    order : `int`
        SIP order (1 = pure TAN).
    crpix : (x, y)
        0-based reference pixel.
    crval : (ra, dec)
        Initial tangent point (degrees); refined by the fit.
    bbox : (x0, y0, width, height)
        Region used to fit the inverse (AP/BP) polynomials.
    weights : array, optional
        ``1/sigma`` per match, sigma in pixels.
    prior_wcs : `astropy.wcs.WCS`, optional
        A WCS whose SIP distortion (A/B) is a prior for the fitted one: every term of order >= 2 is
        pulled towards it with an uncertainty of ``prior_sigma_pix`` pixels at 1000 pixels from CRPIX
        (ridge regression).  Keeps poorly constrained high orders (corners, few stars) at the
        camera's nominal distortion.
    """
    norm = 1000.0
    u = np.asarray(x, float) - crpix[0]
    v = np.asarray(y, float) - crpix[1]
    terms = _terms(order)
    design = _design(u, v, terms, norm)
    w = np.ones(len(u)) if weights is None else np.asarray(weights, float)
    crval = (float(crval[0]), float(crval[1]))
    i10, i01 = terms.index((1, 0)), terms.index((0, 1))
    prior = None
    if prior_wcs is not None and prior_wcs.sip is not None and prior_sigma_pix > 0 and order >= 2:
        # The prior is on the pixel-space SIP coefficients A/B (stable camera optics); the fitted sky-space
        # coefficients are CD @ (A, B), with the CD of the current solution (the prior's CD may be off in
        # rotation and scale).
        pscale = float(np.sqrt(abs(np.linalg.det(prior_wcs.pixel_scale_matrix))))  # deg / pixel
        pa, pb = prior_wcs.sip.a, prior_wcs.sip.b
        idx, ab = [], []
        for k, (p, q) in enumerate(terms):
            if p + q < 2:
                continue
            a_pq = pa[p, q] if p < pa.shape[0] and q < pa.shape[1] else 0.0
            b_pq = pb[p, q] if p < pb.shape[0] and q < pb.shape[1] else 0.0
            idx.append(k)
            ab.append(np.array([a_pq, b_pq]) * norm ** (p + q))
        sig_deg = prior_sigma_pix * pscale
        w = w / pscale  # data rows in units of 1/deg: weights are 1/sigma_pix
        rows = np.zeros((len(idx), len(terms)))
        rows[np.arange(len(idx)), idx] = 1.0 / sig_deg
        prior = (rows, np.array(ab), sig_deg)
        cd_prior = np.asarray(prior_wcs.pixel_scale_matrix, float)
    n_iter = 4 if prior is not None else 3
    for it in range(n_iter):
        xi, eta = gnomonic(ra_deg, dec_deg, crval)
        dw = design * w[:, None]
        bx, by = xi * w, eta * w
        if prior is not None:
            targets = prior[1] @ cd_prior.T / prior[2]
            dw = np.vstack([dw, prior[0]])
            bx = np.concatenate([bx, targets[:, 0]])
            by = np.concatenate([by, targets[:, 1]])
        cx, *_ = np.linalg.lstsq(dw, bx, rcond=None)
        cy, *_ = np.linalg.lstsq(dw, by, rcond=None)
        if prior is not None:
            cd_prior = np.array([[cx[i10], cx[i01]], [cy[i10], cy[i01]]]) / norm
        elif abs(cx[0]) < 1e-12 and abs(cy[0]) < 1e-12:
            break
        if it < n_iter - 1:
            crval = _deproject(cx[0], cy[0], crval)
    cd = np.array([[cx[i10], cx[i01]], [cy[i10], cy[i01]]]) / norm
    cdinv = np.linalg.inv(cd)
    wcs = WCS(naxis=2)
    wcs.wcs.crpix = [crpix[0] + 1.0, crpix[1] + 1.0]
    wcs.wcs.crval = list(crval)
    wcs.wcs.cd = cd
    wcs.wcs.cunit = ["deg", "deg"]
    if order < 2:
        wcs.wcs.ctype = ["RA---TAN", "DEC--TAN"]
        wcs.wcs.set()
        return wcs
    wcs.wcs.ctype = ["RA---TAN-SIP", "DEC--TAN-SIP"]
    a = np.zeros((order + 1, order + 1))
    b = np.zeros((order + 1, order + 1))
    for k, (p, q) in enumerate(terms):
        if p + q < 2:
            continue
        scale = norm ** (p + q)
        da, db = cdinv @ np.array([cx[k], cy[k]])
        a[p, q] = da / scale
        b[p, q] = db / scale
    # Inverse polynomials on a grid.
    x0, y0, wd, ht = bbox
    gx, gy = np.meshgrid(np.linspace(x0 - 20, x0 + wd + 20, 25), np.linspace(y0 - 20, y0 + ht + 20, 25))
    gu, gv = gx.ravel() - crpix[0], gy.ravel() - crpix[1]
    fu = gu + sum(a[p, q] * gu**p * gv**q for p, q in _terms(order, 2))
    fv = gv + sum(b[p, q] * gu**p * gv**q for p, q in _terms(order, 2))
    inv_order = min(order + 1, 9)
    iterms = _terms(inv_order, 1)
    idesign = _design(fu, fv, iterms, norm)
    cap, *_ = np.linalg.lstsq(idesign, gu - fu, rcond=None)
    cbp, *_ = np.linalg.lstsq(idesign, gv - fv, rcond=None)
    ap = np.zeros((inv_order + 1, inv_order + 1))
    bp = np.zeros((inv_order + 1, inv_order + 1))
    for k, (p, q) in enumerate(iterms):
        ap[p, q] = cap[k] / norm ** (p + q)
        bp[p, q] = cbp[k] / norm ** (p + q)
    wcs.sip = Sip(a, b, ap, bp, wcs.wcs.crpix)
    wcs.wcs.set()
    return wcs


def _residuals_arcsec(wcs: WCS, x: np.ndarray, y: np.ndarray, ra: np.ndarray, dec: np.ndarray) -> np.ndarray:
    r2, d2 = wcs.all_pix2world(x, y, 0)
    dra = (r2 - ra + 180.0) % 360.0 - 180.0
    return np.column_stack([dra * np.cos(np.radians(dec)), d2 - dec]) * 3600.0


class FitTanSipWcsConfig(Config):
    """Configuration of `FitTanSipWcsTask` (LSST names and defaults)."""

    order = RangeField(dtype=int, default=2, min=1, max=5, doc="SIP polynomial order (1 = TAN only)")
    orderAtLeastPrior = Field(
        dtype=bool,
        default=True,
        doc="Use at least the SIP order of the prior WCS (calexpress; keeps a known cubic distortion)",
    )
    distortionPriorSigma = RangeField(
        dtype=float,
        default=0.01,
        min=0,
        doc="calexpress: when the initial WCS has SIP terms, pull each fitted term of order >= 2 towards "
        "them with this uncertainty (pixels, at 1000 px from CRPIX); 0 = free fit",
    )
    numIter = RangeField(dtype=int, default=3, min=1, doc="Number of fit iterations (per rejection pass)")
    numRejIter = RangeField(dtype=int, default=1, min=0, doc="Number of outlier-rejection passes")
    rejSigma = RangeField(dtype=float, default=3.0, min=0, doc="Rejection threshold (sigma)")
    maxScatterArcsec = RangeField(dtype=float, default=10.0, min=0, doc="Fail if the scatter exceeds this")


class FitTanSipWcsTask(Task):
    """Fit a TAN-SIP WCS to source–reference matches."""

    ConfigClass = FitTanSipWcsConfig
    _DefaultName = "wcsFitter"

    def fitWcs(
        self,
        x: np.ndarray,
        y: np.ndarray,
        ra_deg: np.ndarray,
        dec_deg: np.ndarray,
        initWcs: WCS,
        bbox: tuple[float, float, float, float],
        sigma: np.ndarray | None = None,
        priorWcs: WCS | None = None,
    ) -> Struct:
        """Fit and return ``Struct(wcs, scatterOnSky (arcsec), used (bool mask), order)``.

        ``sigma`` (pixels, per match) weights the fit by ``1/sigma`` and scales the rejection.
        ``priorWcs`` (default ``initWcs``) holds the camera's nominal distortion used as a prior
        (``distortionPriorSigma``); ``initWcs`` only gives the starting tangent point.

        Raises
        ------
        calexpress.task.TaskError
            Too few matches for the order, a degenerate fit or scatter above ``maxScatterArcsec``.
        """
        cfg = self.config
        prior = initWcs if priorWcs is None else priorWcs
        order = cfg.order
        if cfg.orderAtLeastPrior:
            order = max(order, min(sip_order_of(prior), 5))
        nterms = (order + 1) * (order + 2) // 2
        n = len(x)
        requested = order
        while order > 1 and n < 2 * nterms + 5:
            order -= 1
            nterms = (order + 1) * (order + 2) // 2
        if order != requested:
            self.log.warning("Only %d matches: SIP order lowered from %d to %d", n, requested, order)
        if n < max(2 * nterms, 6):
            raise TaskError(f"degenerate WCS fit: {n} matches is too few for a SIP order {order} fit")
        x0, y0, wd, ht = bbox
        crpix = (x0 + (wd - 1) / 2.0, y0 + (ht - 1) / 2.0)
        crval = tuple(float(c) for c in initWcs.all_pix2world([[crpix[0], crpix[1]]], 0)[0])
        used = np.ones(n, bool)
        wcs = None
        sig = np.ones(n) if sigma is None else np.maximum(np.asarray(sigma, float), 1e-4)
        sig = np.where(np.isfinite(sig), sig, np.nanmax(sig) if np.isfinite(sig).any() else 1.0)
        for rej in range(cfg.numRejIter + 1):
            if used.sum() < max(2 * nterms, 6):
                raise TaskError(f"degenerate WCS fit: {used.sum()} matches left after outlier rejection")
            wcs = fit_tan_sip(
                x[used],
                y[used],
                ra_deg[used],
                dec_deg[used],
                order,
                crpix,
                crval,
                bbox,
                weights=1.0 / sig[used],
                prior_wcs=prior if cfg.distortionPriorSigma > 0 else None,
                prior_sigma_pix=cfg.distortionPriorSigma,
            )
            cd = wcs.wcs.cd
            if not np.all(np.isfinite(cd)) or abs(np.linalg.det(cd)) < 1e-20:
                raise TaskError("degenerate WCS fit: singular CD matrix")
            crval = tuple(wcs.wcs.crval)
            res = _residuals_arcsec(wcs, x, y, ra_deg, dec_deg)
            if rej == cfg.numRejIter:
                break
            norm = res / sig[:, None]
            scale = np.maximum(1.4826 * np.median(np.abs(norm[used]), axis=0), 1e-6)
            new_used = (np.abs(norm[:, 0]) < cfg.rejSigma * scale[0]) & (
                np.abs(norm[:, 1]) < cfg.rejSigma * scale[1]
            )
            if np.array_equal(new_used, used):
                break
            used = new_used
        res = _residuals_arcsec(wcs, x, y, ra_deg, dec_deg)
        scatter = float(np.sqrt(np.mean(np.sum(res[used] ** 2, axis=1))))
        if not np.isfinite(scatter) or scatter > cfg.maxScatterArcsec:
            raise TaskError(f'WCS fit scatter {scatter:.2f}" exceeds maxScatterArcsec={cfg.maxScatterArcsec}')
        return Struct(wcs=wcs, scatterOnSky=scatter, used=used, order=order, residuals=res)
