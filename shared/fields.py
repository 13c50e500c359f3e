"""Bounded 2-D fields (LSST ``afw.math.ChebyshevBoundedField``), used for aperture corrections.

Coordinates are mapped to [-1, 1] over the box as LSST does: the box's pixel edges
``x0 - 0.5 .. x0 + width - 0.5`` go to -1 .. 1 (likewise in y).
"""

from __future__ import annotations

import numpy as np
from astropy.table import Table
from numpy.polynomial import chebyshev as C

from .geom import Box

__all__ = ["BoundedField", "ChebyshevBoundedField", "fields_from_table", "fields_to_table"]


class BoundedField:
    """A scalar function of pixel position over a box."""

    bbox: Box

    def evaluate(self, x, y):  # pragma: no cover - abstract
        raise NotImplementedError

    def __call__(self, x, y):
        return self.evaluate(x, y)

    def mean(self, n: int = 32) -> float:
        """Average over the box (on an ``n x n`` grid of points)."""
        b = self.bbox
        xs = b.x0 - 0.5 + (np.arange(n) + 0.5) * b.width / n
        ys = b.y0 - 0.5 + (np.arange(n) + 0.5) * b.height / n
        xx, yy = np.meshgrid(xs, ys)
        return float(np.mean(self.evaluate(xx, yy)))


class ChebyshevBoundedField(BoundedField):
    """Sum of ``c[iy, ix] T_ix(x') T_iy(y')`` with ``x', y'`` the box coordinates scaled to [-1, 1].

    Parameters
    ----------
    coefficients : `numpy.ndarray`
        2-D ``[iy, ix]`` (a scalar or 1-element array is a constant field).
    bbox : `Box`
        Box over which the field is defined.
    """

    def __init__(self, coefficients, bbox: Box) -> None:
        coefficients = np.atleast_2d(np.asarray(coefficients, dtype=float))
        if coefficients.ndim != 2:
            raise ValueError("coefficients must be a 2-D array [iy, ix]")
        self.coefficients = coefficients
        self.bbox = bbox

    def __repr__(self) -> str:
        return f"ChebyshevBoundedField(order_x={self.order_x}, order_y={self.order_y}, bbox={self.bbox})"

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, ChebyshevBoundedField)
            and self.bbox == other.bbox
            and self.coefficients.shape == other.coefficients.shape
            and bool(np.all(self.coefficients == other.coefficients))
        )

    @property
    def order_x(self) -> int:
        return self.coefficients.shape[1] - 1

    @property
    def order_y(self) -> int:
        return self.coefficients.shape[0] - 1

    # ------------------------------------------------------------------------------------------------
    @staticmethod
    def _normalise(x, y, bbox: Box) -> tuple[np.ndarray, np.ndarray]:
        xn = (np.asarray(x, dtype=float) - (bbox.x0 - 0.5)) * (2.0 / bbox.width) - 1.0
        yn = (np.asarray(y, dtype=float) - (bbox.y0 - 0.5)) * (2.0 / bbox.height) - 1.0
        return xn, yn

    def evaluate(self, x, y):
        """Field value(s) at pixel position(s) ``x, y`` (scalars or arrays of one shape)."""
        xn, yn = self._normalise(x, y, self.bbox)
        value = C.chebval2d(yn, xn, self.coefficients)
        return float(value) if np.ndim(value) == 0 else value

    def evaluate_image(self, shape: tuple[int, int] | None = None) -> np.ndarray:
        """Field on every pixel of the box (or of an ``(ny, nx)`` image starting at the box origin)."""
        ny, nx = shape if shape is not None else self.bbox.shape
        xn, yn = self._normalise(np.arange(nx) + self.bbox.x0, np.arange(ny) + self.bbox.y0, self.bbox)
        # separable: sum_iy T_iy(y) * (sum_ix c[iy, ix] T_ix(x))
        tx = C.chebvander(xn, self.order_x)  # (nx, ox+1)
        ty = C.chebvander(yn, self.order_y)  # (ny, oy+1)
        return ty @ self.coefficients @ tx.T

    @classmethod
    def fit(
        cls,
        x,
        y,
        z,
        bbox: Box,
        order_x: int,
        order_y: int | None = None,
        triangular: bool = True,
        weights=None,
    ) -> ChebyshevBoundedField:
        """Least-squares fit to values ``z`` at positions ``(x, y)``.

        Parameters
        ----------
        order_x, order_y : `int`
            Maximum orders (``order_y`` defaults to ``order_x``).
        triangular : `bool`
            If True (LSST default) only terms with ``ix + iy <= max(order_x, order_y)`` are fitted.
        weights : array, optional
            Per-point weights multiplying the residuals (use ``1/sigma``; LSST ``fit`` takes
            ``1/sigma`` too).

        Raises
        ------
        ValueError
            When there are fewer good points than terms.
        """
        if order_y is None:
            order_y = order_x
        x, y, z = (np.asarray(v, dtype=float).ravel() for v in (x, y, z))
        w = np.ones_like(z) if weights is None else np.asarray(weights, dtype=float).ravel()
        good = np.isfinite(x) & np.isfinite(y) & np.isfinite(z) & np.isfinite(w)
        x, y, z, w = x[good], y[good], z[good], w[good]
        iy, ix = np.mgrid[: order_y + 1, : order_x + 1]
        use = (ix + iy <= max(order_x, order_y)) if triangular else np.ones_like(ix, dtype=bool)
        nterm = int(use.sum())
        if z.size < nterm:
            raise ValueError(f"cannot fit {nterm} Chebyshev terms to {z.size} points")
        xn, yn = cls._normalise(x, y, bbox)
        vx = C.chebvander(xn, order_x)
        vy = C.chebvander(yn, order_y)
        design = (vy[:, iy[use]] * vx[:, ix[use]]) * w[:, None]
        sol, *_ = np.linalg.lstsq(design, z * w, rcond=None)
        coeffs = np.zeros((order_y + 1, order_x + 1))
        coeffs[use] = sol
        return cls(coeffs, bbox)

    # ------------------------------------------------------------------------------------------------
    def to_table(self, name: str = "") -> Table:
        """One-row table: ``NAME``, ``X0``, ``Y0``, ``WIDTH``, ``HEIGHT``, ``ORDER_X``, ``ORDER_Y``,
        ``COEFFICIENTS`` (2-D ``[iy, ix]``)."""
        return fields_to_table({name: self})

    @classmethod
    def from_table(cls, table: Table, row: int = 0) -> ChebyshevBoundedField:
        """Inverse of `to_table` (reads row ``row``)."""
        r = table[row]
        ox, oy = int(r["ORDER_X"]), int(r["ORDER_Y"])
        coeffs = np.asarray(r["COEFFICIENTS"], dtype=float).reshape(
            np.asarray(r["COEFFICIENTS"]).shape[-2:]
        )[: oy + 1, : ox + 1]
        return cls(coeffs.copy(), Box(int(r["X0"]), int(r["Y0"]), int(r["WIDTH"]), int(r["HEIGHT"])))


def fields_to_table(fields: dict[str, ChebyshevBoundedField]) -> Table:
    """Table with one row per named field (coefficients zero-padded to a common shape)."""
    names = list(fields)
    oy = max((f.order_y for f in fields.values()), default=0)
    ox = max((f.order_x for f in fields.values()), default=0)
    coeffs = np.zeros((len(names), oy + 1, ox + 1))
    for i, n in enumerate(names):
        c = fields[n].coefficients
        coeffs[i, : c.shape[0], : c.shape[1]] = c
    t = Table()
    t["NAME"] = np.array(names, dtype=str) if names else np.array([], dtype="U1")
    t["X0"] = np.array([fields[n].bbox.x0 for n in names], dtype=np.int64)
    t["Y0"] = np.array([fields[n].bbox.y0 for n in names], dtype=np.int64)
    t["WIDTH"] = np.array([fields[n].bbox.width for n in names], dtype=np.int64)
    t["HEIGHT"] = np.array([fields[n].bbox.height for n in names], dtype=np.int64)
    t["ORDER_X"] = np.array([fields[n].order_x for n in names], dtype=np.int64)
    t["ORDER_Y"] = np.array([fields[n].order_y for n in names], dtype=np.int64)
    t["COEFFICIENTS"] = coeffs
    return t


def fields_from_table(table: Table) -> dict[str, ChebyshevBoundedField]:
    """Inverse of `fields_to_table`."""
    return {
        str(table["NAME"][i]).strip(): ChebyshevBoundedField.from_table(table, i) for i in range(len(table))
    }
