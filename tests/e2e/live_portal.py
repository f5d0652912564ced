"""Serve the portal with waitress for the browser tests: ``python -m tests.e2e.live_portal PORT``."""

from __future__ import annotations

import sys


def main(argv: list[str]) -> None:
    """Build the app from the environment and serve it on loopback until terminated."""
    from waitress import serve

    from portal import create_app

    # waitress keeps connections alive like production; the Werkzeug server would not.
    serve(create_app(), host="127.0.0.1", port=int(argv[0]), threads=8, ident="portal-e2e")


if __name__ == "__main__":
    main(sys.argv[1:])
