"""Settings: defaults, normalisation, and a clear failure on bad values."""

from __future__ import annotations

import pytest

from worker.settings import ConfigError, Settings, load_settings, normalise_database_url


def test_postgres_urls_use_psycopg3():
    """Plain postgresql:// and postgres:// URLs are mapped to the psycopg 3 driver."""
    assert normalise_database_url("postgresql://u@h/db") == "postgresql+psycopg://u@h/db"
    assert normalise_database_url("postgres://u@h/db") == "postgresql+psycopg://u@h/db"
    assert Settings(database_url="postgresql://u@h/d").database_url.startswith("postgresql+psycopg")


def test_default_database_is_a_sqlite_file(tmp_path, monkeypatch):
    """With no URL, the database is a SQLite file under ORDERS_HOME."""
    monkeypatch.delenv("ORDERS_DATABASE_URL", raising=False)
    settings = Settings(home=tmp_path)
    assert settings.database_url == f"sqlite:///{tmp_path.resolve()}/orders.db"


def test_invalid_value_fails_fast_naming_the_variable(monkeypatch):
    """A bad value names the variable in one readable error."""
    monkeypatch.setenv("ORDERS_RETRY_MAX_ATTEMPTS", "zero")
    with pytest.raises(ConfigError, match="ORDERS_RETRY_MAX_ATTEMPTS"):
        load_settings()


def test_secret_is_not_printed():
    """The client secret never appears in the settings' repr."""
    settings = Settings(upstream_client_secret="s3cret-value")
    assert "s3cret-value" not in repr(settings)
