"""Fixtures shared by the security tests (``tests/conftest.py`` gives the databases and services)."""

from __future__ import annotations

from pathlib import Path

import pytest
from generation_helpers import tiny_source


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny SD1 model folder to catalogue, made once per module."""
    return tiny_source(tmp_path_factory.mktemp("models"))
