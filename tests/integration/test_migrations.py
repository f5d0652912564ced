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
        yield create_app(base_overrides(url, "redis://unused", instance_dir))
        return
    admin = request.getfixturevalue("pg_admin_url")
    url = services.create_database(admin)
    app = create_app(base_overrides(url, "redis://unused", instance_dir))
    yield app
    with app.app_context():
        db.engine.dispose()
    services.drop_database(admin, url)


def test_upgrade_downgrade_and_no_drift(empty_app):
    with empty_app.app_context():
        upgrade()
        tables = set(inspect(db.engine).get_table_names())
        assert {"organizations", "users", "crm_integrations", "audit_log", "background_jobs"} <= tables
        config = empty_app.extensions["migrate"].migrate.get_config()
        # `flask db check`: autogenerate finds nothing to do when models and migrations agree.
        command.check(config)
        head = ScriptDirectory.from_config(config).get_current_head()
        schema = _schema()
        downgrade(revision="-1")
        assert _schema() != schema  # the last migration's downgrade undoes it (tables or columns)
        upgrade()
        assert set(inspect(db.engine).get_table_names()) == tables and _schema() == schema
        with db.engine.connect() as conn:
            from alembic.runtime.migration import MigrationContext

            assert MigrationContext.configure(conn).get_current_revision() == head


def _schema() -> dict[str, list[str]]:
    """Every table with its column names."""
    inspector = inspect(db.engine)
    return {t: sorted(c["name"] for c in inspector.get_columns(t)) for t in inspector.get_table_names()}
