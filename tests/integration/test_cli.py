"""The command line: organizations, users and the demo data, with clear errors and nothing written."""

from __future__ import annotations

from sqlalchemy import func, select

from portal.extensions import db
from portal.models import Organization, User


def count(app, model) -> int:
    with app.app_context():
        return db.session.scalar(select(func.count()).select_from(model))


def test_create_orgs_and_users(app, runner):
    assert runner.invoke(args=["orgs", "create", "--name", "Acme", "--kind", "supplier"]).exit_code == 0
    res = runner.invoke(args=["orgs", "create", "--name", "Reseller", "--kind", "partner", "--supplier", "Acme"])
    assert res.exit_code == 0, res.output
    res = runner.invoke(args=["users", "create", "--email", "Ann@Reseller.example", "--password", "Strong-Pass-42",
                              "--org", "Reseller", "--role", "admin"])
    assert res.exit_code == 0, res.output
    with app.app_context():
        partner = db.session.scalar(select(Organization).where(Organization.name == "Reseller"))
        assert [s.name for s in partner.suppliers] == ["Acme"]
        user = db.session.scalar(select(User))
        assert user.email == "ann@reseller.example" and user.is_admin
        assert user.password_hash.startswith("scrypt:") and "Strong-Pass-42" not in user.password_hash


def test_unknown_org_duplicate_email_and_weak_password_write_nothing(app, runner):
    runner.invoke(args=["orgs", "create", "--name", "Reseller", "--kind", "partner"])
    res = runner.invoke(args=["users", "create", "--email", "a@x.example", "--password", "Strong-Pass-42",
                              "--org", "Nowhere", "--role", "admin"])
    assert res.exit_code != 0 and "No organization named 'Nowhere'" in res.output
    res = runner.invoke(args=["users", "create", "--email", "a@x.example", "--password", "short",
                              "--org", "Reseller", "--role", "admin"])
    assert res.exit_code != 0 and "at least 10 characters" in res.output
    assert count(app, User) == 0
    ok = runner.invoke(args=["users", "create", "--email", "a@x.example", "--password", "Strong-Pass-42",
                             "--org", "Reseller", "--role", "member"])
    assert ok.exit_code == 0
    dup = runner.invoke(args=["users", "create", "--email", "A@X.example", "--password", "Strong-Pass-43",
                              "--org", "Reseller", "--role", "admin"])
    assert dup.exit_code != 0 and "already exists" in dup.output
    assert count(app, User) == 1


def test_partner_needs_an_existing_supplier(app, runner):
    res = runner.invoke(args=["orgs", "create", "--name", "Reseller", "--kind", "partner", "--supplier", "Ghost"])
    assert res.exit_code != 0 and "No supplier named 'Ghost'" in res.output
    assert count(app, Organization) == 0
    runner.invoke(args=["orgs", "create", "--name", "Reseller", "--kind", "partner"])
    dup = runner.invoke(args=["orgs", "create", "--name", "reseller", "--kind", "supplier"])
    assert dup.exit_code != 0 and "already exists" in dup.output


def test_seed_demo_is_idempotent_and_prints_logins(app, runner, client, auth):
    first = runner.invoke(args=["seed-demo"])
    second = runner.invoke(args=["seed-demo"])
    assert first.exit_code == second.exit_code == 0
    assert first.output == second.output and "admin@partner.example" in first.output
    assert count(app, Organization) == 2 and count(app, User) == 3
    line = next(ln for ln in first.output.splitlines() if "member@partner.example" in ln)
    password = line.split()[1]
    auth.login("member@partner.example", password)
    assert client.get("/settings/crm").status_code == 403
    line = next(ln for ln in first.output.splitlines() if "admin@partner.example" in ln)
    client.post("/logout", data={"csrf_token": auth.token("/login")})
    assert auth.login("admin@partner.example", line.split()[1]).status_code == 302
    assert "Microsoft Dynamics CRM" in client.get("/settings/crm").text


def test_password_column_never_holds_the_plain_password(app, factory):
    from sqlalchemy import text

    org_id = factory.org("Acme Partner")
    factory.integration(org_id, password="Plain-CRM-Secret-77", username="crmuser")
    with app.app_context():
        raw = db.session.execute(text("SELECT password_encrypted FROM crm_integrations")).scalar_one()
        assert raw and "Plain-CRM-Secret-77" not in raw
        from portal.crypto import decrypt

        assert decrypt(raw) == "Plain-CRM-Secret-77"
        dump = " ".join(str(v) for v in db.session.execute(text("SELECT * FROM crm_integrations")).one())
        assert "Plain-CRM-Secret-77" not in dump
