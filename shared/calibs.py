"""Calibration products that are not images: defects, linearizers and crosstalk coefficients.

- `Defects`: a list of bad-pixel boxes (assembled detector frame, 0-based).  Reads LSST "FITS region"
  defect tables (``X``, ``Y`` 1-based centres, ``SHAPE``, ``R`` extents), box tables (``x0``, ``y0``,
  ``width``, ``height``; FITS or ECSV) and LSST's legacy ``x0/y0/width/height`` tables.
- `Linearizer`: per-amplifier linearity corrections (``Squared``, ``Polynomial``, ``LookupTable``,
  ``None``), from the simcamA-style YAML (``linearizer.yaml``) or from a camera's amplifiers.
- `CrosstalkCalib`: coefficient matrix ``coeffs[victim][source]`` in readout coordinates, from the
  simcamA-style YAML (``crosstalk.yaml``) or from a camera YAML's ``crosstalk`` block.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import yaml
from astropy.io import fits
from astropy.table import Table

from .geom import Box

__all__ = ["CalibError", "CrosstalkCalib", "Defects", "Linearizer"]


class CalibError(ValueError):
    """A calibration file cannot be read or does not fit; the message names the file."""


def _read_yaml(path: str | Path) -> dict:
    try:
        data = yaml.safe_load(Path(path).read_text())
    except OSError as exc:
        raise CalibError(f"{path}: cannot read: {exc.strerror or exc}") from None
    except yaml.YAMLError as exc:
        raise CalibError(f"{path}: not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise CalibError(f"{path}: expected a YAML mapping")
    return data


def _pick_detector(section: dict, detector: Any, path: Any) -> Any:
    """Choose the per-detector entry of a ``detectors:`` mapping (the only one when ``detector`` is None)."""
    if detector is None:
        if len(section) != 1:
            raise CalibError(f"{path}: holds detectors {sorted(section)}: say which")
        return next(iter(section.values()))
    for key, value in section.items():
        if str(key) == str(detector):
            return value
    raise CalibError(f"{path}: no detector {detector!r}; it has {sorted(map(str, section))}")


# --------------------------------------------------------------------------------------------------


class Defects:
    """Bad-pixel regions of one detector, as boxes in the assembled frame.

    Parameters
    ----------
    boxes : `list` [`Box`]
        0-based boxes.
    metadata : `astropy.io.fits.Header`, optional
        Header of the file they came from.
    """

    def __init__(self, boxes: list[Box] | None = None, metadata: fits.Header | None = None) -> None:
        self.boxes: list[Box] = list(boxes or [])
        self.metadata = metadata if metadata is not None else fits.Header()

    def __len__(self) -> int:
        return len(self.boxes)

    def __iter__(self):
        return iter(self.boxes)

    def __repr__(self) -> str:
        return f"Defects({len(self.boxes)} boxes, {self.npixels} pixels)"

    @property
    def npixels(self) -> int:
        """Total area of the boxes (overlaps counted twice)."""
        return sum(b.area for b in self.boxes)

    def to_mask(self, shape: tuple[int, int]) -> np.ndarray:
        """Boolean array of ``shape`` (ny, nx), True on defect pixels (boxes clipped to the array)."""
        out = np.zeros(shape, dtype=bool)
        full = Box.from_shape(shape)
        for b in self.boxes:
            c = b.clip(full)
            if not c.is_empty():
                out[c.slices] = True
        return out

    @classmethod
    def from_mask(cls, mask: np.ndarray) -> Defects:
        """Boxes covering the True pixels of a boolean array: one box per vertical run in each column."""
        mask = np.asarray(mask, dtype=bool)
        boxes = []
        for x in np.flatnonzero(mask.any(axis=0)):
            col = mask[:, x].astype(np.int8)
            d = np.diff(np.concatenate(([0], col, [0])))
            starts, ends = np.flatnonzero(d == 1), np.flatnonzero(d == -1)
            boxes.extend(Box(int(x), int(s), 1, int(e - s)) for s, e in zip(starts, ends))
        return cls(boxes)

    # -- I/O ----------------------------------------------------------------------------------------
    @classmethod
    def from_table(cls, table: Table, source: str = "<table>") -> Defects:
        """Defects from an astropy Table in one of the supported layouts."""
        names = {n.lower(): n for n in table.colnames}
        meta = fits.Header()
        for k, v in table.meta.items():
            if isinstance(v, (str, int, float, bool)) and len(str(k)) <= 8:
                try:
                    meta[k] = v
                except ValueError:
                    pass
        if {"x0", "y0", "width", "height"} <= set(names):
            boxes = [
                Box(int(r[names["x0"]]), int(r[names["y0"]]), int(r[names["width"]]), int(r[names["height"]]))
                for r in table
            ]
            return cls(boxes, meta)
        if {"x", "y", "shape"} <= set(names):
            boxes = []
            for r in table:
                shape = str(r[names["shape"]]).strip().upper()
                x, y = float(r[names["x"]]) - 1.0, float(r[names["y"]]) - 1.0
                if shape == "POINT":
                    boxes.append(Box(int(round(x)), int(round(y)), 1, 1))
                elif shape == "BOX":
                    if "r" not in names:
                        raise CalibError(f"{source}: BOX defect without an R column")
                    w, h = (int(round(v)) for v in np.asarray(r[names["r"]]).ravel()[:2])
                    x0 = int(round(x - (w - 1) / 2.0))
                    y0 = int(round(y - (h - 1) / 2.0))
                    boxes.append(Box(x0, y0, w, h))
                else:
                    raise CalibError(f"{source}: unsupported defect shape {shape!r} (POINT and BOX are read)")
            return cls(boxes, meta)
        raise CalibError(
            f"{source}: not a defects table: columns {table.colnames} (expected X, Y, SHAPE, R "
            "or x0, y0, width, height)"
        )

    @classmethod
    def read(cls, path: str | Path) -> Defects:
        """Read a defects file: FITS (first table HDU) or ECSV/CSV/text table.

        Raises
        ------
        CalibError
            If the file cannot be read or is not a defects table.
        """
        path = Path(path)
        if not path.exists():
            raise CalibError(f"{path}: no such file")
        name = path.name.lower()
        try:
            if name.endswith((".fits", ".fits.gz", ".fit", ".fits.fz")):
                with fits.open(path) as hdul:
                    hdu = next((h for h in hdul if isinstance(h, fits.BinTableHDU)), None)
                    if hdu is None:
                        raise CalibError(f"{path}: no table HDU")
                    table = Table(hdu.data)
                    header = hdul[0].header.copy()
                    header.extend(hdu.header.cards, unique=True)
                defects = cls.from_table(table, str(path))
                defects.metadata = fits.Header(
                    [
                        c
                        for c in header.cards
                        if c.keyword
                        not in (
                            "SIMPLE",
                            "BITPIX",
                            "NAXIS",
                            "NAXIS1",
                            "NAXIS2",
                            "EXTEND",
                            "XTENSION",
                            "PCOUNT",
                            "GCOUNT",
                            "TFIELDS",
                        )
                        and not c.keyword.startswith(("TTYPE", "TFORM", "TUNIT", "TDOC", "TCCLS"))
                    ]
                )
                return defects
            fmt = "ascii.ecsv" if name.endswith(".ecsv") else None
            table = Table.read(path, format=fmt) if fmt else Table.read(path)
        except CalibError:
            raise
        except (OSError, ValueError, TypeError, KeyError) as exc:
            raise CalibError(f"{path}: cannot read defects: {exc}") from None
        return cls.from_table(table, str(path))

    def to_table(self) -> Table:
        """Box table (``x0``, ``y0``, ``width``, ``height``, int32)."""
        cols = np.array([(b.x0, b.y0, b.width, b.height) for b in self.boxes], dtype=np.int32).reshape(-1, 4)
        return Table(cols, names=("x0", "y0", "width", "height"))

    def write(self, path: str | Path) -> None:
        """Write a FITS box table (EXTNAME ``DEFECTS``; the metadata goes in the primary header)."""
        primary = fits.PrimaryHDU(header=self.metadata.copy() if self.metadata is not None else None)
        table = fits.table_to_hdu(self.to_table())
        table.name = "DEFECTS"
        fits.HDUList([primary, table]).writeto(path, overwrite=True)


# --------------------------------------------------------------------------------------------------

_LIN_TYPES = {
    "none": None,
    "null": None,
    "squared": "Squared",
    "linearizesquared": "Squared",
    "polynomial": "Polynomial",
    "linearizepolynomial": "Polynomial",
    "lookuptable": "LookupTable",
    "linearizelookuptable": "LookupTable",
    "lut": "LookupTable",
}


def _lin_type(name: Any) -> str | None:
    if name is None:
        return None
    key = str(name).replace("_", "").replace(" ", "").lower()
    if key not in _LIN_TYPES:
        raise CalibError(f"unknown linearity type {name!r} (Squared, Polynomial, LookupTable, None)")
    return _LIN_TYPES[key]


class Linearizer:
    """Per-amplifier linearity correction (applied to overscan- and bias-subtracted ADU).

    Parameters
    ----------
    per_amp : `dict` [`str`, `dict`]
        ``{amp_name: {"type": ..., "coeffs": [...], "table": array or None}}`` with types

        - ``Squared``: ``t = m + c0 m**2`` (LSST LinearizeSquared);
        - ``Polynomial``: ``t = m + sum_i c_i m**(i + 2)`` (LSST LinearizePolynomial);
        - ``LookupTable``: ``t = m + table[clip(round(m + offset))]``, ``coeffs = [offset]``;
        - ``None``: no correction.
    """

    def __init__(self, per_amp: dict[str, dict]) -> None:
        self.per_amp: dict[str, dict] = {}
        for name, entry in per_amp.items():
            entry = dict(entry)
            entry["type"] = _lin_type(entry.get("type"))
            entry["coeffs"] = [float(c) for c in entry.get("coeffs", [])]
            if entry.get("table") is not None:
                entry["table"] = np.asarray(entry["table"], dtype=np.float32).ravel()
            if entry["type"] == "LookupTable" and entry.get("table") is None:
                raise CalibError(f"amplifier {name}: LookupTable linearity needs a table")
            self.per_amp[str(name)] = entry

    def __repr__(self) -> str:
        return f"Linearizer({ {k: v['type'] for k, v in self.per_amp.items()} })"

    @classmethod
    def read(cls, path: str | Path, detector: Any = None) -> Linearizer:
        """Read a linearizer YAML (``type``, ``detectors: {det: {amp: {c0: ...} or {coeffs, table}}}``)."""
        data = _read_yaml(path)
        default_type = data.get("type")
        try:
            section = data.get("detectors")
            if section is None:
                raise CalibError(f"{path}: no 'detectors' section")
            amps = _pick_detector(section, detector, path)
            per_amp = {}
            for amp, entry in amps.items():
                entry = dict(entry or {})
                coeffs = entry.get("coeffs")
                if coeffs is None:
                    coeffs = [entry[k] for k in sorted(k for k in entry if k[:1] == "c" and k[1:].isdigit())]
                per_amp[str(amp)] = {
                    "type": entry.get("type", default_type),
                    "coeffs": coeffs,
                    "table": entry.get("table"),
                }
            return cls(per_amp)
        except CalibError as exc:
            msg = str(exc)
            raise CalibError(msg if msg.startswith(str(path)) else f"{path}: {msg}") from None

    @classmethod
    def from_detector(cls, detector) -> Linearizer:
        """Linearizer from a camera detector's amplifiers (``linearity`` blocks of the camera YAML)."""
        return cls(
            {a.name: {"type": a.linearity_type, "coeffs": a.linearity_coeffs} for a in detector.amplifiers}
        )

    def is_null(self) -> bool:
        """True if no amplifier has a correction."""
        return all(e["type"] is None for e in self.per_amp.values())

    def apply(self, data: np.ndarray, amp_name: str) -> None:
        """Linearise ``data`` (ADU, float32) of one amplifier in place."""
        entry = self.per_amp.get(amp_name)
        if entry is None or entry["type"] is None:
            return
        kind, c = entry["type"], entry["coeffs"]
        if kind == "Squared":
            if c and c[0] != 0.0:
                data += np.float32(c[0]) * data * data
        elif kind == "Polynomial":
            if any(c):
                corr = np.zeros_like(data)
                for coeff in reversed(c):  # Horner: sum_i c_i m^i, then times m^2
                    corr *= data
                    corr += np.float32(coeff)
                corr *= data * data
                data += corr
        elif kind == "LookupTable":
            table = entry["table"]
            offset = c[0] if c else 0.0
            idx = np.clip(np.rint(data + offset), 0, table.size - 1).astype(np.intp)
            data += table[idx]


# --------------------------------------------------------------------------------------------------


class CrosstalkCalib:
    """Crosstalk coefficients ``coeffs[victim, source]`` between the amplifiers of one detector.

    ``raw_victim(r, c) = true_victim + sum_source coeffs[victim, source] * S_source(r, c)`` in readout
    coordinates (row, column counted from each amplifier's readout corner).
    """

    def __init__(self, amp_order: list[str], coeffs: np.ndarray) -> None:
        self.amp_order = [str(a) for a in amp_order]
        self.coeffs = np.asarray(coeffs, dtype=float)
        n = len(self.amp_order)
        if self.coeffs.shape != (n, n):
            raise CalibError(f"crosstalk coeffs have shape {self.coeffs.shape}, expected {(n, n)}")

    def __repr__(self) -> str:
        return f"CrosstalkCalib({self.amp_order}, max |coeff| = {np.abs(self.coeffs).max():.3g})"

    @classmethod
    def read(cls, path: str | Path, detector: Any = None) -> CrosstalkCalib:
        """Read a crosstalk YAML (``detectors: {det: {amp_order: [...], coeffs: [[...]]}}``)."""
        data = _read_yaml(path)
        try:
            entry = _pick_detector(data["detectors"], detector, path) if "detectors" in data else data
            return cls(entry["amp_order"], entry["coeffs"])
        except KeyError as exc:
            raise CalibError(f"{path}: crosstalk file lacks {exc}") from None
        except CalibError as exc:
            msg = str(exc)
            raise CalibError(msg if msg.startswith(str(path)) else f"{path}: {msg}") from None

    @classmethod
    def from_detector(cls, detector) -> CrosstalkCalib | None:
        """Coefficients from a camera detector's ``crosstalk`` block (None if it has none)."""
        if not detector.crosstalk:
            return None
        return cls(detector.crosstalk["amp_order"], detector.crosstalk["coeffs"])
