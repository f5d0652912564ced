"""The migrations build the schema from empty, step down and back, and match the models."""

from __future__ import annotations

import pytest
from alembic import command
from alembic.script import ScriptDirectory
from flask_migrate import downgrade, upgrade
from sqlalchemy import inspect

from portal import create_app
from portal.extensions import db

from .. import services
from ..conftest import base_overrides


@pytest.fixture(params=["sqlite", "postgresql"])
def empty_app(request, tmp_path, instance_dir):
    """An app on a brand-new, empty database."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'empty.sqlite3'}"
        app = create_app(base_overrides(url, "redis://unused", instance_dir))
        yield app
        with app.app_context():
            db.engine.dispose()  # Python 3.13 warns about a connection left open
        return
    admin = request.getfixturevalue("pg_admin_url")
    url = services.create_database(admin)
    app = create_app(base_overrides(url, "redis://unused", instance_dir))
    yield app
    with app.app_context():
        db.engine.dispose()
    services.drop_database(admin, url)


def _columns() -> set[tuple[str, str]]:
    """Every (table, column) of the database now."""
    inspector = inspect(db.engine)
    return {(t, c["name"]) for t in inspector.get_table_names() for c in inspector.get_columns(t)}


def test_upgrade_downgrade_and_no_drift(empty_app):
    with empty_app.app_context():
        upgrade()
        tables = set(inspect(db.engine).get_table_names())
        assert {"organizations", "users", "crm_integrations", "audit_log", "background_jobs"} <= tables
        config = empty_app.extensions["migrate"].migrate.get_config()
        # `flask db check`: autogenerate finds nothing to do when models and migrations agree.
        command.check(config)
        head = ScriptDirectory.from_config(config).get_current_head()
        columns = _columns()
        downgrade(revision="-1")
        # The last migration is undone: a table or a column fewer.
        assert _columns() != columns
        upgrade()
        assert set(inspect(db.engine).get_table_names()) == tables and _columns() == columns
        with db.engine.connect() as conn:
            from alembic.runtime.migration import MigrationContext

            assert MigrationContext.configure(conn).get_current_revision() == head
