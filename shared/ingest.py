"""Ingest raws and master calibrations into a repository's SQLite registries.

Command lines (wired into ``calexpress`` through `register_cli`)::

    calexpress ingest REPO --camera NAME FILES... [--mode link|copy|move|direct]
    calexpress ingest-calibs REPO FILES... [--calib-type T] [--filter F] [--detector D]
                             [--valid-start DATE] [--valid-end DATE] [--mode copy|link|move|direct]

Data IDs come from the raw headers through the camera; calibration type, filter, detector and validity
from the headers (``CALIBTYP``/``OBSTYPE``, ``FILTER``, ``DETECTOR``/``CCDNUM``, ``CALIBDATE``,
``VALIDSTA``/``VALIDEND``), the YAML content (linearizer, crosstalk), the file name, or the options.
A bad file (corrupt, other camera, duplicate) gives one line naming it; the other files are still ingested.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import re
import shutil
import sqlite3
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from . import storage
from .butler import CALIB_TYPES, MAPPER_FILE, _camera_for_mapper, default_templates, format_template
from .registry import CALIB_REGISTRY, RAW_REGISTRY, Registry, sql_type

__all__ = ["IngestError", "IngestResult", "ingest_calibs", "ingest_raws", "register_cli"]

log = logging.getLogger(__name__)

MODES = ("link", "copy", "move", "direct")
_FITS_EXT = re.compile(r"(\.fits?|\.fit)(\.gz|\.fz|\.bz2)?$|\.fz$", re.IGNORECASE)


class IngestError(ValueError):
    """A file that cannot be ingested (the message is one line naming it)."""


@dataclass
class IngestResult:
    """What an ingest did: ``ingested`` rows (data ID or calib row + ``path``) and ``failed`` messages."""

    ingested: list[dict[str, Any]] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)

    @property
    def exit_status(self) -> int:
        """Number of files that failed (a command's exit status)."""
        return len(self.failed)


def _one_line(text: Any) -> str:
    return " ".join(str(text).split())


def _ext_of(path: str) -> str:
    m = _FITS_EXT.search(path)
    if m:
        return m.group(0)
    name = os.path.basename(path)
    return name[name.find("."):] if "." in name else ""


def _with_ext(rel: str, ext: str) -> str:
    """Replace the extension of a template path by the source's (``.fits`` → ``.fits.fz``)."""
    if not ext:
        return rel
    cur = _ext_of(rel)
    if cur and cur.lower() != ext.lower() and cur.lower().startswith((".fit", ".fz")) and \
            ext.lower().startswith((".fit", ".fz")):
        return rel[: -len(cur)] + ext
    return rel


def _transfer(src: str, dest: str, mode: str) -> None:
    """Put *src* at *dest* (each local or S3) by *mode*; across stores, ``link`` copies."""
    if storage.is_remote(dest) or storage.is_remote(src):
        if storage.is_remote(src):
            storage.atomic_write(dest, lambda tmp: storage.get_local_file(src, tmp))
        else:
            storage.put_local_file(src, dest)
        if mode == "move":
            storage.remove(src)
        return
    dest_path = storage.local_path(dest)
    os.makedirs(os.path.dirname(dest_path), exist_ok=True)
    if mode == "link":
        os.symlink(os.path.abspath(src), dest_path)
    elif mode == "move":
        shutil.move(src, dest_path)
    else:
        storage.put_local_file(src, dest)


def _untransfer(src: str, dest: str, mode: str) -> None:
    """Undo `_transfer` after a registry failure."""
    with contextlib.suppress(Exception):
        if mode == "move" and not storage.is_remote(dest):
            shutil.move(storage.local_path(dest), src)
        else:
            storage.remove(dest)


def _check_mode(mode: str) -> None:
    if mode not in MODES:
        raise ValueError(f"unknown ingest mode {mode!r}; choose one of {', '.join(MODES)}")


def _repo_camera(repo: str, camera_name: str | None) -> Any:
    """The repository's camera (from ``_mapper``), writing ``_mapper`` on first use."""
    from .camera import get_camera

    mapper_url = storage.join(repo, MAPPER_FILE)
    existing = None
    with contextlib.suppress(FileNotFoundError):
        existing = storage.read_text(mapper_url).strip()
    if existing:
        cam = _camera_for_mapper(existing, mapper_url)
        if camera_name is not None:
            wanted = get_camera(camera_name)
            if wanted.name != cam.name:
                raise IngestError(f"{repo}: repository holds camera {cam.name} (_mapper), not {wanted.name}")
        return cam
    if camera_name is None:
        raise IngestError(f"{repo}: no _mapper; give the camera (--camera NAME) for a new repository")
    cam = get_camera(camera_name)
    storage.makedirs(repo)
    storage.atomic_write(mapper_url, cam.name + "\n")
    return cam


# ---------------------------------------------------------------------- raws
def ingest_raws(
    repo: str | os.PathLike,
    camera_name: str | None,
    files: Iterable[str | os.PathLike],
    mode: str = "link",
) -> IngestResult:
    """Register raw files in ``REPO/registry.sqlite3`` (data IDs from their headers).

    Parameters
    ----------
    repo
        Repository (local folder or ``s3://`` prefix); created with a ``_mapper`` if new.
    camera_name
        Camera name or YAML path; must match an existing repository's camera (None: use the repository's).
    files
        Raw files.
    mode
        ``link`` (symlink into ``raw/``), ``copy``, ``move``, or ``direct`` (register the file where it
        is).  For an S3 repository, ``link`` copies.

    Returns
    -------
    IngestResult
        ``failed`` has one line per file refused (corrupt, another camera, not a science/raw frame of a
        known detector, duplicate data ID).
    """
    _check_mode(mode)
    repo = os.fspath(repo)
    cam = _repo_camera(repo, camera_name)
    keys = dict(cam.data_id_keys)
    template = (getattr(cam, "path_templates", {}) or {}).get("raw") or default_templates(keys)["raw"]
    result = IngestResult()
    columns = {k: sql_type(t) for k, t in keys.items()}
    columns.update({"taiObs": "TEXT", "expTime": "DOUBLE", "obsType": "TEXT", "camera": "TEXT",
                    "path": "TEXT"})
    with Registry.edit(storage.join(repo, RAW_REGISTRY)) as reg:
        if reg.has_table("raw"):
            # an existing (maybe Gen2) table: keys it lacks are implied by the camera (obs_test's ccd)
            reg.ensure_table("raw", {k: v for k, v in columns.items() if k not in keys})
        else:
            reg.ensure_table("raw", columns, unique=list(keys))
        cols = reg.columns("raw")
        implied = {k: _implied(cam, k) for k in keys if k not in cols}
        seen: dict[tuple, str] = {}
        for f in files:
            src = os.fspath(f)
            try:
                row = _raw_row(cam, src)
                did = {k: row[k] for k in keys}
                for k, v in implied.items():
                    if did[k] != v:
                        raise IngestError(f"{src}: {k}={did[k]!r} but this repository's registry implies "
                                          f"{k}={v!r}")
                key = tuple(did.items())
                where = {k: v for k, v in did.items() if k in cols}
                dup = reg.select("raw", where)
                if dup or key in seen:
                    other = dup[0].get("path") if dup else seen[key]
                    raise IngestError(f"{src}: raw {did} is already ingested"
                                      + (f" (from {other})" if other else ""))
                if mode == "direct":
                    row["path"] = src if storage.is_remote(src) else os.path.abspath(src)
                    reg.insert("raw", {k: v for k, v in row.items() if k in cols})
                else:
                    rel = _with_ext(format_template(template, did), _ext_of(src))
                    dest = storage.join(repo, rel)
                    if storage.exists(dest) or (not storage.is_remote(dest) and os.path.islink(dest)):
                        raise IngestError(f"{src}: destination {dest} already exists")
                    _transfer(src, dest, mode)
                    row["path"] = rel
                    try:
                        reg.insert("raw", {k: v for k, v in row.items() if k in cols})
                    except sqlite3.Error:
                        _untransfer(src, dest, mode)
                        raise
                seen[key] = src
                result.ingested.append({**did, "path": row["path"]})
                log.info("ingested %s as %s", src, did)
            except Exception as exc:  # noqa: BLE001 - one bad file must not stop the others
                msg = _one_line(exc)
                if src not in msg:
                    msg = f"{src}: {msg}"
                result.failed.append(msg)
                log.error("%s", msg)
    return result


def _implied(cam: Any, key: str) -> Any:
    spec = getattr(cam, "_data_id_specs", {}).get(key) or {}
    if "value" in spec:
        return cam.data_id_keys[key](spec["value"])
    if key in ("ccd", "detector") and len(cam.detectors) == 1:
        return next(iter(cam.detectors))
    return None


def _raw_row(cam: Any, src: str) -> dict[str, Any]:
    """Registry row of one raw file (reads it whole, so truncated files are refused)."""
    if storage.is_remote(src):
        with storage.open_input(src) as fobj:
            exp = cam.read_raw(fobj)
    else:
        if not os.path.isfile(src):
            what = "is a folder, not a file" if os.path.isdir(src) else "no such file"
            raise IngestError(f"{src}: {what}")
        exp = cam.read_raw(src)
    md = exp.metadata
    did = cam.metadata_to_data_id(md, filename=src)
    det_key = "ccd" if "ccd" in did else ("detector" if "detector" in did else None)
    if det_key is not None and did[det_key] not in cam.detectors:
        raise IngestError(f"{src}: detector {did[det_key]} is not a detector of camera {cam.name}")
    vi = exp.visit_info
    tai_obs = None
    exptime = None
    if vi is not None:
        exptime = getattr(vi, "exposure_time", None)
        date = getattr(vi, "date", None)
        if date is not None:
            with contextlib.suppress(Exception):
                start = date.tai
                if exptime:
                    from astropy import units as u

                    start = start - (float(exptime) / 2.0) * u.s
                tai_obs = start.isot
    obs_type = None
    with contextlib.suppress(Exception):
        obs_type = cam.obs_type_from_header(md)
    return {**did, "taiObs": tai_obs, "expTime": exptime, "obsType": obs_type, "camera": cam.name}


# ---------------------------------------------------------------------- calibs
_NAME_TYPES = re.compile(
    r"(?i)(^|[^a-z])(bias|zero|dark|flat|fringe|defects?|bpm|linearizer|linearity|crosstalk)")
_TYPE_ALIASES = {"zero": "bias", "defect": "defects", "bpm": "defects", "linearity": "linearizer"}


def _norm_type(value: Any) -> str | None:
    if value is None:
        return None
    t = str(value).strip().lower()
    t = _TYPE_ALIASES.get(t, t)
    for ct in CALIB_TYPES:
        if t == ct.lower():
            return ct
    return None


def _none_if_any(value: Any) -> Any:
    if value is None:
        return None
    if isinstance(value, str) and value.strip() in ("", "NONE", "None", "none", "ANY", "*"):
        return None
    return value


def _calib_info_fits(path: str) -> dict[str, Any]:
    from astropy.io import fits

    with fits.open(path) as hdul:
        hdr = fits.Header(hdul[0].header)
        for h in hdul[1:2]:
            for k in ("CALIBTYP", "OBSTYPE", "FILTER", "DETECTOR", "CCDNUM", "CALIBDATE", "VALIDSTA",
                      "VALIDEND", "DATE-OBS"):
                if k not in hdr and k in h.header:
                    hdr[k] = h.header[k]
    info: dict[str, Any] = {}
    info["calibType"] = _norm_type(hdr.get("CALIBTYP")) or _norm_type(hdr.get("OBSTYPE"))
    info["filter"] = _none_if_any(hdr.get("FILTER"))
    det = hdr.get("DETECTOR", hdr.get("CCDNUM"))
    numeric = isinstance(det, int | float) or (isinstance(det, str) and det.isdigit())
    info["detectors"] = [int(det)] if numeric else []
    info["calibDate"] = hdr.get("CALIBDATE") or hdr.get("DATE-OBS")
    info["validStart"] = hdr.get("VALIDSTA")
    info["validEnd"] = hdr.get("VALIDEND")
    return info


def _calib_info_yaml(path: str) -> dict[str, Any]:
    import yaml

    with open(path) as f:
        doc = yaml.safe_load(f)
    if not isinstance(doc, dict):
        raise IngestError(f"{path}: not a calibration YAML mapping")
    ctype = _norm_type(doc.get("calibType") or doc.get("calib_type") or doc.get("OBSTYPE"))
    if ctype is None:
        text = str(doc.get("type", ""))
        if text.lower().startswith("linear"):
            ctype = "linearizer"
        else:
            dets = doc.get("detectors") or {}
            sample = next(iter(dets.values()), {}) if isinstance(dets, dict) else {}
            if "coeffs" in doc or (isinstance(sample, dict) and "coeffs" in sample):
                ctype = "crosstalk"
    dets = doc.get("detectors")
    detectors = [int(k) for k in dets if str(k).lstrip("-").isdigit()] if isinstance(dets, dict) else []
    if not detectors and doc.get("detector") is not None:
        detectors = [int(doc["detector"])]
    return {
        "calibType": ctype,
        "filter": _none_if_any(doc.get("filter")),
        "detectors": detectors,
        "calibDate": doc.get("calibDate") or doc.get("CALIBDATE"),
        "validStart": doc.get("validStart"),
        "validEnd": doc.get("validEnd"),
    }


def _calib_info_ecsv(path: str) -> dict[str, Any]:
    from astropy.table import Table

    t = Table.read(path, format="ascii.ecsv")
    meta = {str(k).upper(): v for k, v in t.meta.items()}
    det = meta.get("DETECTOR")
    return {
        "calibType": _norm_type(meta.get("CALIBTYP") or meta.get("OBSTYPE")) or "defects",
        "filter": _none_if_any(meta.get("FILTER")),
        "detectors": [int(det)] if det is not None else [],
        "calibDate": meta.get("CALIBDATE"),
        "validStart": meta.get("VALIDSTA"),
        "validEnd": meta.get("VALIDEND"),
    }


def _validate_calib(calib_type: str, path: str, detector: int | None) -> None:
    """Read the file with its reader so that a corrupt file is refused at ingest."""
    if calib_type in ("bias", "dark", "flat", "fringe"):
        from .exposure import Exposure

        Exposure.read(path)
    elif calib_type == "defects":
        from .calibs import Defects

        Defects.read(path)
    elif calib_type == "linearizer":
        from .calibs import Linearizer

        Linearizer.read(path, detector=detector)
    elif calib_type == "crosstalk":
        from .calibs import CrosstalkCalib

        CrosstalkCalib.read(path, detector=detector)


def ingest_calibs(
    repo: str | os.PathLike,
    files: Iterable[str | os.PathLike],
    calib_type: str | None = None,
    filter: str | None = None,
    detector: int | None = None,
    valid_start: str | None = None,
    valid_end: str | None = None,
    *,
    mode: str = "copy",
    calib_date: str | None = None,
) -> IngestResult:
    """Register master calibrations in ``REPO/calibRegistry.sqlite3``.

    Type, filter, detector and validity come from the options when given, else from the file: FITS
    headers (``CALIBTYP``/``OBSTYPE``, ``FILTER``, ``DETECTOR``/``CCDNUM``, ``CALIBDATE``, ``VALIDSTA``,
    ``VALIDEND``), YAML content (``type: Linearize*`` → linearizer, ``coeffs`` → crosstalk; one row per
    entry of ``detectors``), ECSV defects, then the file name (``bias_``, ``flat_``, ``defects_``,
    ``det<N>``).
    A missing validity bound is open; a ``NONE`` filter means any filter.

    Returns
    -------
    IngestResult
        ``ingested`` calib rows (with ``calibType`` and ``path``), ``failed`` one line per refused file.
    """
    _check_mode(mode)
    repo = os.fspath(repo)
    storage.makedirs(repo)
    result = IngestResult()
    forced_type = _norm_type(calib_type) if calib_type is not None else None
    if calib_type is not None and forced_type is None:
        raise ValueError(f"unknown calibration type {calib_type!r}; choose one of {', '.join(CALIB_TYPES)}")
    with Registry.edit(storage.join(repo, CALIB_REGISTRY)) as reg:
        for f in files:
            src = os.fspath(f)
            try:
                if storage.is_remote(src):
                    raise IngestError(f"{src}: ingest calibrations from local files")
                if not os.path.isfile(src):
                    raise IngestError(f"{src}: no such file")
                name = os.path.basename(src).lower()
                try:
                    if name.endswith((".yaml", ".yml")):
                        info = _calib_info_yaml(src)
                    elif name.endswith(".ecsv"):
                        info = _calib_info_ecsv(src)
                    else:
                        info = _calib_info_fits(src)
                except IngestError:
                    raise
                except Exception as exc:
                    raise IngestError(f"{src}: cannot read calibration: {_one_line(exc)}") from None
                ctype = forced_type or info["calibType"]
                if ctype is None:
                    m = _NAME_TYPES.search(name)
                    ctype = _norm_type(m.group(2)) if m else None
                if ctype is None:
                    raise IngestError(
                        f"{src}: unknown calibration type (no CALIBTYP/OBSTYPE; use --calib-type)")
                dets: list[int | None]
                if detector is not None:
                    dets = [int(detector)]
                elif info["detectors"]:
                    dets = list(info["detectors"])
                else:
                    m = re.search(r"(?i)det(?:ector)?[_-]?(\d+)", name)
                    dets = [int(m.group(1))] if m else [None]
                flt = filter if filter is not None else info["filter"]
                if ctype not in ("flat", "fringe"):
                    flt = flt if filter is not None else None
                elif flt is None:
                    raise IngestError(f"{src}: {ctype} without a filter (no FILTER keyword; use --filter)")
                try:
                    _validate_calib(ctype, src, dets[0])
                except Exception as exc:
                    msg = _one_line(exc)
                    raise IngestError(msg if src in msg else f"{src}: not a valid {ctype}: {msg}") from None
                cdate = calib_date or info["calibDate"]
                vstart = valid_start if valid_start is not None else info["validStart"]
                vend = valid_end if valid_end is not None else info["validEnd"]
                for v in (cdate, vstart, vend):
                    if v is not None:
                        from .registry import date_to_mjd

                        try:
                            date_to_mjd(v)
                        except Exception:
                            raise IngestError(f"{src}: bad date {v!r}") from None
                reg.ensure_table(ctype, {"calibDate": "TEXT", "validStart": "TEXT", "validEnd": "TEXT",
                                         "filter": "TEXT", "ccd": "INTEGER", "path": "TEXT"})
                rows = []
                same_product = None
                for det in dets:
                    where = {"filter": flt, "ccd": det, "calibDate": _s(cdate), "validStart": _s(vstart),
                             "validEnd": _s(vend)}
                    dup = reg.select(ctype, where)
                    if dup:
                        other = str(dup[0].get("path") or "")
                        if other and _stem(other) == _stem(src):
                            same_product = other  # the same product in another format (e.g. .fits / .ecsv)
                            continue
                        raise IngestError(f"{src}: a {ctype} for filter={flt} ccd={det} with the same dates "
                                          f"is already ingested ({other or 'Gen2 row'})")
                    rows.append(where)
                if not rows:
                    msg = f"{src}: same {ctype} already ingested as {same_product}; skipped"
                    result.skipped.append(msg)
                    log.info("%s", msg)
                    continue
                if mode == "direct":
                    rel = os.path.abspath(src)
                else:
                    sub = re.sub(r"[^0-9A-Za-z]", "", str(cdate))[:8] if cdate else ""
                    rel = "/".join(p for p in (ctype, sub, os.path.basename(src)) if p)
                    dest = storage.join(repo, rel)
                    if storage.exists(dest) or (not storage.is_remote(dest) and os.path.islink(dest)):
                        raise IngestError(f"{src}: destination {dest} already exists")
                    _transfer(src, dest, mode)
                for row in rows:
                    row["path"] = rel
                    reg.insert(ctype, row)
                    result.ingested.append({"calibType": ctype, **row})
                log.info("ingested %s as %s for ccd %s", src, ctype, dets)
            except Exception as exc:  # noqa: BLE001 - one bad file must not stop the others
                msg = _one_line(exc)
                if src not in msg:
                    msg = f"{src}: {msg}"
                result.failed.append(msg)
                log.error("%s", msg)
    return result


def _stem(path: str) -> str:
    name = os.path.basename(path)
    return name[: -len(_ext_of(name))] if _ext_of(name) else name.rsplit(".", 1)[0]


def _s(v: Any) -> str | None:
    return None if v is None else str(v)


# ---------------------------------------------------------------------- command line
def _run_ingest(args: argparse.Namespace) -> int:
    try:
        res = ingest_raws(args.repo, args.camera, args.files, mode=args.mode)
    except (IngestError, ValueError, OSError) as exc:
        print(f"calexpress ingest: {_one_line(exc)}", file=__import__("sys").stderr)
        return max(1, len(args.files))
    print(f"ingested {len(res.ingested)} raw(s) into {args.repo}; {len(res.failed)} failed")
    return res.exit_status


def _run_ingest_calibs(args: argparse.Namespace) -> int:
    try:
        res = ingest_calibs(
            args.repo, args.files, calib_type=args.calib_type, filter=args.filter, detector=args.detector,
            valid_start=args.valid_start, valid_end=args.valid_end, mode=args.mode,
            calib_date=args.calib_date,
        )
    except (IngestError, ValueError, OSError) as exc:
        print(f"calexpress ingest-calibs: {_one_line(exc)}", file=__import__("sys").stderr)
        return max(1, len(args.files))
    print(f"ingested {len(res.ingested)} calibration row(s) into {args.repo}; {len(res.skipped)} skipped "
          f"(same product in another format); {len(res.failed)} failed")
    return res.exit_status


def register_cli(subparsers: Any) -> None:
    """Add the ``ingest`` and ``ingest-calibs`` subcommands (``func(args) -> exit status``)."""
    p = subparsers.add_parser("ingest", help="register raw files in a repository (data IDs from headers)",
                              description="Register raw files in REPO/registry.sqlite3. Exit status = "
                                          "number of files refused.")
    p.add_argument("repo", metavar="REPO", help="repository (folder or s3://bucket/prefix)")
    p.add_argument("--camera", required=False, default=None,
                   help="camera name or YAML path (required for a new repository)")
    p.add_argument("--mode", choices=MODES, default="link",
                   help="link (default), copy, move, or direct (register files where they are)")
    p.add_argument("files", nargs="+", metavar="FILES")
    p.set_defaults(func=_run_ingest)

    c = subparsers.add_parser("ingest-calibs", help="register master calibrations in a repository",
                              description="Register master calibrations in REPO/calibRegistry.sqlite3. "
                                          "Exit status = number of files refused.")
    c.add_argument("repo", metavar="REPO")
    c.add_argument("files", nargs="+", metavar="FILES")
    c.add_argument("--calib-type", dest="calib_type", default=None, choices=CALIB_TYPES)
    c.add_argument("--filter", default=None)
    c.add_argument("--detector", type=int, default=None)
    c.add_argument("--valid-start", dest="valid_start", default=None, help="ISO date (TAI); default open")
    c.add_argument("--valid-end", dest="valid_end", default=None, help="ISO date (TAI); default open")
    c.add_argument("--calib-date", dest="calib_date", default=None, help="ISO date the product was made")
    c.add_argument("--mode", choices=MODES, default="copy")
    c.set_defaults(func=_run_ingest_calibs)


def main(argv: Sequence[str] | None = None) -> int:  # pragma: no cover - convenience
    """Run the ingest subcommands without the ``calexpress`` wrapper."""
    parser = argparse.ArgumentParser(prog="calexpress")
    register_cli(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return int(args.func(args))
