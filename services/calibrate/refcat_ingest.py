"""``calexpress refcat ingest``: build an LSST-format HTM-sharded reference catalog from tables.

Input: FITS, CSV, ECSV (or any astropy-readable) tables, or the IRAF/NOAO Landolt lists
(``--format landolt``: name, RA h:m:s, Dec d:m:s, V, B−V, U−B, V−R, R−I, V−I, n, m and the six
errors; U, B, V, R, I magnitudes are derived from V and the colours).  Output in
``REPO/ref_cats/NAME/``: ``<htm id>.fits`` shards (format version 1: fluxes in nJy, coordinates
in radians), ``config.py`` (LSST ``DatasetConfig``) and ``master_schema.fits``.
"""

from __future__ import annotations

import argparse
import io
import logging
import math
from collections.abc import Sequence

import lsst.sphgeom as sphgeom
import numpy as np
from astropy.coordinates import Angle
from astropy.io import fits
from astropy.table import Table, vstack

__all__ = ["ingest_refcat", "parse_landolt", "read_input_table", "register_cli"]

log = logging.getLogger(__name__)

_LANDOLT_COLOURS = ("BV", "UB", "VR", "RI", "VI")


def parse_landolt(path_or_text: str) -> Table:
    """Parse a Landolt list (IRAF ``noao$lib/obsdb``-style ``landolt.dat``/``nlandolt.dat``).

    Returns
    -------
    table : `astropy.table.Table`
        ``name``, ``ra``, ``dec`` (deg, J2000), ``U``, ``B``, ``V``, ``R``, ``I`` and ``*_err`` (mag),
        ``n_obs``, ``m_nights``.
    """
    if "\n" in path_or_text:
        text, src = path_or_text, "<text>"
    else:
        with open(path_or_text, encoding="utf8", errors="replace") as fh:
            text, src = fh.read(), path_or_text
    rows = []
    for lineno, line in enumerate(text.splitlines(), 1):
        parts = line.split()
        if not parts or parts[0].startswith("#"):
            continue
        if len(parts) < 17:
            raise ValueError(
                f"{src}:{lineno}: expected at least 17 columns in a Landolt line, got {len(parts)}"
            )
        try:
            ra = Angle(parts[1], unit="hourangle").deg
            dec = Angle(parts[2], unit="deg").deg
            vals = [float(v) for v in parts[3:17]]
        except ValueError as exc:
            raise ValueError(f"{src}:{lineno}: unreadable Landolt line ({exc})") from None
        rows.append((parts[0], ra, dec, *vals))
    names = [
        "name",
        "ra",
        "dec",
        "V",
        "BV",
        "UB",
        "VR",
        "RI",
        "VI",
        "n_obs",
        "m_nights",
        "V_err",
        "BV_err",
        "UB_err",
        "VR_err",
        "RI_err",
        "VI_err",
    ]
    t = Table(rows=rows, names=names)
    t["B"] = t["V"] + t["BV"]
    t["U"] = t["B"] + t["UB"]
    t["R"] = t["V"] - t["VR"]
    t["I"] = t["R"] - t["RI"]
    t["B_err"] = np.hypot(t["V_err"], t["BV_err"])
    t["U_err"] = np.hypot(t["B_err"], t["UB_err"])
    t["R_err"] = np.hypot(t["V_err"], t["VR_err"])
    t["I_err"] = np.hypot(t["R_err"], t["RI_err"])
    t["n_obs"] = t["n_obs"].astype(int)
    t["m_nights"] = t["m_nights"].astype(int)
    return t


def read_input_table(path: str, fmt: str | None = None) -> Table:
    """Read one input table: ``fmt`` = landolt, fits, csv, ecsv or any astropy format (guessed by suffix)."""
    low = path.lower()
    if fmt == "landolt" or (fmt is None and low.endswith(".dat") and "landolt" in low):
        return parse_landolt(path)
    if fmt is None:
        if low.endswith((".fits", ".fit", ".fits.gz", ".fit.gz")):
            fmt = "fits"
        elif low.endswith(".ecsv"):
            fmt = "ascii.ecsv"
        elif low.endswith(".csv"):
            fmt = "ascii.csv"
    elif fmt in ("csv", "ecsv"):
        fmt = f"ascii.{fmt}"
    try:
        return Table.read(path, format=fmt) if fmt else Table.read(path)
    except Exception as exc:
        raise ValueError(f"{path}: cannot read as a table ({exc})") from None


def _parse_map(spec: Sequence[str] | None) -> dict[str, str]:
    """``["g=gmag", "r"]`` -> ``{"g": "gmag", "r": "r"}``."""
    out: dict[str, str] = {}
    for item in spec or []:
        for part in item.split(","):
            part = part.strip()
            if not part:
                continue
            band, _, col = part.partition("=")
            out[band.strip()] = (col or band).strip()
    return out


def _coord_deg(col, name: str, hours: bool) -> np.ndarray:
    unit = getattr(col, "unit", None)
    if col.dtype.kind in "US":
        return Angle(np.asarray(col, str), unit="hourangle" if hours else "deg").deg
    values = np.asarray(col, float)
    if unit is not None and str(unit) in ("rad", "radian"):
        return np.degrees(values)
    return values


def ingest_refcat(
    repo: str,
    name: str,
    tables: Sequence[Table],
    *,
    ra_col: str = "ra",
    dec_col: str = "dec",
    id_col: str | None = None,
    mag_cols: dict[str, str] | None = None,
    mag_err_cols: dict[str, str] | None = None,
    flux_cols: dict[str, str] | None = None,
    flux_err_cols: dict[str, str] | None = None,
    flux_unit: str = "nJy",
    pm_ra_col: str | None = None,
    pm_dec_col: str | None = None,
    pm_unit: str = "mas/yr",
    epoch: float | None = None,
    extra_cols: Sequence[str] = (),
    depth: int = 7,
    ra_hours: bool = False,
) -> list[str]:
    """Write the shards of reference catalog ``name`` into ``repo/ref_cats/name/``.

    Magnitudes are AB (``flux_nJy = 10**(-0.4 (mag − 31.4))``); fluxes may be given in nJy, uJy, mJy
    or Jy.  ``pm_ra`` is dRA/dt·cos(Dec).  ``epoch`` is the MJD (TAI) of the positions (default
    J2000.0, MJD 51544.5).  Returns the written shard URLs.
    """
    from calexpress import storage

    if not tables:
        raise ValueError("refcat ingest: no input tables")
    table = vstack(list(tables), metadata_conflicts="silent") if len(tables) > 1 else tables[0]
    for col in [ra_col, dec_col, *(mag_cols or {}).values(), *(flux_cols or {}).values()]:
        if col not in table.colnames:
            raise ValueError(f"refcat ingest: no column {col!r} (columns: {', '.join(table.colnames)})")
    ra = _coord_deg(table[ra_col], ra_col, ra_hours)
    dec = _coord_deg(table[dec_col], dec_col, False)
    good = np.isfinite(ra) & np.isfinite(dec) & (np.abs(dec) <= 90)
    if not good.all():
        log.warning("refcat ingest: dropping %d rows with invalid coordinates", int((~good).sum()))
    out = Table()
    n = len(table)
    if id_col and table[id_col].dtype.kind in "iu":
        out["id"] = np.asarray(table[id_col], np.int64)
    else:
        out["id"] = np.arange(1, n + 1, dtype=np.int64)
        if id_col:
            out[id_col] = np.asarray(table[id_col]).astype(str)
    out["coord_ra"] = np.radians(ra)
    out["coord_dec"] = np.radians(dec)
    out["coord_ra"].unit = out["coord_dec"].unit = "rad"
    scale = {"njy": 1.0, "ujy": 1e3, "mjy": 1e6, "jy": 1e9}[flux_unit.lower()]
    for band, col in (mag_cols or {}).items():
        mag = np.asarray(table[col], float)
        out[f"{band}_flux"] = 10 ** (-0.4 * (mag - 31.4))
        ecol = (mag_err_cols or {}).get(band)
        if ecol:
            out[f"{band}_fluxErr"] = out[f"{band}_flux"] * np.asarray(table[ecol], float) * math.log(10) / 2.5
        else:
            out[f"{band}_fluxErr"] = np.full(n, np.nan)
    for band, col in (flux_cols or {}).items():
        out[f"{band}_flux"] = np.asarray(table[col], float) * scale
        ecol = (flux_err_cols or {}).get(band)
        out[f"{band}_fluxErr"] = np.asarray(table[ecol], float) * scale if ecol else np.full(n, np.nan)
    for c in out.colnames:
        if c.endswith("_flux") or c.endswith("_fluxErr"):
            out[c].unit = "nJy"
    if pm_ra_col and pm_dec_col:
        conv = {"mas/yr": math.radians(1 / 3.6e6), "arcsec/yr": math.radians(1 / 3600.0), "rad/yr": 1.0}[
            pm_unit
        ]
        out["pm_ra"] = np.nan_to_num(np.asarray(table[pm_ra_col], float)) * conv
        out["pm_dec"] = np.nan_to_num(np.asarray(table[pm_dec_col], float)) * conv
        out["pm_ra"].unit = out["pm_dec"].unit = "rad/yr"
    out["epoch"] = np.full(n, 51544.5 if epoch is None else float(epoch))
    for c in extra_cols:
        out[c] = table[c]
    out = out[good]
    pix = sphgeom.HtmPixelization(depth)
    htm = np.array(
        [
            pix.index(sphgeom.UnitVector3d(sphgeom.LonLat.fromDegrees(float(r), float(d))))
            for r, d in zip(ra[good], dec[good])
        ],
        dtype=np.int64,
    )
    root = storage.join(repo, "ref_cats", name)
    written = []
    for hid in np.unique(htm):
        shard = out[htm == hid]
        url = storage.join(root, f"{int(hid)}.fits")
        storage.atomic_write(url, _fits_bytes(shard))
        written.append(url)
    storage.atomic_write(storage.join(root, "master_schema.fits"), _fits_bytes(out[:0]))
    storage.atomic_write(storage.join(root, "config.py"), _config_text(name, depth))
    log.info("Ingested %d objects into %d shards of %s (HTM depth %d)", len(out), len(written), root, depth)
    return written


def _fits_bytes(table: Table) -> bytes:
    hdu = fits.BinTableHDU(table)
    hdu.header["HIERARCH REFCAT_FORMAT_VERSION"] = 1
    buf = io.BytesIO()
    fits.HDUList([fits.PrimaryHDU(), hdu]).writeto(buf)
    return buf.getvalue()


def _config_text(name: str, depth: int) -> str:
    return (
        "import lsst.meas.algorithms.ingestIndexReferenceTask\n"
        "assert type(config)==lsst.meas.algorithms.ingestIndexReferenceTask.DatasetConfig, "
        "'config is of type %s.%s instead of lsst.meas.algorithms.ingestIndexReferenceTask.DatasetConfig' "
        "% (type(config).__module__, type(config).__name__)\n"
        "import lsst.meas.algorithms.indexerRegistry\n"
        "# Version number of the persisted on-disk storage format. Version 1 had nJy as flux units.\n"
        "config.format_version=1\n\n"
        f"# Name of this reference catalog.\nconfig.ref_dataset_name={name!r}\n\n"
        f"# Depth of the HTM tree to make.\nconfig.indexer['HTM'].depth={int(depth)}\n\n"
        "config.indexer.name='HTM'\n"
    )


def _run(args: argparse.Namespace) -> int:
    tables = []
    for path in args.files:
        try:
            tables.append(read_input_table(path, args.format))
        except (OSError, ValueError) as exc:
            log.error("%s", exc if str(path) in str(exc) else f"{path}: {exc}")
            return 1
    fmt_landolt = args.format == "landolt" or all(
        "landolt" in p.lower() and p.lower().endswith(".dat") for p in args.files
    )
    mag_cols = _parse_map(args.mag_cols)
    mag_err = _parse_map(args.mag_err_cols)
    ra_col, dec_col, id_col = args.ra_col, args.dec_col, args.id_col
    if fmt_landolt:
        mag_cols = mag_cols or {b: b for b in "UBVRI"}
        mag_err = mag_err or {b: f"{b}_err" for b in mag_cols}
        id_col = id_col or "name"
    try:
        ingest_refcat(
            args.repo,
            args.name,
            tables,
            ra_col=ra_col,
            dec_col=dec_col,
            id_col=id_col,
            mag_cols=mag_cols,
            mag_err_cols=mag_err,
            flux_cols=_parse_map(args.flux_cols),
            flux_err_cols=_parse_map(args.flux_err_cols),
            flux_unit=args.flux_unit,
            pm_ra_col=args.pm_ra_col,
            pm_dec_col=args.pm_dec_col,
            pm_unit=args.pm_unit,
            epoch=args.epoch,
            extra_cols=args.extra_cols or [],
            depth=args.depth,
            ra_hours=args.ra_hours,
        )
    except (OSError, ValueError, KeyError) as exc:
        log.error("refcat ingest %s: %s", args.name, exc)
        return 1
    return 0


def register_cli(subparsers) -> None:
    """Add ``refcat ingest`` to the ``calexpress`` command."""
    p = subparsers.add_parser("refcat", help="reference catalogs (LSST HTM-sharded format)")
    sub = p.add_subparsers(dest="refcat_action", metavar="ACTION")
    sub.required = True
    ing = sub.add_parser(
        "ingest", help="build HTM shards in REPO/ref_cats/NAME from FITS/CSV/ECSV/Landolt tables"
    )
    ing.add_argument("repo", help="repository root (path or s3:// URL)")
    ing.add_argument("name", help="reference catalog name (ref_dataset_name)")
    ing.add_argument("files", nargs="+", help="input tables")
    ing.add_argument("--format", default=None, help="landolt, fits, csv, ecsv (default: from the suffix)")
    ing.add_argument("--ra-col", default="ra", help="RA column (deg, or sexagesimal strings)")
    ing.add_argument("--dec-col", default="dec", help="Dec column (deg, or sexagesimal strings)")
    ing.add_argument("--ra-hours", action="store_true", help="sexagesimal RA strings are in hours")
    ing.add_argument("--id-col", default=None, help="id column (integers; other values are kept as a column)")
    ing.add_argument("--mag-cols", nargs="*", help="band=column of AB magnitudes, e.g. g=gmag r=rmag")
    ing.add_argument("--mag-err-cols", "--mag-err", nargs="*", help="band=column of magnitude errors")
    ing.add_argument("--flux-cols", nargs="*", help="band=column of fluxes")
    ing.add_argument("--flux-err-cols", nargs="*", help="band=column of flux errors")
    ing.add_argument(
        "--flux-unit", default="nJy", choices=["nJy", "uJy", "mJy", "Jy"], help="unit of --flux-cols"
    )
    ing.add_argument("--pm-ra-col", default=None, help="proper motion in RA (times cos Dec) column")
    ing.add_argument("--pm-dec-col", default=None, help="proper motion in Dec column")
    ing.add_argument("--pm-unit", default="mas/yr", choices=["mas/yr", "arcsec/yr", "rad/yr"])
    ing.add_argument("--epoch", type=float, default=None, help="MJD (TAI) of the positions (default J2000)")
    ing.add_argument("--extra-cols", nargs="*", help="other columns copied into the shards")
    ing.add_argument("--depth", type=int, default=7, help="HTM depth (LSST default 7)")
    ing.set_defaults(func=_run)
