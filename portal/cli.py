"""Command-line tools: ``flask --app wsgi orgs|users|seed-demo|crm …``."""

from __future__ import annotations

import sys

import click
from flask import Flask
from flask.cli import AppGroup, with_appcontext
from sqlalchemy import func, select

from .extensions import db
from .models import Organization, OrgKind, Role, User, integration_for
from .passwords import weakness
from .validation import email_problem

DEMO_SUPPLIER = "Demo Supplier"
DEMO_PARTNER = "Demo Partner"
DEMO_LOGINS = [
    ("admin@partner.example", "Tulip-Harbor-42", Role.admin, DEMO_PARTNER),
    ("member@partner.example", "Maple-River-17", Role.member, DEMO_PARTNER),
    ("admin@supplier.example", "Cedar-Summit-88", Role.admin, DEMO_SUPPLIER),
]


def org_by_name(name: str) -> Organization | None:
    """An organization by name, ignoring case."""
    return db.session.scalar(select(Organization).where(func.lower(Organization.name) == name.strip().lower()))


def create_org(name: str, kind: str, supplier_names: list[str]) -> Organization:
    """Create an organization; a partner may be linked to suppliers. Raises ClickException on bad input."""
    name = name.strip()
    if not name:
        raise click.ClickException("The organization needs a name.")
    if org_by_name(name):
        raise click.ClickException(f"An organization named {name!r} already exists.")
    if supplier_names and kind != OrgKind.partner:
        raise click.ClickException("Only partners are linked to suppliers (--supplier needs --kind partner).")
    suppliers = []
    for s in supplier_names:
        found = org_by_name(s)
        if found is None or found.kind != OrgKind.supplier:
            raise click.ClickException(f"No supplier named {s!r}: create it first with --kind supplier.")
        suppliers.append(found)
    org = Organization(name=name, kind=OrgKind(kind))
    org.suppliers.extend(suppliers)
    db.session.add(org)
    return org


def create_user(email: str, password: str, org_name: str, role: str) -> User:
    """Create a user. Raises ClickException (and writes nothing) for any bad input."""
    email = email.strip().lower()
    problem = email_problem(email)
    if problem:
        raise click.ClickException(f"{email!r} is not an email address: {problem}")
    org = org_by_name(org_name)
    if org is None:
        raise click.ClickException(f"No organization named {org_name!r}: create it first with `flask orgs create`.")
    if db.session.scalar(select(User).where(func.lower(User.email) == email)):
        raise click.ClickException(f"A user with the email {email} already exists.")
    problem = weakness(password, email)
    if problem:
        raise click.ClickException(problem)
    user = User(email=email, role=Role(role), organization=org)
    user.set_password(password)
    db.session.add(user)
    return user


def init_app(app: Flask) -> None:
    """Register the command groups."""
    app.cli.add_command(orgs)
    app.cli.add_command(users)
    app.cli.add_command(seed_demo)
    from .cli_crm import crm
    from .cli_sync import sync

    app.cli.add_command(crm)
    app.cli.add_command(sync)


@click.group(cls=AppGroup)
def orgs() -> None:
    """Manage organizations."""


@orgs.command("create")
@click.option("--name", required=True)
@click.option("--kind", type=click.Choice(["supplier", "partner"]), required=True)
@click.option("--supplier", "suppliers", multiple=True, help="a supplier this partner works with (repeatable)")
def orgs_create(name: str, kind: str, suppliers: tuple[str, ...]) -> None:
    """Create a supplier or a partner."""
    try:
        org = create_org(name, kind, list(suppliers))
        db.session.commit()
    except click.ClickException:
        db.session.rollback()
        raise
    click.echo(f"Created {org.kind.value} {org.name!r} (id {org.id}).")


@click.group(cls=AppGroup)
def users() -> None:
    """Manage users."""


@users.command("create")
@click.option("--email", required=True)
@click.option("--password", required=True)
@click.option("--org", "org_name", required=True)
@click.option("--role", type=click.Choice(["admin", "member"]), required=True)
def users_create(email: str, password: str, org_name: str, role: str) -> None:
    """Create a user in an organization."""
    try:
        user = create_user(email, password, org_name, role)
        db.session.commit()
    except click.ClickException:
        db.session.rollback()
        raise
    click.echo(f"Created {user.role.value} {user.email} in {user.organization.name!r}.")


def user_by_email(email: str) -> User:
    """The user with this email, or a ClickException."""
    user = db.session.scalar(select(User).where(func.lower(User.email) == email.strip().lower()))
    if user is None:
        raise click.ClickException(f"No user with the email {email.strip()}.")
    return user


@users.command("set-password")
@click.option("--email", required=True)
@click.option("--password-stdin", is_flag=True, required=True, help="read the new password from standard input")
def users_set_password(email: str, password_stdin: bool) -> None:
    """Change a user's password; every session of that user ends."""
    user = user_by_email(email)
    password = sys.stdin.readline().rstrip("\r\n")
    problem = weakness(password, user.email)
    if problem:
        raise click.ClickException(problem)
    user.set_password(password)
    db.session.commit()
    click.echo(f"Changed the password of {user.email}; their sessions have ended.")


@users.command("disable")
@click.option("--email", required=True)
def users_disable(email: str) -> None:
    """Disable a user: no more sign-ins, and every session of that user ends at once."""
    user = user_by_email(email)
    user.disable()
    db.session.commit()
    click.echo(f"Disabled {user.email}; their sessions have ended.")


def seed_demo_data(sandbox: dict | None = None) -> list[tuple[str, str, str, str]]:
    """Create the demo supplier, partner and users when missing; point the partner's CRM at the sandbox."""
    supplier = org_by_name(DEMO_SUPPLIER) or create_org(DEMO_SUPPLIER, "supplier", [])
    partner = org_by_name(DEMO_PARTNER) or create_org(DEMO_PARTNER, "partner", [DEMO_SUPPLIER])
    db.session.flush()
    if supplier not in partner.suppliers:
        partner.suppliers.append(supplier)
    for email, password, role, org in DEMO_LOGINS:
        if not db.session.scalar(select(User).where(User.email == email)):
            create_user(email, password, org, role)
    integration = integration_for(partner)
    if integration.supplier_id is None:
        integration.supplier_id = supplier.id
    # The demo CRM is the local sandbox: follow it to whatever port it got this time.
    if sandbox and (not integration.org_url or integration.org_url.startswith("http://127.0.0.1:")):
        from .crypto import encrypt

        integration.username = sandbox["username"]
        integration.domain = sandbox["domain"]
        integration.password_encrypted = encrypt(sandbox["password"])
        integration.org_url = sandbox["org_url"]
        integration.odata_url = sandbox.get("odata_url", "")
    db.session.commit()
    return [(e, p, r.value, o) for e, p, r, o in DEMO_LOGINS]


@click.command("seed-demo")
@with_appcontext
@click.option("--sandbox-url", default="", help="the sandbox's Organization Web Service URL, to preset the demo")
@click.option("--sandbox-odata-url", default="")
@click.option("--sandbox-user", default="crmadmin")
@click.option("--sandbox-domain", default="SANDBOX")
@click.option("--sandbox-password", default="")
def seed_demo(sandbox_url: str, sandbox_odata_url: str, sandbox_user: str, sandbox_domain: str,
              sandbox_password: str) -> None:
    """Create the demo organizations and logins (safe to run again)."""
    sandbox = None
    if sandbox_url:
        sandbox = {"org_url": sandbox_url, "odata_url": sandbox_odata_url, "username": sandbox_user,
                   "domain": sandbox_domain, "password": sandbox_password}
    logins = seed_demo_data(sandbox)
    click.echo("Demo logins:")
    for email, password, role, org in logins:
        click.echo(f"  {email:<26} {password:<22} {role:<7} {org}")
