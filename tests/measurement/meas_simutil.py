"""Simulation helpers for the detection/measurement tests.

Uses ``calexpress.exposure.Exposure`` and ``calexpress.psf.GaussianPsf`` when they exist; otherwise small
stand-ins with the contract's attributes, so that these tests do not depend on another part's progress.
"""

from __future__ import annotations

import math

import numpy as np
from calexpress.mask import DEFAULT_MASK_PLANES
from scipy.special import erf

try:  # pragma: no cover - depends on the other parts' progress
    from calexpress.exposure import Exposure as _Exposure
except Exception:  # noqa: BLE001
    _Exposure = None

try:  # pragma: no cover
    from calexpress.psf import GaussianPsf as _GaussianPsf
except Exception:  # noqa: BLE001
    _GaussianPsf = None


class SimpleExposure:
    """Stand-in for `calexpress.exposure.Exposure` (image, mask, variance, mask_planes, psf, wcs)."""

    def __init__(self, image, mask=None, variance=None, *, psf=None, wcs=None):
        self.image = np.asarray(image, np.float32)
        self.mask = np.zeros(self.image.shape, np.int32) if mask is None else mask
        self.variance = np.ones(self.image.shape, np.float32) if variance is None else variance
        self.mask_planes = dict(DEFAULT_MASK_PLANES)
        self.psf = psf
        self.wcs = wcs
        self.ap_corr_map = {}
        self.metadata = {}

    @property
    def shape(self):
        return self.image.shape

    def add_mask_plane(self, name):
        if name not in self.mask_planes:
            self.mask_planes[name] = max(self.mask_planes.values()) + 1
        return self.mask_planes[name]

    def get_plane_bitmask(self, *names):
        v = 0
        for n in names:
            v |= 1 << self.add_mask_plane(n)
        return v


def pixel_gaussian(shape, x, y, sigma, flux=1.0):
    """Pixel-integrated circular Gaussian (exact integral over each pixel)."""
    ny, nx = shape
    xe = (np.arange(nx + 1) - 0.5 - x) / (math.sqrt(2) * sigma)
    ye = (np.arange(ny + 1) - 0.5 - y) / (math.sqrt(2) * sigma)
    fx = 0.5 * np.diff(erf(xe))
    fy = 0.5 * np.diff(erf(ye))
    return flux * np.outer(fy, fx)


class SimpleGaussianPsf:
    """Stand-in for `calexpress.psf.GaussianPsf` (pixel-integrated circular Gaussian)."""

    def __init__(self, sigma, size=None):
        self.sigma = float(sigma)
        self.size = size or (2 * int(math.ceil(5 * sigma)) + 1)

    def compute_kernel_image(self, x, y):
        h = self.size // 2
        return pixel_gaussian((self.size, self.size), h, h, self.sigma)

    def compute_image(self, x, y):
        h = self.size // 2
        return pixel_gaussian((self.size, self.size), h + x - round(x), h + y - round(y), self.sigma)

    def compute_shape(self, x=None, y=None):
        s2 = self.sigma**2 + 1.0 / 12.0
        return s2, s2, 0.0

    def determinant_radius(self, x=None, y=None):
        return math.sqrt(self.sigma**2 + 1.0 / 12.0)

    def average_position(self):
        return 0.0, 0.0


def make_exposure(image, variance, psf_sigma, mask=None):
    """An exposure of the contract type when available, else `SimpleExposure`."""
    psf = SimpleGaussianPsf(psf_sigma)
    if _Exposure is not None:
        try:
            return _Exposure(
                np.asarray(image, np.float32), mask=mask, variance=np.asarray(variance, np.float32), psf=psf
            )
        except Exception:  # noqa: BLE001
            pass
    return SimpleExposure(image, mask, np.asarray(variance, np.float32), psf=psf)


def star_field(shape, xs, ys, fluxes, sigma, sky_var, rng, gain=1.0):
    """Noise-free image of stars, then the noisy image and its variance (sky + Poisson)."""
    img = np.zeros(shape, np.float64)
    r = int(math.ceil(6 * sigma)) + 2
    for x, y, f in zip(xs, ys, fluxes):
        ix, iy = int(round(x)), int(round(y))
        x0, y0 = max(ix - r, 0), max(iy - r, 0)
        x1, y1 = min(ix + r + 1, shape[1]), min(iy + r + 1, shape[0])
        img[y0:y1, x0:x1] += pixel_gaussian((y1 - y0, x1 - x0), x - x0, y - y0, sigma, f)
    var = sky_var + img / gain
    noisy = img + rng.normal(size=shape) * np.sqrt(var)
    return img, noisy.astype(np.float32), var.astype(np.float32)


class GridPsf:
    """PSF from the simcamA truth grid (``truth_psf.fits``): the nearest node's kernel (unit sum)."""

    def __init__(self, cube, grid):
        self.cube = np.asarray(cube, np.float64)
        self.sum_in_stamp = self.cube.sum(axis=(1, 2))
        self.kern = self.cube / self.sum_in_stamp[:, None, None]
        self.gx = np.asarray(grid["x"], float)
        self.gy = np.asarray(grid["y"], float)
        self.shapes = np.c_[grid["ixx_hsm"], grid["iyy_hsm"], grid["ixy_hsm"]]

    def _node(self, x, y):
        return int(np.argmin((self.gx - x) ** 2 + (self.gy - y) ** 2))

    def compute_kernel_image(self, x, y):
        return self.kern[self._node(x, y)].copy()

    def compute_image(self, x, y):
        from calexpress.measure_plugins import psf_images_from_grid

        k = self.kern[self._node(x, y)][None, None]
        return psf_images_from_grid(
            np.ascontiguousarray(k),
            np.array([0.0]),
            np.array([0.0]),
            np.array([float(x)]),
            np.array([float(y)]),
            5,
        )[0]

    def compute_shape(self, x=None, y=None):
        if x is None:
            return tuple(np.median(self.shapes, axis=0))
        return tuple(self.shapes[self._node(x, y)])

    def determinant_radius(self, x=None, y=None):
        xx, yy, xy = self.compute_shape(x, y)
        return float((xx * yy - xy * xy) ** 0.25)

    def average_position(self):
        return float(np.mean(self.gx)), float(np.mean(self.gy))


def load_simcam_frame(simcam_dir, frame="simcamA_0001001_g_det0", seed=0, read_noise=6.0):
    """Truth IMAGE - SKY + Gaussian noise (sky + source + read noise), truth objects and a GridPsf.

    Returns (exposure, objects, psf, noise_free_image, variance).
    """
    import warnings

    from astropy.io import fits
    from astropy.table import Table

    d = simcam_dir / "truth" / frame
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with fits.open(d / "truth_image.fits") as h:
            image = h["IMAGE"].data.astype(np.float64)
            sky = h["SKY"].data.astype(np.float64)
            tmask = h["MASK"].data.astype(np.int32)
        objects = Table.read(d / "truth_objects.fits")
        with fits.open(d / "truth_psf.fits") as h:
            psf = GridPsf(h[0].data, Table(h["GRID"].data))
    var = np.maximum(image, 0) + read_noise**2
    rng = np.random.default_rng(seed)
    noisy = (image - sky + rng.standard_normal(image.shape) * np.sqrt(var)).astype(np.float32)
    mask = np.zeros(image.shape, np.int32)
    mask[(tmask & 1) != 0] |= 1 << DEFAULT_MASK_PLANES["BAD"]
    mask[(tmask & 2) != 0] |= 1 << DEFAULT_MASK_PLANES["BAD"]
    mask[(tmask & 4) != 0] |= 1 << DEFAULT_MASK_PLANES["SAT"]
    exp = None
    if _Exposure is not None:
        try:
            exp = _Exposure(noisy, mask=mask, variance=var.astype(np.float32), psf=psf)
        except Exception:  # noqa: BLE001
            exp = None
    if exp is None:
        exp = SimpleExposure(noisy, mask, var.astype(np.float32), psf=psf)
    return exp, objects, psf, (image - sky), var
