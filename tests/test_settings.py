"""Settings: sensible embedded defaults, one clear line for bad values, no insecure production."""

from __future__ import annotations

from pathlib import Path

import pytest

from latentops.core.errors import ConfigurationError
from latentops.core.settings import load_settings


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    for key in list(os.environ):
        if key.startswith("LATENTOPS_") and not key.startswith("LATENTOPS_TEST_") or key == "MLFLOW_TRACKING_URI":
            monkeypatch.delenv(key)


def test_embedded_defaults_live_in_the_home_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LATENTOPS_HOME", str(tmp_path))
    settings = load_settings()
    assert settings.mode == "embedded"
    assert settings.database_url == f"sqlite:///{tmp_path / 'latentops.db'}"
    assert settings.broker_url == f"redis+socket://{tmp_path / 'run' / 'redis.sock'}"
    assert settings.mlflow_tracking_uri == f"sqlite:///{tmp_path / 'mlflow.db'}"
    assert settings.model_store == tmp_path / "models"
    assert settings.policy_engine == "embedded"
    assert settings.uses_local_broker


@pytest.mark.parametrize(
    ("variable", "value", "expected"),
    [
        ("LATENTOPS_DATABASE_URL", "mysql://x", "LATENTOPS_DATABASE_URL: must be a sqlite:// or postgresql:// URL"),
        ("LATENTOPS_BROKER_URL", "http://x", "LATENTOPS_BROKER_URL: must be a redis://"),
        ("LATENTOPS_POLICY_ENGINE", "magic", "LATENTOPS_POLICY_ENGINE: Input should be 'embedded' or 'opa'"),
        ("LATENTOPS_API_PORT", "70000", "LATENTOPS_API_PORT: Input should be less than or equal to 65535"),
        ("LATENTOPS_MODE", "staging", "LATENTOPS_MODE: Input should be 'embedded' or 'production'"),
    ],
)
def test_invalid_value_names_the_variable(monkeypatch: pytest.MonkeyPatch, variable: str, value: str, expected: str) -> None:
    monkeypatch.setenv(variable, value)
    with pytest.raises(ConfigurationError) as caught:
        load_settings()
    assert caught.value.detail.startswith(expected)
    assert repr(value) in caught.value.detail
    assert "\n" not in caught.value.detail


def test_production_refuses_the_built_in_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LATENTOPS_MODE", "production")
    monkeypatch.setenv("LATENTOPS_DATABASE_URL", "postgresql://db/latentops")
    monkeypatch.setenv("LATENTOPS_BROKER_URL", "redis://broker:6379/0")
    with pytest.raises(ConfigurationError, match="LATENTOPS_SECRET_KEY"):
        load_settings()
    monkeypatch.setenv("LATENTOPS_SECRET_KEY", "x" * 40)
    assert load_settings().mode == "production"


def test_production_refuses_sqlite(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LATENTOPS_MODE", "production")
    monkeypatch.setenv("LATENTOPS_SECRET_KEY", "x" * 40)
    with pytest.raises(ConfigurationError, match="LATENTOPS_DATABASE_URL: production mode needs PostgreSQL"):
        load_settings()
