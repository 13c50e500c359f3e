"""Fixtures of the calibrate tests."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def simcam_refcat_dir(simcam_dir: Path) -> Path:
    return simcam_dir / "refcat" / "simcam_refcat"
