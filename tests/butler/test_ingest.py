"""Ingest of simcamA raws and master calibrations; calibration choice by date, filter and detector."""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

import numpy as np
import pytest
from calexpress.butler import Butler, CalibNotFoundError, DataIdError
from calexpress.ingest import ingest_calibs, ingest_raws, register_cli


@pytest.fixture(scope="module")
def simcam_repo(simcam_dir, tmp_path_factory) -> tuple[Path, object, object]:
    repo = tmp_path_factory.mktemp("simcam") / "repo"
    raws = sorted((simcam_dir / "raw").glob("*.fits.fz"))
    r1 = ingest_raws(repo, "simcamA", raws, mode="link")
    r2 = ingest_calibs(repo, sorted((simcam_dir / "calib").iterdir()))
    return repo, r1, r2


def test_ingest_raws_from_headers(simcam_repo, simcam_dir) -> None:
    repo, res, _ = simcam_repo
    assert res.failed == []
    assert [(d["visit"], d["ccd"], d["filter"]) for d in res.ingested] == [
        (1001, 0, "g"), (1002, 0, "r"), (1003, 0, "r")]
    assert (repo / "_mapper").read_text().strip() == "simcamA"
    link = repo / res.ingested[0]["path"]
    assert link.is_symlink()
    assert link.resolve() == (simcam_dir / "raw" / "simcamA_0001001_g.fits.fz").resolve()
    b = Butler(str(repo))
    assert b.query_data_ids("raw", filter="r") == [
        {"visit": 1002, "ccd": 0, "filter": "r"}, {"visit": 1003, "ccd": 0, "filter": "r"}]
    raw = b.get("raw", visit=1002)
    assert raw.image.shape == (4112, 2208)
    assert raw.metadata["EXPID"] == 1002
    with pytest.raises(DataIdError, match="valid keys: visit, ccd, filter"):
        b.query_data_ids("raw", expid=1002)


def test_ingest_refuses_bad_files_and_keeps_the_others(simcam_repo, simcam_dir, obs_test_repo,
                                                        tmp_path) -> None:
    repo, _, _ = simcam_repo
    good = simcam_dir / "raw" / "simcamA_0001001_g.fits.fz"
    truncated = tmp_path / "trunc.fits.fz"
    truncated.write_bytes(good.read_bytes()[: 200_000])
    new_repo = tmp_path / "r2"
    other = obs_test_repo / "raw" / "raw_v1_fg.fits.gz"
    res = ingest_raws(new_repo, "simcamA", [truncated, other, good, good], mode="copy")
    assert [d["visit"] for d in res.ingested] == [1001]
    assert len(res.failed) == 3
    assert all("\n" not in m for m in res.failed)
    assert str(truncated) in res.failed[0]
    assert str(other) in res.failed[1]
    assert "already ingested" in res.failed[2]
    assert not (new_repo / "raw" / "trunc.fits.fz").exists()
    # copy mode makes a real file
    copied = new_repo / res.ingested[0]["path"]
    assert copied.is_file() and not copied.is_symlink()
    assert copied.stat().st_size == good.stat().st_size
    # duplicates of an existing repository are refused too
    again = ingest_raws(repo, "simcamA", [good])
    assert again.ingested == [] and "already ingested" in again.failed[0]
    with pytest.raises(ValueError, match="camera simcamA"):
        ingest_raws(repo, "obs_test", [good])


def test_ingest_simcam_calibs_as_they_are(simcam_repo) -> None:
    repo, _, res = simcam_repo
    assert res.failed == []
    types = sorted((r["calibType"], r["filter"], r["ccd"]) for r in res.ingested)
    assert types == [("bias", None, 0), ("crosstalk", None, 0), ("dark", None, 0), ("defects", None, 0),
                     ("flat", "g", 0), ("flat", "r", 0), ("linearizer", None, 0)]
    assert len(res.skipped) == 1  # defects_det0 is there as .ecsv and .fits: the same product
    b = Butler(str(repo))
    assert b.get_uri("flat", visit=1001).endswith("flat_g_det0.fits")
    assert b.get_uri("flat", visit=1003).endswith("flat_r_det0.fits")
    bias = b.get_calib("bias", {"visit": 1001})
    assert bias.image.shape == (4096, 2048)
    assert bias.metadata["CALIBTYP"] == "bias"
    lin = b.get("linearizer", visit=1002, ccd=0)
    assert type(lin).__name__ == "Linearizer"
    xt = b.get_calib("crosstalk", {"visit": 1002})
    assert xt.coeffs.shape == (4, 4)
    assert xt.coeffs[0, 1] == pytest.approx(0.00016758660485687444)
    assert len(b.get_calib("defects", {"visit": 1001}).boxes) == 336


def _defects_file(path: Path, n: int) -> None:
    lines = ["# %ECSV 1.0", "# ---", "# datatype:", "# - {name: x0, datatype: int32}",
             "# - {name: y0, datatype: int32}", "# - {name: width, datatype: int32}",
             "# - {name: height, datatype: int32}", "# schema: astropy-2.0", "x0 y0 width height"]
    lines += [f"{10 + i} {20 + i} 1 1" for i in range(n)]
    path.write_text("\n".join(lines) + "\n")


def test_calib_chosen_by_date(simcam_dir, tmp_path) -> None:
    repo = tmp_path / "repo"
    ingest_raws(repo, "simcamA", sorted((simcam_dir / "raw").glob("*.fits.fz")), mode="link")
    old, new = tmp_path / "defects_old_det0.ecsv", tmp_path / "defects_new_det0.ecsv"
    _defects_file(old, 3)
    _defects_file(new, 7)
    r = ingest_calibs(repo, [old], calib_type="defects", detector=0, valid_start="2026-01-01",
                      valid_end="2026-03-20", calib_date="2026-01-01")
    assert r.failed == []
    r = ingest_calibs(repo, [new], calib_type="defects", detector=0, valid_start="2026-03-21",
                      valid_end="2026-12-31", calib_date="2026-03-21")
    assert r.failed == []
    b = Butler(str(repo))
    # visit 1001 starts 2026-03-21T03:13:45 TAI: the new defects
    assert len(b.get_calib("defects", {"visit": 1001}).boxes) == 7
    assert len(b.get_calib("defects", {"visit": 1001}, "2026-02-01T00:00:00").boxes) == 3
    assert len(b.get_calib("defects", {"visit": 1001}, "2026-03-20T23:00:00").boxes) == 3  # end day included
    with pytest.raises(CalibNotFoundError) as err:
        b.get_calib("defects", {"visit": 1001}, "2025-06-01")
    assert "defects" in str(err.value) and "visit: 1001" in str(err.value) and "2025-06-01" in str(err.value)
    with pytest.raises(CalibNotFoundError, match="flat"):
        b.get_calib("flat", {"visit": 1001})
    # an output repository finds them through its parent
    out = Butler(str(tmp_path / "out"), parents=[str(repo)])
    assert len(out.get_calib("defects", {"visit": 1002}).boxes) == 7
    # and a separate --calib repository
    calib = tmp_path / "calib"
    ingest_calibs(calib, [simcam_dir / "calib" / "flat_g_det0.fits"])
    out2 = Butler(str(tmp_path / "out2"), parents=[str(repo)], calib_root=str(calib))
    assert out2.get_uri("flat", visit=1001).startswith(str(calib))
    assert Butler(str(tmp_path / "out2")).calib_root == str(calib)


def test_cli(simcam_dir, tmp_path) -> None:
    parser = argparse.ArgumentParser()
    register_cli(parser.add_subparsers(dest="command"))
    repo = tmp_path / "repo"
    bad = tmp_path / "bad.fits"
    bad.write_bytes(b"not fits at all")
    raws = [str(p) for p in sorted((simcam_dir / "raw").glob("*.fits.fz"))]
    args = parser.parse_args(["ingest", str(repo), "--camera", "simcamA", "--mode", "direct", *raws,
                              str(bad)])
    assert args.func(args) == 1
    assert Butler(str(repo)).get_uri("raw", visit=1003) == raws[2]
    flat = simcam_dir / "calib" / "flat_r_det0.fits"
    args = parser.parse_args(["ingest-calibs", str(repo), str(flat), "--valid-start", "2026-03-01",
                              "--valid-end", "2026-03-31"])
    assert args.func(args) == 0
    shutil.rmtree(tmp_path / "unused", ignore_errors=True)
    b = Butler(str(repo))
    assert b.get_uri("flat", visit=1002).endswith("flat_r_det0.fits")
    with pytest.raises(CalibNotFoundError):
        b.get_calib("flat", {"visit": 1002}, "2026-04-01T00:00:00")


def test_calib_cache(simcam_repo) -> None:
    repo, _, _ = simcam_repo
    b = Butler(str(repo), calib_cache_size=2)
    f1 = b.get_calib("flat", {"visit": 1002})
    assert b.get_calib("flat", {"visit": 1003}) is f1  # same r flat, read once
    assert not f1.image.flags.writeable
    g = b.get_calib("flat", {"visit": 1001})
    assert g is not f1 and float(np.median(g.image)) != float(np.median(f1.image))
    b.get_calib("bias", {"visit": 1001})
    assert b.get_calib("flat", {"visit": 1002}) is not f1  # evicted (cache of 2)
    assert Butler(str(repo)).get_calib("flat", {"visit": 1002}).image.flags.writeable


def test_ingest_into_gen2_repository(obs_test_copy, tmp_path) -> None:
    """New raws go into obs_test's own Gen2 registry; its old rows keep working."""
    repo = obs_test_copy
    src = repo / "raw" / "raw_v1_fg.fits.gz"
    dup = ingest_raws(repo, None, [src])
    assert dup.ingested == [] and "already ingested" in dup.failed[0]
    new = tmp_path / "raw_v4_fg.fits.gz"
    shutil.copyfile(src, new)
    res = ingest_raws(repo, "obs_test", [new], mode="copy")
    assert res.failed == []
    b = Butler(str(repo))
    assert [d["visit"] for d in b.query_data_ids("raw", ccd=0)] == [1, 2, 3, 4]
    assert b.get_uri("raw", visit=4) == str(repo / "raw" / "raw_v4_fg.fits.gz")
    assert b.get_uri("raw", visit=2) == str(repo / "raw" / "raw_v2_fg.fits.gz")
    assert len(b.get_calib("defects", {"visit": 4}).boxes) == 504
