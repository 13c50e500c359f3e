"""Butler on local repositories: the Gen2 obs_test repository as it is, output repos, reruns, errors."""

from __future__ import annotations

import os
import sqlite3

import numpy as np
import pytest
import yaml
from astropy.table import Table
from calexpress.butler import (
    Butler,
    CalibNotFoundError,
    DataIdError,
    DatasetNotFoundError,
    NoResultsError,
    RepositoryError,
    rerun_paths,
)
from calexpress.exposure import Exposure


def _exposure(seed: int = 1) -> Exposure:
    rng = np.random.default_rng(seed)
    image = rng.normal(100.0, 5.0, (40, 30)).astype(np.float32)
    mask = rng.integers(0, 64, (40, 30)).astype(np.int32)
    var = rng.uniform(1, 2, (40, 30)).astype(np.float32)
    return Exposure(image, mask, var, filter="g")


def _catalog() -> Table:
    t = Table()
    t["id"] = np.arange(1, 6, dtype=np.int64)
    t["coord_ra"] = np.linspace(0.1, 0.2, 5)
    t["base_PsfFlux_instFlux"] = np.array([1.0, 2.5, 3.0, 4.0, 1e5])
    return t


def test_obs_test_read_as_is(obs_test_repo) -> None:
    before = {p: os.stat(os.path.join(obs_test_repo, p)).st_mtime for p in os.listdir(obs_test_repo)}
    b = Butler(obs_test_repo)
    assert b.camera.name == "obs_test"  # from _mapper lsst.obs.test.testMapper.TestMapper
    ids = b.query_data_ids("raw")
    assert [(d["visit"], d["filter"], d["ccd"]) for d in ids] == [(1, "g", 0), (2, "g", 0), (3, "r", 0)]
    assert b.query_data_ids("raw", filter="g", ccd=0) == ids[:2]
    assert b.query_data_ids("raw", visit=3, ccd=1) == []  # ccd is implied 0
    assert b.get_uri("raw", visit=2).endswith("raw/raw_v2_fg.fits.gz")
    raw = b.get("raw", visit=3)
    assert raw.image.shape == (2000, 1026)
    assert raw.filter == "r"
    defects = b.get_calib("defects", {"visit": 1})
    assert len(defects.boxes) == 504  # 503 points + one 1x861 column
    assert sum(bx.area for bx in defects.boxes) == 503 + 861
    assert b.exists("defects", visit=2)
    assert not b.exists("bias", visit=2)
    after = {p: os.stat(os.path.join(obs_test_repo, p)).st_mtime for p in os.listdir(obs_test_repo)}
    assert before == after


def test_unknown_key_and_no_results(obs_test_repo) -> None:
    b = Butler(obs_test_repo)
    with pytest.raises(DataIdError) as err:
        b.query_data_ids("raw", vist=1)
    msg = str(err.value)
    assert "\n" not in msg and "'vist'" in msg
    assert "valid keys: visit, filter, ccd" in msg
    with pytest.raises(NoResultsError, match="visit: 9"):
        b.get("raw", visit=9)
    with pytest.raises(DataIdError, match="is not int"):
        b.query_data_ids("raw", visit="one")
    with pytest.raises(DataIdError, match="differ in visit"):
        b.get_uri("calexp", filter="g")  # two g visits
    with pytest.raises(CalibNotFoundError) as cerr:
        b.get_calib("bias", {"visit": 1})
    text = str(cerr.value)
    assert "bias" in text and "visit: 1" in text and "1999-01-17T04:52:34" in text


def test_output_repo_round_trip_and_fall_through(obs_test_repo, tmp_path) -> None:
    out = tmp_path / "out"
    b = Butler.for_output(str(out), str(obs_test_repo))
    cfg = yaml.safe_load((out / "repositoryCfg.yaml").read_text())
    assert cfg["_parents"] == [os.path.relpath(obs_test_repo, out)]
    assert cfg["_mapper"] == "obs_test"
    exp = _exposure()
    assert not b.exists("calexp", visit=1)
    uri = b.put(exp, "calexp", visit=1)  # filter and ccd completed from the parent's registry
    assert uri == str(out / "calexp" / "1" / "calexp_1_g_0.fits")
    assert b.exists("calexp", visit=1, filter="g", ccd=0)
    back = b.get("calexp", {"visit": 1})
    assert np.array_equal(back.image, exp.image)
    assert np.array_equal(back.mask, exp.mask)
    assert np.array_equal(back.variance, exp.variance)
    cat = _catalog()
    b.put(cat, "src", visit=3)
    got = b.get("src", visit=3, filter="r", ccd=0)
    assert list(got["id"]) == [1, 2, 3, 4, 5]
    assert np.array_equal(got["base_PsfFlux_instFlux"], cat["base_PsfFlux_instFlux"])
    b.put({"processCcd": {"isr": {"runStartUtc": "x", "n": np.int64(3)}}}, "processCcd_metadata", visit=3)
    assert b.get("processCcd_metadata", visit=3)["processCcd"]["isr"]["n"] == 3
    b.put("config.isr.doBias=False\n", "processCcd_config", {})
    b.put("old\n", "processCcd_config", {}, backup=1)
    assert b.get("processCcd_config", {}) == "config.isr.doBias=False\n"
    assert b.exists("processCcd_config", {}, backup=1) and not b.exists("processCcd_config", {}, backup=2)
    assert (out / "config" / "processCcd.py~1").read_text() == "old\n"
    # raws and calibs fall through to the parent
    assert b.get_uri("raw", visit=1).startswith(str(obs_test_repo))
    assert len(b.get_calib("defects", {"visit": 1}).boxes) == 504
    # re-opened alone, the output knows its parent and camera
    again = Butler(str(out))
    assert again.camera.name == "obs_test"
    assert [p.root for p in again.parents] == [os.path.normpath(str(obs_test_repo))]
    assert again.query_data_ids("raw", visit=1) == [{"visit": 1, "filter": "g", "ccd": 0}]
    # a chained output: out2 -> out -> obs_test
    b2 = Butler(str(tmp_path / "out2"), parents=[str(out)])
    assert np.array_equal(b2.get("calexp", visit=1).image, exp.image)
    assert b2.get_uri("raw", visit=2).endswith("raw_v2_fg.fits.gz")
    with pytest.raises(DatasetNotFoundError, match="calexp_2_g_0.fits"):
        b2.get("calexp", visit=2)
    with pytest.raises(RepositoryError, match="parents"):
        Butler(str(out), parents=[str(tmp_path / "out2")])


def test_corrupt_file_names_the_file(obs_test_repo, tmp_path) -> None:
    b = Butler(str(tmp_path / "o"), parents=[str(obs_test_repo)])
    path = tmp_path / "o" / "calexp" / "2" / "calexp_2_g_0.fits"
    path.parent.mkdir(parents=True)
    path.write_bytes(b"SIMPLE  =                    T" + b" " * 50)
    with pytest.raises(OSError) as err:
        b.get("calexp", visit=2)
    assert str(path) in str(err.value) and "\n" not in str(err.value)


def test_rerun_paths(tmp_path) -> None:
    root = str(tmp_path)
    assert rerun_paths(root, "a:b") == (os.path.join(root, "rerun", "a"), os.path.join(root, "rerun", "b"))
    assert rerun_paths(root, "b") == (root, os.path.join(root, "rerun", "b"))
    assert rerun_paths("s3://bk/repo", "x:y") == ("s3://bk/repo/rerun/x", "s3://bk/repo/rerun/y")
    legacy = tmp_path / "rerun" / "c"
    legacy.mkdir(parents=True)
    (tmp_path / "other").mkdir()
    os.symlink(tmp_path / "other", legacy / "_parent")
    assert rerun_paths(root, "c")[0] == str(tmp_path / "other")
    with pytest.raises(ValueError):
        rerun_paths(root, "a:b:c")


def test_rerun_output_with_parent(obs_test_repo, tmp_path) -> None:
    inp, out = rerun_paths(str(tmp_path), "first")
    # the rerun's input here is the obs_test repo
    b = Butler(out, parents=[str(obs_test_repo)])
    b.put(_catalog(), "icSrc", visit=2)
    inp2, out2 = rerun_paths(str(tmp_path), "first:second")
    assert inp2 == out
    b2 = Butler(out2, parents=[inp2])
    assert len(b2.get("icSrc", visit=2)) == 5
    assert b2.camera.name == "obs_test"


def test_gen2_calib_registry_without_path(obs_test_copy) -> None:
    """A Gen2 calibRegistry (no path column): calibs are found through the camera's templates."""
    root = obs_test_copy
    con = sqlite3.connect(root / "calibRegistry.sqlite3")
    con.execute("UPDATE defects SET validEnd='1999-01-31'")
    con.commit()
    con.close()
    b = Butler(str(root))
    assert len(b.get_calib("defects", {"visit": 2}).boxes) == 504
    with pytest.raises(CalibNotFoundError, match="1999-02-19"):
        b.get_calib("defects", {"visit": 3})


def test_repository_without_camera(tmp_path) -> None:
    """A bare root (no _mapper, no parents): default templates, keys taken as given."""
    b = Butler(str(tmp_path / "bare"))
    b.put(_catalog(), "src", visit=5, filter="i", ccd=2)
    assert b.get_uri("src", visit=5, filter="i", ccd=2).endswith("src/5/src_5_i_2.fits")
    assert len(b.get("src", visit=5, filter="i", ccd=2)) == 5
    assert b.query_data_ids("src") == [{"visit": "5", "filter": "i", "ccd": "2"}]
    assert b.get("src", visit=5)["id"][0] == 1  # completed from the files present
    with pytest.raises(DataIdError, match="unknown dataset type 'calexpp'"):
        b.get("calexpp", visit=5)
    with pytest.raises(RepositoryError, match="no camera"):
        _ = b.camera


def test_lsst_repository_cfg_is_read(obs_test_repo, tmp_path) -> None:
    """An output repository written by LSST's Gen2 butler (``!RepositoryCfg_v1``)."""
    os.symlink(obs_test_repo, tmp_path / "input")
    out = tmp_path / "processCcdOut"
    out.mkdir()
    (out / "repositoryCfg.yaml").write_text(
        "!RepositoryCfg_v1\n_mapper: !!python/name:lsst.obs.test.testMapper.TestMapper ''\n"
        "_mapperArgs: {}\n_parents: [../input]\n_policy: null\n_root: null\n")
    b = Butler(str(out))
    assert b.camera.name == "obs_test"
    assert [p.root for p in b.parents] == [str(tmp_path / "input")]
    assert len(b.query_data_ids("raw")) == 3
    b.put("x\n", "isr_config", {})
    assert (out / "config" / "isr.py").read_text() == "x\n"
    b.put({"isr": {"a": 1}}, "isr_metadata", visit=1)
    assert b.get("isr_metadata", visit=1) == {"isr": {"a": 1}}
    assert b.get_uri("isr_metadata", visit=1).endswith("isr_metadata/1/isr_metadata_1_g_0.yaml")


def test_put_calib_registers_it(obs_test_repo, tmp_path) -> None:
    """make-calibs style: write a master into a repository and find it by date."""
    from calexpress.calibs import Defects
    from calexpress.geom import Box

    calib = tmp_path / "calib"
    b = Butler(str(tmp_path / "out"), parents=[str(obs_test_repo)], calib_root=str(calib))
    Butler(str(calib), camera="obs_test").put_calib(
        Defects([Box(1, 2, 3, 4)]), "defects", ccd=0, calib_date="1999-01-01",
        valid_start="1999-01-01", valid_end="1999-01-31")
    flat = _exposure(3)
    url = Butler(str(calib), camera="obs_test").put_calib(flat, "flat", filter="g", ccd=0,
                                                           calib_date="1999-01-10")
    assert url.endswith("flat/19990110/flat_g_0.fits")
    d = b.get_calib("defects", {"visit": 1})
    assert [(bx.x0, bx.y0, bx.width, bx.height) for bx in d.boxes] == [(1, 2, 3, 4)]
    with pytest.raises(CalibNotFoundError):
        b.get_calib("defects", {"visit": 3})  # 1999-02-19: after validEnd
    assert np.array_equal(b.get_calib("flat", {"visit": 2}).image, flat.image)
    with pytest.raises(CalibNotFoundError, match="flat"):
        b.get_calib("flat", {"visit": 3})  # r: no flat
