"""SQLite registries of raws and calibration products inside a data repository.

Layout (Gen2-compatible, so LSST Gen2 repositories such as obs_test's are read as they are):

``registry.sqlite3``
    table ``raw``: one row per raw CCD frame.  Columns: ``id``, the camera's data-ID keys (e.g.
    ``visit``, ``ccd``, ``filter``), ``taiObs`` (ISO date of the exposure start, TAI), ``expTime`` and, in
    repositories written by calexpress, ``obsType``, ``camera`` and ``path`` (file location relative to the
    repository root, or absolute for ``--mode direct``).  Gen2 registries have no ``path`` (the camera's
    path template is used) and may lack data-ID keys such as ``ccd`` (implied by a one-detector camera).

``calibRegistry.sqlite3``
    one table per calibration type (``bias``, ``dark``, ``flat``, ``defects``, ``linearizer``,
    ``crosstalk``, ...) with columns ``id``, ``calibDate``, ``validStart``, ``validEnd``, ``filter``,
    ``ccd`` and (calexpress) ``path``.  A NULL / ``'None'`` filter or ccd means "any".  Validity dates are
    ISO dates or date-times (TAI); a date-only ``validEnd`` includes that whole day.

For an ``s3://`` repository the SQLite file is downloaded to a local cache for reading; `Registry.edit`
downloads it, lets the caller change it and uploads it atomically afterwards.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import math
import os
import sqlite3
import tempfile
import threading
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from . import storage

__all__ = [
    "ANY_VALUES",
    "CALIB_REGISTRY",
    "RAW_REGISTRY",
    "Registry",
    "date_to_mjd",
    "select_calib",
    "sql_type",
]

log = logging.getLogger(__name__)

RAW_REGISTRY = "registry.sqlite3"
CALIB_REGISTRY = "calibRegistry.sqlite3"

#: Values of ``filter`` / ``ccd`` in a calib row that mean "valid for any".
ANY_VALUES = (None, "", "None", "NONE", "none", "ANY", "*")


def sql_type(pytype: type) -> str:
    """SQLite column type for a Python data-ID type."""
    if pytype is int or pytype is bool:
        return "INTEGER"
    if pytype is float:
        return "DOUBLE"
    return "TEXT"


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


class Registry:
    """One SQLite registry file, local or on S3 (read through a local cached copy).

    Parameters
    ----------
    url
        Location of the ``.sqlite3`` file (local path or ``s3://`` URL).
    writable
        Open for writing (local files only; use `Registry.edit` for S3).
    """

    def __init__(self, url: str, *, writable: bool = False) -> None:
        self.url = url
        self.writable = writable
        self._tmp: str | None = None
        if storage.is_remote(url):
            if writable:
                raise ValueError("use Registry.edit() to change a registry on S3")
            local = self._download(url)
            self._tmp = local
            self.conn = _connect_ro(local)
        elif writable:
            storage.makedirs(os.path.dirname(os.path.abspath(url)) or ".")
            self.conn = sqlite3.connect(url, timeout=30, check_same_thread=False)
        else:
            if not os.path.exists(url):
                raise FileNotFoundError(f"{url}: no such registry")
            self.conn = _connect_ro(url)
        self.conn.row_factory = sqlite3.Row
        self._columns: dict[str, list[str]] = {}
        self._lock = threading.RLock()  # one connection shared by the threads of a service

    @staticmethod
    def _download(url: str) -> str:
        digest = hashlib.sha1(url.encode()).hexdigest()[:16]
        fd, local = tempfile.mkstemp(prefix=f"calexpress-registry-{digest}-", suffix=".sqlite3")
        os.close(fd)
        try:
            storage.get_local_file(url, local)
        except BaseException:
            os.unlink(local)
            raise
        return local

    @classmethod
    @contextlib.contextmanager
    def edit(cls, url: str) -> Iterator[Registry]:
        """Open *url* for changes; committed (and, for S3, uploaded atomically) when the block succeeds.

        A missing registry is created.  On an exception nothing is changed.
        """
        if not storage.is_remote(url):
            reg = cls(url, writable=True)
            try:
                with reg.conn:
                    yield reg
            finally:
                reg.close()
            return
        fd, local = tempfile.mkstemp(prefix="calexpress-registry-edit-", suffix=".sqlite3")
        os.close(fd)
        try:
            if storage.exists(url):
                storage.get_local_file(url, local)
            else:
                os.unlink(local)
            reg = cls(local, writable=True)
            try:
                with reg.conn:
                    yield reg
            finally:
                reg.close()
            storage.put_local_file(local, url)
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(local)

    def close(self) -> None:
        """Close the connection and drop a cached copy."""
        with contextlib.suppress(Exception):
            self.conn.close()
        if self._tmp:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self._tmp)
            self._tmp = None

    def __del__(self) -> None:  # pragma: no cover - best effort
        self.close()

    # ------------------------------------------------------------------ schema
    def tables(self) -> list[str]:
        """Names of the tables (without SQLite's own)."""
        with self._lock:
            rows = self.conn.execute("SELECT name FROM sqlite_master WHERE type='table'").fetchall()
        return [r[0] for r in rows if not r[0].startswith("sqlite_")]

    def has_table(self, table: str) -> bool:
        """True if *table* exists."""
        return table in self.tables()

    def columns(self, table: str) -> list[str]:
        """Column names of *table* ([] if it does not exist)."""
        if table not in self._columns:
            with self._lock:
                rows = self.conn.execute(f"PRAGMA table_info({_quote(table)})").fetchall()
            self._columns[table] = [r[1] for r in rows]
        return self._columns[table]

    def column_types(self, table: str) -> dict[str, str]:
        """Declared SQLite types of the columns of *table*."""
        rows = self.conn.execute(f"PRAGMA table_info({_quote(table)})").fetchall()
        return {r[1]: (r[2] or "").upper() for r in rows}

    def ensure_table(self, table: str, columns: Mapping[str, str], unique: Sequence[str] = ()) -> None:
        """Create *table* (with an ``id`` primary key) if missing; add missing *columns* to an old one."""
        if not self.has_table(table):
            cols = ["id INTEGER PRIMARY KEY AUTOINCREMENT"]
            cols += [f"{_quote(k)} {v}" for k, v in columns.items()]
            if unique:
                cols.append(f"UNIQUE({', '.join(_quote(u) for u in unique)})")
            self.conn.execute(f"CREATE TABLE {_quote(table)} ({', '.join(cols)})")
        else:
            have = set(self.columns(table))
            for k, v in columns.items():
                if k not in have:
                    self.conn.execute(f"ALTER TABLE {_quote(table)} ADD COLUMN {_quote(k)} {v}")
        self._columns.pop(table, None)

    # ------------------------------------------------------------------ rows
    def select(self, table: str, where: Mapping[str, Any] | None = None,
               order_by: Sequence[str] = ()) -> list[dict[str, Any]]:
        """Rows of *table* whose columns equal *where* (a list/tuple value means "any of")."""
        if not self.has_table(table):
            return []
        clauses, params = [], []
        for k, v in (where or {}).items():
            if isinstance(v, list | tuple | set):
                v = list(v)
                clauses.append(f"{_quote(k)} IN ({', '.join('?' * len(v))})")
                params.extend(v)
            elif v is None:
                clauses.append(f"{_quote(k)} IS NULL")
            else:
                clauses.append(f"{_quote(k)} = ?")
                params.append(v)
        sql = f"SELECT * FROM {_quote(table)}"
        if clauses:
            sql += " WHERE " + " AND ".join(clauses)
        if order_by:
            sql += " ORDER BY " + ", ".join(_quote(c) for c in order_by)
        with self._lock:
            return [dict(r) for r in self.conn.execute(sql, params).fetchall()]

    def insert(self, table: str, row: Mapping[str, Any]) -> int:
        """Insert *row*; returns its id.  `sqlite3.IntegrityError` on a UNIQUE clash."""
        keys = list(row)
        sql = (f"INSERT INTO {_quote(table)} ({', '.join(_quote(k) for k in keys)}) "
               f"VALUES ({', '.join('?' * len(keys))})")
        cur = self.conn.execute(sql, [row[k] for k in keys])
        return int(cur.lastrowid)


def _connect_ro(path: str) -> sqlite3.Connection:
    uri = "file:" + os.path.abspath(path).replace("?", "%3f").replace("#", "%23")
    try:
        conn = sqlite3.connect(uri + "?mode=ro", uri=True, timeout=30, check_same_thread=False)
        conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
        return conn
    except sqlite3.OperationalError:
        # read-only folder with a journal SQLite cannot create: treat the file as immutable
        conn = sqlite3.connect(uri + "?immutable=1", uri=True, check_same_thread=False)
        conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
        return conn


# ---------------------------------------------------------------------- dates and calib choice
def date_to_mjd(value: Any, *, end_of_day: bool = False) -> float | None:
    """MJD (TAI) of a date given as ISO text, `astropy.time.Time`, `datetime.datetime` or MJD number.

    A date-only text (``2037-12-31``) with ``end_of_day=True`` gives the end of that day.  None / empty
    text gives None (unbounded).
    """
    if value is None:
        return None
    if isinstance(value, int | float):
        return None if math.isnan(value) else float(value)
    from astropy.time import Time

    if isinstance(value, Time):
        return float(value.tai.mjd)
    import datetime as _dt

    if isinstance(value, _dt.datetime | _dt.date):
        value = value.isoformat()
    text = str(value).strip()
    if not text or text in ("None", "NONE"):
        return None
    date_only = "T" not in text and " " not in text and len(text) <= 10
    text = text.replace(" ", "T")
    try:
        mjd = float(Time(text, format="isot" if "T" in text else "iso", scale="tai").mjd)
    except ValueError:
        mjd = float(Time(text, scale="tai").mjd)
    if date_only and end_of_day:
        mjd += 1.0 - 1e-9  # the whole day, up to (not including) the next midnight
    return mjd


def _any(value: Any) -> bool:
    return value in ANY_VALUES or (isinstance(value, float) and math.isnan(value))


def select_calib(
    rows: Sequence[Mapping[str, Any]],
    obs_date: Any,
    *,
    filter: str | None = None,
    ccd: int | None = None,
    match_filter: bool = True,
) -> dict[str, Any] | None:
    """The calib row valid at *obs_date* for *filter* and *ccd*, or None.

    A row is valid if ``validStart <= date`` and ``date <= validEnd`` (a date-only ``validEnd``
    includes that day); NULL bounds are open.  A row's ``filter`` / ``ccd`` of None or ``'None'``
    matches any.  Among valid rows, the one whose ``calibDate`` is nearest the observation wins (ties:
    the most specific, then the newest row).
    """
    obs = date_to_mjd(obs_date)
    best: tuple | None = None
    best_row = None
    for row in rows:
        rf = row.get("filter")
        if match_filter and not _any(rf) and filter is not None and str(rf) != str(filter):
            continue
        rc = row.get("ccd")
        if not _any(rc) and ccd is not None and str(rc) != str(ccd):
            continue
        start = date_to_mjd(row.get("validStart"))
        end = date_to_mjd(row.get("validEnd"), end_of_day=True)
        if obs is not None:
            if start is not None and obs < start:
                continue
            if end is not None and obs > end:
                continue
        cdate = date_to_mjd(row.get("calibDate"))
        dist = abs(obs - cdate) if (obs is not None and cdate is not None) else math.inf
        specific = int(not _any(rf)) + int(not _any(rc))
        key = (dist, -specific, -int(row.get("id") or 0))
        if best is None or key < best:
            best, best_row = key, dict(row)
    return best_row
