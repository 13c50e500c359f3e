"""FITS reading and writing shared by exposures, catalogs and backgrounds.

Every reader goes through `open_fits`, which accepts a path (``.fits``, ``.fits.gz``, tile-compressed
``.fits.fz``), a ``pathlib.Path`` or a binary file object (local or s3fs/fsspec; the bytes are read into
memory), loads every HDU fully, and turns any problem into one `FitsReadError` naming the file.
"""

from __future__ import annotations

import gzip
import io
import os
import warnings
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
from astropy.io import fits
from astropy.utils.exceptions import AstropyUserWarning

__all__ = [
    "STRUCTURAL_KEYS",
    "FitsReadError",
    "clean_header",
    "get_hdu",
    "image_hdu",
    "open_fits",
    "source_name",
    "write_hdulist",
]

#: Keywords that describe the HDU structure itself (never copied between headers).
STRUCTURAL_KEYS = frozenset(
    [
        "SIMPLE", "BITPIX", "NAXIS", "EXTEND", "XTENSION", "PCOUNT", "GCOUNT", "EXTNAME", "EXTVER",
        "EXTLEVEL", "BZERO", "BSCALE", "BLANK", "CHECKSUM", "DATASUM", "TFIELDS", "THEAP", "GROUPS",
        "ZIMAGE", "ZBITPIX", "ZNAXIS", "ZTILELEN", "ZCMPTYPE", "ZQUANTIZ", "ZDITHER0", "ZSIMPLE",
        "ZTENSION", "ZEXTEND", "ZBLOCKED", "ZPCOUNT", "ZGCOUNT", "ZHECKSUM", "ZDATASUM", "ZBLANK",
        "ZSCALE", "ZZERO",
    ]
)  # fmt: skip
_STRUCTURAL_PREFIXES = ("NAXIS", "ZNAXIS", "ZTILE", "ZNAME", "ZVAL", "TTYPE", "TFORM", "TUNIT", "TDIM",
                        "TNULL", "TSCAL", "TZERO", "TDISP", "TCOMM", "TDOC")  # fmt: skip


class FitsReadError(OSError):
    """A FITS file could not be read: missing, truncated, corrupt or without an expected extension.

    ``str(err)`` is one line, ``"<file>: <problem>"``.

    Parameters
    ----------
    path : `str`
        The file (path, URL or file-object name).
    problem : `str`
        What is wrong with it.
    """

    def __init__(self, path: Any, problem: str) -> None:
        self.path = str(path)
        self.problem = " ".join(str(problem).split())
        super().__init__(f"{self.path}: {self.problem}")

    def __str__(self) -> str:
        return f"{self.path}: {self.problem}"

    def __reduce__(self):
        return (type(self), (self.path, self.problem))


def source_name(source: Any) -> str:
    """A printable name for a path or file object."""
    if isinstance(source, (str, os.PathLike)):
        return os.fspath(source)
    for attr in ("path", "full_name", "name"):
        value = getattr(source, attr, None)
        if isinstance(value, str) and value:
            return value
    return repr(source)


def _is_structural(key: str) -> bool:
    if key in STRUCTURAL_KEYS:
        return True
    return any(key.startswith(p) and key[len(p):].isdigit() for p in _STRUCTURAL_PREFIXES)


def clean_header(header: fits.Header | None, drop: Iterable[str] = ()) -> fits.Header:
    """Copy of ``header`` without structural keywords (and without the keys in ``drop``)."""
    out = fits.Header()
    if header is None:
        return out
    drop = set(drop)
    for card in header.cards:
        key = card.keyword
        if key in drop or _is_structural(key):
            continue
        out.append(card, end=True)
    return out


def _read_bytes(source: Any, name: str) -> bytes:
    try:
        if hasattr(source, "seek") and getattr(source, "seekable", lambda: False)():
            try:
                source.seek(0)
            except OSError:
                pass
        data = source.read()
    except Exception as exc:  # noqa: BLE001 - any I/O failure becomes one message
        raise FitsReadError(name, f"cannot read: {exc}") from exc
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise FitsReadError(name, "file object is not opened in binary mode")
    return bytes(data)


def open_fits(source: Any) -> fits.HDUList:
    """Open a FITS file completely into memory.

    Parameters
    ----------
    source : path, `pathlib.Path`, bytes or binary file object
        ``.gz`` content is recognised by its magic bytes; tile-compressed images decompress on access.

    Returns
    -------
    hdul : `astropy.io.fits.HDUList`
        Every HDU's data is already loaded (no file handle stays open).

    Raises
    ------
    FitsReadError
        If the file is missing, empty, truncated or not FITS.
    """
    name = source_name(source)
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        if not path.exists():
            raise FitsReadError(name, "no such file")
        if path.is_dir():
            raise FitsReadError(name, "is a directory, not a FITS file")
        try:
            with open(path, "rb") as f:
                head = f.read(9)
            size = path.stat().st_size
        except OSError as exc:
            raise FitsReadError(name, f"cannot read: {exc.strerror or exc}") from exc
        if head[:2] == b"\x1f\x8b":
            raw: Any = path.read_bytes()
        else:  # plain FITS: let astropy read the file directly (no extra copy)
            _check_fits_bytes(head, size, name)
            with open(path, "rb") as f:
                return _load(f, name)
    elif isinstance(source, (bytes, bytearray, memoryview)):
        raw = bytes(source)
        name = "<bytes>"
    else:
        raw = _read_bytes(source, name)
    if not raw:
        raise FitsReadError(name, "empty file")
    if raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError) as exc:
            raise FitsReadError(name, f"truncated or corrupt gzip data ({exc})") from exc
    _check_fits_bytes(raw[:9], len(raw), name)
    return _load(io.BytesIO(raw), name)


def _check_fits_bytes(head: bytes, size: int, name: str) -> None:
    if size == 0:
        raise FitsReadError(name, "empty file")
    if not head.startswith(b"SIMPLE  ="):
        raise FitsReadError(name, "not a FITS file (no SIMPLE card)")
    if size % 2880:
        raise FitsReadError(name, f"truncated ({size} bytes, not a whole number of 2880-byte blocks)")


def _load(fileobj: Any, name: str) -> fits.HDUList:
    with warnings.catch_warnings():
        warnings.simplefilter("error", AstropyUserWarning)
        warnings.simplefilter("error", fits.verify.VerifyWarning)
        hdul = None
        try:
            hdul = fits.open(fileobj, memmap=False, lazy_load_hdus=False)
            for hdu in hdul:
                _ = hdu.data  # force reading (and decompression) now
                if isinstance(hdu, fits.BinTableHDU) and hdu.data is not None:
                    _ = np.asarray(hdu.data)
            hdul.close()  # everything is in memory; release the file handle
        except Exception as exc:
            if hdul is not None:
                try:
                    hdul.close()
                except Exception:  # noqa: BLE001
                    pass  # noqa: BLE001 - astropy raises many types for bad files
            msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            if "truncated" in msg.lower():
                raise FitsReadError(name, f"truncated ({msg})") from exc
            raise FitsReadError(name, f"corrupt FITS ({type(exc).__name__}: {msg})") from exc
    return hdul


def get_hdu(hdul: fits.HDUList, extname: str, source: Any = "<hdulist>", required: bool = True):
    """The HDU named ``extname``; `FitsReadError` naming ``source`` if absent and ``required``."""
    try:
        return hdul[extname]
    except KeyError:
        if required:
            names = [h.name for h in hdul]
            raise FitsReadError(source_name(source), f"no {extname} extension (has {names})") from None
        return None


def image_hdu(
    data: np.ndarray, header: fits.Header | None, name: str, compress: bool | str = False
) -> fits.ImageHDU | fits.CompImageHDU:
    """Image extension, optionally losslessly tile-compressed.

    ``compress`` is False (plain), True (``GZIP_2``) or a tile-compression name (``RICE_1`` for integer
    planes).  Floating-point planes keep every bit (``quantize_level=0``).
    """
    if compress:
        if compress is True:
            compress = "GZIP_2"
        if compress == "RICE_1" and data.dtype.kind not in "iu":
            raise ValueError(f"{name}: RICE_1 is lossless only for integer planes, not {data.dtype}")
        return fits.CompImageHDU(
            data=data, header=header, name=name, compression_type=compress, quantize_level=0.0,
        )
    return fits.ImageHDU(data=data, header=header, name=name)


def write_hdulist(hdul: fits.HDUList, destination: Any, overwrite: bool = True) -> None:
    """Write ``hdul`` to a path (``.gz`` is gzipped) or to a writable binary file object.

    File objects receive the bytes in one ``write`` call (works for non-seekable s3fs writers).
    """
    if isinstance(destination, (str, os.PathLike)):
        path = os.fspath(destination)
        if path.endswith(".gz"):
            buf = io.BytesIO()
            hdul.writeto(buf)
            with open(path, "wb") as f:
                f.write(gzip.compress(buf.getvalue(), compresslevel=2))
        else:
            hdul.writeto(path, overwrite=overwrite)
        return
    buf = io.BytesIO()
    hdul.writeto(buf)
    destination.write(buf.getvalue())
