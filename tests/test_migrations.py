"""The migrated schema is the ORM's schema, on SQLite and PostgreSQL, and migrations reverse."""

from __future__ import annotations

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from latentops.platform import migrate
from latentops.platform.database import get_engine
from latentops.platform.tables import Base

BACKENDS = ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]


@pytest.mark.parametrize("empty_database_url", BACKENDS, indirect=True)
def test_upgrade_on_empty_database_matches_orm_and_downgrade_reaches_base(empty_database_url: str) -> None:
    migrate.upgrade(empty_database_url)
    assert migrate.current_revision(empty_database_url) == migrate.head_revision()

    with get_engine(empty_database_url).connect() as connection:
        context = MigrationContext.configure(connection, opts={"compare_type": True})
        differences = compare_metadata(context, Base.metadata)
    assert differences == [], f"ORM and migrations disagree: {differences}"

    migrate.downgrade(empty_database_url, "base")
    assert migrate.current_revision(empty_database_url) is None
    tables = set(sa.inspect(get_engine(empty_database_url)).get_table_names()) - {"alembic_version"}
    assert tables == set()

    migrate.upgrade(empty_database_url)  # and back up again: downgrade left nothing behind
    assert migrate.current_revision(empty_database_url) == migrate.head_revision()
