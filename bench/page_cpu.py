"""Server CPU per request of each measured page, in process: quick before/after figures and profiles.

    .venv/bin/python bench/page_cpu.py [--requests 300] [--rows 1000] [--profile PAGE]

The same stack, data and pages as bench/pages.py (PostgreSQL, 1,000 runs / 1,000 partners, the bare page of
bench/bare.py), requested one after another through the Flask test client; the process's CPU time (user +
system) over N requests divided by N, and its ratio to the bare page's. ``--profile LABEL`` (a part of a page's
label, e.g. ``Edit``) prints the cProfile of that page's requests, sorted by cumulative time
(``--sort tottime`` for own time).
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.common import stack  # noqa: E402
from bench.pages import BARE, MAX_RATIO, PARTNER_ADMIN, SUPPLIER_ADMIN, _test_login, pages_for, seed  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=300, help="requests per page")
    parser.add_argument("--rows", type=int, default=1000, help="sync runs, and partners of the supplier")
    parser.add_argument("--profile", default="", help="profile the page whose label contains this")
    parser.add_argument("--sort", default="cumulative", help="the profile's order (cumulative, tottime…)")
    args = parser.parse_args()
    with stack() as st:
        ids = seed(st, args.rows)
        import bench.bare  # noqa: F401 - adds /bench/bare to wsgi.app
        from wsgi import app
        clients = {email: _test_login(app, email) for email in (PARTNER_ADMIN, SUPPLIER_ADMIN)}
        results = []
        for label, path, email, _target in pages_for(ids["big"], PARTNER_ADMIN, SUPPLIER_ADMIN):
            client = clients[email]
            for _ in range(20):  # warm-up: templates, pool, caches
                assert client.get(path).status_code == 200, path
            profiler = cProfile.Profile() if args.profile and args.profile.lower() in label.lower() else None
            cpu = time.process_time()
            if profiler:
                profiler.enable()
            for _ in range(args.requests):
                client.get(path)
            if profiler:
                profiler.disable()
            results.append((label, (time.process_time() - cpu) * 1000 / args.requests))
            if profiler:
                pstats.Stats(profiler).sort_stats(args.sort).print_stats(45)
    bare = next(ms for label, ms in results if label == BARE)
    print(f"{'page':<24} {'CPU ms/req':>10}  {'x bare':>6}  <= {MAX_RATIO}")
    for label, ms in results:
        verdict = "" if label == BARE else ("PASS" if ms / bare <= MAX_RATIO else "MISS")
        print(f"{label:<24} {ms:>10.2f}  {ms / bare:>6.2f}  {verdict}")


if __name__ == "__main__":
    main()
