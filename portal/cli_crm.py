"""``flask crm test-connection``: the layered connection test from the command line."""

from __future__ import annotations

import json
import sys

import click
from flask import current_app
from flask.cli import AppGroup


@click.group(cls=AppGroup)
def crm() -> None:
    """Work with CRM connections."""


@crm.command("test-connection")
@click.option("--org-url", required=True, help="Organization Web Service URL, ending in /web")
@click.option("--odata-url", default="", help="OData Service URL")
@click.option("--username", required=True)
@click.option("--password", default=None, help="the CRM password (prefer --password-stdin)")
@click.option("--password-stdin", is_flag=True, help="read the password from standard input")
@click.option("--domain", default="", help="Windows domain of the user (NTLM)")
@click.option("--organization", default="", help="organization name, when the CRM asks to choose one")
@click.option("--ca-bundle", default=None, type=click.Path(exists=True, dir_okay=False))
@click.option("--json", "as_json", is_flag=True, help="print one JSON object")
def test_connection_cmd(org_url, odata_url, username, password, password_stdin, domain, organization, ca_bundle,
                        as_json) -> None:
    """Run every step of the connection test and report each; exit 0 when it passes."""
    if password_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
    if password is None:
        raise click.UsageError("Give the password with --password or --password-stdin.")
    from .connection import connector_config
    from .connectors.dynamics import test_connection

    config = connector_config(
        org_url=org_url, odata_url=odata_url, username=username, password=password, domain=domain,
        organization=organization, ca_bundle=ca_bundle,
    )
    result = test_connection(config, platform_name=current_app.config["PLATFORM_NAME"])
    _report(result.to_dict(), as_json)


@crm.command("test-online")
@click.option("--environment-url", required=True, help="https://<org>.crm<N>.dynamics.com")
@click.option("--tenant-id", required=True, help="the Directory (tenant) ID of the app registration")
@click.option("--client-id", required=True, help="the Application (client) ID")
@click.option("--client-secret-stdin", is_flag=True, help="read the client secret from standard input")
@click.option("--certificate", default=None, type=click.Path(exists=True, dir_okay=False),
              help="a PEM file with the private key and the certificate, instead of a secret")
@click.option("--json", "as_json", is_flag=True, help="print one JSON object")
def test_online_cmd(environment_url, tenant_id, client_id, client_secret_stdin, certificate, as_json) -> None:
    """Run every step of the Dynamics 365 online connection test; exit 0 when it passes."""
    secret = sys.stdin.readline().rstrip("\r\n") if client_secret_stdin else ""
    pem = ""
    if certificate:
        with open(certificate, encoding="utf-8") as fh:
            pem = fh.read()
    if not secret and not pem:
        raise click.UsageError("Give the client secret with --client-secret-stdin, or --certificate.")
    from .connection import online_config
    from .connectors.dynamics.factory import run_connection_test

    config = online_config(environment_url=environment_url, tenant_id=tenant_id, client_id=client_id,
                           client_secret=secret, certificate_pem=pem)
    _report(run_connection_test(config, platform_name=current_app.config["PLATFORM_NAME"]).to_dict(), as_json)


def _report(data: dict, as_json: bool) -> None:
    """Print the steps and the outcome (or one JSON object), and exit 0 when the test passed."""
    if as_json:
        click.echo(json.dumps(data))
    else:
        for step in data["steps"]:
            mark = "ok  " if step["ok"] else "FAIL"
            click.echo(f"[{mark}] {step['name']}: {step['detail']}")
        if data["ok"]:
            click.echo(f"The connection works (CRM version {data['version']}, user {data['user_id']}).")
        else:
            err = data["error"]
            click.echo(f"\n{err['message']}\nWhat to do: {err['action']}  [{err['code']}]")
    sys.exit(0 if data["ok"] else 1)
