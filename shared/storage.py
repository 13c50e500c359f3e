"""Thin file layer over local folders and S3 (through fsspec/s3fs).

Every function takes a *location*: a local path (``/data/repo/x.fits``, ``file:///...``) or an S3 URL
(``s3://bucket/prefix/x.fits``).  S3 options come from the environment:

- endpoint: ``CALEXPRESS_S3_ENDPOINT``, else ``AWS_ENDPOINT_URL_S3``, else ``AWS_ENDPOINT_URL``;
- keys: ``CALEXPRESS_S3_KEY`` / ``CALEXPRESS_S3_SECRET``, else the usual ``AWS_ACCESS_KEY_ID`` /
  ``AWS_SECRET_ACCESS_KEY`` (read by botocore itself);
- region: ``CALEXPRESS_S3_REGION`` / ``AWS_DEFAULT_REGION`` (optional);
- payload signing: off (``UNSIGNED-PAYLOAD``; integrity comes from botocore's CRC32 request checksum, and
  over https botocore does the same by default).  Over plain http botocore would otherwise SHA-256 every
  body on both client and server: 0.1-0.2 s of CPU per 100 MB written.  ``CALEXPRESS_S3_SIGN_PAYLOAD=1``
  turns signing back on.

One filesystem object is kept per (endpoint, key, process).  Secrets are never logged.

Writes are atomic: `atomic_write` writes a local temporary file first; a local target is then put in
place with `os.replace`; an S3 target is uploaded straight to its final key (S3 makes an object visible
only when its PUT or multipart upload completes, so a half-written object is never visible and no
server-side copy of the object is needed).  ``CALEXPRESS_S3_WRITE=copy`` uploads under a temporary key
and copies it to the final key instead, for stores without that guarantee.
"""

from __future__ import annotations

import io
import logging
import os
import shutil
import tempfile
import threading
import uuid
from collections.abc import Callable
from typing import IO, Any

__all__ = [
    "atomic_write",
    "basename",
    "dirname",
    "exists",
    "get_filesystem",
    "get_local_file",
    "glob",
    "is_remote",
    "isdir",
    "join",
    "listdir",
    "local_path",
    "makedirs",
    "open_input",
    "put_local_file",
    "read_bytes",
    "read_text",
    "remove",
    "remove_tree",
    "s3_options",
    "split_url",
    "TEMP_PREFIX",
]

log = logging.getLogger(__name__)

#: Names of temporary files and keys start with this; listings skip them.
TEMP_PREFIX = ".tmp-"

_FS_CACHE: dict[tuple, Any] = {}
_FS_LOCK = threading.Lock()


def split_url(url: str | os.PathLike) -> tuple[str, str]:
    """Return ``(scheme, path)``; scheme is ``""`` for a local path (``file://`` is stripped)."""
    text = os.fspath(url)
    if "://" in text:
        scheme, _, rest = text.partition("://")
        scheme = scheme.lower()
        if scheme == "file":
            return "", rest
        if scheme in ("s3", "s3a"):
            return "s3", rest
        return scheme, rest
    return "", text


def is_remote(url: str | os.PathLike) -> bool:
    """True for an object-store URL (``s3://...``)."""
    return split_url(url)[0] != ""


def local_path(url: str | os.PathLike) -> str:
    """The local path of a local location; `ValueError` for a remote URL."""
    scheme, path = split_url(url)
    if scheme:
        raise ValueError(f"not a local path: {url}")
    return path


def join(base: str | os.PathLike, *parts: str) -> str:
    """Join path components with ``/`` (keeps the ``s3://`` scheme; local paths use `os.path.join`)."""
    base = os.fspath(base)
    scheme, path = split_url(base)
    if not scheme:
        return os.path.join(path, *parts)
    out = path.rstrip("/")
    for p in parts:
        p = str(p)
        if not p:
            continue
        out = p.strip("/") if not out else f"{out}/{p.strip('/')}"
    return f"{scheme}://{out}"


def dirname(url: str | os.PathLike) -> str:
    """Parent location of *url*."""
    scheme, path = split_url(url)
    if not scheme:
        return os.path.dirname(path)
    return f"{scheme}://{path.rstrip('/').rpartition('/')[0]}"


def basename(url: str | os.PathLike) -> str:
    """Last component of *url*."""
    return split_url(url)[1].rstrip("/").rpartition("/")[2]


def s3_options() -> dict[str, Any]:
    """Keyword arguments for `s3fs.S3FileSystem` built from the environment (see module doc)."""
    env = os.environ
    opts: dict[str, Any] = {}
    endpoint = (env.get("CALEXPRESS_S3_ENDPOINT") or env.get("AWS_ENDPOINT_URL_S3")
                or env.get("AWS_ENDPOINT_URL"))
    if endpoint:
        opts["endpoint_url"] = endpoint
    key = env.get("CALEXPRESS_S3_KEY")
    secret = env.get("CALEXPRESS_S3_SECRET")
    if key and secret:
        opts["key"] = key
        opts["secret"] = secret
    region = env.get("CALEXPRESS_S3_REGION")
    if region:
        opts["client_kwargs"] = {"region_name": region}
    if env.get("CALEXPRESS_S3_SIGN_PAYLOAD", "0").lower() not in ("1", "true", "yes"):
        opts["config_kwargs"] = {"s3": {"payload_signing_enabled": False}}
    return opts


def get_filesystem(url: str | os.PathLike) -> tuple[Any, str]:
    """Return ``(filesystem, path)`` for *url*: one cached fsspec filesystem per endpoint and process."""
    scheme, path = split_url(url)
    if not scheme:
        import fsspec

        return fsspec.filesystem("file"), path
    if scheme != "s3":
        import fsspec

        return fsspec.filesystem(scheme), path
    opts = s3_options()
    ident = (
        "s3",
        opts.get("endpoint_url"),
        opts.get("key") or os.environ.get("AWS_ACCESS_KEY_ID"),
        # a hash only: the secret itself never enters a printable structure
        hash(opts.get("secret") or os.environ.get("AWS_SECRET_ACCESS_KEY")),
        str(opts.get("client_kwargs")),
        str(opts.get("config_kwargs")),
        os.getpid(),
    )
    with _FS_LOCK:
        fs = _FS_CACHE.get(ident)
        if fs is None:
            import s3fs

            fs = s3fs.S3FileSystem(skip_instance_cache=True, use_listings_cache=False, **opts)
            _FS_CACHE[ident] = fs
            log.debug("new S3 filesystem for endpoint %s", opts.get("endpoint_url", "(default)"))
    return fs, path


def exists(url: str | os.PathLike) -> bool:
    """True if a file or folder (or S3 prefix) exists at *url*."""
    scheme, path = split_url(url)
    if not scheme:
        return os.path.exists(path)
    fs, path = get_filesystem(url)
    try:
        return bool(fs.exists(path))
    except FileNotFoundError:
        return False


def isdir(url: str | os.PathLike) -> bool:
    """True if *url* is a folder (local) or a non-empty prefix / bucket (S3)."""
    scheme, path = split_url(url)
    if not scheme:
        return os.path.isdir(path)
    fs, path = get_filesystem(url)
    try:
        return bool(fs.isdir(path))
    except FileNotFoundError:
        return False


def makedirs(url: str | os.PathLike) -> None:
    """Create a local folder and its parents; for S3 only the bucket is created if missing."""
    scheme, path = split_url(url)
    if not scheme:
        os.makedirs(path, exist_ok=True)
        return
    fs, path = get_filesystem(url)
    bucket = path.split("/", 1)[0]
    try:
        if not fs.exists(bucket):
            fs.mkdir(bucket)
    except (FileExistsError, PermissionError):  # pragma: no cover - bucket owned elsewhere
        pass


def open_input(url: str | os.PathLike) -> IO[bytes]:
    """Open *url* for binary reading.

    A remote object is read at once into memory (one GET; fastest for whole-file FITS reads).

    Raises
    ------
    FileNotFoundError
        Naming *url* if it does not exist.
    """
    scheme, path = split_url(url)
    if not scheme:
        try:
            return open(path, "rb")
        except IsADirectoryError:
            raise FileNotFoundError(f"{url}: is a folder, not a file") from None
        except FileNotFoundError:
            raise FileNotFoundError(f"{url}: no such file") from None
    return io.BytesIO(read_bytes(url))


def read_bytes(url: str | os.PathLike) -> bytes:
    """The whole content of *url* (`FileNotFoundError` naming it if missing)."""
    scheme, path = split_url(url)
    if not scheme:
        try:
            with open(path, "rb") as f:
                return f.read()
        except FileNotFoundError:
            raise FileNotFoundError(f"{url}: no such file") from None
    fs, path = get_filesystem(url)
    try:
        return fs.cat_file(path)
    except FileNotFoundError:
        raise FileNotFoundError(f"{url}: no such object") from None


def read_text(url: str | os.PathLike, encoding: str = "utf-8") -> str:
    """The content of *url* decoded as text."""
    return read_bytes(url).decode(encoding)


def _suffix_of(name: str) -> str:
    """``.fits.gz`` for ``a.fits.gz``, ``.yaml`` for ``b.yaml``."""
    base = name.rpartition("/")[2]
    if "." not in base.lstrip("."):
        return ""
    stem, ext = os.path.splitext(base)
    if ext.lower() in (".gz", ".fz", ".bz2") and "." in stem:
        ext = os.path.splitext(stem)[1] + ext
    return ext


def atomic_write(
    url: str | os.PathLike, data_or_writer: bytes | str | Callable[[str], Any], *, overwrite: bool = True
) -> None:
    """Write *url* atomically.

    Parameters
    ----------
    url
        Final location (local path or ``s3://`` URL).
    data_or_writer
        ``bytes`` / ``str`` content, or a callable ``writer(local_path)`` that writes the file at the local
        temporary path it is given (the path keeps *url*'s suffix, e.g. ``.fits`` or ``.fits.gz``).
    overwrite
        If False, raise `FileExistsError` when *url* already exists.

    Notes
    -----
    Nothing is visible under *url* until the whole content is written: a writer that raises leaves no
    file and no temporary behind.  Local: temporary file in the target folder, then `os.replace`.
    S3: the content is written to a local temporary file, then uploaded straight to the final key; S3
    makes an object visible only once its single PUT (or its multipart upload) has completed, and s3fs
    aborts a failed multipart upload, so a half-written object is never visible.  Setting
    ``CALEXPRESS_S3_WRITE=copy`` restores the older upload to a temporary key plus server-side copy
    (for stores that do not give that guarantee).
    """
    url = os.fspath(url)
    scheme, path = split_url(url)
    if not overwrite and exists(url):
        raise FileExistsError(f"{url}: already exists")
    suffix = _suffix_of(path)
    if not scheme:
        folder = os.path.dirname(os.path.abspath(path))
        os.makedirs(folder, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=TEMP_PREFIX, suffix=suffix, dir=folder)
        os.close(fd)
        try:
            _fill(tmp, data_or_writer)
            os.chmod(tmp, 0o644 & ~_umask())
            os.replace(tmp, path)
        except BaseException:
            _silent_unlink(tmp)
            raise
        return
    fd, tmp = tempfile.mkstemp(prefix=TEMP_PREFIX, suffix=suffix)
    os.close(fd)
    try:
        _fill(tmp, data_or_writer)
        put_local_file(tmp, url)
    finally:
        _silent_unlink(tmp)


def put_local_file(local: str | os.PathLike, url: str | os.PathLike) -> None:
    """Copy the local file *local* to *url* atomically (see `atomic_write`)."""
    url = os.fspath(url)
    scheme, path = split_url(url)
    if not scheme:
        atomic_write(url, lambda tmp: shutil.copyfile(local, tmp))
        return
    fs, path = get_filesystem(url)
    parent, _, name = path.rpartition("/")
    if os.environ.get("CALEXPRESS_S3_WRITE", "direct").lower() != "copy":
        # S3 shows an object only once its PUT / multipart upload completes (s3fs aborts a failed one):
        # no temporary key and no server-side copy of the (up to ~100 MB) intermediate
        fs.put_file(os.fspath(local), path)
        fs.invalidate_cache(parent)
        return
    tmp_key = f"{parent}/{TEMP_PREFIX}{uuid.uuid4().hex}-{name}"
    try:
        fs.put_file(os.fspath(local), tmp_key)
        fs.copy(tmp_key, path)
    finally:
        try:
            fs.rm_file(tmp_key)
        except FileNotFoundError:
            pass
        except Exception as exc:  # pragma: no cover - best effort cleanup
            log.warning("could not delete temporary object s3://%s: %s", tmp_key, exc)
    fs.invalidate_cache(parent)


def get_local_file(url: str | os.PathLike, local: str | os.PathLike) -> None:
    """Download (or copy) *url* to the local path *local*."""
    scheme, path = split_url(url)
    if not scheme:
        shutil.copyfile(path, local)
        return
    fs, path = get_filesystem(url)
    try:
        fs.get_file(path, os.fspath(local))
    except FileNotFoundError:
        raise FileNotFoundError(f"{url}: no such object") from None


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _fill(tmp: str, data_or_writer: bytes | str | Callable[[str], Any]) -> None:
    if isinstance(data_or_writer, str):
        data_or_writer = data_or_writer.encode("utf-8")
    if isinstance(data_or_writer, bytes | bytearray | memoryview):
        with open(tmp, "wb") as f:
            f.write(data_or_writer)
        return
    data_or_writer(tmp)


def _silent_unlink(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def listdir(url: str | os.PathLike) -> list[str]:
    """Names (not full paths) in the folder *url*, sorted, skipping temporaries; [] if missing."""
    scheme, path = split_url(url)
    if not scheme:
        try:
            names = os.listdir(path)
        except (FileNotFoundError, NotADirectoryError):
            return []
    else:
        fs, path = get_filesystem(url)
        try:
            names = [p.rstrip("/").rpartition("/")[2] for p in fs.ls(path, detail=False, refresh=True)]
        except FileNotFoundError:
            return []
    return sorted(n for n in names if not n.startswith(TEMP_PREFIX))


def glob(pattern: str | os.PathLike) -> list[str]:
    """Locations matching the glob *pattern* (``*``, ``?``, ``[..]``), sorted, full URLs for S3."""
    pattern = os.fspath(pattern)
    scheme, path = split_url(pattern)
    if not scheme:
        import glob as _glob

        found = _glob.glob(path)
    else:
        fs, path = get_filesystem(pattern)
        fs.invalidate_cache()
        found = [f"{scheme}://{p}" for p in fs.glob(path)]
    return sorted(f for f in found if not basename(f).startswith(TEMP_PREFIX))


def remove(url: str | os.PathLike) -> None:
    """Delete one file / object (no error if it is missing)."""
    scheme, path = split_url(url)
    if not scheme:
        _silent_unlink(path)
        return
    fs, path = get_filesystem(url)
    try:
        fs.rm_file(path)
    except FileNotFoundError:
        pass


def remove_tree(url: str | os.PathLike) -> None:
    """Delete a folder / every object under a prefix (no error if missing)."""
    scheme, path = split_url(url)
    if not scheme:
        shutil.rmtree(path, ignore_errors=True)
        return
    fs, path = get_filesystem(url)
    try:
        fs.rm(path.rstrip("/") + "/", recursive=True)
    except FileNotFoundError:
        pass
    fs.invalidate_cache()
