"""Serve the portal as in production (waitress with threads) for the page benchmark.

    python -m bench.serve_portal PORT [--threads 8]

The app is built from the environment (DATABASE_URL, REDIS_URL, SECRET_KEY, …), which the benchmark sets to its
own stack's. Serves on 127.0.0.1 only, until terminated.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def main(argv: list[str] | None = None) -> None:
    """Build the app and serve it with waitress."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("port", type=int)
    parser.add_argument("--threads", type=int, default=8)
    args = parser.parse_args(argv)
    from waitress import serve

    from portal import create_app

    app = create_app()
    logging.getLogger("waitress.queue").setLevel(logging.ERROR)  # "Task queue depth" is expected under load
    serve(app, host="127.0.0.1", port=args.port, threads=args.threads, ident="portal-bench")


if __name__ == "__main__":
    main()
