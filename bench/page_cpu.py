"""Server CPU per request of each measured page, in process: quick before/after figures and profiles.

    .venv/bin/python bench/page_cpu.py [--requests 300] [--rounds 5] [--rows 1000] [--profile PAGE] [--instructions]

The same stack, data and pages as bench/pages.py (PostgreSQL, 1,000 runs / 1,000 partners, the bare page of
bench/bare.py), requested one after another through the Flask test client; the process's CPU time (user +
system) over N requests divided by N, and its ratio to the bare page's. The pages take turns in ROUNDS rounds of
N / ROUNDS requests each and the median round counts, so a burst of load from other programs on a shared machine
moves one round, not one page. ``--profile LABEL`` (a part of a page's label, e.g. ``Edit``) prints the cProfile
(in CPU time) of that page's requests, sorted by cumulative time (``--sort tottime`` for own time).

``--instructions`` then counts the instructions per request as well, which other programs on the machine do not
move. The script runs itself again under valgrind's callgrind (Debian: ``apt-get install valgrind``), with a stack
and data of its own and counting off; for each page in turn it counts N requests only (``callgrind_control``: on,
zero, dump, off) and prints the instructions per request and their ratio to the bare page's. These are the
user-space instructions of the portal's process, not PostgreSQL's and not the kernel's: a proxy for the CPU time
that moves by less than 1% between runs, not the same figure.
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import os
import pstats
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.common import Stack, stack  # noqa: E402
from bench.pages import BARE, MAX_RATIO, PARTNER_ADMIN, SUPPLIER_ADMIN, _test_login, pages_for, seed  # noqa: E402


def prepare(st: Stack, rows: int) -> tuple[dict, list]:
    """Seed ROWS rows, sign both admins in, and warm every page up: (clients by login, pages)."""
    ids = seed(st, rows)
    import bench.bare  # noqa: F401 - adds /bench/bare to wsgi.app
    from wsgi import app
    clients = {email: _test_login(app, email) for email in (PARTNER_ADMIN, SUPPLIER_ADMIN)}
    pages = pages_for(ids["big"], PARTNER_ADMIN, SUPPLIER_ADMIN)
    for _label, path, email, _target in pages:
        for _ in range(20):  # warm-up: templates, pool, caches
            assert clients[email].get(path).status_code == 200, path
    return clients, pages


def cpu_times(args) -> list[tuple[str, float]]:
    """CPU ms per request of each page: the median of its rounds."""
    with stack() as st:
        clients, pages = prepare(st, args.rows)
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
    return results


def counted_child(args) -> None:
    """Under callgrind: each page's N requests between the parent's go and its dump (the child of --instructions)."""
    hear_fd, say_fd = (int(fd) for fd in args.counted_child.split(","))
    with os.fdopen(hear_fd, "r") as hear, os.fdopen(say_fd, "w", buffering=1) as say, stack() as st:
        clients, pages = prepare(st, args.rows)
        for label, path, email, _target in pages:
            client = clients[email]
            gc.collect()  # every page starts with the collector's counts at zero, in every run
            say.write(f"{label}\n")
            if hear.readline() != "go\n":
                raise SystemExit("the parent stopped")
            for _ in range(args.requests):
                client.get(path)
            say.write("done\n")
            if hear.readline() != "go\n":
                raise SystemExit("the parent stopped")


def callgrind_control(pid: int, folder: Path, *options: str) -> None:
    """Run callgrind_control on the child (its vgdb pipes in FOLDER); stop on a failure."""
    done = subprocess.run(["callgrind_control", f"--vgdb-prefix={folder}/vgdb-pipe", *options, str(pid)],
                          capture_output=True, text=True)
    if done.returncode != 0 or "error" in done.stdout.lower():
        raise SystemExit(f"callgrind_control {' '.join(options)} failed: {done.stdout}{done.stderr}")


def dumped_total(folder: Path, before: set[Path]) -> int:
    """The instructions of the dump that appeared in FOLDER since BEFORE (its totals line)."""
    dumps = sorted(set(folder.glob("callgrind.out*")) - before)
    if len(dumps) != 1:
        raise SystemExit(f"expected one new callgrind dump, found {len(dumps)}")
    for line in dumps[0].read_text().splitlines():
        if line.startswith(("totals:", "summary:")):
            return int(line.split()[1])
    raise SystemExit(f"{dumps[0].name} has no totals line")


def instructions(args) -> list[tuple[str, float]]:
    """Instructions per request of each page, counted by callgrind in a child run of this script."""
    if not (shutil.which("valgrind") and shutil.which("callgrind_control")):
        raise SystemExit("--instructions needs valgrind's callgrind: apt-get install valgrind")
    results = []
    with tempfile.TemporaryDirectory(prefix="portal-callgrind-") as tmp:
        folder = Path(tmp)
        to_child, from_parent = os.pipe()
        to_parent, from_child = os.pipe()
        with open(folder / "child.log", "w") as log:
            proc = subprocess.Popen(
                ["valgrind", "--command-line-only=yes", "--tool=callgrind", "--instr-atstart=no",
                 f"--callgrind-out-file={folder}/callgrind.out", f"--vgdb-prefix={folder}/vgdb-pipe",
                 f"--log-file={folder}/valgrind.log", sys.executable, __file__, "--requests", str(args.requests),
                 "--rows", str(args.rows), "--counted-child", f"{to_child},{from_child}"],
                cwd=ROOT, env={**os.environ, "PYTHONHASHSEED": "0"}, pass_fds=(to_child, from_child),
                stdout=log, stderr=subprocess.STDOUT)
        os.close(to_child)
        os.close(from_child)

        def failed(why: str) -> SystemExit:
            logs = "".join((folder / name).read_text()[-3000:] for name in ("child.log", "valgrind.log")
                           if (folder / name).exists())
            return SystemExit(f"{why}\n{logs}")

        with os.fdopen(from_parent, "w", buffering=1) as say, os.fdopen(to_parent, "r") as hear:
            try:
                while label := hear.readline().rstrip("\n"):
                    callgrind_control(proc.pid, folder, "--instr=on")
                    callgrind_control(proc.pid, folder, "--zero")
                    say.write("go\n")
                    if hear.readline() != "done\n":
                        raise failed(f"the counted run stopped during {label}")
                    before = set(folder.glob("callgrind.out*"))
                    callgrind_control(proc.pid, folder, "--dump")
                    callgrind_control(proc.pid, folder, "--instr=off")
                    results.append((label, dumped_total(folder, before) / args.requests))
                    say.write("go\n")
            finally:
                say.close()  # the child reads the end, leaves its stack (database dropped) and exits
                try:
                    proc.wait(300)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
        if proc.returncode != 0:
            raise failed(f"the counted run exited with {proc.returncode} after {len(results)} pages")
    return results


def print_table(results: list[tuple[str, float]], heading: str, scale: float, digits: int) -> None:
    """One line per page: its figure (times SCALE), its ratio to the bare page's, PASS/MISS against MAX_RATIO."""
    bare = next(value for label, value in results if label == BARE)
    print(f"{'page':<24} {heading:>10}  {'x bare':>6}  <= {MAX_RATIO}")
    for label, value in results:
        verdict = "" if label == BARE else ("PASS" if value / bare <= MAX_RATIO else "MISS")
        print(f"{label:<24} {value * scale:>10.{digits}f}  {value / bare:>6.2f}  {verdict}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=300, help="requests per page")
    parser.add_argument("--rounds", type=int, default=5, help="rounds the pages take turns in (median counts)")
    parser.add_argument("--rows", type=int, default=1000, help="sync runs, and partners of the supplier")
    parser.add_argument("--profile", default="", help="profile the page whose label contains this")
    parser.add_argument("--sort", default="cumulative", help="the profile's order (cumulative, tottime…)")
    parser.add_argument("--instructions", action="store_true",
                        help="also count instructions per request under callgrind (slow, but steady)")
    parser.add_argument("--counted-child", default="", help=argparse.SUPPRESS)  # fds: the run under callgrind
    args = parser.parse_args()
    if args.counted_child:
        counted_child(args)
        return
    print_table(cpu_times(args), "CPU ms/req", 1, 2)
    if args.instructions:
        counted = instructions(args)
        print()
        print("User-space instructions of the portal's process per request (not PostgreSQL's, not the kernel's),")
        print("counted by callgrind: a proxy for the CPU time above that other programs do not move, not the same.")
        print_table(counted, "M instr/req", 1e-6, 3)


if __name__ == "__main__":
    main()
