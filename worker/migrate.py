"""Schema migrations (Alembic), run with ``orders migrate`` or from code."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy.engine import make_url

MIGRATIONS_DIR = Path(__file__).parent / "migrations"


def alembic_config(database_url: str) -> Config:
    """An Alembic config pointing at this package's migrations and ``database_url``."""
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    cfg.set_main_option("sqlalchemy.url", database_url.replace("%", "%%"))
    return cfg


def upgrade(database_url: str, revision: str = "head") -> None:
    """Bring the database at ``database_url`` up to ``revision``."""
    command.upgrade(alembic_config(database_url), revision)


def make_private(database_url: str, home: Path) -> None:
    """A SQLite database (and its WAL files) 0600, in 0700 when it lives in ``home``
    (``ORDERS_HOME``): it holds webhook signing secrets and order data. Others: nothing."""
    url = make_url(database_url)
    if url.get_backend_name() != "sqlite" or not url.database or url.database == ":memory:":
        return
    path = Path(url.database).resolve()
    for part in (path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")):
        if part.exists():
            part.chmod(0o600)
    if path.parent == Path(home).resolve():
        path.parent.chmod(0o700)


def downgrade(database_url: str, revision: str) -> None:
    """Take the database at ``database_url`` down to ``revision``."""
    command.downgrade(alembic_config(database_url), revision)
