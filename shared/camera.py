"""Cameras described by YAML files: detectors, amplifiers, header keyword maps, raw reading, initial WCS.

A camera is a YAML file (``calexpress/cameras/<name>.yaml`` for the packaged ones); adding a camera needs
no code.  ``docs/cameras.md`` describes every key.  The main entry points are `get_camera`, `Camera.read_raw`
and `identify_camera`.

Conventions: boxes are `calexpress.geom.Box` (0-based, ``Box(x0, y0, width, height)``); in the YAML a box
is either ``[x0, y0, width, height]`` (0-based) or a FITS section string ``"[x1:x2,y1:y2]"`` (1-based,
inclusive; a reversed range in an amplifier's ``bbox`` means the amplifier is flipped along that axis).
"""

from __future__ import annotations

import math
import re
import warnings
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from astropy.io import fits

from .geom import Box, parse_fits_section

__all__ = [
    "Amplifier",
    "Camera",
    "CameraError",
    "Detector",
    "available_cameras",
    "get_camera",
    "identify_camera",
    "make_cd_matrix",
]

#: Header cards describing the FITS structure of a file, not the observation; dropped from metadata.
_STRUCTURAL = {
    "SIMPLE",
    "XTENSION",
    "BITPIX",
    "NAXIS",
    "NAXIS1",
    "NAXIS2",
    "NAXIS3",
    "EXTEND",
    "PCOUNT",
    "GCOUNT",
    "BZERO",
    "BSCALE",
    "BLANK",
    "CHECKSUM",
    "DATASUM",
    "EXTNAME",
    "EXTVER",
    "TFIELDS",
    "ZIMAGE",
    "ZBITPIX",
    "ZNAXIS",
    "ZNAXIS1",
    "ZNAXIS2",
    "ZTILE1",
    "ZTILE2",
    "ZCMPTYPE",
    "ZNAME1",
    "ZVAL1",
    "ZNAME2",
    "ZVAL2",
    "ZQUANTIZ",
    "ZDITHER0",
    "ZSIMPLE",
    "ZEXTEND",
    "ZTENSION",
    "ZPCOUNT",
    "ZGCOUNT",
    "ZHECKSUM",
    "ZDATASUM",
}

_TYPES = {"int": int, "str": str, "float": float}


class CameraError(ValueError):
    """A camera description or a raw file does not fit; the message names the file and the problem."""


# --------------------------------------------------------------------------------------------------
# geometry


def _box(value: Any, what: str) -> tuple[Box | None, bool, bool]:
    """Parse a YAML box: ``[x0, y0, w, h]`` or a FITS section; returns (box, flip_x, flip_y)."""
    if value is None:
        return None, False, False
    if isinstance(value, str):
        try:
            return parse_fits_section(value)
        except ValueError as exc:
            raise CameraError(f"{what}: {exc}") from None
    try:
        x0, y0, w, h = (int(v) for v in value)
    except (TypeError, ValueError):
        raise CameraError(
            f"{what}: a box is [x0, y0, width, height] or '[x1:x2,y1:y2]', not {value!r}"
        ) from None
    return Box(x0, y0, w, h), False, False


@dataclass
class Amplifier:
    """One amplifier: where its pixels are in the raw frame and in the assembled detector.

    All ``raw_*`` boxes are 0-based pixels of the untrimmed raw frame as `Camera.read_raw` returns it;
    ``bbox`` is the amplifier's data region in the assembled (trimmed) detector frame.
    """

    name: str
    raw_bbox: Box
    raw_data_bbox: Box
    raw_serial_overscan_bbox: Box | None
    raw_parallel_overscan_bbox: Box | None
    raw_prescan_bbox: Box | None
    bbox: Box
    flip_x: bool = False
    flip_y: bool = False
    gain: float = 1.0
    read_noise: float = 0.0
    saturation: float = float("nan")
    suspect_level: float = float("nan")
    linearity_type: str | None = None
    linearity_coeffs: list[float] = field(default_factory=list)
    hdu: int | str | None = None

    def data_to_assembled(self, data: np.ndarray) -> np.ndarray:
        """Return a view of raw-data-box pixels oriented as in the assembled frame (flips applied)."""
        if self.flip_x:
            data = data[:, ::-1]
        if self.flip_y:
            data = data[::-1, :]
        return data


@dataclass
class Detector:
    """One CCD: its assembled bounding box and amplifiers."""

    id: int
    name: str
    serial: str
    bbox: Box
    amplifiers: list[Amplifier]
    pixel_scale: float
    pixel_size_um: float | None = None
    crosstalk: dict | None = None
    defects: list[Box] = field(default_factory=list)
    vignette_polygons: list[list[tuple[float, float]]] = field(default_factory=list)
    raw_shape: tuple[int, int] | None = None

    def __getitem__(self, name: str) -> Amplifier:
        for amp in self.amplifiers:
            if amp.name == name:
                return amp
        raise KeyError(
            f"detector {self.name} has no amplifier {name!r}; amplifiers are "
            f"{[a.name for a in self.amplifiers]}"
        )

    def getName(self) -> str:  # noqa: N802 - LSST-style alias
        """Return the detector name (LSST spelling)."""
        return self.name


def _parse_amp(d: dict, where: str) -> Amplifier:
    name = str(d["name"])
    w = f"{where} amplifier {name}"
    raw_data_bbox, _, _ = _box(d.get("raw_data_bbox"), f"{w} raw_data_bbox")
    if raw_data_bbox is None:
        raise CameraError(f"{w}: raw_data_bbox is required")
    bbox, fx, fy = _box(d.get("bbox"), f"{w} bbox")
    if bbox is None:
        raise CameraError(f"{w}: bbox is required")
    if bbox.shape != raw_data_bbox.shape:
        raise CameraError(f"{w}: bbox {bbox} and raw_data_bbox {raw_data_bbox} differ in size")
    serial, _, _ = _box(d.get("raw_serial_overscan_bbox"), f"{w} raw_serial_overscan_bbox")
    parallel, _, _ = _box(d.get("raw_parallel_overscan_bbox"), f"{w} raw_parallel_overscan_bbox")
    prescan, _, _ = _box(d.get("raw_prescan_bbox"), f"{w} raw_prescan_bbox")
    raw_bbox, _, _ = _box(d.get("raw_bbox"), f"{w} raw_bbox")
    if raw_bbox is None:  # the union of the boxes given
        boxes = [b for b in (raw_data_bbox, serial, parallel, prescan) if b is not None]
        x0, y0 = min(b.x0 for b in boxes), min(b.y0 for b in boxes)
        raw_bbox = Box(x0, y0, max(b.x1 for b in boxes) - x0, max(b.y1 for b in boxes) - y0)
    lin = d.get("linearity") or {}
    return Amplifier(
        name=name,
        raw_bbox=raw_bbox,
        raw_data_bbox=raw_data_bbox,
        raw_serial_overscan_bbox=serial,
        raw_parallel_overscan_bbox=parallel,
        raw_prescan_bbox=prescan,
        bbox=bbox,
        flip_x=bool(d.get("flip_x", fx)),
        flip_y=bool(d.get("flip_y", fy)),
        gain=float(d.get("gain", 1.0)),
        read_noise=float(d.get("read_noise", 0.0)),
        saturation=float(d.get("saturation", float("nan"))),
        suspect_level=float(d.get("suspect_level", float("nan"))),
        linearity_type=lin.get("type"),
        linearity_coeffs=[float(c) for c in lin.get("coeffs", [])],
        hdu=d.get("hdu"),
    )


def _parse_detector(d: dict, camera_name: str) -> Detector:
    det_id = int(d["id"])
    where = f"camera {camera_name} detector {det_id}"
    amps = [_parse_amp(a, where) for a in d.get("amplifiers", [])]
    if not amps:
        raise CameraError(f"{where}: no amplifiers")
    bbox, _, _ = _box(d.get("bbox"), f"{where} bbox")
    if bbox is None:
        x1 = max(a.bbox.x1 for a in amps)
        y1 = max(a.bbox.y1 for a in amps)
        bbox = Box(0, 0, x1, y1)
    for a in amps:
        if a.bbox.clip(bbox) != a.bbox:
            raise CameraError(f"{where}: amplifier {a.name} bbox {a.bbox} lies outside the detector {bbox}")
    defects = [_box(b, f"{where} defects")[0] for b in d.get("defects", [])]
    polys = [[(float(x), float(y)) for x, y in poly] for poly in d.get("vignette_polygons", [])]
    xt = d.get("crosstalk")
    if xt is not None:
        order = [str(n) for n in xt.get("amp_order", [a.name for a in amps])]
        coeffs = np.asarray(xt["coeffs"], dtype=float)
        if coeffs.shape != (len(order), len(order)):
            raise CameraError(f"{where}: crosstalk coeffs must be {len(order)}x{len(order)}")
        xt = {"amp_order": order, "coeffs": coeffs}
    raw_w = max(a.raw_bbox.x1 for a in amps)
    raw_h = max(a.raw_bbox.y1 for a in amps)
    return Detector(
        id=det_id,
        name=str(d.get("name", det_id)),
        serial=str(d.get("serial", "")),
        bbox=bbox,
        amplifiers=amps,
        pixel_scale=float(d.get("pixel_scale", float("nan"))),
        pixel_size_um=d.get("pixel_size_um"),
        crosstalk=xt,
        defects=defects,
        vignette_polygons=polys,
        raw_shape=(raw_h, raw_w),
    )


# --------------------------------------------------------------------------------------------------
# WCS helpers


def make_cd_matrix(scale_deg: float, orientation_deg: float, flip_x: bool = False) -> np.ndarray:
    """CD matrix for a pixel scale and orientation (LSST ``afw.geom.makeCdMatrix``).

    ``orientation`` is the position angle of the pixel +y axis, north through east; without ``flip_x``
    east is towards -x (the sky seen from the front).
    """
    c, s = math.cos(math.radians(orientation_deg)), math.sin(math.radians(orientation_deg))
    xm = 1.0 if flip_x else -1.0
    return np.array([[c * scale_deg * xm, s * scale_deg], [-s * scale_deg * xm, c * scale_deg]])


def _tan_wcs(crval, crpix0, cd, sip_a=None, sip_b=None, sip_ap=None, sip_bp=None):
    """astropy TAN (or TAN-SIP) WCS; ``crpix0`` is 0-based, SIP dicts map (p, q) -> coefficient."""
    from astropy.wcs import WCS

    hdr = fits.Header()
    sip = sip_a is not None
    hdr["CTYPE1"] = "RA---TAN-SIP" if sip else "RA---TAN"
    hdr["CTYPE2"] = "DEC--TAN-SIP" if sip else "DEC--TAN"
    hdr["CUNIT1"] = hdr["CUNIT2"] = "deg"
    hdr["CRVAL1"], hdr["CRVAL2"] = float(crval[0]) % 360.0, float(crval[1])
    hdr["CRPIX1"], hdr["CRPIX2"] = float(crpix0[0]) + 1.0, float(crpix0[1]) + 1.0
    hdr["CD1_1"], hdr["CD1_2"] = float(cd[0, 0]), float(cd[0, 1])
    hdr["CD2_1"], hdr["CD2_2"] = float(cd[1, 0]), float(cd[1, 1])
    hdr["RADESYS"] = "ICRS"
    if sip:
        for name, coeffs in (("A", sip_a), ("B", sip_b), ("AP", sip_ap), ("BP", sip_bp)):
            if coeffs is None:
                continue
            hdr[f"{name}_ORDER"] = max(p + q for p, q in coeffs)
            for (p, q), v in coeffs.items():
                hdr[f"{name}_{p}_{q}"] = float(v)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return WCS(hdr)


# --------------------------------------------------------------------------------------------------
# header value specs


def _header_value(header: fits.Header, spec: Any, default: Any = None) -> Any:
    """Evaluate a keyword spec: ``"KEY"``, ``{keyword, scale, offset, unit, map, default}`` or ``{value}``."""
    if spec is None:
        return default
    if not isinstance(spec, dict):
        spec = {"keyword": spec}
    if "value" in spec:
        return spec["value"]
    keys = spec.get("keyword")
    keys = keys if isinstance(keys, list) else [keys]
    raw = None
    for key in keys:
        if (
            key is not None
            and key in header
            and header[key] is not None
            and not isinstance(header[key], fits.card.Undefined)
        ):
            raw = header[key]
            break
    if raw is None:
        return spec.get("default", default)
    if isinstance(raw, str):
        raw = raw.strip()
    if "map" in spec:
        mapped = spec["map"].get(raw, spec["map"].get(str(raw)))
        if mapped is not None:
            return mapped
    unit = spec.get("unit")
    if unit in ("hourangle", "deg") and isinstance(raw, str):
        from astropy.coordinates import Angle

        try:
            raw = Angle(raw, unit=unit).degree
        except Exception:  # noqa: BLE001 - a malformed angle string gives the default
            return spec.get("default", default)
    elif unit == "hourangle":
        raw = float(raw) * 15.0
    if "scale" in spec or "offset" in spec:
        raw = float(raw) * float(spec.get("scale", 1.0)) + float(spec.get("offset", 0.0))
    return raw


def _float_or_none(v: Any) -> float | None:
    try:
        v = float(v)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


# --------------------------------------------------------------------------------------------------
# the camera


class Camera:
    """A camera built from its YAML description (see ``docs/cameras.md``).

    Parameters
    ----------
    config : `dict`
        The parsed YAML.
    source : `str`
        Where the description came from (for error messages).
    """

    def __init__(self, config: dict, source: str = "<dict>") -> None:
        self.config = config
        self.source = source
        try:
            self.name = str(config["name"])
        except KeyError:
            raise CameraError(f"{source}: camera description has no 'name'") from None
        self.description = str(config.get("description", ""))
        self.instrument = [str(v) for v in _as_list(config.get("instrument", []))]
        self.gen2_mapper = config.get("gen2_mapper")
        keys = config.get("data_id_keys") or {
            "visit": {"type": "int"},
            "ccd": {"type": "int"},
            "filter": {"type": "str"},
        }
        self._data_id_specs: dict[str, dict] = {}
        self.data_id_keys: dict[str, type] = {}
        for key, spec in keys.items():
            spec = dict(spec or {})
            typ = spec.get("type", "str")
            if typ not in _TYPES:
                raise CameraError(f"{source}: data_id_keys.{key}.type must be int, str or float")
            self.data_id_keys[key] = _TYPES[typ]
            self._data_id_specs[key] = spec
        self.filename_pattern = config.get("filename_pattern")
        self.path_templates: dict[str, str] = dict(config.get("path_templates") or {})
        self.isr_overrides: dict[str, Any] = dict(config.get("isr_overrides") or {})
        self.charImage_overrides: dict[str, Any] = dict(config.get("charImage_overrides") or {})  # noqa: N815
        self.calibrate_overrides: dict[str, Any] = dict(config.get("calibrate_overrides") or {})  # noqa: N815
        self.config_overrides: dict[str, Any] = dict(config.get("config_overrides") or {})
        self.filters: dict[str, dict] = {
            str(k): dict(v or {}) for k, v in (config.get("filters") or {}).items()
        }
        self.header_map: dict[str, Any] = dict(config.get("header") or {})
        obs = config.get("observatory")
        self.observatory = (
            (float(obs["longitude_deg"]), float(obs["latitude_deg"]), float(obs["elevation_m"]))
            if obs
            else None
        )
        raw = config.get("raw") or {}
        self.raw_layout = raw.get("layout", "single_hdu")
        if self.raw_layout not in ("single_hdu", "hdu_per_amp"):
            raise CameraError(f"{source}: raw.layout must be single_hdu or hdu_per_amp")
        self.raw_hdu = raw.get("hdu", "auto")
        self.wcs_config: dict = dict(config.get("wcs") or {"method": "header"})
        dets = config.get("detectors") or []
        if not dets:
            raise CameraError(f"{source}: camera {self.name} has no detectors")
        self.detectors: dict[int, Detector] = {}
        for d in dets:
            det = _parse_detector(d, self.name)
            self.detectors[det.id] = det

    def __repr__(self) -> str:
        return f"Camera({self.name!r}, detectors={sorted(self.detectors)})"

    # -- construction ------------------------------------------------------------------------------
    @classmethod
    def from_yaml(cls, path: str | Path) -> Camera:
        """Read a camera description from a YAML file."""
        path = Path(path)
        try:
            config = yaml.safe_load(path.read_text())
        except OSError as exc:
            raise CameraError(f"{path}: cannot read camera description: {exc.strerror or exc}") from None
        except yaml.YAMLError as exc:
            raise CameraError(f"{path}: not valid YAML: {exc}") from None
        if not isinstance(config, dict):
            raise CameraError(f"{path}: a camera description must be a YAML mapping")
        return cls(config, source=str(path))

    # -- detectors ----------------------------------------------------------------------------------
    def stage_overrides(self, stage: str) -> list[tuple[str, Any]]:
        """Config overrides of one stage (``isr``, ``charImage``, ``calibrate``), fields relative to it.

        The entries of ``config_overrides`` that start with ``<stage>.``, then ``<stage>_overrides``.
        """
        prefix = stage + "."
        pairs = [(k[len(prefix):], v) for k, v in self.config_overrides.items() if k.startswith(prefix)]
        return pairs + list((getattr(self, f"{stage}_overrides", None) or {}).items())

    def get_detector(self, detector: int | str | Detector | None = None) -> Detector:
        """Return a detector by id or name (the only one when ``None`` and the camera has one)."""
        if isinstance(detector, Detector):
            return detector
        if detector is None:
            if len(self.detectors) == 1:
                return next(iter(self.detectors.values()))
            raise CameraError(f"camera {self.name} has {len(self.detectors)} detectors: say which")
        for det in self.detectors.values():
            if str(detector) in (str(det.id), det.name):
                return det
        raise CameraError(
            f"camera {self.name} has no detector {detector!r}; detectors are "
            f"{[d.id for d in self.detectors.values()]}"
        )

    def detector_from_header(self, header: fits.Header) -> Detector:
        """Return the detector a raw header belongs to (``header.detector`` spec, else the only one)."""
        spec = self.header_map.get("detector")
        value = _header_value(header, spec) if spec is not None else None
        if value is None:
            return self.get_detector(None)
        return self.get_detector(value)

    # -- header interpretation ----------------------------------------------------------------------
    def filter_from_header(self, header: fits.Header) -> str | None:
        """Band label of a raw header (through ``filters.<band>.aliases``)."""
        value = _header_value(header, self.header_map.get("filter"))
        if value is None:
            return None
        value = str(value).strip()
        for band, info in self.filters.items():
            if value == band or value in [str(a) for a in info.get("aliases", [])]:
                return band
        return value

    def obs_type_from_header(self, header: fits.Header) -> str:
        """Observation type (``science``, ``bias``, ``dark``, ``flat``, ...) by the YAML's rules."""
        spec = self.header_map.get("obs_type") or {}
        for rule in spec.get("rules", []):
            if "exptime_max" in rule:
                exptime = _float_or_none(_header_value(header, self.header_map.get("exposure_time")))
                if exptime is None or exptime > float(rule["exptime_max"]):
                    continue
            key = rule.get("keyword")
            if key is not None:
                if key not in header:
                    continue
                if not re.search(str(rule.get("match", ".*")), str(header[key]).strip()):
                    continue
            return str(rule["value"])
        return str(spec.get("default", "science"))

    def metadata_to_data_id(self, header: fits.Header, filename: str | None = None) -> dict:
        """Data ID of a raw from its header (and file name, for keys the header lacks).

        Raises
        ------
        CameraError
            If a data ID key cannot be found.
        """
        from_name: dict[str, str] = {}
        if filename and self.filename_pattern:
            m = re.search(self.filename_pattern, Path(str(filename)).name)
            if m:
                from_name = {k: v for k, v in m.groupdict().items() if v is not None}
        data_id: dict[str, Any] = {}
        for key, typ in self.data_id_keys.items():
            spec = self._data_id_specs[key]
            if key == "filter" and "keyword" not in spec and "value" not in spec:
                value = self.filter_from_header(header)
            else:
                value = _header_value(header, {k: v for k, v in spec.items() if k != "type"} or None)
            if value is None:
                value = from_name.get(key)
            if value is None:
                where = f" of {filename}" if filename else ""
                raise CameraError(
                    f"camera {self.name}: no value for data ID key {key!r} in the header{where}"
                )
            try:
                data_id[key] = typ(value.strip() if isinstance(value, str) else value)
            except (TypeError, ValueError):
                raise CameraError(
                    f"camera {self.name}: data ID key {key!r} = {value!r} is not {typ.__name__}"
                ) from None
        return data_id

    def _date_from_header(self, header: fits.Header, exptime: float | None):
        from astropy.time import Time

        spec = self.header_map.get("date")
        if spec is None:
            return None
        if not isinstance(spec, dict):
            spec = {"keyword": spec}
        raw = _header_value(header, {k: v for k, v in spec.items() if k in ("keyword", "default")})
        if raw is None:
            return None
        fmt = spec.get("format", "isot")
        scale = spec.get("scale", "utc")
        try:
            if fmt == "mjd":
                t = Time(float(raw), format="mjd", scale=scale)
            elif fmt == "unix":
                t = Time(float(raw), format="unix", scale="utc")
            else:
                t = Time(str(raw).strip(), format=fmt, scale=scale)
        except (ValueError, TypeError):
            return None
        if spec.get("at", "start") == "start" and exptime:
            from astropy import units as u

            t = t + 0.5 * exptime * u.s
        return t.tai

    def visit_info_from_header(self, header: fits.Header, filename: str | None = None):
        """`calexpress.visitinfo.VisitInfo` of a raw header (mid-exposure date in TAI).

        ``filename`` helps when ``header.exposure_id`` is ``{data_id: KEY}`` and the key comes from the name.
        """
        from .visitinfo import VisitInfo

        hm = self.header_map
        exptime = _float_or_none(_header_value(header, hm.get("exposure_time")))
        darktime = _float_or_none(_header_value(header, hm.get("dark_time")))
        if darktime is None:
            darktime = exptime
        ra = _float_or_none(_header_value(header, hm.get("boresight_ra")))
        dec = _float_or_none(_header_value(header, hm.get("boresight_dec")))
        rot = _float_or_none(_header_value(header, hm.get("rotation")))
        az = _float_or_none(_header_value(header, hm.get("azimuth")))
        alt = _float_or_none(_header_value(header, hm.get("altitude")))
        airmass = _float_or_none(_header_value(header, hm.get("airmass")))
        exp_spec = hm.get("exposure_id")
        if isinstance(exp_spec, dict) and "data_id" in exp_spec:
            try:
                exp_id = self.metadata_to_data_id(header, filename).get(exp_spec["data_id"])
            except CameraError:
                exp_id = None
        else:
            exp_id = _header_value(header, exp_spec)
        try:
            exp_id = int(exp_id) if exp_id is not None else None
        except (TypeError, ValueError):
            exp_id = None
        return VisitInfo(
            exposure_time=exptime if exptime is not None else float("nan"),
            dark_time=darktime if darktime is not None else float("nan"),
            date=self._date_from_header(header, exptime),
            boresight_ra_dec=(ra, dec) if ra is not None and dec is not None else None,
            boresight_rot_angle=rot,
            rot_type=str(hm.get("rot_type", "SKY")) if rot is not None else "UNKNOWN",
            boresight_az_alt=(az, alt) if az is not None and alt is not None else None,
            airmass=airmass,
            observatory=self.observatory,
            exposure_id=exp_id,
            obs_type=self.obs_type_from_header(header),
        )

    # -- WCS ----------------------------------------------------------------------------------------
    def initial_wcs(self, header: fits.Header, visit_info=None, detector: Detector | None = None):
        """Initial WCS of the assembled detector frame (pixel origin 0 with ``*_pix2world(..., 0)``).

        ``wcs.method`` in the YAML chooses ``header`` (TAN / TAN-SIP keywords of the raw, optionally
        shifted by ``header_pixel_offset``), ``boresight`` (boresight + rotation + pixel scale) or
        ``camera_geometry`` (LSST's focal-plane model, see ``docs/cameras.md``).  ``header`` falls back to
        ``boresight`` when the header has no celestial WCS.  Returns None when nothing is known.
        """
        det = detector or self.detector_from_header(header)
        cfg = self.wcs_config
        method = cfg.get("method", "header")
        if method == "header":
            wcs = _wcs_from_header(header, cfg.get("header_pixel_offset"))
            if wcs is not None:
                return wcs
            method = "boresight"
        if visit_info is None:
            visit_info = self.visit_info_from_header(header)
        if visit_info is None or visit_info.boresight_ra_dec is None:
            return None
        ra, dec = visit_info.boresight_ra_dec
        rot = visit_info.boresight_rot_angle or 0.0
        flip_x = bool(cfg.get("flip_x", False))
        if method == "boresight":
            scale = det.pixel_scale / 3600.0
            ref = cfg.get("boresight_pixel")
            if ref is None:
                ref = ((det.bbox.width - 1) / 2.0, (det.bbox.height - 1) / 2.0)
            return _tan_wcs((ra, dec), ref, make_cd_matrix(scale, rot, flip_x))
        if method == "camera_geometry":
            return _camera_geometry_wcs(cfg, det, (ra, dec), rot, flip_x)
        raise CameraError(
            f"{self.source}: unknown wcs.method {method!r} (header, boresight, camera_geometry)"
        )

    # -- reading raws --------------------------------------------------------------------------------
    def check_header(self, header: fits.Header, what: str) -> None:
        """Raise `CameraError` if the header's instrument is not this camera's."""
        if self.instrument and "INSTRUME" in header:
            inst = str(header["INSTRUME"]).strip()
            if inst not in self.instrument:
                raise CameraError(
                    f"{what}: INSTRUME={inst!r} is not camera {self.name} (expects {self.instrument})"
                )

    def read_raw(self, path_or_fileobj, detector: int | str | Detector | None = None):
        """Read a raw file as an untrimmed `calexpress.exposure.Exposure` in ADU.

        The image is float32 (mask 0, variance 1); metadata is the primary header merged with the image
        HDU's header (image keys win); ``visit_info``, ``detector``, ``filter`` and the initial ``wcs``
        (assembled frame) are filled in.  ``.fits``, ``.fits.gz`` and tile-compressed ``.fits.fz`` files
        are read, from a path or a file object.

        Raises
        ------
        calexpress.fitsio.FitsReadError
            If the file is missing, truncated or not FITS (the message names the file).
        CameraError
            If the file is not a raw of this camera (wrong INSTRUME or shape; the message names the file).
        """
        from .exposure import Exposure
        from .fitsio import FitsReadError

        what = _describe(path_or_fileobj)
        try:
            with _open_fits(path_or_fileobj) as hdul:
                primary = hdul[0].header
                self.check_header(_merge_headers(primary, hdul[1].header if len(hdul) > 1 else None), what)
                if self.raw_layout == "single_hdu":
                    hdu = _image_hdu(hdul, self.raw_hdu, what)
                    metadata = _merge_headers(primary, hdu.header if hdu is not hdul[0] else None)
                    self.check_header(metadata, what)
                    det = (
                        self.get_detector(detector)
                        if detector is not None
                        else self.detector_from_header(metadata)
                    )
                    data = hdu.data
                    if data is None or data.ndim != 2:
                        raise CameraError(f"{what}: image HDU has no 2-D data")
                    if det.raw_shape is not None and tuple(data.shape) != tuple(det.raw_shape):
                        raise CameraError(
                            f"{what}: raw image is {data.shape[1]}x{data.shape[0]} pixels; camera "
                            f"{self.name} detector {det.id} expects "
                            f"{det.raw_shape[1]}x{det.raw_shape[0]}"
                        )
                    image = np.array(data, dtype=np.float32)
                else:
                    metadata = _merge_headers(primary, None)
                    self.check_header(metadata, what)
                    det = (
                        self.get_detector(detector)
                        if detector is not None
                        else self.detector_from_header(metadata)
                    )
                    image = np.zeros(det.raw_shape, dtype=np.float32)
                    for amp in det.amplifiers:
                        hdu = _image_hdu(hdul, amp.hdu, what)
                        if hdu.data is None or tuple(hdu.data.shape) != amp.raw_bbox.shape:
                            raise CameraError(
                                f"{what}: HDU {amp.hdu} of amplifier {amp.name} is not "
                                f"{amp.raw_bbox.width}x{amp.raw_bbox.height}"
                            )
                        image[amp.raw_bbox.slices] = hdu.data
                        if amp is det.amplifiers[0]:
                            metadata = _merge_headers(primary, hdu.header)
        except (CameraError, FitsReadError):
            raise
        except (OSError, ValueError, TypeError, IndexError, KeyError, EOFError) as exc:
            raise CameraError(f"{what}: cannot read raw: {exc}") from None
        visit_info = self.visit_info_from_header(metadata, what)
        try:
            wcs = self.initial_wcs(metadata, visit_info, det)
        except CameraError:
            raise
        except Exception as exc:  # noqa: BLE001 - a bad WCS must not lose the raw
            warnings.warn(f"{what}: no initial WCS ({exc})", stacklevel=2)
            wcs = None
        exp = Exposure(
            image,
            None,
            np.ones_like(image),
            metadata=metadata,
            wcs=wcs,
            visit_info=visit_info,
            detector=det,
            filter=self.filter_from_header(metadata),
        )
        return exp


# --------------------------------------------------------------------------------------------------
# helpers


def _as_list(v: Any) -> list:
    if v is None:
        return []
    return list(v) if isinstance(v, (list, tuple)) else [v]


def _describe(path_or_fileobj) -> str:
    if isinstance(path_or_fileobj, (str, Path)):
        return str(path_or_fileobj)
    return str(
        getattr(path_or_fileobj, "name", None) or getattr(path_or_fileobj, "path", None) or "<file object>"
    )


def _open_fits(path_or_fileobj):
    from .fitsio import open_fits

    return open_fits(path_or_fileobj)


def _image_hdu(hdul: fits.HDUList, which: Any, what: str):
    if which is None or which == "auto":
        for hdu in hdul:
            if hdu.is_image and hdu.header.get("NAXIS", 0) == 2 or isinstance(hdu, fits.CompImageHDU):
                return hdu
        raise CameraError(f"{what}: no 2-D image HDU")
    try:
        return hdul[which]
    except (KeyError, IndexError):
        raise CameraError(f"{what}: no HDU {which!r}") from None


def _merge_headers(primary: fits.Header, image: fits.Header | None) -> fits.Header:
    out = fits.Header()
    for hdr in (primary, image):
        if hdr is None:
            continue
        for card in hdr.cards:
            key = card.keyword
            if key in _STRUCTURAL or key.startswith("NAXIS") or key in ("", "END"):
                continue
            if key in ("COMMENT", "HISTORY"):
                out.append(card)
                continue
            try:
                out[key] = (card.value, card.comment)
            except (ValueError, fits.VerifyError):
                continue
    return out


def _wcs_from_header(header: fits.Header, offset=None):
    from astropy.wcs import WCS

    if "CTYPE1" not in header or "CTYPE2" not in header:
        return None
    c1, c2 = str(header["CTYPE1"]), str(header["CTYPE2"])
    if not (c1.startswith("RA--") and c2.startswith("DEC-")):
        return None
    hdr = fits.Header()
    keep = re.compile(
        r"^(CTYPE[12]|CRPIX[12]|CRVAL[12]|CDELT[12]|CUNIT[12]|CD[12]_[12]|PC[12]_[12]|"
        r"(A|B|AP|BP)_(ORDER|\d+_\d+)|RADESYS|RADECSYS|EQUINOX|LONPOLE|LATPOLE|PV[12]_\d+)$"
    )
    for card in header.cards:
        if keep.match(card.keyword):
            hdr[card.keyword] = card.value
    hdr["NAXIS"] = 2
    if "RADECSYS" in hdr and "RADESYS" not in hdr:
        hdr["RADESYS"] = hdr["RADECSYS"]
        del hdr["RADECSYS"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        wcs = WCS(hdr)
    if not wcs.has_celestial:
        return None
    if offset:
        wcs.wcs.crpix = wcs.wcs.crpix - np.asarray(offset, dtype=float)
        if wcs.sip is not None:
            from astropy.wcs import Sip

            s = wcs.sip
            wcs.sip = Sip(s.a, s.b, s.ap, s.bp, np.asarray(s.crpix) - np.asarray(offset, dtype=float))
    return wcs


def _camera_geometry_wcs(cfg: dict, det: Detector, boresight, rot_deg: float, flip_x: bool):
    """LSST camera-geometry WCS (pixels -> focal plane -> field angle -> sky) as TAN-SIP.

    Focal plane [mm] = offset + R(yaw) ((p - refpos) * pixel_size); field angle theta solves
    ``r_fp = sum c_i theta^i / plate_scale`` (LSST's radial transform, coefficients ``radial_coeffs``);
    sky = TAN projection at the boresight of ``make_cd_matrix(1 deg, rotation, flip_x) * field angle``.
    The radial distortion is expanded to third order around the optical axis, which is exact for
    LSST-like ``[0, 1, 0, k]`` coefficients to 1e-9 of the field angle.  ``pixel_shift`` adds LSST's
    Gen2 quirk: the assembled-frame WCS is the camera-geometry WCS at ``(x + dx, y + dy)``.
    """
    geo = cfg["focal_plane"]
    offset = np.asarray(geo["offset_mm"], dtype=float)
    refpos = np.asarray(geo["refpos_px"], dtype=float)
    yaw = math.radians(float(geo.get("yaw_deg", 0.0)))
    pix_mm = float(geo.get("pixel_size_mm", (det.pixel_size_um or 10.0) / 1000.0))
    plate_rad_per_mm = math.radians(float(geo["plate_scale_arcsec_per_mm"]) / 3600.0)
    coeffs = [float(c) for c in geo.get("radial_coeffs", [0.0, 1.0])]
    if len(coeffs) < 2 or coeffs[0] != 0.0 or coeffs[1] == 0.0 or any(coeffs[2:3]) or any(coeffs[4:]):
        raise CameraError("wcs.focal_plane.radial_coeffs must be [0, c1] or [0, c1, 0, c3]")
    c1 = coeffs[1]
    c3 = coeffs[3] if len(coeffs) > 3 else 0.0
    rot = np.array([[math.cos(yaw), -math.sin(yaw)], [math.sin(yaw), math.cos(yaw)]])
    # pixel where the focal plane origin (optical axis) lies
    p0 = refpos - np.linalg.solve(rot, offset) / pix_mm
    shift = np.asarray(cfg.get("pixel_shift", [0, 0]), dtype=float)
    crpix0 = p0 - shift
    # linear part: field angle [rad] per pixel = plate * pix_mm / c1 * R
    s = plate_rad_per_mm * pix_mm / c1
    jac = s * rot
    cd = make_cd_matrix(1.0, rot_deg, flip_x) @ (np.degrees(jac))
    # theta = t - (c3/c1) t^3 + ...: u' = u (1 - k |u|^2), k = (c3/c1) s^2
    k = (c3 / c1) * s * s
    if k == 0.0:
        return _tan_wcs(boresight, crpix0, cd)
    a = {(3, 0): -k, (1, 2): -k}
    b = {(2, 1): -k, (0, 3): -k}
    ap = {(3, 0): k, (1, 2): k}
    bp = {(2, 1): k, (0, 3): k}
    return _tan_wcs(boresight, crpix0, cd, a, b, ap, bp)


# --------------------------------------------------------------------------------------------------
# registry of packaged cameras

_CACHE: dict[str, Camera] = {}


def available_cameras() -> list[str]:
    """Names of the packaged cameras (``calexpress/cameras/*.yaml``)."""
    files = resources.files("calexpress.cameras")
    return sorted(p.name[:-5] for p in files.iterdir() if p.name.endswith(".yaml"))


def get_camera(name_or_path: str | Path | Camera) -> Camera:
    """Return a packaged camera by name, or a camera from a YAML path.

    Raises
    ------
    CameraError
        If there is no such camera; the message lists the packaged ones.
    """
    if isinstance(name_or_path, Camera):
        return name_or_path
    key = str(name_or_path)
    if key in _CACHE:
        return _CACHE[key]
    p = Path(key)
    if key.endswith((".yaml", ".yml")) or p.is_file():
        cam = Camera.from_yaml(p)
    else:
        res = resources.files("calexpress.cameras").joinpath(f"{key}.yaml")
        if not res.is_file():
            raise CameraError(
                f"unknown camera {key!r}; packaged cameras are {available_cameras()} "
                "(or give the path of a camera YAML file)"
            )
        cam = Camera(yaml.safe_load(res.read_text()), source=f"calexpress/cameras/{key}.yaml")
    _CACHE[key] = cam
    return cam


def identify_camera(path_or_header, shape: tuple[int, int] | None = None) -> Camera:
    """Find the packaged camera a raw belongs to, by INSTRUME (and raw shape when INSTRUME is absent).

    Raises
    ------
    CameraError
        If no camera matches; the message names the file.
    """
    what = "header"
    header = path_or_header
    if not isinstance(path_or_header, fits.Header):
        what = _describe(path_or_header)
        try:
            with _open_fits(path_or_header) as hdul:
                hdu = _image_hdu(hdul, "auto", what)
                header = _merge_headers(hdul[0].header, hdu.header if hdu is not hdul[0] else None)
                shape = (
                    int(hdu.header.get("ZNAXIS2", hdu.header.get("NAXIS2", 0))),
                    int(hdu.header.get("ZNAXIS1", hdu.header.get("NAXIS1", 0))),
                )
        except (CameraError, OSError):
            raise
        except (ValueError, TypeError, EOFError) as exc:
            raise CameraError(f"{what}: cannot read raw: {exc}") from None
    inst = str(header.get("INSTRUME", "")).strip()
    for name in available_cameras():
        cam = get_camera(name)
        if inst and inst in cam.instrument:
            return cam
    if not inst and shape is not None:
        for name in available_cameras():
            cam = get_camera(name)
            if cam.instrument and not cam.config.get("raw", {}).get("match_without_instrume", False):
                continue
            if any(tuple(d.raw_shape) == tuple(shape) for d in cam.detectors.values()):
                return cam
    desc = f"INSTRUME={inst!r}" if inst else "no INSTRUME"
    if shape is not None:
        desc += f", {shape[1]}x{shape[0]} pixels"
    raise CameraError(f"{what}: raw of an unknown camera ({desc}); known cameras are {available_cameras()}")
