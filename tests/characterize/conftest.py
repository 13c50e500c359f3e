"""Session fixtures: simcamA truth frames characterised once (about 5-10 s each)."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from calexpress.task import ExposureIdInfo, Struct  # noqa: E402
from truthframe import load_truth, make_exposure  # noqa: E402

_CACHE: dict[str, Struct] = {}


def characterize_frame(simcam_dir: Path, frame: str) -> Struct:
    """Run CharacterizeImageTask on a truth frame (cached for the session)."""
    if frame not in _CACHE:
        from calexpress.characterize import CharacterizeImageTask

        truth = load_truth(simcam_dir, frame)
        exposure = make_exposure(truth)
        raw = exposure.image.copy()
        task = CharacterizeImageTask()
        res = task.run(exposure, exposureIdInfo=ExposureIdInfo(int(truth["info"]["expid"]), 41))
        _CACHE[frame] = Struct(
            truth=truth, raw=raw, result=res, task=task, exposure=res.exposure, catalog=res.sourceCat
        )
    return _CACHE[frame]


def match_to_truth(catalog, objects, radius: float = 2.0):
    """Nearest truth object of every source: (index array, distance array)."""
    from scipy.spatial import cKDTree

    tree = cKDTree(np.c_[objects["x"], objects["y"]])
    d, i = tree.query(np.c_[catalog["base_SdssCentroid_x"], catalog["base_SdssCentroid_y"]])
    return i, d


@pytest.fixture(scope="session")
def char_r(simcam_dir) -> Struct:
    """simcamA visit 1003 (r, 120 s: the frame with the most PSF stars), characterised."""
    return characterize_frame(simcam_dir, "simcamA_0001003_r_det0")


@pytest.fixture(scope="session")
def char_g(simcam_dir) -> Struct:
    """simcamA visit 1001 (g, 60 s), characterised."""
    return characterize_frame(simcam_dir, "simcamA_0001001_g_det0")


@pytest.fixture(scope="session", params=["g", "r"])
def char_any(request, simcam_dir) -> Struct:
    """Both frames."""
    frame = {"g": "simcamA_0001001_g_det0", "r": "simcamA_0001003_r_det0"}[request.param]
    return characterize_frame(simcam_dir, frame)
