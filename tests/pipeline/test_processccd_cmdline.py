"""processCcd.py end to end on the bundled obs_test repository (issue 2, points 1, 2 and 5)."""

from __future__ import annotations

import gzip
import shutil
from pathlib import Path

import numpy as np
import pytest
from calexpress import Butler
from cli_support import EXAMPLE, run_script


def _shown_ids(stdout: str) -> list[dict]:
    lines = [line for line in stdout.splitlines() if line.startswith("id dataRef.dataId")]
    return [eval(line.split("=", 1)[1]) for line in lines]


def test_main_command_processes_every_visit(obs_test_output):
    out, proc = obs_test_output
    assert proc.returncode == 0, proc.stderr[-3000:]
    butler = Butler(str(out))
    for visit, band in ((1, "g"), (2, "g"), (3, "r")):
        calexp = butler.get("calexp", visit=visit)
        assert calexp.image.shape == (2000, 1018)
        assert calexp.filter == band
        assert calexp.psf is not None
        good = (calexp.mask & calexp.get_plane_bitmask("BAD", "SAT", "INTRP", "EDGE", "NO_DATA")) == 0
        # background-subtracted: the sky is near zero and the variance is positive
        assert abs(float(np.median(calexp.image[good]))) < 3 * np.sqrt(float(np.median(calexp.variance)))
        assert np.all(calexp.variance[good] > 0)
        src = butler.get("src", visit=visit)
        assert len(src) > 50
        assert {"id", "parent", "coord_ra", "coord_dec", "base_PsfFlux_instFlux"} <= set(src.colnames)
        assert np.all(np.isfinite(src["coord_ra"])) and np.all(np.isfinite(src["coord_dec"]))
        assert butler.exists("icSrc", visit=visit)
        assert butler.exists("calexpBackground", visit=visit)
        # LSST's source ids: (visit << 23) + n with 41 bits for obs_test's exposure id
        assert np.all((np.asarray(src["id"]) >> 23) == visit)
    assert butler.exists("processCcd_config", {})


def test_show_data_with_stride_range(obs_test_repo, tmp_path):
    proc = run_script("processCcd.py", str(obs_test_repo), "--output", str(tmp_path / "o"),
                      "--show", "data", "--id", "visit=1..3:2")
    assert proc.returncode == 0, proc.stderr
    assert sorted(d["visit"] for d in _shown_ids(proc.stdout)) == [1, 3]


def test_show_data_cross_product(obs_test_repo, tmp_path):
    proc = run_script("processCcd.py", str(obs_test_repo), "--output", str(tmp_path / "o"),
                      "--show", "data", "--id", "visit=1^3", "filter=g")
    assert proc.returncode == 0, proc.stderr
    ids = _shown_ids(proc.stdout)
    assert [(d["visit"], d["filter"]) for d in ids] == [(1, "g")]


def test_bare_id_selects_everything(obs_test_repo, tmp_path):
    proc = run_script("processCcd.py", str(obs_test_repo), "--output", str(tmp_path / "o"),
                      "--show", "data", "--id")
    assert proc.returncode == 0, proc.stderr
    assert sorted(d["visit"] for d in _shown_ids(proc.stdout)) == [1, 2, 3]


def test_unknown_key_is_one_line_listing_valid_keys(obs_test_repo, tmp_path):
    proc = run_script("processCcd.py", str(obs_test_repo), "--output", str(tmp_path / "o"),
                      "--id", "exposure=1")
    assert proc.returncode == 2
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr
    assert "exposure" in lines[0] and "visit" in lines[0] and "filter" in lines[0]


def test_show_config_glob(obs_test_repo, tmp_path):
    proc = run_script("processCcd.py", str(obs_test_repo), "--output", str(tmp_path / "o"),
                      "--show", "config=isr.doBias", "-c", "isr.doDefect=True")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines == ["config.isr.doBias=False"]


def test_changed_config_is_refused_unless_clobbered(obs_test_repo, tmp_path):
    out = str(tmp_path / "o")
    first = run_script("processCcd.py", str(obs_test_repo), "--output", out, "--id", "visit=99")
    assert first.returncode == 1  # the data ID matches nothing: one failure, config stored
    assert "visit=99" in first.stderr
    again = run_script("processCcd.py", str(obs_test_repo), "--output", out, "--id", "visit=99",
                       "-c", "charImage.psfIterations=1")
    assert again.returncode == 2 and "--clobber-config" in again.stderr
    clobbered = run_script("processCcd.py", str(obs_test_repo), "--output", out, "--id", "visit=99",
                           "-c", "charImage.psfIterations=1", "--clobber-config")
    assert clobbered.returncode == 1, clobbered.stderr
    stored = Butler(out).get("processCcd_config", {})
    assert "config.charImage.psfIterations=1" in stored


def test_bad_inputs_fail_alone_and_are_counted(obs_test_repo, nickel_dir, tmp_path):
    """Truncated raw, raw of another camera, unmatched data ID: one line each; the rest is processed."""
    repo = tmp_path / "input"
    shutil.copytree(obs_test_repo, repo)
    v2 = repo / "raw" / "raw_v2_fg.fits.gz"
    data = gzip.decompress(v2.read_bytes())
    v2.write_bytes(gzip.compress(data[: len(data) // 3]))
    v3 = repo / "raw" / "raw_v3_fr.fits.gz"
    v3.write_bytes(gzip.compress((nickel_dir / "raw" / "d1047.fits").read_bytes()))
    out = tmp_path / "out"
    proc = run_script("processCcd.py", str(repo), "--output", str(out), "--id", "visit=1..3",
                      "--id", "visit=42", "-c", "charImage.psfIterations=1")
    assert proc.returncode == 3, proc.stderr[-3000:]
    errors = [line for line in proc.stderr.splitlines()
              if "Failed on dataId" in line or "No data found for --id" in line]
    assert len(errors) == 3, proc.stderr[-3000:]
    assert any("visit=2" in e and "raw_v2_fg.fits.gz" in e for e in errors)
    assert any("visit=3" in e and "raw_v3_fr.fits.gz" in e for e in errors)
    assert any("visit=42" in e for e in errors)
    butler = Butler(str(out))
    assert butler.exists("calexp", visit=1) and butler.exists("src", visit=1)
    assert not butler.exists("calexp", visit=2)


@pytest.mark.slow
def test_parallel_run_gives_the_same_catalogs(obs_test_output, tmp_path):
    out, proc = obs_test_output
    assert proc.returncode == 0
    par = tmp_path / "par"
    proc2 = run_script("processCcd.py", str(EXAMPLE), "--output", str(par), "--id", "visit=1^2", "-j", "2")
    assert proc2.returncode == 0, proc2.stderr[-3000:]
    a, b = Butler(str(out)), Butler(str(par))
    for visit in (1, 2):
        s1, s2 = a.get("src", visit=visit), b.get("src", visit=visit)
        assert s1.colnames == s2.colnames and len(s1) == len(s2)
        np.testing.assert_array_equal(np.asarray(s1["base_PsfFlux_instFlux"]),
                                      np.asarray(s2["base_PsfFlux_instFlux"]))


def test_readme_commands_match_ci():
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    ci = (Path(__file__).resolve().parents[2] / ".ci" / "run").read_text()
    assert "processCcd.py examples/obs_test/data/input --output processCcdOut --id" in readme
    assert "python -m pytest" in readme and "python -m pytest" in ci


def test_missing_calibration_fails_only_its_data_id(obs_test_repo, tmp_path):
    """Defects valid only until 1999-02-01: visit 3 (1999-02-19) has no calibration, visits 1-2 do."""
    import sqlite3

    repo = tmp_path / "input"
    shutil.copytree(obs_test_repo, repo)
    for path in repo.rglob("*"):
        path.chmod(0o755 if path.is_dir() else 0o644)
    with sqlite3.connect(repo / "calibRegistry.sqlite3") as db:
        db.execute("UPDATE defects SET validEnd = '1999-02-01'")
    out = tmp_path / "out"
    proc = run_script("processCcd.py", str(repo), "--output", str(out), "--id", "visit=2..3",
                      "-c", "charImage.psfIterations=1")
    assert proc.returncode == 1, proc.stderr[-3000:]
    errors = [line for line in proc.stderr.splitlines() if "Failed on dataId" in line]
    assert len(errors) == 1 and "visit=3" in errors[0] and "defects" in errors[0], proc.stderr[-3000:]
    butler = Butler(str(out))
    assert butler.exists("src", visit=2) and not butler.exists("src", visit=3)


def test_argfile_with_comments_and_loglevel(obs_test_repo, tmp_path):
    argfile = tmp_path / "args.txt"
    argfile.write_text("# processCcd arguments\n--id visit=1^2   # two visits\n--show data\n-L warn\n")
    proc = run_script("processCcd.py", str(obs_test_repo), "--output", str(tmp_path / "o"), f"@{argfile}")
    assert proc.returncode == 0, proc.stderr
    assert sorted(d["visit"] for d in _shown_ids(proc.stdout)) == [1, 2]
    assert "INFO" not in proc.stderr


def test_rerun_writes_under_root_rerun(obs_test_repo, tmp_path):
    root = tmp_path / "repo"
    shutil.copytree(obs_test_repo, root)
    for path in root.rglob("*"):
        path.chmod(0o755 if path.is_dir() else 0o644)
    proc = run_script("processCcd.py", str(root), "--rerun", "quick", "--id", "visit=1",
                      "-c", "charImage.psfIterations=1", "doCalibrate=False")
    assert proc.returncode == 0, proc.stderr[-2000:]
    butler = Butler(str(root / "rerun" / "quick"))
    assert butler.exists("icSrc", visit=1)
    assert not butler.exists("src", visit=1)  # doCalibrate=False stops after characterize
