"""calexpress.storage: paths, atomic local writes, listings."""

from __future__ import annotations

import os

import pytest
from calexpress import storage


def test_join_and_split() -> None:
    assert storage.join("s3://b/p/", "raw", "x.fits") == "s3://b/p/raw/x.fits"
    assert storage.join("/a/b", "c") == os.path.join("/a/b", "c")
    assert storage.split_url("file:///tmp/x") == ("", "/tmp/x")
    assert storage.split_url("s3://b/k") == ("s3", "b/k")
    assert storage.is_remote("s3://b/k") and not storage.is_remote("/tmp/x")
    assert storage.dirname("s3://b/p/x.fits") == "s3://b/p"
    assert storage.basename("s3://b/p/x.fits.gz") == "x.fits.gz"


def test_atomic_write_local(tmp_path) -> None:
    target = tmp_path / "sub" / "a.fits.gz"
    storage.atomic_write(target, b"abc")
    assert target.read_bytes() == b"abc"
    seen = {}

    def writer(path: str) -> None:
        seen["suffix"] = path
        with open(path, "wb") as f:
            f.write(b"new")

    storage.atomic_write(target, writer)
    assert seen["suffix"].endswith(".fits.gz")
    assert target.read_bytes() == b"new"
    with pytest.raises(FileExistsError):
        storage.atomic_write(target, b"x", overwrite=False)


def test_failed_local_write_leaves_nothing(tmp_path) -> None:
    target = tmp_path / "b.fits"

    def bad(path: str) -> None:
        with open(path, "wb") as f:
            f.write(b"x" * 1000)
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        storage.atomic_write(target, bad)
    assert not target.exists()
    assert os.listdir(tmp_path) == []
    # an existing file is kept intact
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError):
        storage.atomic_write(target, bad)
    assert target.read_bytes() == b"old"
    assert os.listdir(tmp_path) == ["b.fits"]


def test_listdir_glob_remove(tmp_path) -> None:
    for n in ("x1.fits", "x2.fits", "y.txt", storage.TEMP_PREFIX + "z.fits"):
        (tmp_path / n).write_bytes(b"1")
    assert storage.listdir(tmp_path) == ["x1.fits", "x2.fits", "y.txt"]
    assert [os.path.basename(p) for p in storage.glob(str(tmp_path / "*.fits"))] == ["x1.fits", "x2.fits"]
    assert storage.listdir(tmp_path / "missing") == []
    storage.remove(tmp_path / "y.txt")
    storage.remove(tmp_path / "y.txt")
    assert not (tmp_path / "y.txt").exists()
    with pytest.raises(FileNotFoundError, match="nope"):
        storage.read_bytes(tmp_path / "nope")
