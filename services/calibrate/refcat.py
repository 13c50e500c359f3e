"""Loader for LSST's on-disk (HTM-sharded) reference catalogs.

A catalog named ``NAME`` lives in ``REPO/ref_cats/NAME/``: one FITS binary table per HTM
trixel named ``<htm id>.fits`` (any depth), an optional ``config.py`` (LSST ``DatasetConfig``:
``format_version``, ``indexer['HTM'].depth``) and ``master_schema.fits``.  Format version 0
stores fluxes in Jy, version 1 in nJy; the afw ``flags`` bit column (``TFLAGn`` names the bits)
is unpacked into one bool column per flag.  Local paths and ``s3://`` URLs both work
(through fsspec).
"""

from __future__ import annotations

import io
import logging
import re
import threading
from collections import OrderedDict
from typing import Any

import lsst.sphgeom as sphgeom
import numpy as np
from astropy.io import fits
from astropy.table import Table, vstack
from astropy.time import Time
from calexpress.config import Config, DictField, Field, RangeField
from calexpress.task import Struct, Task

__all__ = [
    "LoadIndexedReferenceObjectsConfig",
    "LoadIndexedReferenceObjectsTask",
    "ReferenceCatalogError",
    "apply_proper_motion",
    "htm_depth_from_id",
    "read_shard",
]

log = logging.getLogger(__name__)

_MJD_J2000 = 51544.5


class ReferenceCatalogError(RuntimeError):
    """A reference catalog is missing or unreadable (message names the file and the problem)."""


def htm_depth_from_id(htm_id: int) -> int:
    """Return the HTM depth (level) of a trixel id (ids of depth d lie in [8*4**d, 16*4**d))."""
    level = sphgeom.HtmPixelization.level(int(htm_id))
    if level < 0:
        raise ValueError(f"{htm_id} is not a valid HTM trixel id")
    return level


def _is_url(path: str) -> bool:
    return "://" in str(path)


def _join(root: str, name: str) -> str:
    return str(root).rstrip("/") + "/" + name


def _read_bytes(path: str) -> bytes:
    if _is_url(path):
        from calexpress import storage

        return storage.read_bytes(path)
    with open(path, "rb") as fh:
        return fh.read()


def _exists(path: str) -> bool:
    if _is_url(path):
        from calexpress import storage

        return storage.exists(path)
    import os

    return os.path.exists(path)


def _list_dir(root: str) -> list[str]:
    if _is_url(root):
        from calexpress import storage

        return [p.rstrip("/").rsplit("/", 1)[-1] for p in storage.listdir(root)]
    import os

    return os.listdir(root)


def read_shard(data: bytes | str, format_version: int | None = None, name: str = "") -> Table:
    """Read one refcat shard (FITS bytes or path) into a Table in LSST units.

    Parameters
    ----------
    data : `bytes` or `str`
        File content or path.
    format_version : `int`, optional
        0 (fluxes in Jy) or 1 (nJy); read from the ``REFCAT_FORMAT_VERSION`` header
        keyword when not given (absent: 0, as LSST assumes for unversioned catalogs).
    name : `str`
        File name for error messages.

    Returns
    -------
    table : `astropy.table.Table`
        ``coord_ra``/``coord_dec`` in radians, ``*_flux``/``*_fluxErr`` in nJy, flags as bool columns.
    """
    if isinstance(data, str):
        name = name or data
        data = _read_bytes(data)
    try:
        with fits.open(io.BytesIO(data), memmap=False) as hdul:
            hdu = hdul[1]
            header = hdu.header
            raw = hdu.data
            if raw is None or len(raw) == 0:
                table = Table(names=[c.name for c in hdu.columns], dtype=[c.dtype for c in hdu.columns])
            else:
                table = Table({name: np.asarray(raw[name]) for name in raw.columns.names})
    except (OSError, IndexError, ValueError) as exc:
        raise ReferenceCatalogError(f"{name}: not a readable reference-catalog shard ({exc})") from exc
    if format_version is None:
        format_version = int(
            header.get("REFCAT_FORMAT_VERSION", header.get("HIERARCH REFCAT_FORMAT_VERSION", 0))
        )
    # Unpack the afw flag bit column.
    flag_names = [(int(k[5:]), header[k]) for k in header if re.fullmatch(r"TFLAG\d+", k)]
    if "flags" in table.colnames and flag_names:
        bits = np.asarray(table["flags"])
        if bits.ndim == 1:
            bits = bits[:, None]
        for idx, fname in sorted(flag_names):
            if fname not in table.colnames:
                table[fname] = bits[:, idx - 1].astype(bool) if idx - 1 < bits.shape[1] else False
        table.remove_column("flags")
    for col in list(table.colnames):
        if col.endswith("_fluxSigma"):  # very old name for errors
            table.rename_column(col, col[: -len("Sigma")] + "Err")
    for col in table.colnames:
        if col.endswith("_flux") or col.endswith("_fluxErr"):
            values = np.asarray(table[col], dtype=np.float64)
            if format_version == 0:
                values = values * 1e9
            table[col] = values
            table[col].unit = "nJy"
        elif col in ("coord_ra", "coord_dec"):
            table[col] = np.asarray(table[col], dtype=np.float64)
            table[col].unit = "rad"
    table.meta.clear()
    return table


def apply_proper_motion(table: Table, epoch_mjd: float) -> None:
    """Move each star along a great circle to ``epoch_mjd`` (MJD TAI), in place.

    Uses ``pm_ra`` (dRA/dt cos Dec) and ``pm_dec`` in rad/yr and the per-row ``epoch``
    (MJD TAI); ``coord_ra``/``coord_dec`` are updated, as LSST's ReferenceObjectLoader does.
    """
    if len(table) == 0 or "pm_ra" not in table.colnames or "pm_dec" not in table.colnames:
        return
    pm_ra = np.nan_to_num(np.asarray(table["pm_ra"], dtype=float))
    pm_dec = np.nan_to_num(np.asarray(table["pm_dec"], dtype=float))
    ref_epoch = np.asarray(table["epoch"], dtype=float) if "epoch" in table.colnames else _MJD_J2000 + 5844.0
    dt = (epoch_mjd - ref_epoch) / 365.25
    dist = np.hypot(pm_ra, pm_dec) * dt
    theta = np.arctan2(pm_dec, pm_ra)
    ra = np.asarray(table["coord_ra"], dtype=float)
    dec = np.asarray(table["coord_dec"], dtype=float)
    p = np.stack([np.cos(dec) * np.cos(ra), np.cos(dec) * np.sin(ra), np.sin(dec)])
    east = np.stack([-np.sin(ra), np.cos(ra), np.zeros_like(ra)])
    north = np.stack([-np.sin(dec) * np.cos(ra), -np.sin(dec) * np.sin(ra), np.cos(dec)])
    u = np.cos(theta) * east + np.sin(theta) * north
    q = np.cos(dist) * p + np.sin(dist) * u
    table["coord_ra"] = np.mod(np.arctan2(q[1], q[0]), 2 * np.pi)
    table["coord_dec"] = np.arcsin(np.clip(q[2], -1, 1))
    table["coord_ra"].unit = "rad"
    table["coord_dec"].unit = "rad"


def _to_mjd(epoch: Any) -> float | None:
    if epoch is None:
        return None
    if isinstance(epoch, Time):
        return float(epoch.tai.mjd)
    return float(epoch)


def _sky_center(center: Any) -> tuple[float, float]:
    """Return (ra, dec) in degrees from a SkyCoord, an (ra, dec) pair in degrees or a LonLat."""
    if hasattr(center, "ra") and hasattr(center, "dec"):
        return float(center.ra.deg), float(center.dec.deg)
    if isinstance(center, sphgeom.LonLat):
        return center.getLon().asDegrees(), center.getLat().asDegrees()
    ra, dec = center
    return float(ra), float(dec)


def _deg(angle: Any) -> float:
    if hasattr(angle, "to_value"):
        return float(angle.to_value("deg"))
    if isinstance(angle, sphgeom.Angle):
        return angle.asDegrees()
    return float(angle)


class LoadIndexedReferenceObjectsConfig(Config):
    """Configuration of `LoadIndexedReferenceObjectsTask` (LSST names and defaults)."""

    ref_dataset_name = Field(dtype=str, default="cal_ref_cat", doc="Name of the reference catalog")
    pixelMargin = RangeField(dtype=int, default=300, min=0, doc="Padding (pixels) around the bbox")
    defaultFilter = Field(dtype=str, default="", doc="Refcat band used when filterName is None or empty")
    filterMap = DictField(
        keytype=str, itemtype=str, default={}, doc="Camera filter name -> reference catalog band name"
    )
    anyFilterMapsToThis = Field(
        dtype=str, default=None, optional=True, doc="Always use this refcat band, whatever the filter"
    )
    requireProperMotion = Field(
        dtype=bool, default=False, doc="Fail if an epoch is given but the catalog has no proper motions"
    )
    cacheSize = RangeField(dtype=int, default=256, min=0, doc="Number of shards kept in memory (calexpress)")


class LoadIndexedReferenceObjectsTask(Task):
    """Load reference objects from an HTM-sharded LSST reference catalog.

    Parameters
    ----------
    butler : `calexpress.butler.Butler`, optional
        Repository whose ``ref_cats/<ref_dataset_name>/`` holds the catalog (uses ``butler.root``).
    config : `LoadIndexedReferenceObjectsConfig`, optional
    root : `str`, optional
        Repository root (path or ``s3://`` URL) instead of a butler.
    ref_cat_dir : `str`, optional
        The catalog folder itself (overrides ``butler``/``root``).
    """

    ConfigClass = LoadIndexedReferenceObjectsConfig
    _DefaultName = "LoadIndexedReferenceObjectsTask"

    def __init__(
        self,
        butler: Any = None,
        config: LoadIndexedReferenceObjectsConfig | None = None,
        *,
        root: str | None = None,
        ref_cat_dir: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(config=config, **kwargs)
        if ref_cat_dir is None:
            sub = f"ref_cats/{self.config.ref_dataset_name}"
            if root is not None:
                ref_cat_dir = _join(str(root), sub)
            elif butler is not None:
                chain = butler._chain() if hasattr(butler, "_chain") else [butler]
                roots = [str(b.root) for b in chain if getattr(b, "root", None)]
                for r in roots:  # the first repository (or parent) that holds the catalog
                    if _exists(_join(r, sub)):
                        ref_cat_dir = _join(r, sub)
                        break
                else:
                    ref_cat_dir = _join(roots[0], sub) if roots else None
        self.ref_cat_dir = None if ref_cat_dir is None else str(ref_cat_dir)
        self._cache: OrderedDict[int, Table] = OrderedDict()
        self._lock = threading.Lock()
        self._depth: int | None = None
        self._format_version: int | None = None
        self._available: set[int] | None = None
        self.cache_hits = 0
        self.cache_misses = 0

    # -- catalog discovery -------------------------------------------------------------------------
    def _require_dir(self) -> str:
        if self.ref_cat_dir is None:
            raise ReferenceCatalogError(
                f"reference catalog {self.config.ref_dataset_name!r}: no repository given "
                "(pass butler=, root= or ref_cat_dir=)"
            )
        return self.ref_cat_dir

    def _init_catalog(self) -> None:
        if self._depth is not None:
            return
        cat_dir = self._require_dir()
        try:
            names = _list_dir(cat_dir)
        except (OSError, FileNotFoundError) as exc:
            raise ReferenceCatalogError(f"{cat_dir}: reference catalog folder not readable ({exc})") from exc
        ids = sorted(int(n[:-5]) for n in names if re.fullmatch(r"\d+\.fits", n))
        depth = None
        if "config.py" in names:
            text = _read_bytes(_join(cat_dir, "config.py")).decode("utf8", "replace")
            m = re.search(r"indexer\[['\"]HTM['\"]\]\.depth\s*=\s*(\d+)", text)
            if m:
                depth = int(m.group(1))
            m = re.search(r"format_version\s*=\s*(\d+)", text)
            if m:
                self._format_version = int(m.group(1))
        if depth is None:
            if not ids:
                raise ReferenceCatalogError(f"{cat_dir}: no <htm id>.fits shards and no config.py")
            depth = htm_depth_from_id(ids[0])
        self._available = {i for i in ids if htm_depth_from_id(i) == depth}
        self._depth = depth
        self._pixelization = sphgeom.HtmPixelization(depth)

    @property
    def depth(self) -> int:
        """HTM depth of the catalog's shards."""
        self._init_catalog()
        assert self._depth is not None
        return self._depth

    def _get_shard(self, htm_id: int) -> Table | None:
        with self._lock:
            if htm_id in self._cache:
                self._cache.move_to_end(htm_id)
                self.cache_hits += 1
                return self._cache[htm_id]
        if self._available is not None and htm_id not in self._available:
            return None
        path = _join(self._require_dir(), f"{htm_id}.fits")
        try:
            data = _read_bytes(path)
        except FileNotFoundError:
            return None
        table = read_shard(data, self._format_version, name=path)
        with self._lock:
            self.cache_misses += 1
            self._cache[htm_id] = table
            while len(self._cache) > max(self.config.cacheSize, 1):
                self._cache.popitem(last=False)
        return table

    # -- loading -----------------------------------------------------------------------------------
    def _resolve_band(self, filterName: str | None) -> str:
        if self.config.anyFilterMapsToThis:
            return self.config.anyFilterMapsToThis
        if not filterName:
            return self.config.defaultFilter
        return self.config.filterMap.get(filterName, filterName)

    def _load_circle_raw(self, ra_deg: float, dec_deg: float, radius_deg: float) -> Table:
        self._init_catalog()
        circle = sphgeom.Circle(
            sphgeom.UnitVector3d(sphgeom.LonLat.fromDegrees(ra_deg, dec_deg)),
            sphgeom.Angle.fromDegrees(radius_deg),
        )
        shards = []
        for begin, end in self._pixelization.envelope(circle):
            for htm_id in range(begin, end):
                t = self._get_shard(htm_id)
                if t is not None and len(t):
                    shards.append(t)
        if not shards:
            return Table()
        table = vstack(shards, metadata_conflicts="silent") if len(shards) > 1 else shards[0].copy()
        return table

    def loadSkyCircle(
        self,
        ctrCoord: Any,
        radius: Any,
        filterName: str | None = None,
        epoch: Any = None,
        centroids: bool = False,
    ) -> Struct:
        """Load reference objects inside a circle on the sky.

        Parameters
        ----------
        ctrCoord : `astropy.coordinates.SkyCoord` or (ra_deg, dec_deg)
        radius : `astropy.units.Quantity` (angle) or `float` degrees
        filterName : `str`, optional
            Camera filter; mapped to a refcat band through ``filterMap``.
        epoch : `astropy.time.Time` or `float` MJD (TAI), optional
            Proper motions are applied to this epoch when given.

        Returns
        -------
        result : `Struct`
            ``refCat`` (`astropy.table.Table`, ``coord_ra/dec`` rad, fluxes nJy, with
            ``<filterName>_camFlux``/``_camFluxErr`` aliases), ``fluxField`` (the refcat column for
            the filter) and ``epoch`` (MJD or None).
        """
        ra, dec = _sky_center(ctrCoord)
        rad = _deg(radius)
        table = self._load_circle_raw(ra, dec, rad)
        band = self._resolve_band(filterName)
        fluxField = f"{band}_flux"
        if len(table) == 0:
            return Struct(refCat=table, fluxField=fluxField, epoch=_to_mjd(epoch))
        ra_r = np.asarray(table["coord_ra"])
        dec_r = np.asarray(table["coord_dec"])
        mjd = _to_mjd(epoch)
        if mjd is not None:
            has_pm = "pm_ra" in table.colnames and "pm_dec" in table.colnames
            if not has_pm and self.config.requireProperMotion:
                raise ReferenceCatalogError(
                    f"{self.ref_cat_dir}: requireProperMotion is set but the catalog has no pm_ra/pm_dec"
                )
            apply_proper_motion(table, mjd)
            ra_r = np.asarray(table["coord_ra"])
            dec_r = np.asarray(table["coord_dec"])
        # Trim to the circle (shards overlap its edge).
        c0 = np.radians([ra, dec])
        cosd = np.sin(dec_r) * np.sin(c0[1]) + np.cos(dec_r) * np.cos(c0[1]) * np.cos(ra_r - c0[0])
        keep = cosd >= np.cos(np.radians(rad))
        table = table[keep]
        if fluxField not in table.colnames:
            raise ReferenceCatalogError(
                f"{self.ref_cat_dir}: no flux column {fluxField!r} for filter {filterName!r} "
                f"(columns: {', '.join(c for c in table.colnames if c.endswith('_flux'))}); set filterMap"
            )
        if filterName:
            table[f"{filterName}_camFlux"] = table[fluxField]
            if f"{band}_fluxErr" in table.colnames:
                table[f"{filterName}_camFluxErr"] = table[f"{band}_fluxErr"]
        table.meta.update(
            {
                "RA": ra,
                "DEC": dec,
                "RADIUS": rad,
                "SMATCHV": 1,
                "FILTER": filterName or "",
                "EPOCH": mjd or 0.0,
            }
        )
        return Struct(refCat=table, fluxField=fluxField, epoch=mjd)

    def loadPixelBox(self, bbox: Any, wcs: Any, filterName: str | None = None, epoch: Any = None) -> Struct:
        """Load reference objects overlapping a pixel box grown by ``pixelMargin``.

        Parameters
        ----------
        bbox : `calexpress.geom.Box` or (x0, y0, width, height)
        wcs : `astropy.wcs.WCS`
            Used to compute the sky circle and the ``centroid_x/y`` columns (0-based pixels).

        Returns
        -------
        result : `Struct`
            As `loadSkyCircle`, with ``centroid_x``, ``centroid_y``, ``hasCentroid`` columns
            and the catalog trimmed to the padded box.
        """
        if hasattr(bbox, "x0"):
            x0, y0, w, h = bbox.x0, bbox.y0, bbox.width, bbox.height
        else:
            x0, y0, w, h = bbox
        m = self.config.pixelMargin
        xs = np.array([x0 - m, x0 + w - 1 + m, x0 - m, x0 + w - 1 + m, x0 + (w - 1) / 2])
        ys = np.array([y0 - m, y0 - m, y0 + h - 1 + m, y0 + h - 1 + m, y0 + (h - 1) / 2])
        ra, dec = wcs.all_pix2world(xs, ys, 0)
        rc, dc = np.radians(ra[4]), np.radians(dec[4])
        rr, dr = np.radians(ra[:4]), np.radians(dec[:4])
        cosd = np.sin(dr) * np.sin(dc) + np.cos(dr) * np.cos(dc) * np.cos(rr - rc)
        radius = float(np.degrees(np.arccos(np.clip(cosd, -1, 1))).max()) * 1.01 + 1e-4
        res = self.loadSkyCircle((ra[4], dec[4]), radius, filterName, epoch)
        table = res.refCat
        if len(table):
            px, py = wcs.all_world2pix(
                np.degrees(table["coord_ra"]), np.degrees(table["coord_dec"]), 0, quiet=True
            )
            table["centroid_x"] = px
            table["centroid_y"] = py
            table["hasCentroid"] = np.isfinite(px) & np.isfinite(py)
            keep = (
                (px >= x0 - m - 0.5)
                & (px <= x0 + w - 0.5 + m)
                & (py >= y0 - m - 0.5)
                & (py <= y0 + h - 0.5 + m)
            )
            res.refCat = table[keep]
        res.refCat.meta.update({"RA": float(ra[4]), "DEC": float(dec[4]), "RADIUS": radius})
        return res

    def getMetadataBox(self, bbox: Any, wcs: Any, filterName: str | None = None, epoch: Any = None) -> dict:
        """Match metadata (``RA``, ``DEC``, ``RADIUS`` deg, ``SMATCHV``, ``FILTER``, ``EPOCH``)."""
        if hasattr(bbox, "x0"):
            x0, y0, w, h = bbox.x0, bbox.y0, bbox.width, bbox.height
        else:
            x0, y0, w, h = bbox
        m = self.config.pixelMargin
        ra, dec = wcs.all_pix2world([x0 + (w - 1) / 2, x0 - m], [y0 + (h - 1) / 2, y0 - m], 0)
        rad = float(np.hypot((ra[1] - ra[0]) * np.cos(np.radians(dec[0])), dec[1] - dec[0]))
        return {
            "RA": float(ra[0]),
            "DEC": float(dec[0]),
            "RADIUS": rad,
            "SMATCHV": 1,
            "FILTER": filterName or "",
            "EPOCH": _to_mjd(epoch) or 0.0,
        }
