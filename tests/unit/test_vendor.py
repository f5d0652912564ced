"""The vendored front-end files are exactly the recorded versions."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

VENDOR = Path(__file__).resolve().parents[2] / "portal" / "static" / "vendor"


def test_checksums_match_the_record():
    record = (VENDOR / "VENDORED.md").read_text()
    pairs = re.findall(r"^([0-9a-f]{64})  (\S+)$", record, flags=re.M)
    assert len(pairs) == 2
    for digest, name in pairs:
        assert hashlib.sha256((VENDOR / name).read_bytes()).hexdigest() == digest, name


def test_pages_load_the_vendored_htmx(client):
    page = client.get("/login").text
    url = re.search(r'src="(/static/vendor/htmx-2\.0\.11\.min\.[0-9a-f]{12}\.js)"', page)
    assert url, "the page does not load htmx under its hashed name"
    with client.get(url.group(1)) as resp:
        assert resp.status_code == 200
