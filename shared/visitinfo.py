"""Visit information (LSST ``afw.image.VisitInfo``): exposure time, mid-exposure date, pointing, site."""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

from astropy.io import fits
from astropy.time import Time

__all__ = ["VisitInfo"]

_NAN = float("nan")


def _finite(value) -> bool:
    return value is not None and not (isinstance(value, float) and math.isnan(value))


def _get(header: fits.Header, key: str):
    value = header.get(key)
    if value is None or isinstance(value, fits.card.Undefined):
        return None
    if isinstance(value, str) and value.strip().upper() in ("", "NAN", "NONE"):
        return None
    return value


def _float(header: fits.Header, key: str) -> float | None:
    value = _get(header, key)
    if value is None:
        return None
    try:
        value = float(value)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(value) else value


@dataclass
class VisitInfo:
    """What the telescope did during one exposure.

    Parameters
    ----------
    exposure_time, dark_time : `float`
        Seconds (NaN if unknown).
    date : `astropy.time.Time` or None
        Mid-exposure time, scale TAI.
    boresight_ra_dec : (`float`, `float`) or None
        ICRS boresight, degrees.
    boresight_rot_angle : `float` or None
        Rotation angle, degrees (meaning given by ``rot_type``).
    rot_type : `str`
        ``"SKY"`` (LSST: position angle of the focal plane), ``"HORIZON"``, ``"MOUNT"`` or ``"UNKNOWN"``.
    boresight_az_alt : (`float`, `float`) or None
        Degrees.
    airmass : `float` or None
    observatory : (lon_deg, lat_deg, elevation_m) or None
    exposure_id : `int` or None
    obs_type : `str` or None
        Image type (``science``, ``bias``, ``dark``, ``flat``...).
    """

    exposure_time: float = _NAN
    dark_time: float = _NAN
    date: Time | None = None
    boresight_ra_dec: tuple[float, float] | None = None
    boresight_rot_angle: float | None = None
    rot_type: str = "UNKNOWN"
    boresight_az_alt: tuple[float, float] | None = None
    airmass: float | None = None
    observatory: tuple[float, float, float] | None = None
    exposure_id: int | None = None
    obs_type: str | None = None

    def __post_init__(self) -> None:
        self.exposure_time = float(self.exposure_time) if _finite(self.exposure_time) else _NAN
        self.dark_time = float(self.dark_time) if _finite(self.dark_time) else _NAN
        if self.date is not None and not isinstance(self.date, Time):
            self.date = Time(self.date, scale="tai")
        if self.date is not None:
            self.date = self.date.tai
        if self.boresight_ra_dec is not None:
            self.boresight_ra_dec = (float(self.boresight_ra_dec[0]), float(self.boresight_ra_dec[1]))
        if self.boresight_az_alt is not None:
            self.boresight_az_alt = (float(self.boresight_az_alt[0]), float(self.boresight_az_alt[1]))
        if self.observatory is not None:
            self.observatory = tuple(float(v) for v in self.observatory)
        if self.exposure_id is not None:
            self.exposure_id = int(self.exposure_id)

    # ------------------------------------------------------------------------------------------------
    def to_header(self, header: fits.Header | None = None) -> fits.Header:
        """Write the LSST VisitInfo keywords into ``header`` (created if None) and return it.

        Keywords: ``EXPTIME``, ``DARKTIME``, ``DATE-AVG`` (ISOT, TAI), ``MJD-AVG``, ``TIMESYS``,
        ``BORE-RA``, ``BORE-DEC``, ``BORE-ROTANG``, ``ROTTYPE``, ``BORE-AZ``, ``BORE-ALT``,
        ``BORE-AIRMASS``, ``OBS-LONG``, ``OBS-LAT``, ``OBS-ELEV``, ``EXPID``, ``OBS-TYPE`` (not
        ``OBSTYPE``, which raws use with their own values).
        Keywords for unknown values are not written.
        """
        if header is None:
            header = fits.Header()

        def put(key, value, comment):
            if _finite(value):
                header[f"HIERARCH {key}" if len(key) > 8 else key] = (value, comment)

        put("EXPTIME", self.exposure_time, "[s] exposure time")
        put("DARKTIME", self.dark_time, "[s] dark time")
        if self.date is not None:
            header["DATE-AVG"] = (self.date.tai.isot, "mid-exposure date (TAI)")
            header["MJD-AVG"] = (float(self.date.tai.mjd), "mid-exposure MJD (TAI)")
            header["TIMESYS"] = ("TAI", "time scale of DATE-AVG and MJD-AVG")
        if self.boresight_ra_dec is not None:
            put("BORE-RA", self.boresight_ra_dec[0], "[deg] boresight ICRS RA")
            put("BORE-DEC", self.boresight_ra_dec[1], "[deg] boresight ICRS Dec")
        put("BORE-ROTANG", self.boresight_rot_angle, "[deg] boresight rotation angle")
        header["ROTTYPE"] = (self.rot_type, "meaning of BORE-ROTANG")
        if self.boresight_az_alt is not None:
            put("BORE-AZ", self.boresight_az_alt[0], "[deg] boresight azimuth")
            put("BORE-ALT", self.boresight_az_alt[1], "[deg] boresight altitude")
        put("BORE-AIRMASS", self.airmass, "boresight airmass")
        if self.observatory is not None:
            put("OBS-LONG", self.observatory[0], "[deg] observatory longitude (east +)")
            put("OBS-LAT", self.observatory[1], "[deg] observatory latitude")
            put("OBS-ELEV", self.observatory[2], "[m] observatory elevation")
        if self.exposure_id is not None:
            header["EXPID"] = (self.exposure_id, "exposure id")
        if self.obs_type is not None:
            header["OBS-TYPE"] = (self.obs_type, "image type (calexpress)")
        return header

    @classmethod
    def from_header(cls, header: fits.Header) -> VisitInfo:
        """Read the keywords written by `to_header` (missing ones give unknown values)."""
        date = None
        if _get(header, "DATE-AVG") is not None:
            scale = str(_get(header, "TIMESYS") or "TAI").strip().lower()
            scale = scale if scale in Time.SCALES else "tai"
            date = Time(str(header["DATE-AVG"]), format="isot", scale=scale).tai
        elif _float(header, "MJD-AVG") is not None:
            date = Time(_float(header, "MJD-AVG"), format="mjd", scale="tai")
        ra, dec = _float(header, "BORE-RA"), _float(header, "BORE-DEC")
        az, alt = _float(header, "BORE-AZ"), _float(header, "BORE-ALT")
        lon, lat, elev = _float(header, "OBS-LONG"), _float(header, "OBS-LAT"), _float(header, "OBS-ELEV")
        expid = _get(header, "EXPID")
        try:
            expid = int(expid) if expid is not None else None
        except (TypeError, ValueError):
            expid = None
        obs_type = _get(header, "OBS-TYPE")
        return cls(
            exposure_time=_float(header, "EXPTIME") if _float(header, "EXPTIME") is not None else _NAN,
            dark_time=_float(header, "DARKTIME") if _float(header, "DARKTIME") is not None else _NAN,
            date=date,
            boresight_ra_dec=(ra, dec) if ra is not None and dec is not None else None,
            boresight_rot_angle=_float(header, "BORE-ROTANG"),
            rot_type=str(_get(header, "ROTTYPE") or "UNKNOWN"),
            boresight_az_alt=(az, alt) if az is not None and alt is not None else None,
            airmass=_float(header, "BORE-AIRMASS"),
            observatory=(lon, lat, elev if elev is not None else 0.0)
            if lon is not None and lat is not None
            else None,
            exposure_id=expid,
            obs_type=str(obs_type) if obs_type is not None else None,
        )

    def to_dict(self) -> dict:
        """Plain-JSON/msgpack dictionary (date as TAI ISOT string)."""
        out = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, Time):
                value = value.tai.isot
            elif isinstance(value, tuple):
                value = list(value)
            elif isinstance(value, float) and math.isnan(value):
                value = None
            out[f.name] = value
        return out

    @classmethod
    def from_dict(cls, data: dict) -> VisitInfo:
        """Inverse of `to_dict`."""
        kwargs = dict(data)
        if kwargs.get("date") is not None:
            kwargs["date"] = Time(kwargs["date"], format="isot", scale="tai")
        for key in ("exposure_time", "dark_time"):
            if kwargs.get(key) is None:
                kwargs[key] = _NAN
        return cls(**kwargs)
