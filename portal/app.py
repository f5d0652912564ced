"""The application factory: configuration, extensions, blueprints, CLI and error pages."""

from __future__ import annotations

import logging

from flask import Flask, render_template, request

from . import assets, cli, queues
from .config import load_config
from .extensions import csrf, db, login_manager, migrate
from .widgets import labelled_field
from .wording import counted


def create_app(overrides: dict | None = None) -> Flask:
    """Build the app: configuration from the environment, extensions, blueprints, CLI, error pages."""
    # Static files are served by assets (hashed names, long cache, compression), not by Flask's own route.
    app = Flask("portal", instance_relative_config=False, static_folder=None)
    app.config.update(load_config(overrides))
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")

    db.init_app(app)
    from . import platform_models  # noqa: F401 - registers the platform tables
    from .models import render_item

    migrate.init_app(
        app, db, directory=str(_migrations_dir()), render_as_batch=True, compare_type=True, render_item=render_item
    )
    csrf.init_app(app)
    login_manager.init_app(app)
    login_manager.login_view = "auth.login"
    login_manager.login_message = "Sign in to continue."
    login_manager.session_protection = "strong"
    queues.init_app(app)
    assets.init_app(app)

    from .views import RowIdConverter, api, auth, integrations, leads, lists, runs, settings, tokens

    app.url_map.converters["int"] = RowIdConverter

    app.register_blueprint(auth.bp)
    app.register_blueprint(settings.bp)
    app.register_blueprint(integrations.bp)
    app.register_blueprint(tokens.bp)
    app.register_blueprint(leads.bp)
    app.register_blueprint(api.bp)
    app.register_blueprint(runs.bp)
    app.register_blueprint(lists.bp)
    cli.init_app(app)
    _error_pages(app)
    _security_headers(app)
    app.jinja_env.globals["platform_name"] = app.config["PLATFORM_NAME"]
    app.jinja_env.filters["counted"] = counted
    # A form field with its label, help and errors: one Python call (Edit Settings draws twenty a page).
    app.jinja_env.globals["labelled_field"] = labelled_field
    return app


def _migrations_dir():
    from pathlib import Path

    return Path(__file__).resolve().parent.parent / "migrations"


def _error_pages(app: Flask) -> None:
    from flask_wtf.csrf import CSRFError

    @app.errorhandler(403)
    def forbidden(err):
        return render_template("errors/403.html"), 403

    @app.errorhandler(404)
    @app.errorhandler(405)
    def not_found(err):
        if request.path.startswith("/api/"):
            # No route matched (e.g. an id too large to be one), so the API blueprint's handlers never ran.
            from .views.api import error

            return error(404, "not_found", f"Nothing at {request.path}: check the address and the id.")
        if err.code == 405:
            return err
        return render_template("errors/404.html"), 404

    @app.errorhandler(CSRFError)
    def csrf_error(err):
        return render_template("errors/csrf.html", reason=err.description), 400


def _security_headers(app: Flask) -> None:
    @app.after_request
    def headers(resp):
        resp.headers.setdefault("X-Content-Type-Options", "nosniff")
        resp.headers.setdefault("X-Frame-Options", "DENY")
        resp.headers.setdefault("Referrer-Policy", "same-origin")
        resp.headers.setdefault(
            "Content-Security-Policy",
            "default-src 'self'; img-src 'self' data:; style-src 'self' 'unsafe-inline'; "
            "script-src 'self'; frame-ancestors 'none'; form-action 'self'",
        )
        if request.headers.get("HX-Request"):
            resp.headers.add("Vary", "HX-Request")
        return resp
