"""Static files: content-hashed names, a year's cache, gzip when asked, and nothing under the plain names."""

from __future__ import annotations

import gzip
import re

from portal import assets


def test_a_hashed_name_changes_with_the_content():
    assert re.fullmatch(r"portal\.[0-9a-f]{12}\.css", assets.hashed_name("portal.css", b"a"))
    assert assets.hashed_name("portal.css", b"a") != assets.hashed_name("portal.css", b"b")


def test_static_files_are_cached_a_year_compressed_and_revalidated_by_etag(client):
    page = client.get("/login").text
    css = re.search(r'href="(/static/portal\.[0-9a-f]{12}\.css)"', page).group(1)
    plain = client.get(css)
    assert plain.status_code == 200 and "Content-Encoding" not in plain.headers
    assert plain.headers["Cache-Control"] == "public, max-age=31536000, immutable"
    zipped = client.get(css, headers={"Accept-Encoding": "gzip, br"})
    assert zipped.headers["Content-Encoding"] == "gzip" and "Accept-Encoding" in zipped.headers["Vary"]
    assert gzip.decompress(zipped.data) == plain.data and len(zipped.data) < len(plain.data)
    again = client.get(css, headers={"Accept-Encoding": "gzip", "If-None-Match": zipped.headers["ETag"]})
    assert again.status_code == 304
    assert client.get("/static/portal.css").status_code == 404  # only the hashed name is served
    assert client.get("/static/../portal/__init__.py").status_code == 404
