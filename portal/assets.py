"""Static files under content-hashed names, cached for a year and sent compressed."""

from __future__ import annotations

import gzip
import hashlib
from dataclasses import dataclass
from pathlib import Path

from flask import Flask, Response, abort, current_app, request

# A hashed name never changes its content, so browsers keep it a year without asking again.
IMMUTABLE = "public, max-age=31536000, immutable"
COMPRESSIBLE = {".css": "text/css; charset=utf-8", ".js": "text/javascript; charset=utf-8",
                ".svg": "image/svg+xml", ".md": "text/markdown; charset=utf-8"}
FOLDER = Path(__file__).resolve().parent / "static"


@dataclass(frozen=True)
class Asset:
    """One static file: its hashed name, its bytes, and those bytes gzipped when it is text."""

    name: str
    hashed: str
    body: bytes
    gzipped: bytes | None
    mimetype: str


def hashed_name(name: str, body: bytes) -> str:
    """``portal.css`` becomes ``portal.<12 hex digits of its SHA-256>.css``."""
    digest = hashlib.sha256(body).hexdigest()[:12]
    stem, dot, ext = name.rpartition(".")
    return f"{stem}.{digest}.{ext}" if dot else f"{name}.{digest}"


def load(folder: Path) -> dict[str, Asset]:
    """Every file under the static folder, keyed by its hashed name."""
    import mimetypes

    assets = {}
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        name = path.relative_to(folder).as_posix()
        body = path.read_bytes()
        suffix = path.suffix.lower()
        mimetype = COMPRESSIBLE.get(suffix) or mimetypes.guess_type(name)[0] or "application/octet-stream"
        # mtime=0 keeps the gzipped bytes (and so their ETag) the same on every start.
        gzipped = gzip.compress(body, 9, mtime=0) if suffix in COMPRESSIBLE else None
        asset = Asset(name, hashed_name(name, body), body, gzipped, mimetype)
        assets[asset.hashed] = asset
    return assets


def serve(filename: str) -> Response:
    """A static file by its hashed name; any other name is not found."""
    asset = current_app.extensions["portal_assets"]["by_hashed"].get(filename)
    if asset is None:
        abort(404)
    wants_gzip = asset.gzipped is not None and "gzip" in request.headers.get("Accept-Encoding", "").lower()
    body = asset.gzipped if wants_gzip else asset.body
    resp = Response(body, mimetype=asset.mimetype)
    resp.headers["Cache-Control"] = IMMUTABLE
    resp.headers["Vary"] = "Accept-Encoding"
    if wants_gzip:
        resp.headers["Content-Encoding"] = "gzip"
    resp.set_etag(asset.hashed + ("-gz" if wants_gzip else ""))
    return resp.make_conditional(request)


def init_app(app: Flask) -> None:
    """Serve the static folder under hashed names; ``url_for('static', filename=...)`` gives the hashed URL."""
    by_hashed = load(FOLDER)
    by_name = {asset.name: asset.hashed for asset in by_hashed.values()}
    app.extensions["portal_assets"] = {"by_hashed": by_hashed, "by_name": by_name}

    @app.url_defaults
    def hashed_static(endpoint: str, values: dict) -> None:
        if endpoint == "static" and values.get("filename") in by_name:
            values["filename"] = by_name[values["filename"]]

    app.add_url_rule("/static/<path:filename>", endpoint="static", view_func=serve)
