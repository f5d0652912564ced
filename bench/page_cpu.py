"""Server CPU per request of each measured page, in process: quick before/after figures and profiles.

    .venv/bin/python bench/page_cpu.py [--requests 300] [--rounds 5] [--rows 1000] [--profile PAGE]

The same stack, data and pages as bench/pages.py (PostgreSQL, 1,000 runs / 1,000 partners, the bare page of
bench/bare.py), requested one after another through the Flask test client; the process's CPU time (user +
system) over N requests divided by N, and its ratio to the bare page's. The pages take turns in ROUNDS rounds of
N / ROUNDS requests each and the median round counts, so a burst of load from other programs on a shared machine
moves one round, not one page. ``--profile LABEL`` (a part of a page's label, e.g. ``Edit``) prints the cProfile
(in CPU time) of that page's requests, sorted by cumulative time (``--sort tottime`` for own time).
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import statistics
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
    parser.add_argument("--rounds", type=int, default=5, help="rounds the pages take turns in (median counts)")
    parser.add_argument("--rows", type=int, default=1000, help="sync runs, and partners of the supplier")
    parser.add_argument("--profile", default="", help="profile the page whose label contains this")
    parser.add_argument("--sort", default="cumulative", help="the profile's order (cumulative, tottime…)")
    args = parser.parse_args()
    with stack() as st:
        ids = seed(st, args.rows)
        import bench.bare  # noqa: F401 - adds /bench/bare to wsgi.app
        from wsgi import app
        clients = {email: _test_login(app, email) for email in (PARTNER_ADMIN, SUPPLIER_ADMIN)}
        pages = pages_for(ids["big"], PARTNER_ADMIN, SUPPLIER_ADMIN)
        for _label, path, email, _target in pages:
            for _ in range(20):  # warm-up: templates, pool, caches
                assert clients[email].get(path).status_code == 200, path
        per_round = max(1, args.requests // max(1, args.rounds))
        rounds: dict[str, list[float]] = {label: [] for label, *_ in pages}
        profiler = cProfile.Profile(time.process_time) if args.profile else None
        for _ in range(max(1, args.rounds)):
            for label, path, email, _target in pages:
                client = clients[email]
                profiled = profiler is not None and args.profile.lower() in label.lower()
                cpu = time.process_time()
                if profiled:
                    profiler.enable()
                for _ in range(per_round):
                    client.get(path)
                if profiled:
                    profiler.disable()
                rounds[label].append((time.process_time() - cpu) * 1000 / per_round)
        results = [(label, statistics.median(ms)) for label, ms in rounds.items()]
        if profiler is not None:
            pstats.Stats(profiler).sort_stats(args.sort).print_stats(45)
    bare = next(ms for label, ms in results if label == BARE)
    print(f"{'page':<24} {'CPU ms/req':>10}  {'x bare':>6}  <= {MAX_RATIO}")
    for label, ms in results:
        verdict = "" if label == BARE else ("PASS" if ms / bare <= MAX_RATIO else "MISS")
        print(f"{label:<24} {ms:>10.2f}  {ms / bare:>6.2f}  {verdict}")


if __name__ == "__main__":
    main()
