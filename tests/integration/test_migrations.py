"""The Alembic migrations create exactly the schema the models declare."""

from __future__ import annotations

from pathlib import Path

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlmodel import SQLModel

import engine.models  # noqa: F401  (registers the tables)
from engine.store.migrate import alembic_config, upgrade
from engine.store.sql import create_engine


def test_migrations_match_the_models_on_sqlite(tmp_path: Path) -> None:
    db = create_engine(f"sqlite:///{tmp_path}/m.db")
    upgrade(db)
    with db.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), SQLModel.metadata)
    db.dispose()
    assert diff == []


def test_upgrade_is_idempotent_and_sets_wal(tmp_path: Path) -> None:
    db = create_engine(f"sqlite:///{tmp_path}/m.db")
    upgrade(db)
    upgrade(db)
    with db.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        version = conn.exec_driver_sql("SELECT version_num FROM alembic_version").scalar()
    db.dispose()
    head = ScriptDirectory.from_config(alembic_config(db)).get_current_head()
    assert version == head
