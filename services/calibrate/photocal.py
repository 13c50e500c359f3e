"""Photometric calibration: the zero point from matched reference stars (LSST ``PhotoCalTask``).

``dmag = refMag − srcMag`` with ``srcMag = −2.5 log10(instFlux)``; the first iteration centres on
the mode of a 20-bin histogram, later ones on the median, keeping ``|dmag − centre| <
nSigma·min(σ, sigmaMax)``; the zero point is the inverse-variance weighted mean of the kept
stars.  Colour terms (`ColortermLibrary`, per reference catalog and filter) turn reference
magnitudes into the instrument system: ``mag = p + c0 + c1 (p − s) + c2 (p − s)²``.

calexpress addition (``apertureToTotal``): the zero point refers to the 12-px calibration aperture,
which misses 1-4 % of a star's light; ``"catalog"`` measures that from a stacked curve of growth of
the calibration stars (rings 12-17-25 px) and extrapolates beyond 25 px with a fitted Kolmogorov
(seeing) profile (`curve_of_growth_correction`); CalibrateTask adds it to ``MAGZERO`` (total flux).
"""

from __future__ import annotations

import fnmatch
import functools
import math
import re

import numpy as np
from astropy.table import Table
from calexpress.config import ChoiceField, Config, ConfigDictField, DictField, Field, RangeField
from calexpress.photocalib import AB_ZERO_POINT_NJY, PhotoCalib
from calexpress.task import Struct, Task, TaskError

__all__ = [
    "Colorterm",
    "ColortermDict",
    "ColortermLibrary",
    "PhotoCalConfig",
    "PhotoCalTask",
    "direct_match",
    "get_zero_point",
]


class Colorterm(Config):
    """``mag = p + c0 + c1 (p − s) + c2 (p − s)²`` with p, s the primary/secondary refcat bands."""

    primary = Field(dtype=str, default="", doc="Primary reference band")
    secondary = Field(dtype=str, default="", doc="Secondary reference band")
    c0 = Field(dtype=float, default=0.0, doc="Constant term")
    c1 = Field(dtype=float, default=0.0, doc="Linear colour coefficient")
    c2 = Field(dtype=float, default=0.0, doc="Quadratic colour coefficient")

    def getCorrectedMagnitudes(self, refCat: Table) -> tuple[np.ndarray, np.ndarray]:
        """Return (mag, magErr) in the instrument system from ``<band>_flux`` columns (nJy)."""
        p_flux = np.asarray(refCat[f"{self.primary}_flux"], float)
        s_flux = np.asarray(refCat[f"{self.secondary}_flux"], float)
        with np.errstate(divide="ignore", invalid="ignore"):
            p = -2.5 * np.log10(p_flux) + AB_ZERO_POINT_NJY
            s = -2.5 * np.log10(s_flux) + AB_ZERO_POINT_NJY
            col = p - s
            mag = p + self.c0 + self.c1 * col + self.c2 * col**2
            pe = _mag_err(refCat, self.primary, p_flux)
            se = _mag_err(refCat, self.secondary, s_flux)
            k = self.c1 + 2 * self.c2 * col
            err = np.sqrt(((1 + k) * pe) ** 2 + (k * se) ** 2)
        return mag, err


def _mag_err(refCat: Table, band: str, flux: np.ndarray) -> np.ndarray:
    col = f"{band}_fluxErr"
    if col not in refCat.colnames:
        return np.zeros(len(flux))
    return 2.5 / math.log(10) * np.asarray(refCat[col], float) / flux


class ColortermDict(Config):
    """Colour terms of one reference catalog, by camera filter."""

    data = ConfigDictField(keytype=str, itemtype=Colorterm, default={}, doc="Filter name -> Colorterm")


class ColortermLibrary(Config):
    """Colour terms by reference catalog name (glob patterns allowed) and filter."""

    data = ConfigDictField(
        keytype=str, itemtype=ColortermDict, default={}, doc="Refcat name -> ColortermDict"
    )

    def getColorterm(self, filterName: str, photoCatName: str, doRaise: bool = True) -> Colorterm | None:
        """Return the colour term for a filter and reference catalog, or None / KeyError."""
        for pattern, ctd in self.data.items():
            if fnmatch.fnmatch(photoCatName, pattern) and filterName in ctd.data:
                return ctd.data[filterName]
        if doRaise:
            raise KeyError(f"no colour term for filter {filterName!r} and reference catalog {photoCatName!r}")
        return None


def direct_match(sourceCat: Table, refCat: Table, radius_arcsec: float = 0.25) -> Struct:
    """Match sources to references on the sky (``coord_ra/dec``, radians) within ``radius_arcsec``.

    One-to-one, closest pair wins (LSST DirectMatchTask).  Returns ``Struct(i_src, i_ref, distance)``
    with ``distance`` in radians.
    """
    from scipy.spatial import cKDTree

    def unit(ra, dec):
        ra, dec = np.asarray(ra, float), np.asarray(dec, float)
        return np.column_stack([np.cos(dec) * np.cos(ra), np.cos(dec) * np.sin(ra), np.sin(dec)])

    e = np.zeros(0, int)
    if len(sourceCat) == 0 or len(refCat) == 0:
        return Struct(i_src=e, i_ref=e, distance=np.zeros(0))
    su = unit(sourceCat["coord_ra"], sourceCat["coord_dec"])
    ok = np.all(np.isfinite(su), axis=1)
    ru = unit(refCat["coord_ra"], refCat["coord_dec"])
    chord = 2 * np.sin(np.radians(radius_arcsec / 3600.0) / 2)
    dist, idx = cKDTree(ru).query(np.where(ok[:, None], su, 10.0), distance_upper_bound=chord)
    hit = np.isfinite(dist)
    i_src, i_ref, d = np.nonzero(hit)[0], idx[hit], dist[hit]
    order = np.argsort(d)
    i_src, i_ref, d = i_src[order], i_ref[order], d[order]
    _, first = np.unique(i_ref, return_index=True)
    first = np.sort(first)
    return Struct(i_src=i_src[first], i_ref=i_ref[first], distance=2 * np.arcsin(d[first] / 2))


def get_zero_point(
    src_mag: np.ndarray,
    ref_mag: np.ndarray,
    mag_err: np.ndarray,
    nSigma: float = 3.0,
    sigmaMax: float = 0.25,
    nIter: int = 20,
    useMedian: bool = True,
) -> Struct:
    """LSST ``PhotoCalTask.getZeroPoint``: returns ``Struct(zp, sigma, ngood, good)``."""
    dmag = np.asarray(ref_mag, float) - np.asarray(src_mag, float)
    err = np.asarray(mag_err, float)
    ok = np.isfinite(dmag) & np.isfinite(err)
    good = ok.copy()
    n_prev = -1
    for it in range(nIter):
        d = dmag[good]
        if len(d) < 2:
            break
        if it == 0:
            hist, edges = np.histogram(d, bins=20)
            imode = int(np.argmax(hist))
            centre = 0.5 * (edges[imode] + edges[imode + 1])
            q1, q3 = np.percentile(d, [25, 75])
            sig = (q3 - q1) / 2.3
        else:
            centre = float(np.median(d)) if useMedian else float(np.mean(d))
            q1, q3 = np.percentile(d, [25, 75])
            sig = 0.741 * (q3 - q1)
        sig = max(min(sig, sigmaMax), 1e-4)
        good = ok & (np.abs(dmag - centre) < nSigma * sig)
        if good.sum() == n_prev:
            break
        n_prev = int(good.sum())
    if good.sum() == 0:
        raise TaskError("photometric calibration: no star survived the clipping")
    w = 1.0 / np.maximum(err[good], 1e-4) ** 2
    zp = float(np.sum(w * dmag[good]) / np.sum(w))
    sigma_mean = float(1.0 / np.sqrt(np.sum(w)))
    rms = float(np.std(dmag[good])) if good.sum() > 1 else float("nan")
    return Struct(zp=zp, sigma=sigma_mean, rms=rms, ngood=int(good.sum()), good=good)


class PhotoCalConfig(Config):
    """Configuration of `PhotoCalTask` (LSST names and defaults, plus calexpress extensions)."""

    fluxField = Field(dtype=str, default="slot_CalibFlux_instFlux", doc="Source flux used for the zero point")
    applyColorTerms = Field(
        dtype=bool,
        default=None,
        optional=True,
        doc="Apply colour terms: True = required, False = never, None = if the library has them",
    )
    colorterms = ConfigDictField(
        keytype=str,
        itemtype=ColortermDict,
        default={},
        doc="ColortermLibrary data: reference catalog name (glob) -> filter -> Colorterm",
    )
    colortermSpecs = DictField(
        keytype=str,
        itemtype=str,
        default={},
        doc="calexpress: colour terms as plain strings (camera YAML friendly), added to colorterms: "
        "'<refcat name or glob>:<filter>' -> '<primary>,<secondary>,<c0>,<c1>,<c2>'",
    )
    photoCatName = Field(
        dtype=str, default=None, optional=True, doc="Reference catalog name for colour terms"
    )
    magErrFloor = RangeField(dtype=float, default=0.0, min=0.0, doc="Added in quadrature to magnitude errors")
    nSigma = RangeField(dtype=float, default=3.0, min=0, doc="Clipping threshold (sigma)")
    sigmaMax = RangeField(dtype=float, default=0.25, min=0, doc="Maximum sigma used in clipping")
    nIter = RangeField(dtype=int, default=20, min=1, doc="Maximum clipping iterations")
    useMedian = Field(dtype=bool, default=True, doc="Centre on the median (else the mean)")
    magLimitBright = Field(
        dtype=float, default=None, optional=True, doc="Drop reference stars brighter (mag)"
    )
    magLimitFaint = Field(dtype=float, default=None, optional=True, doc="Drop reference stars fainter (mag)")
    matchRadius = RangeField(dtype=float, default=0.25, min=0, doc="Source-reference match radius (arcsec)")
    minSnr = RangeField(dtype=float, default=0.0, min=0, doc="Minimum source S/N in fluxField")
    badFlags = Field(
        dtype=str,
        default="base_PixelFlags_flag_edge,base_PixelFlags_flag_interpolated,base_PixelFlags_flag_saturated",
        doc="Comma-separated source flags that exclude a star (ScienceSourceSelector doFlags)",
    )
    doUnresolved = Field(dtype=bool, default=True, doc="Require base_ClassificationExtendedness_value < 0.5")
    minStars = RangeField(dtype=int, default=3, min=1, doc="Fail with fewer usable stars")
    apertureToTotal = ChoiceField(
        dtype=str,
        default="none",
        doc="calexpress: correction of MAGZERO from the calibration aperture to total flux "
        "(the PhotoCalib itself stays on the calibration-aperture scale, as in LSST)",
        allowed={
            "none": "MAGZERO refers to fluxField (LSST)",
            "psfModel": "divide by the fraction of the PSF model inside calibApertureRadius",
            "catalog": "stacked curve of growth of the used stars from the catalog's aperture fluxes "
            "(rings calibApertureRadius ... curveOfGrowthMaxRadius), extrapolated to infinity with a "
            "fitted Kolmogorov (seeing) profile",
        },
    )
    psfModelTail = Field(
        dtype=bool, default=True, doc="psfModel: add a power-law extrapolation of the PSF beyond its stamp"
    )
    calibApertureRadius = RangeField(dtype=float, default=12.0, min=0, doc="Radius of fluxField (pixels)")
    apertureFluxPrefix = Field(
        dtype=str,
        default="base_CircularApertureFlux_",
        doc="catalog: prefix of the aperture flux columns (<prefix><r>_<d>_instFlux, radius r.d pixels)",
    )
    curveOfGrowthMaxRadius = RangeField(
        dtype=float,
        default=25.0,
        min=0,
        doc="catalog: largest aperture radius (pixels) whose flux is used; the light beyond it comes from "
        "the fitted Kolmogorov profile (larger apertures are dominated by sky noise and sky-level errors)",
    )
    curveOfGrowthErrFloor = RangeField(
        dtype=float,
        default=5e-4,
        min=0,
        doc="catalog: added in quadrature to each star's ring-fraction error (PSF variation over the field)",
    )
    curveOfGrowthNSigma = RangeField(
        dtype=float, default=3.0, min=0, doc="catalog: clipping of each ring's star-by-star fractions"
    )


def _column(cat: Table, name: str) -> np.ndarray:
    """A column, resolving ``slot_<Name>_<suffix>`` through ``cat.meta['ALIAS_slot_<Name>']``."""
    if name in cat.colnames:
        return np.asarray(cat[name])
    if name.startswith("slot_"):
        slot, _, suffix = name[5:].partition("_")
        target = cat.meta.get(f"ALIAS_slot_{slot}")
        if target and f"{target}_{suffix}" in cat.colnames:
            return np.asarray(cat[f"{target}_{suffix}"])
    raise KeyError(f"source catalog has no column {name!r}")


def kolmogorov_encircled_energy(radii: np.ndarray, nu0: float) -> np.ndarray:
    """Encircled energy of a pixel-convolved Kolmogorov PSF at ``radii`` (pixels).

    Kolmogorov turbulence gives the optical transfer function ``T(ν) = exp(−(ν/ν0)^(5/3))`` (ν in
    cycles per pixel, FWHM ≈ 0.465/ν0 pixels; far out the surface brightness falls as r^(−11/3), the
    seeing-limited wing).  It is multiplied by the pixel response (``|sinc νx · sinc νy|`` averaged over
    position angle) and Hankel-transformed: ``EE(R) = 2πR ∫ T(ν) J1(2πνR) dν`` (unit total flux).
    """
    radii = np.atleast_1d(np.asarray(radii, float))
    nu, pix, dnu = _kolmogorov_grid()
    t = np.exp(-((nu / nu0) ** (5.0 / 3.0))) * pix
    return _hankel_kernel(tuple(float(r) for r in radii)) @ t


@functools.lru_cache(maxsize=16)
def _hankel_kernel(radii: tuple[float, ...]) -> np.ndarray:
    """``2πR J1(2πνR) dν`` on the frequency grid, one row per radius."""
    from scipy.special import j1

    nu, _, dnu = _kolmogorov_grid()
    r = np.asarray(radii, float)[:, None]
    return 2 * np.pi * r * dnu * j1(2 * np.pi * nu[None, :] * r)


@functools.lru_cache(maxsize=1)
def _kolmogorov_grid() -> tuple[np.ndarray, np.ndarray, float]:
    """Frequency grid (cycles/px), azimuthally averaged pixel response on it, and its step."""
    dnu = 5e-5  # midpoint rule; resolves J1(2πνR) out to R ~ 1000 px
    nu = (np.arange(30000) + 0.5) * dnu  # to 1.5 cycles/px: the OTF is < 1e-8 there for ν0 <= 0.25
    theta = np.linspace(0.0, np.pi / 2, 16)
    pix = np.mean([np.abs(np.sinc(nu * np.cos(a)) * np.sinc(nu * np.sin(a))) for a in theta], axis=0)
    return nu, pix, dnu


def _aperture_columns(cat: Table, prefix: str) -> list[tuple[float, str]]:
    """(radius, column) of every ``<prefix><r>_<d>_instFlux`` column, sorted by radius."""
    out = []
    for name in cat.colnames:
        m = re.fullmatch(re.escape(prefix) + r"(\d+)_(\d+)_instFlux", name)
        if m:
            out.append((float(f"{m.group(1)}.{m.group(2)}"), name))
    return sorted(out)


def _weighted_median(x: np.ndarray, w: np.ndarray) -> float:
    """The value at which the cumulative weight reaches half the total."""
    order = np.argsort(x)
    cw = np.cumsum(w[order])
    return float(x[order][np.searchsorted(cw, 0.5 * cw[-1])])


def curve_of_growth_correction(
    flux: np.ndarray,
    flux_err: np.ndarray,
    radii: np.ndarray,
    r_calib: float,
    r_max: float,
    err_floor: float = 5e-4,
    n_sigma: float = 3.0,
) -> Struct:
    """Aperture-to-total correction from a stacked curve of growth, extrapolated with a Kolmogorov wing.

    Parameters
    ----------
    flux, flux_err : `numpy.ndarray`, shape (nstar, nradii)
        Aperture fluxes and errors of (bright, unflagged, point-like) stars at ``radii``.
    radii : `numpy.ndarray`
        Increasing aperture radii (pixels); must contain ``r_calib``.
    r_calib : `float`
        Radius of the calibration aperture.
    r_max : `float`
        Largest radius whose fluxes are used.

    Returns
    -------
    result : `Struct`
        ``correction`` (mag, positive: 2.5 log10(total / flux(r_calib))), ``error`` (mag, statistical),
        ``measured`` (mag from r_calib to the largest used radius), ``tail`` (mag beyond it, from the
        model), ``nu0`` (fitted Kolmogorov scale, cycles/px), ``rings`` (list of
        ``(r_in, r_out, fraction, error, nstar)``).

    Notes
    -----
    Each ring between successive radii gives, per star, ``q = (f(r_out) − f(r_in)) / f(r_in)`` with error
    ``sqrt(σ²(r_out) − σ²(r_in)) / f(r_in)`` (nested apertures share their inner pixels) plus
    ``err_floor`` in quadrature; the stack is the error-weighted mean, iteratively clipped at
    ``n_sigma``.  The product of ``1 + q`` is the measured growth f(r_max)/f(r_calib).  The light beyond
    ``r_max`` — too faint per pixel to measure against the sky, and where a background model fitted
    around bright stars is biased — is taken from a Kolmogorov PSF (`kolmogorov_encircled_energy`) whose
    one scale parameter is fitted to the measured rings: ``total/f(r_max) = 1/EE_K(r_max)``.
    """
    from scipy.optimize import minimize_scalar

    radii = np.asarray(radii, float)
    flux = np.asarray(flux, float)
    flux_err = np.asarray(flux_err, float)
    k0 = int(np.argmin(np.abs(radii - r_calib)))
    if abs(radii[k0] - r_calib) > 1e-6:
        raise TaskError(f"curve of growth: no aperture of radius {r_calib:g} px")
    ks = [k for k in range(k0, len(radii)) if radii[k] <= r_max + 1e-6]
    if len(ks) < 2:
        raise TaskError(f"curve of growth: no aperture between {r_calib:g} and {r_max:g} px")
    rings = []
    for a, b in zip(ks[:-1], ks[1:]):
        with np.errstate(divide="ignore", invalid="ignore"):
            q = (flux[:, b] - flux[:, a]) / flux[:, a]
            s = np.sqrt(np.abs(flux_err[:, b] ** 2 - flux_err[:, a] ** 2)) / flux[:, a]
        s = np.hypot(s, err_floor)
        ok = np.isfinite(q) & np.isfinite(s) & (s > 0) & (flux[:, a] > 0)
        q, s = q[ok], s[ok]
        if len(q) < 3:
            raise TaskError(f"curve of growth: {len(q)} usable stars in ring {radii[a]:g}-{radii[b]:g} px")
        # start from the error-weighted median (one contaminated star must not set the centre, and the
        # many faint stars must not outvote the few bright ones), then the error-weighted mean of the
        # stars within n_sigma of it, iterated
        mean = _weighted_median(q, 1.0 / s**2)
        keep = np.ones(len(q), bool)
        for _ in range(10):
            new = np.abs(q - mean) < n_sigma * s
            if new.sum() < 3:
                break
            changed = not np.array_equal(new, keep)
            keep = new
            w = 1.0 / s[keep] ** 2
            mean = float(np.sum(w * q[keep]) / np.sum(w))
            if not changed:
                break
        w = 1.0 / s[keep] ** 2
        mean = float(np.sum(w * q[keep]) / np.sum(w))
        chi2 = float(np.mean(((q[keep] - mean) / s[keep]) ** 2))
        err = float(np.sqrt(max(chi2, 1.0) / np.sum(w)))
        rings.append((float(radii[a]), float(radii[b]), mean, err, int(keep.sum())))
    fr = np.array([r[2] for r in rings])
    fe = np.array([r[3] for r in rings])
    r_used = radii[ks]

    def chi2_of(log_nu0: float) -> float:
        ee = kolmogorov_encircled_energy(r_used, math.exp(log_nu0))
        return float(np.sum(((fr - (ee[1:] / ee[:-1] - 1.0)) / fe) ** 2))

    fit = minimize_scalar(chi2_of, bounds=(math.log(0.01), math.log(0.25)), method="bounded")
    nu0 = math.exp(fit.x)
    ee_max = float(kolmogorov_encircled_energy(r_used[-1:], nu0)[0])
    measured = 2.5 * math.log10(float(np.prod(1.0 + fr)))
    tail = -2.5 * math.log10(ee_max)
    # statistical error: the measured rings plus the tail's change when nu0 moves by its 1-sigma
    # (the fit's chi2 rises by 1)
    h = 0.01
    curv = (chi2_of(fit.x + h) - 2 * chi2_of(fit.x) + chi2_of(fit.x - h)) / h**2
    dlog = 1.0 / math.sqrt(curv) if curv > 0 else 0.0
    ee_hi = float(kolmogorov_encircled_energy(r_used[-1:], math.exp(fit.x + dlog))[0])
    tail_err = abs(2.5 * math.log10(ee_hi / ee_max))
    meas_err = 2.5 / math.log(10) * float(np.sqrt(np.sum(fe**2)))
    return Struct(
        correction=measured + tail,
        error=math.hypot(meas_err, tail_err),
        measured=measured,
        tail=tail,
        nu0=nu0,
        rings=rings,
    )


class PhotoCalTask(Task):
    """Compute the photometric zero point from astrometric matches."""

    ConfigClass = PhotoCalConfig
    _DefaultName = "photoCal"

    def run(
        self,
        exposure,
        sourceCat: Table,
        matches: Struct,
        refCat: Table,
        filterName: str | None = None,
        fluxField: str | None = None,
        photoCatName: str | None = None,
    ) -> Struct:
        """Compute the zero point.

        Parameters
        ----------
        exposure : `calexpress.exposure.Exposure`
        sourceCat : `astropy.table.Table`
        matches : `Struct`
            ``i_src`` and ``i_ref`` index arrays into ``sourceCat`` and ``refCat``.
        refCat : `astropy.table.Table`
        filterName : `str`
            Camera filter (for the colour term and the refcat flux).
        fluxField : `str`
            Reference flux column (from the loader; e.g. ``r_flux``).
        photoCatName : `str`, optional
            Name of the reference catalog, used to pick colour terms when
            ``config.photoCatName`` is not set.

        Returns
        -------
        result : `Struct`
            ``photoCalib``, ``zp`` (mag of 1 count over the exposure), ``sigma``, ``rms``, ``ngood``,
            ``colorterm`` (c0, c1, c2), ``used`` (bool per source), ``apToTotal`` (mag, 0 if none).
        """
        cfg = self.config
        i_src = np.asarray(matches.i_src)
        i_ref = np.asarray(matches.i_ref)
        filterName = filterName or (exposure.filter if exposure is not None else None) or ""
        flux = _column(sourceCat, cfg.fluxField)[i_src].astype(float)
        try:
            flux_err = _column(sourceCat, cfg.fluxField.replace("_instFlux", "_instFluxErr"))[i_src].astype(
                float
            )
        except KeyError:
            flux_err = np.sqrt(np.abs(flux))
        good = np.isfinite(flux) & (flux > 0) & np.isfinite(flux_err) & (flux_err > 0)
        for flag in [f.strip() for f in cfg.badFlags.split(",") if f.strip()]:
            if flag in sourceCat.colnames:
                good &= ~np.asarray(sourceCat[flag], bool)[i_src]
        flag_col = cfg.fluxField.replace("_instFlux", "_flag")
        try:
            good &= ~_column(sourceCat, flag_col)[i_src].astype(bool)
        except KeyError:
            pass
        if cfg.doUnresolved and "base_ClassificationExtendedness_value" in sourceCat.colnames:
            ext = np.asarray(sourceCat["base_ClassificationExtendedness_value"], float)[i_src]
            good &= ~(ext >= 0.5)
        if cfg.minSnr > 0:
            good &= flux / flux_err > cfg.minSnr
        # Reference magnitudes, colour terms.
        colorterm = None
        cat_name = cfg.photoCatName or photoCatName or ""
        library = self.colortermLibrary()
        if cfg.applyColorTerms is not False and library.data:
            colorterm = library.getColorterm(filterName, cat_name, doRaise=bool(cfg.applyColorTerms))
        elif cfg.applyColorTerms:
            raise TaskError(f"applyColorTerms=True but no colour terms configured for {cat_name!r}")
        sub = refCat[i_ref]
        if colorterm is not None:
            ref_mag, ref_err = colorterm.getCorrectedMagnitudes(sub)
            cterm = (colorterm.c0, colorterm.c1, colorterm.c2)
        else:
            if not fluxField:
                raise TaskError("photometric calibration: no reference flux field")
            rf = np.asarray(sub[fluxField], float)
            with np.errstate(divide="ignore", invalid="ignore"):
                ref_mag = -2.5 * np.log10(rf) + AB_ZERO_POINT_NJY
                ref_err = _mag_err(sub, fluxField[: -len("_flux")], rf)
            cterm = (0.0, 0.0, 0.0)
        if cfg.magLimitBright is not None:
            good &= ref_mag >= cfg.magLimitBright
        if cfg.magLimitFaint is not None:
            good &= ref_mag <= cfg.magLimitFaint
        with np.errstate(divide="ignore", invalid="ignore"):
            src_mag = -2.5 * np.log10(flux)
            src_err = 2.5 / math.log(10) * flux_err / flux
        mag_err = np.sqrt(src_err**2 + np.nan_to_num(ref_err) ** 2 + cfg.magErrFloor**2)
        good &= np.isfinite(ref_mag) & np.isfinite(src_mag)
        if good.sum() < cfg.minStars:
            raise TaskError(
                f"photometric calibration: {int(good.sum())} usable matched stars (need {cfg.minStars})"
            )
        idx = np.nonzero(good)[0]
        zp = get_zero_point(
            src_mag[idx], ref_mag[idx], mag_err[idx], cfg.nSigma, cfg.sigmaMax, cfg.nIter, cfg.useMedian
        )
        used = np.zeros(len(sourceCat), bool)
        used[i_src[idx[zp.good]]] = True
        ap_to_total = 0.0
        if cfg.apertureToTotal == "catalog":
            ap_to_total = self._aperture_to_total(sourceCat, i_src[idx[zp.good]], flux[idx[zp.good]])
        elif cfg.apertureToTotal == "psfModel":
            ap_to_total = self._psf_aperture_to_total(exposure)
        photoCalib = PhotoCalib.from_zero_point(zp.zp, zp.sigma)
        self.log.info(
            "Magnitude zero point: %.4f +/- %.4f from %d stars (rms %.4f)", zp.zp, zp.sigma, zp.ngood, zp.rms
        )
        return Struct(
            photoCalib=photoCalib,
            zp=zp.zp,
            sigma=zp.sigma,
            rms=zp.rms,
            ngood=zp.ngood,
            colorterm=cterm,
            used=used,
            apToTotal=ap_to_total,
        )

    def colortermLibrary(self) -> ColortermLibrary:
        """The `ColortermLibrary` from ``colorterms`` plus ``colortermSpecs``."""
        lib = ColortermLibrary()
        data = {k: v for k, v in self.config.colorterms.items()}
        for key, spec in self.config.colortermSpecs.items():
            cat, sep, filt = key.rpartition(":")
            parts = [p.strip() for p in spec.split(",")]
            if not sep or len(parts) < 3:
                raise TaskError(
                    f"photoCal.colortermSpecs: bad entry {key!r}: {spec!r} "
                    "(want '<refcat>:<filter>': '<primary>,<secondary>,<c0>,<c1>,<c2>')"
                )
            coeffs = [float(c) for c in parts[2:5]] + [0.0] * (5 - len(parts))
            ct = Colorterm(primary=parts[0], secondary=parts[1], c0=coeffs[0], c1=coeffs[1], c2=coeffs[2])
            ctd = data.get(cat) or ColortermDict()
            entries = dict(ctd.data.items())
            entries[filt] = ct
            ctd = ColortermDict()
            ctd.data = entries
            data[cat] = ctd
        lib.data = data
        return lib

    def _psf_aperture_to_total(self, exposure) -> float:
        """``−2.5 log10(f)``, f = fraction of the PSF model (at the detector centre) inside the aperture."""
        psf = getattr(exposure, "psf", None)
        if psf is None:
            raise TaskError("photometric calibration: apertureToTotal='psfModel' needs a PSF")
        ny, nx = exposure.image.shape
        k = np.asarray(psf.compute_kernel_image((nx - 1) / 2.0, (ny - 1) / 2.0), float)
        n = k.shape[0]
        sub = 5  # sub-sample each pixel to integrate the circle edge
        off = (np.arange(sub) + 0.5) / sub - 0.5
        yy, xx = np.indices(k.shape) - n // 2
        inside = np.zeros(k.shape)
        for dy in off:
            for dx in off:
                inside += np.hypot(xx + dx, yy + dy) <= self.config.calibApertureRadius
        r = np.hypot(xx, yy)
        rmax = n // 2 + 0.5
        total = float(np.sum(k[r <= rmax])) + self._psf_tail(k, r, rmax)
        frac = float(np.sum(k * inside / sub**2)) / total
        self.log.debug(
            "PSF model: fraction %.5f inside r=%.1f (tail beyond %.1f px: %.5f)",
            frac,
            self.config.calibApertureRadius,
            rmax,
            total - float(np.sum(k[r <= rmax])),
        )
        return -2.5 * math.log10(frac)

    def _psf_tail(self, k: np.ndarray, r: np.ndarray, rmax: float) -> float:
        """Flux of the PSF beyond ``rmax``: power-law fit ``I ∝ r^-α`` to the outer half of the model."""
        if not self.config.psfModelTail:
            return 0.0
        edges = np.arange(max(rmax / 2.0, 3.0), rmax + 1e-9, 1.0)
        rad, val = [], []
        for a, b in zip(edges[:-1], edges[1:]):
            ring = (r >= a) & (r < b)
            if ring.any():
                m = float(np.mean(k[ring]))
                if m > 0:
                    rad.append(0.5 * (a + b))
                    val.append(m)
        if len(rad) < 3:
            return 0.0
        slope, icpt = np.polyfit(np.log(rad), np.log(val), 1)
        alpha = -slope
        if not alpha > 2.2:  # too shallow to extrapolate safely
            return 0.0
        return float(2 * np.pi * math.exp(icpt) * rmax ** (2 - alpha) / (alpha - 2))

    def _aperture_to_total(self, sourceCat: Table, rows: np.ndarray, calib_flux: np.ndarray) -> float:
        """2.5 log10(total / calibration-aperture flux) of the stars ``rows`` (mag, positive).

        `curve_of_growth_correction` on the catalog's aperture fluxes (``apertureFluxPrefix``) of the
        used calibration stars, without those whose apertures up to ``curveOfGrowthMaxRadius`` are
        flagged (truncated by the edge, failed).  ``calib_flux`` is unused (kept for the signature).
        Returns 0 with a warning when the catalog has no larger apertures or too few usable stars.
        """
        cfg = self.config
        res = self.curveOfGrowth(sourceCat, rows)
        if res is None:
            return 0.0
        self.log.info(
            "Aperture-to-total (%g px): %.4f +/- %.4f mag (measured to %g px %.4f, Kolmogorov tail %.4f, "
            "FWHM %.2f px)",
            cfg.calibApertureRadius,
            res.correction,
            res.error,
            cfg.curveOfGrowthMaxRadius,
            res.measured,
            res.tail,
            0.465 / res.nu0,
        )
        self.metadata["apToTotal"] = res.correction
        self.metadata["apToTotalErr"] = res.error
        return float(res.correction)

    def curveOfGrowth(self, sourceCat: Table, rows: np.ndarray) -> Struct | None:
        """`curve_of_growth_correction` of the stars ``rows`` of ``sourceCat`` (None if impossible)."""
        cfg = self.config
        cols = [
            (r, c)
            for r, c in _aperture_columns(sourceCat, cfg.apertureFluxPrefix)
            if cfg.calibApertureRadius - 1e-6 <= r <= cfg.curveOfGrowthMaxRadius + 1e-6
        ]
        if len(cols) < 2 or abs(cols[0][0] - cfg.calibApertureRadius) > 1e-6:
            self.log.warning(
                "no %s* apertures from %g to %g px: no aperture-to-total correction",
                cfg.apertureFluxPrefix,
                cfg.calibApertureRadius,
                cfg.curveOfGrowthMaxRadius,
            )
            return None
        rows = np.asarray(rows, int)
        radii = np.array([r for r, _ in cols])
        flux = np.column_stack([np.asarray(sourceCat[c], float)[rows] for _, c in cols])
        err = np.column_stack(
            [np.asarray(sourceCat[c.replace("_instFlux", "_instFluxErr")], float)[rows] for _, c in cols]
        )
        good = np.all(np.isfinite(flux) & np.isfinite(err), axis=1)
        for _, c in cols:
            flag = c.replace("_instFlux", "_flag")
            if flag in sourceCat.colnames:
                good &= ~np.asarray(sourceCat[flag], bool)[rows]
        try:
            return curve_of_growth_correction(
                flux[good],
                err[good],
                radii,
                cfg.calibApertureRadius,
                cfg.curveOfGrowthMaxRadius,
                cfg.curveOfGrowthErrFloor,
                cfg.curveOfGrowthNSigma,
            )
        except TaskError as exc:
            self.log.warning("%s: no aperture-to-total correction", exc)
            return None
