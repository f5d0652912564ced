"""python -m sandbox: serve the stand-in Dynamics CRM with waitress."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from .ntlm import configure, ensure_users_file


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options, with SANDBOX_PORT, SANDBOX_TLS_PORT and SANDBOX_DATA_DIR as defaults."""
    parser = argparse.ArgumentParser(prog="python -m sandbox", description="Stand-in on-premises Dynamics CRM.")
    parser.add_argument("--host", default="127.0.0.1", help="bind address (loopback by default)")
    parser.add_argument("--port", type=int, default=int(os.environ.get("SANDBOX_PORT", "5555")))
    parser.add_argument("--data-dir", default=os.environ.get("SANDBOX_DATA_DIR", "instance/sandbox"))
    parser.add_argument("--users-file", default=None, help="DOMAIN:USER:PASSWORD lines (default: DATA_DIR/users.txt)")
    parser.add_argument("--org", default="demo", help="organization name in the URL path")
    parser.add_argument("--seed", action="store_true", help="add demo records (idempotent)")
    parser.add_argument("--threads", type=int, default=8)
    parser.add_argument("--tls-port", type=int, default=None,
                        help="HTTPS port of the online mode (Entra token endpoint and Web API v9.2); 0 turns it off "
                             "(default: SANDBOX_TLS_PORT, else the port after --port)")
    parser.add_argument(
        "--platform-option",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="add (or remove) the platform's lead-source option 'ZiftONE'; unchanged when omitted",
    )
    args = parser.parse_args(argv)
    if args.tls_port is None:
        tls = os.environ.get("SANDBOX_TLS_PORT", "").strip()
        args.tls_port = int(tls) if tls else args.port + 1
    return args


def main(argv: list[str] | None = None) -> int:
    """Start the server and block."""
    args = parse_args(argv)
    data_dir = Path(args.data_dir).resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    users_file, created = ensure_users_file(
        Path(args.users_file).resolve() if args.users_file else data_dir / "users.txt"
    )
    # pyspnego reads these when a context is created, so set them before serving anything.
    configure(users_file)

    import waitress

    from .app import SandboxApp

    app = SandboxApp(data_dir, args.org, users_file, platform_option=args.platform_option, seed=args.seed)
    host = args.host
    shown = f"[{host}]" if ":" in host else host
    if created:
        domain, user, password = created.split(":", 2)
        print(f"Created users file {users_file} with {domain}\\{user} / {password}", flush=True)
    print(
        f"Organization service: http://{shown}:{args.port}/{args.org}/XRMServices/2011/Organization.svc/web", flush=True
    )
    print(
        f"OData v2:             http://{shown}:{args.port}/{args.org}/XRMServices/2011/OrganizationData.svc/",
        flush=True,
    )
    print(f"Web API:              http://{shown}:{args.port}/{args.org}/api/data/v8.2/", flush=True)
    print(f"Control API:          http://{shown}:{args.port}/_sandbox/ (data in {data_dir})", flush=True)
    if args.tls_port:
        from .online import CLIENT_ID, CLIENT_SECRET, TENANT_ID, OnlineApp, serve_tls

        serve_tls(OnlineApp(app), host, args.tls_port, data_dir)
        print(f"Online environment:   https://{shown}:{args.tls_port} (authority https://{shown}:{args.tls_port}, "
              f"tenant {TENANT_ID}, client {CLIENT_ID}, secret {CLIENT_SECRET}, CA {data_dir / 'tls-cert.pem'})",
              flush=True)
    waitress.serve(
        app,
        host=host,
        port=args.port,
        threads=args.threads,
        ident="Microsoft-IIS/8.5",
        channel_timeout=300,
        connection_limit=200,
        _quiet=True,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
