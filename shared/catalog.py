"""Source catalogs: astropy Tables persisted as FITS binary tables, and LSST-style slot aliases.

A catalog file is an empty primary HDU followed by one ``BINTABLE`` (``EXTNAME = CATALOG``):
``TTYPEn``/``TFORMn`` as astropy writes them, ``TUNITn`` = column unit, ``TDOCn`` = column description
(LSST afw's keyword), ``table.meta`` as header keywords (``HIERARCH`` for long names; values that are not
FITS scalars are stored as JSON strings whose comment is ``json``).  Reading gives back the same column names,
dtypes, units, descriptions, values (NaN kept, never masked) and meta.
"""

from __future__ import annotations

import json
import math
import warnings
from typing import Any

import numpy as np
from astropy import units as u
from astropy.io import fits
from astropy.table import Column, MaskedColumn, Table

from . import fitsio

__all__ = [
    "get_slot_column",
    "read_catalog",
    "set_slot",
    "slot_name",
    "table_to_bintable",
    "bintable_to_table",
    "write_catalog",
]

_JSON = "json"
_NATIVE = "<" if np.little_endian else ">"
_RESERVED_META = {"comments", "history"}


def _meta_value(value: Any) -> tuple[Any, str]:
    if isinstance(value, (bool, np.bool_)):
        return bool(value), ""
    if isinstance(value, (int, np.integer)):
        return int(value), ""
    if isinstance(value, (float, np.floating)):
        v = float(value)
        if math.isfinite(v):
            return v, ""
        return json.dumps(v), _JSON
    if isinstance(value, str):
        return value, ""
    if isinstance(value, np.ndarray):
        value = value.tolist()
    return json.dumps(value), _JSON


def table_to_bintable(table: Table, name: str = "CATALOG") -> fits.BinTableHDU:
    """FITS binary table HDU of ``table`` (units, descriptions, meta kept; see module docstring)."""
    bare = Table(table, copy=False)
    bare.meta = {}
    for col in bare.itercols():
        if isinstance(col, MaskedColumn) and not np.any(col.mask):
            bare[col.name] = Column(col.data.data, name=col.name, unit=col.unit, description=col.description)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", u.UnitsWarning)
        hdu = fits.table_to_hdu(bare)
    hdu.name = name
    h = hdu.header
    for i, col in enumerate(table.itercols(), start=1):
        if col.description:
            h[f"TDOC{i}"] = str(col.description)
        if col.unit is not None and f"TUNIT{i}" not in h:
            h[f"TUNIT{i}"] = col.unit.to_string()
    for key, value in table.meta.items():
        if str(key).lower() in _RESERVED_META:
            items = value if isinstance(value, (list, tuple)) else [value]
            for item in items:
                (h.add_comment if str(key).lower() == "comments" else h.add_history)(str(item))
            continue
        key = str(key)
        if fitsio._is_structural(key.upper()) or key.upper().startswith("TDOC"):
            raise ValueError(f"table.meta key {key!r} clashes with a FITS table keyword")
        value, comment = _meta_value(value)
        card_key = key if (len(key) <= 8 and key == key.upper() and "-" not in key[:1]) else f"HIERARCH {key}"
        h[card_key] = (value, comment)
    return hdu


def bintable_to_table(hdu: fits.BinTableHDU) -> Table:
    """Inverse of `table_to_bintable`."""
    h = hdu.header
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", u.UnitsWarning)
        table = Table.read(hdu, character_as_bytes=False, mask_invalid=False)
    for name in table.colnames:  # native byte order, as the table had before writing
        col = table[name]
        if col.dtype.byteorder not in ("=", "|") and col.dtype.byteorder != _NATIVE:
            table[name] = Column(
                np.asarray(col).astype(col.dtype.newbyteorder("=")),
                name=name, unit=col.unit, description=col.description,
            )  # fmt: skip
    ncol = int(h.get("TFIELDS", 0))
    for i in range(1, ncol + 1):
        name = h.get(f"TTYPE{i}")
        if name in table.colnames:
            doc = h.get(f"TDOC{i}")
            if doc:
                table[name].description = str(doc)
    meta: dict[str, Any] = {}
    for card in h.cards:
        key = card.keyword
        if key in ("COMMENT", "HISTORY", "") or fitsio._is_structural(key) or key.startswith("TDOC"):
            continue
        value = card.value
        if card.comment == _JSON and isinstance(value, str):
            try:
                value = json.loads(value)
            except ValueError:
                pass
        meta[key] = value
    comments = [str(c) for c in h.get("COMMENT", [])] if "COMMENT" in h else []
    history = [str(c) for c in h.get("HISTORY", [])] if "HISTORY" in h else []
    if comments:
        meta["comments"] = comments
    if history:
        meta["history"] = history
    table.meta = meta
    return table


def write_catalog(table: Table, path_or_fileobj: Any) -> None:
    """Write ``table`` as a FITS binary table (path, ``.gz`` path, or binary file object)."""
    hdul = fits.HDUList([fits.PrimaryHDU(), table_to_bintable(table)])
    fitsio.write_hdulist(hdul, path_or_fileobj)


def read_catalog(path_or_fileobj: Any) -> Table:
    """Read a catalog written by `write_catalog` (or any FITS file whose first table is the catalog).

    Raises
    ------
    FitsReadError
        Missing, truncated or corrupt file, or no binary table in it.
    """
    hdul = fitsio.open_fits(path_or_fileobj)
    for hdu in hdul[1:]:
        if isinstance(hdu, fits.BinTableHDU):
            return bintable_to_table(hdu)
    raise fitsio.FitsReadError(fitsio.source_name(path_or_fileobj), "no binary table extension")


# ----------------------------------------------------------------------------------------------------
# slots


def _alias_key(slot: str) -> str:
    slot = slot[len("slot_"):] if slot.startswith("slot_") else slot
    return f"ALIAS_slot_{slot}"


def set_slot(table: Table, slot: str, target: str) -> None:
    """Define slot ``slot`` (e.g. ``"Centroid"``) as the field prefix ``target`` (``"base_SdssCentroid"``)."""
    table.meta[_alias_key(slot)] = target


def slot_name(table: Table, slot: str) -> str:
    """Field prefix the slot points to (e.g. ``slot_name(t, "Centroid") -> "base_SdssCentroid"``).

    Raises
    ------
    KeyError
        If the slot is not defined; the message lists the defined slots.
    """
    try:
        return str(table.meta[_alias_key(slot)])
    except KeyError:
        defined = sorted(k[len("ALIAS_slot_"):] for k in table.meta if str(k).startswith("ALIAS_slot_"))
        raise KeyError(f"slot {slot!r} is not defined; defined slots are {defined}") from None


def get_slot_column(table: Table, slot: str, suffix: str = "") -> Column:
    """Column ``<target><suffix>`` of a slot, e.g. ``get_slot_column(t, "Centroid", "_x")``."""
    name = slot_name(table, slot) + suffix
    if name not in table.colnames:
        raise KeyError(f"slot {slot!r} points to {name!r}, which is not a column")
    return table[name]
