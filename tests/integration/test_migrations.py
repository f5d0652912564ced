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


def _schema() -> dict:
    """Every table's columns and indexes, as the database has them."""
    inspector = inspect(db.engine)
    return {t: ({c["name"] for c in inspector.get_columns(t)}, {i["name"] for i in inspector.get_indexes(t)})
            for t in inspector.get_table_names()}


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
        assert _schema() != schema  # the last migration's downgrade undoes something
        upgrade()
        assert set(inspect(db.engine).get_table_names()) == tables and _schema() == schema
        with db.engine.connect() as conn:
            from alembic.runtime.migration import MigrationContext

            assert MigrationContext.configure(conn).get_current_revision() == head


@pytest.mark.parametrize("empty_app", ["postgresql"], indirect=True)  # only PostgreSQL builds an index concurrently
def test_an_index_whose_concurrent_build_was_cut_short_is_built_again(empty_app):
    """CREATE INDEX CONCURRENTLY cut short leaves an invalid index under the migration's name, and the migration not
    done: run again, it builds the index anew instead of taking the invalid one as built."""
    from sqlalchemy import text

    indexes = (("b7e4a91c2d05", "c3d81f0a9e27", "ix_sync_runs_integration_newest", "sync_runs (integration_id, id)"),
               ("c3d81f0a9e27", "d2f6a83c51b4", "ix_partner_suppliers_supplier",
                "partner_suppliers (supplier_id, partner_id)"))
    valid = text("SELECT indisvalid FROM pg_index WHERE indexrelid = to_regclass(:name)")
    with empty_app.app_context():
        for before, migration, name, columns in indexes:
            upgrade(revision=before)
            with db.engine.begin() as conn:  # what an interrupted build leaves behind
                conn.execute(text(f"CREATE INDEX {name} ON {columns}"))
                conn.execute(text("UPDATE pg_index SET indisvalid = false WHERE indexrelid = to_regclass(:name)"),
                             {"name": name})
                assert conn.execute(valid, {"name": name}).scalar() is False
            upgrade(revision=migration)
            with db.engine.connect() as conn:
                assert conn.execute(valid, {"name": name}).scalar() is True, name
