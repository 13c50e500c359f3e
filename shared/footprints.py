"""Footprints: connected groups of detected pixels and their peaks.

A `FootprintSet` is the compact representation shared by detection, measurement and the
deblender.  It holds

* ``labels`` -- an int32 image of the exposure's shape; pixel value ``k > 0`` means "belongs to
  footprint ``k - 1``", 0 means "in no footprint".  Footprints never overlap.
* ``bboxes`` -- an ``(n, 4)`` int array ``x0, y0, x1, y1`` (0-based, exclusive upper bounds);
  `FootprintSet.bbox` returns a `calexpress.geom.Box`.
* ``npix`` -- the pixel count of each footprint.
* peaks, as flat arrays sorted by footprint and, within a footprint, by descending value:
  ``peak_x``, ``peak_y`` (int pixel positions), ``peak_value`` (value of the smoothed detection
  image), ``peak_significance`` (that value in units of the smoothed-image noise) and
  ``peak_footprint`` (footprint index).  ``peak_start[i]:peak_start[i + 1]`` are footprint
  ``i``'s peaks, the first one being the brightest (LSST's ``footprint.getPeaks()[0]``).

Footprint ``i`` (0-based) is the set ``labels == i + 1``.  `FootprintSet.mask(i)` gives its
boolean pixel mask in its bbox; `FootprintSet.grow` dilates every footprint (merging those that
touch, LSST's ``combinedGrow``); `FootprintSet.merge` combines two sets (union of pixels, peaks
of both).

Deblended children overlap their parent and each other, so they cannot live in the label image;
a child is a `HeavyFootprint` (bbox, boolean mask and the child's share of the pixel values),
which `calexpress.measurement` inserts in place of the parent's pixels while it measures the
child.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numba
import numpy as np
from scipy import ndimage

from .geom import Box

__all__ = ["FootprintSet", "HeavyFootprint", "grow_stencil", "merge_saturated_peaks", "saturated_cores"]


@dataclass
class HeavyFootprint:
    """A footprint with its own pixel values (a deblended child).

    Attributes
    ----------
    bbox : `Box`
        Bounding box in the exposure.
    mask : `numpy.ndarray`
        bool ``(bbox.height, bbox.width)``: pixels that belong to the footprint.
    image : `numpy.ndarray`
        float32, same shape: the child's pixel values (0 outside ``mask``).
    """

    bbox: Box
    mask: np.ndarray
    image: np.ndarray


def grow_stencil(n: int, isotropic: bool) -> tuple[np.ndarray, np.ndarray]:
    """Offsets ``(dy, dx)`` of the structuring element used to grow footprints by ``n`` pixels.

    ``isotropic`` gives a disc of radius ``n``; otherwise the Manhattan (diamond) stencil
    ``|dx| + |dy| <= n`` that afw's non-isotropic grow uses.
    """
    r = np.arange(-n, n + 1)
    dy, dx = np.meshgrid(r, r, indexing="ij")
    keep = (dx * dx + dy * dy <= n * n) if isotropic else (np.abs(dx) + np.abs(dy) <= n)
    return dy[keep].astype(np.int64), dx[keep].astype(np.int64)


@numba.njit(cache=True, nogil=True)
def _paint_grow(src: np.ndarray, out: np.ndarray, dy: np.ndarray, dx: np.ndarray) -> None:
    ny, nx = src.shape
    for y in range(ny):
        for x in range(nx):
            if not src[y, x]:
                continue
            out[y, x] = True
            # only boundary pixels need to paint the stencil
            interior = (
                y > 0
                and y < ny - 1
                and x > 0
                and x < nx - 1
                and src[y - 1, x]
                and src[y + 1, x]
                and src[y, x - 1]
                and src[y, x + 1]
            )
            if interior:
                continue
            for k in range(dy.size):
                yy = y + dy[k]
                xx = x + dx[k]
                if 0 <= yy < ny and 0 <= xx < nx:
                    out[yy, xx] = True


@numba.njit(cache=True, nogil=True)
def _find_peaks(values: np.ndarray, labels: np.ndarray, lo: int, hi: int):
    """Local maxima (no strictly larger 8-neighbour) of ``values`` inside labelled pixels.

    Pixels within 1 of the image border are skipped (afw's 1-pixel margin).  Only rows
    ``lo <= y < hi`` are scanned.
    """
    ny, nx = values.shape
    cap = 1024
    xs = np.empty(cap, np.int64)
    ys = np.empty(cap, np.int64)
    n = 0
    for y in range(max(lo, 1), min(hi, ny - 1)):
        for x in range(1, nx - 1):
            if labels[y, x] == 0:
                continue
            v = values[y, x]
            ok = True
            for dyy in range(-1, 2):
                for dxx in range(-1, 2):
                    if values[y + dyy, x + dxx] > v:
                        ok = False
            if ok:
                if n == cap:
                    cap *= 2
                    xs2 = np.empty(cap, np.int64)
                    ys2 = np.empty(cap, np.int64)
                    xs2[:n] = xs[:n]
                    ys2[:n] = ys[:n]
                    xs = xs2
                    ys = ys2
                xs[n] = x
                ys[n] = y
                n += 1
    return xs[:n], ys[:n]


@numba.njit(cache=True, nogil=True)
def _label_stats(labels: np.ndarray, n: int):
    """Bounding boxes (x0, y0, x1, y1) and pixel counts of labels ``1..n`` in one pass."""
    ny, nx = labels.shape
    bb = np.empty((n, 4), np.int64)
    bb[:, 0] = nx
    bb[:, 1] = ny
    bb[:, 2] = 0
    bb[:, 3] = 0
    npix = np.zeros(n, np.int64)
    for y in range(ny):
        for x in range(nx):
            k = labels[y, x]
            if k <= 0:
                continue
            k -= 1
            npix[k] += 1
            if x < bb[k, 0]:
                bb[k, 0] = x
            if x + 1 > bb[k, 2]:
                bb[k, 2] = x + 1
            if y < bb[k, 1]:
                bb[k, 1] = y
            if y + 1 > bb[k, 3]:
                bb[k, 3] = y + 1
    return bb, npix


@numba.njit(cache=True, nogil=True)
def _label_argmax(values: np.ndarray, labels: np.ndarray, n: int):
    """Position (x, y) of the largest value of each label ``1..n``."""
    ny, nx = labels.shape
    best = np.full(n, -np.inf)
    bx = np.zeros(n, np.int64)
    by = np.zeros(n, np.int64)
    for y in range(ny):
        for x in range(nx):
            k = labels[y, x]
            if k > 0 and values[y, x] > best[k - 1]:
                best[k - 1] = values[y, x]
                bx[k - 1] = x
                by[k - 1] = y
    return bx, by


@dataclass
class FootprintSet:
    """Non-overlapping footprints of one image and their peaks (see the module docstring)."""

    labels: np.ndarray
    bboxes: np.ndarray
    npix: np.ndarray
    peak_footprint: np.ndarray
    peak_x: np.ndarray
    peak_y: np.ndarray
    peak_value: np.ndarray
    peak_significance: np.ndarray
    peak_start: np.ndarray = field(default=None)  # type: ignore[assignment]

    def __post_init__(self) -> None:
        if self.peak_start is None:
            counts = np.bincount(self.peak_footprint, minlength=len(self))
            self.peak_start = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)

    # ------------------------------------------------------------------ construction
    @classmethod
    def empty(cls, shape: tuple[int, int]) -> FootprintSet:
        """A set with no footprints for an image of ``shape``."""
        z = np.zeros(0, np.int64)
        return cls(
            np.zeros(shape, np.int32),
            np.zeros((0, 4), np.int64),
            z,
            z.copy(),
            z.copy(),
            z.copy(),
            np.zeros(0, np.float64),
            np.zeros(0, np.float64),
        )

    @classmethod
    def from_labels(
        cls,
        labels: np.ndarray,
        peak_image: np.ndarray,
        noise: float = 1.0,
        peaks: tuple[np.ndarray, np.ndarray] | None = None,
    ) -> FootprintSet:
        """Build a set from a label image (consecutive labels ``1..n``).

        Parameters
        ----------
        labels : `numpy.ndarray`
            int image, 0 = no footprint.
        peak_image : `numpy.ndarray`
            Image whose values the peaks carry (the smoothed detection image).
        noise : `float`
            Noise of ``peak_image``; ``peak_significance = value / noise``.
        peaks : (x, y) arrays, optional
            Peak positions to use; by default the local maxima of ``peak_image`` in the footprints.
            Peaks falling outside every footprint are dropped.
        """
        labels = np.ascontiguousarray(labels, dtype=np.int32)
        n = int(labels.max()) if labels.size else 0
        bboxes, npix = _label_stats(labels, n)
        if peaks is None:
            px, py = _find_peaks(peak_image, labels, 0, labels.shape[0])
        else:
            px, py = (np.asarray(p, np.int64) for p in peaks)
        fp = labels[py, px].astype(np.int64) - 1
        keep = fp >= 0
        px, py, fp = px[keep], py[keep], fp[keep]
        # footprints with no local maximum (e.g. plateau at the border) get their brightest pixel
        has = np.zeros(n, bool)
        has[fp] = True
        if not has.all():
            missing = np.flatnonzero(~has) + 1
            ax, ay = _label_argmax(peak_image, labels, n)
            mx, my = ax[missing - 1], ay[missing - 1]
            px, py, fp = np.concatenate([px, mx]), np.concatenate([py, my]), np.concatenate([fp, missing - 1])
        val = peak_image[py, px].astype(np.float64)
        order = np.lexsort((-val, fp))
        px, py, fp, val = px[order], py[order], fp[order], val[order]
        return cls(labels, bboxes, npix, fp, px, py, val, val / noise)

    # ------------------------------------------------------------------ access
    def __len__(self) -> int:
        return int(self.bboxes.shape[0])

    @property
    def shape(self) -> tuple[int, int]:
        """Shape of the image the footprints belong to."""
        return self.labels.shape  # type: ignore[return-value]

    def bbox(self, i: int) -> Box:
        """Bounding box of footprint ``i``."""
        x0, y0, x1, y1 = (int(v) for v in self.bboxes[i])
        return Box(x0, y0, x1 - x0, y1 - y0)

    def mask(self, i: int) -> np.ndarray:
        """Boolean pixel mask of footprint ``i`` in its bbox."""
        return self.labels[self.bbox(i).slices] == i + 1

    def peaks(self, i: int) -> np.ndarray:
        """Peaks of footprint ``i`` as a structured array (x, y, value, significance), brightest first."""
        s = slice(self.peak_start[i], self.peak_start[i + 1])
        out = np.zeros(
            s.stop - s.start, dtype=[("x", "i8"), ("y", "i8"), ("value", "f8"), ("significance", "f8")]
        )
        out["x"], out["y"] = self.peak_x[s], self.peak_y[s]
        out["value"], out["significance"] = self.peak_value[s], self.peak_significance[s]
        return out

    @property
    def n_peaks(self) -> np.ndarray:
        """Number of peaks in each footprint."""
        return np.diff(self.peak_start)

    @property
    def first_peak(self) -> np.ndarray:
        """Index (into the peak arrays) of each footprint's brightest peak."""
        return self.peak_start[:-1]

    def any_mask(self) -> np.ndarray:
        """Boolean image: pixel in some footprint."""
        return self.labels > 0

    # ------------------------------------------------------------------ operations
    def _rebuild(self, mask: np.ndarray, peak_keep: np.ndarray | None = None) -> FootprintSet:
        """Relabel ``mask`` (8-connected) and re-attach the current peaks."""
        labels, n = ndimage.label(mask, structure=np.ones((3, 3), bool))
        labels = labels.astype(np.int32, copy=False)
        sel = slice(None) if peak_keep is None else peak_keep
        px, py = self.peak_x[sel], self.peak_y[sel]
        val, sig = self.peak_value[sel], self.peak_significance[sel]
        fp = labels[py, px].astype(np.int64) - 1
        ok = fp >= 0
        px, py, val, sig, fp = px[ok], py[ok], val[ok], sig[ok], fp[ok]
        bboxes, npix = _label_stats(labels, n)
        order = np.lexsort((-val, fp))
        return FootprintSet(labels, bboxes, npix, fp[order], px[order], py[order], val[order], sig[order])

    def grow(self, n: int, isotropic: bool = False) -> FootprintSet:
        """Return a new set with every footprint dilated by ``n`` pixels; touching ones merge."""
        if n <= 0 or len(self) == 0:
            return self
        dy, dx = grow_stencil(int(n), isotropic)
        out = np.zeros(self.labels.shape, bool)
        _paint_grow(self.labels > 0, out, dy, dx)
        return self._rebuild(out)

    def merge(self, other: FootprintSet) -> FootprintSet:
        """Union of two sets on the same image: pixels of both, peaks of both (duplicates removed)."""
        if other.shape != self.shape:
            raise ValueError(f"cannot merge footprint sets of shapes {self.shape} and {other.shape}")
        both = FootprintSet(
            self.labels,
            self.bboxes,
            self.npix,
            np.concatenate([self.peak_footprint, other.peak_footprint]),
            np.concatenate([self.peak_x, other.peak_x]),
            np.concatenate([self.peak_y, other.peak_y]),
            np.concatenate([self.peak_value, other.peak_value]),
            np.concatenate([self.peak_significance, other.peak_significance]),
            peak_start=np.zeros(1, np.int64),
        )
        key = both.peak_y * self.shape[1] + both.peak_x
        _, first = np.unique(key, return_index=True)
        return both._rebuild((self.labels > 0) | (other.labels > 0), peak_keep=np.sort(first))

    def select(self, keep: np.ndarray) -> FootprintSet:
        """A new set with only the footprints where ``keep`` (bool, one per footprint) is True."""
        keep = np.asarray(keep, bool)
        remap = np.zeros(len(self) + 1, np.int32)
        remap[1:][keep] = np.arange(1, int(keep.sum()) + 1, dtype=np.int32)
        labels = remap[self.labels]
        pk = keep[self.peak_footprint]
        return FootprintSet(
            labels,
            self.bboxes[keep],
            self.npix[keep],
            remap[self.peak_footprint[pk] + 1].astype(np.int64) - 1,
            self.peak_x[pk],
            self.peak_y[pk],
            self.peak_value[pk],
            self.peak_significance[pk],
        )

    def set_mask(self, mask: np.ndarray, bit: int) -> None:
        """OR ``1 << bit`` into ``mask`` on every footprint pixel."""
        mask[self.labels > 0] |= np.int32(1 << bit)


def saturated_cores(
    sat: np.ndarray, image: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Label the saturated regions and locate each one's core.

    A saturated star is a plateau with bleed trails running along the columns; the plateau is widest
    in x on the rows through the star's centre, but a trail can be as wide as the plateau.  The core
    row is therefore chosen among the rows at least 80 % as wide as the widest one: with ``image``, the
    row whose unsaturated neighbours (3 pixels left and right of the region, summed over the row and
    its two neighbours) are brightest -- the star's wings peak at its centre row; without, the median
    of those rows.  The core x is the mean x of the region's pixels on that row.

    Parameters
    ----------
    sat : `numpy.ndarray`
        Boolean image of saturated pixels.
    image : `numpy.ndarray`, optional
        The image, to find the centre row from the wings.

    Returns
    -------
    labels : `numpy.ndarray`
        int32 image, region ``k`` (1-based), 0 = not saturated.
    core_x, core_y : `numpy.ndarray`
        int64, the core pixel of region ``k`` at index ``k - 1``.
    """
    labels, n = ndimage.label(sat, structure=np.ones((3, 3), bool))
    labels = labels.astype(np.int32, copy=False)
    ny, nx = sat.shape
    cx = np.zeros(n, np.int64)
    cy = np.zeros(n, np.int64)
    for k, sl in enumerate(ndimage.find_objects(labels)):
        comp = labels[sl] == k + 1
        width = comp.sum(axis=1)
        cand = np.flatnonzero(width >= 0.8 * width.max())
        r = int(cand[len(cand) // 2])
        if image is not None and cand.size > 1:
            wing = np.zeros(comp.shape[0])
            for i in np.flatnonzero(width > 0):
                xs = np.flatnonzero(comp[i]) + sl[1].start
                yrow = sl[0].start + i
                lo, hi = max(xs[0] - 3, 0), min(xs[-1] + 4, nx)
                vals = np.concatenate([image[yrow, lo : xs[0]], image[yrow, xs[-1] + 1 : hi]])
                ok = ~np.concatenate([sat[yrow, lo : xs[0]], sat[yrow, xs[-1] + 1 : hi]])
                wing[i] = float(np.sum(vals[ok & np.isfinite(vals)]))
            smooth = np.convolve(wing, np.ones(3), mode="same")
            r = int(cand[np.argmax(smooth[cand])])
        xs = np.flatnonzero(comp[r])
        cy[k] = sl[0].start + r
        cx[k] = sl[1].start + int(round(float(xs.mean())))
        if not comp[r, cx[k] - sl[1].start]:  # a ring-shaped row: use its nearest saturated pixel
            cx[k] = sl[1].start + int(xs[np.argmin(np.abs(xs - (cx[k] - sl[1].start)))])
    return labels, cx, cy


@numba.njit(cache=True, nogil=True)
def _disk_max_at(labels, px, py, radius):  # pragma: no cover - compiled
    """``max(labels[y, x])`` over the disk ``(x-px)^2 + (y-py)^2 <= radius^2`` inside the image, per peak.

    Equal to ``ndimage.grey_dilation(labels, footprint=disk)[py, px]`` (its default ``reflect`` border
    only repeats pixels that are already inside the disk).
    """
    ny, nx = labels.shape
    out = np.zeros(px.size, np.int32)
    r2 = radius * radius
    for p in range(px.size):
        x0 = px[p]
        y0 = py[p]
        best = labels[y0, x0]
        for y in range(max(y0 - radius, 0), min(y0 + radius + 1, ny)):
            dy = y - y0
            for x in range(max(x0 - radius, 0), min(x0 + radius + 1, nx)):
                dx = x - x0
                if dx * dx + dy * dy <= r2:
                    v = labels[y, x]
                    if v > best:
                        best = v
        out[p] = best
    return out


def merge_saturated_peaks(
    fps: FootprintSet, sat: np.ndarray, radius: int, image: np.ndarray | None = None
) -> FootprintSet:
    """One peak per saturated region: peaks within ``radius`` of a saturated region become one.

    The interpolated plateau of a saturated star, its bleed trails and the ring just outside the
    plateau produce several local maxima in the smoothed image; deblending them would split the star
    into children centred 5-10 pixels away from it.  Two steps:

    1. a footprint all of whose peaks lie within ``radius`` of saturated regions whose cores (see
       `saturated_cores`) are in one other footprint joins that footprint (a detached piece of a bleed
       trail belongs to its star);
    2. the peaks of a footprint within ``radius`` pixels of the same saturated region are replaced by a
       single peak at the region's core (when the core is in that footprint), keeping the brightest
       peak's value and significance.

    Peaks away from saturated regions are unchanged.  ``image`` helps to find the cores
    (`saturated_cores`).  Returns a new `FootprintSet`.
    """
    if len(fps) == 0 or not np.any(sat):
        return fps
    sat_labels, core_x, core_y = saturated_cores(sat, image)
    # the largest region label within ``radius`` of each peak: a grey dilation of ``sat_labels`` by a
    # disk, evaluated only at the peaks (the full-frame dilation cost ~0.5 s per call)
    comp = _disk_max_at(
        sat_labels,
        np.ascontiguousarray(fps.peak_x, dtype=np.int64),
        np.ascontiguousarray(fps.peak_y, dtype=np.int64),
        max(int(radius), 0),
    )
    core_fp = fps.labels[core_y, core_x].astype(np.int64) - 1  # footprint holding each core (-1: none)
    n = len(fps)
    # --- 1. detached pieces of saturated regions join the footprint holding the core
    target = np.arange(n)
    for f in range(n):
        cs = comp[fps.peak_start[f] : fps.peak_start[f + 1]]
        if cs.size == 0 or np.any(cs == 0):
            continue
        owners = set(core_fp[cs - 1].tolist())
        if len(owners) == 1:
            g = owners.pop()
            if g >= 0 and g != f:
                target[f] = g
    labels, bboxes, npix, pfp = fps.labels, fps.bboxes, fps.npix, fps.peak_footprint
    if np.any(target != np.arange(n)):
        for _ in range(n):  # resolve chains f -> g -> h
            nxt = target[target]
            if np.array_equal(nxt, target):
                break
            target = nxt
        roots = np.unique(target)
        newidx = np.full(n, -1, np.int64)
        newidx[roots] = np.arange(roots.size)
        remap = np.zeros(n + 1, np.int32)
        remap[1:] = (newidx[target] + 1).astype(np.int32)
        labels = remap[fps.labels]
        bboxes, npix = _label_stats(labels, int(roots.size))
        pfp = newidx[target[fps.peak_footprint]]
        core_fp = np.where(core_fp >= 0, newidx[target[np.maximum(core_fp, 0)]], -1)
    order = np.lexsort((-fps.peak_value, pfp))
    pfp, comp = pfp[order], comp[order]
    px, py = fps.peak_x[order].copy(), fps.peak_y[order].copy()
    val, sig = fps.peak_value[order], fps.peak_significance[order]
    # --- 2. one peak per (footprint, saturated region), at the region's core
    keep = np.ones(comp.size, bool)
    seen: set[tuple[int, int]] = set()
    for j in np.flatnonzero(comp > 0):  # sorted by footprint, brightest first
        key = (int(pfp[j]), int(comp[j]))
        if key in seen:
            keep[j] = False
            continue
        seen.add(key)
        k = int(comp[j]) - 1
        if core_fp[k] == key[0]:
            px[j], py[j] = core_x[k], core_y[k]
    return FootprintSet(labels, bboxes, npix, pfp[keep], px[keep], py[keep], val[keep], sig[keep])
