"""The Butler against a real S3 server (SeaweedFS ``weed mini`` on loopback)."""

from __future__ import annotations

import numpy as np
import pytest
from astropy.table import Table
from calexpress import storage
from calexpress.butler import Butler, DatasetNotFoundError
from calexpress.exposure import Exposure
from calexpress.ingest import ingest_calibs, ingest_raws
from calexpress.registry import Registry

pytestmark = pytest.mark.integration


def _all_keys(prefix: str) -> list[str]:
    fs, path = storage.get_filesystem(prefix)
    return sorted(fs.find(path))


def _exposure() -> Exposure:
    rng = np.random.default_rng(7)
    return Exposure(rng.normal(0, 1, (64, 48)).astype(np.float32),
                    rng.integers(0, 255, (64, 48)).astype(np.int32),
                    rng.uniform(1, 2, (64, 48)).astype(np.float32), filter="r")


def _catalog() -> Table:
    t = Table()
    t["id"] = np.arange(1, 101, dtype=np.int64)
    t["base_PsfFlux_instFlux"] = np.linspace(1.0, 1e4, 100)
    return t


def test_put_get_s3_same_as_local(s3_prefix, obs_test_repo, tmp_path) -> None:
    out = f"{s3_prefix}/out"
    b = Butler(out, parents=[str(obs_test_repo)])
    local = Butler(str(tmp_path / "out"), parents=[str(obs_test_repo)])
    exp, cat = _exposure(), _catalog()
    for bb in (b, local):
        bb.put(exp, "calexp", visit=3)
        bb.put(cat, "src", visit=3)
        bb.put("config.doCalibrate=True\n", "processCcd_config", {})
        bb.put({"a": {"b": 1.5}}, "processCcd_metadata", visit=3)
    assert b.get_uri("src", visit=3) == f"{out}/src/3/src_3_r_0.fits"
    assert storage.exists(f"{out}/repositoryCfg.yaml")
    # read back through a fresh butler that knows only the S3 root
    again = Butler(out)
    assert again.camera.name == "obs_test"
    src_s3 = again.get("src", visit=3, ccd=0)
    src_local = local.get("src", visit=3)
    assert src_s3.colnames == src_local.colnames
    for c in src_s3.colnames:
        assert np.array_equal(src_s3[c], src_local[c])
    cal = again.get("calexp", visit=3)
    assert np.array_equal(cal.image, exp.image) and np.array_equal(cal.mask, exp.mask)
    assert again.get("processCcd_config", {}) == "config.doCalibrate=True\n"
    assert again.get("processCcd_metadata", visit=3) == {"a": {"b": 1.5}}
    assert again.exists("calexp", visit=3) and not again.exists("calexp", visit=1)
    # the raw still comes from the local parent
    assert again.get_uri("raw", visit=3).endswith("raw_v3_fr.fits.gz")
    with pytest.raises(DatasetNotFoundError, match=f"{out}/calexp/1/calexp_1_g_0.fits"):
        again.get("calexp", visit=1)
    assert not [k for k in _all_keys(out) if storage.TEMP_PREFIX in k]


class _Exploding:
    """Writes half a file, then fails (a crash in the middle of a write)."""

    def write(self, path, compress=False) -> None:
        with open(path, "wb") as f:
            f.write(b"SIMPLE  = T" + b" " * 5000)
        raise RuntimeError("writer died midway")


def test_failed_write_leaves_no_partial_object(s3_prefix, obs_test_repo) -> None:
    out = f"{s3_prefix}/fail"
    b = Butler(out, parents=[str(obs_test_repo)])
    with pytest.raises(RuntimeError, match="midway"):
        b.put(_Exploding(), "calexp", visit=1)
    assert not b.exists("calexp", visit=1)
    keys = _all_keys(out)
    assert keys == [f"{out[5:]}/repositoryCfg.yaml"]
    # an existing object is untouched by a failed overwrite
    b.put(_exposure(), "calexp", visit=1)
    with pytest.raises(RuntimeError):
        b.put(_Exploding(), "calexp", visit=1)
    assert np.array_equal(b.get("calexp", visit=1).image, _exposure().image)
    assert not [k for k in _all_keys(out) if storage.TEMP_PREFIX in k]
    # a failed registry edit uploads nothing
    with pytest.raises(RuntimeError), Registry.edit(f"{out}/registry.sqlite3") as reg:
        reg.ensure_table("raw", {"visit": "INTEGER"})
        raise RuntimeError("abort")
    assert not storage.exists(f"{out}/registry.sqlite3")


def test_ingest_into_s3_repository(s3_prefix, simcam_dir) -> None:
    repo = f"{s3_prefix}/repo"
    raws = sorted((simcam_dir / "raw").glob("*.fits.fz"))[:2]
    res = ingest_raws(repo, "simcamA", raws, mode="link")  # link means copy on S3
    assert res.failed == []
    calib = simcam_dir / "calib"
    res = ingest_calibs(repo, [calib / "flat_g_det0.fits", calib / "linearizer.yaml"])
    assert res.failed == []
    b = Butler(repo)
    assert b.query_data_ids("raw") == [{"visit": 1001, "ccd": 0, "filter": "g"},
                                       {"visit": 1002, "ccd": 0, "filter": "r"}]
    raw = b.get("raw", visit=1001)
    assert raw.image.shape == (4112, 2208)
    assert b.get_uri("flat", visit=1001) == f"{repo}/flat/flat_g_det0.fits"
    flat = b.get_calib("flat", {"visit": 1001})
    assert flat.image.shape == (4096, 2048)
    assert type(b.get_calib("linearizer", {"visit": 1002})).__name__ == "Linearizer"
    dup = ingest_raws(repo, "simcamA", raws[:1])
    assert "already ingested" in dup.failed[0]


def test_direct_write_mode(s3_prefix, monkeypatch) -> None:
    monkeypatch.setenv("CALEXPRESS_S3_WRITE", "direct")
    b = Butler(f"{s3_prefix}/direct")
    b.put(_catalog(), "src", visit=1, filter="g", ccd=0)
    assert len(b.get("src", visit=1, filter="g", ccd=0)) == 100
    with pytest.raises(RuntimeError):
        b.put(_Exploding(), "calexp", visit=1, filter="g", ccd=0)
    assert _all_keys(f"{s3_prefix}/direct") == [f"{s3_prefix[5:]}/direct/src/1/src_1_g_0.fits"]


def test_s3_output_readable_without_its_parent(s3_prefix, obs_test_copy) -> None:
    """Read an S3 output where its (local) input repository is not available."""
    import shutil

    inp = obs_test_copy
    out = f"{s3_prefix}/moved"
    Butler(out, parents=[str(inp)]).put(_catalog(), "src", visit=3)
    shutil.rmtree(inp)
    b = Butler(out)
    assert b.camera.name == "obs_test"  # recorded in repositoryCfg.yaml
    assert b.parents == []
    got = b.get("src", visit=3, ccd=0)  # filter completed from the files present
    assert list(got["id"]) == list(range(1, 101))
    assert b.query_data_ids("src") == [{"visit": 3, "filter": "r", "ccd": 0}]
