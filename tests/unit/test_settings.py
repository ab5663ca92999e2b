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


@pytest.mark.parametrize("value", ["", "   ", "short-secret", "change-me-console-secret"])
def test_a_weak_console_secret_stops_the_start(monkeypatch, value):
    """Empty, short or published console secrets are refused, naming the variable."""
    monkeypatch.setenv("ORDERS_CONSOLE_SECRET", value)
    with pytest.raises(ConfigError, match="ORDERS_CONSOLE_SECRET") as refused:
        load_settings()
    assert "\n" not in str(refused.value)
    monkeypatch.setenv("ORDERS_CONSOLE_SECRET", "x7" * 16)
    assert load_settings().console_secret is not None


def test_orders_api_refuses_an_empty_console_secret(tmp_path):
    """``orders api`` with ``ORDERS_CONSOLE_SECRET=`` exits at once with one line naming it."""
    import os
    import subprocess
    import sys

    env = {**os.environ, "ORDERS_CONSOLE_SECRET": "", "ORDERS_HOME": str(tmp_path)}
    env["ORDERS_REDIS_URL"] = "redis://127.0.0.1:1/0"  # never reached
    done = subprocess.run(
        [sys.executable, "-c", "from worker.cli import main; main()", "api", "--port", "1"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "ORDERS_CONSOLE_SECRET" in lines[0]


def _read_secret(home: str, start_at: float, out) -> None:  # a child process
    import time

    from worker.console.session import console_secret

    time.sleep(max(0.0, start_at - time.time()))
    try:
        out.put(console_secret(Settings(home=home)))
    except Exception as exc:  # reported to the test, which fails on it
        out.put(f"error: {exc}")


def test_processes_starting_together_share_one_whole_secret(tmp_path):
    """Four processes on a fresh home at the same instant, 50 times: each reads the same
    complete secret (never empty), and the file is 0600."""
    import multiprocessing
    import time

    ctx = multiprocessing.get_context("fork")
    for trial in range(50):
        home = tmp_path / f"home{trial}"
        out = ctx.Queue()
        start_at = time.time() + 0.05
        procs = [
            ctx.Process(target=_read_secret, args=(str(home), start_at, out)) for _ in range(4)
        ]
        for proc in procs:
            proc.start()
        seen = [out.get(timeout=30) for _ in procs]
        for proc in procs:
            proc.join(30)
        assert len(set(seen)) == 1 and len(seen[0]) >= 32, (trial, seen)
        assert (home / "console.secret").stat().st_mode & 0o777 == 0o600


def test_a_weak_secret_file_is_refused(tmp_path):
    """A console.secret left empty (or short) stops the start instead of signing with it."""
    from worker.console.session import console_secret

    (tmp_path / "console.secret").write_text("")
    with pytest.raises(ConfigError, match=r"console\.secret"):
        console_secret(Settings(home=tmp_path))


def test_orders_migrate_keeps_the_sqlite_database_private(tmp_path):
    """``orders migrate`` on a fresh home: the database file (and its WAL files) 0600, the
    home 0700, whatever the umask."""
    import os
    import subprocess
    import sys

    home = tmp_path / "home"
    env = {k: v for k, v in os.environ.items() if k != "ORDERS_DATABASE_URL"}
    env["ORDERS_HOME"] = str(home)
    old = os.umask(0o022)
    try:
        done = subprocess.run(
            [sys.executable, "-c", "from worker.cli import main; main()", "migrate"],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
    finally:
        os.umask(old)
    assert done.returncode == 0, done.stderr
    assert home.stat().st_mode & 0o777 == 0o700
    files = [p for p in home.iterdir() if p.name.startswith("orders.db")]
    assert files
    for path in files:
        assert path.stat().st_mode & 0o777 == 0o600, path
