"""Session fixtures: simcamA truth frames characterised once (about 5-10 s each)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from calexpress.task import Struct  # noqa: E402
from truthframe import characterize_frame  # noqa: E402


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
