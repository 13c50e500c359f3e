"""Mask plane names and bits (LSST's defaults)."""

from __future__ import annotations

__all__ = ["DEFAULT_MASK_PLANES", "bitmask", "describe"]

#: LSST's default mask dictionary, extended with the planes calexpress adds.
DEFAULT_MASK_PLANES: dict[str, int] = {
    "BAD": 0,
    "SAT": 1,
    "INTRP": 2,
    "CR": 3,
    "EDGE": 4,
    "DETECTED": 5,
    "DETECTED_NEGATIVE": 6,
    "SUSPECT": 7,
    "NO_DATA": 8,
    "UNMASKEDNAN": 9,
    "NOT_DEBLENDED": 10,
    "VIGNETTED": 11,
    "CROSSTALK": 12,
}

_DESCRIPTIONS = {
    "BAD": "bad pixel (defect, dead or hot)",
    "SAT": "saturated pixel or bleed trail",
    "INTRP": "value interpolated over",
    "CR": "cosmic ray",
    "EDGE": "too close to the edge to be searched for sources",
    "DETECTED": "part of a source detected above threshold",
    "DETECTED_NEGATIVE": "part of a negative detection",
    "SUSPECT": "above the suspect level or extrapolated overscan",
    "NO_DATA": "no data (off the detector or vignetted out)",
    "UNMASKEDNAN": "NaN that no other plane explains",
    "NOT_DEBLENDED": "in a footprint the deblender skipped",
    "VIGNETTED": "vignetted",
    "CROSSTALK": "crosstalk-corrected from a saturated source",
}


def bitmask(mask_planes: dict[str, int], *names: str) -> int:
    """Return the OR of ``1 << bit`` for the named planes.

    Raises
    ------
    KeyError
        If a name is not a plane of ``mask_planes``; the message lists the planes.
    """
    value = 0
    for name in names:
        try:
            value |= 1 << mask_planes[name]
        except KeyError:
            raise KeyError(f"unknown mask plane {name!r}; planes are {sorted(mask_planes)}") from None
    return value


def describe(name: str) -> str:
    """Return a one-line description of a mask plane."""
    return _DESCRIPTIONS.get(name, "")
