"""Fixtures of the deployment tests; constants and helpers live in ``deployhelpers``."""

from __future__ import annotations

import pytest
import yaml
from deployhelpers import CHART_DIR, PRODUCTION_VALUES


@pytest.fixture(scope="session")
def helm():
    return pytest.importorskip("helm_python", reason="helm-python-sdk is not installed")


@pytest.fixture(scope="session")
def chart(helm):
    return helm.Chart.load(CHART_DIR)


@pytest.fixture(scope="session")
def production_values() -> dict:
    return yaml.safe_load(PRODUCTION_VALUES.read_text())


