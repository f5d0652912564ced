"""Preview is the run with its writes turned off: it predicts what the real run then does, step by step."""

from __future__ import annotations

import pytest
from sqlalchemy import select

from portal import sync
from portal.connection import config_for
from portal.connectors.dynamics import EntityReference, OrganizationService, Transport
from portal.extensions import db
from portal.models import CrmIntegration, utcnow
from portal.platform_models import Campaign, CrmActivity, CrmLink, Opportunity

from .sync_helpers import add_event, configure, make_leads, run_steps

COUNTS = ("created", "updated", "skipped", "failed")


@pytest.fixture
def seeded(connected):
    """The sandbox with its demo data and the platform's lead source option."""
    connected["crm"].reset(seed=True, platform_option=True)
    return connected


def _service(app, iid: int) -> OrganizationService:
    with app.app_context():
        return OrganizationService(Transport(config_for(db.session.get(CrmIntegration, iid))))


def test_preview_predicts_the_real_runs_counts(app, seeded):
    crm, iid, org = seeded["crm"], seeded["integration_id"], seeded["org_id"]
    configure(app, iid, marketing_automation=True, ma_pull_contacts=True, ma_sync_leads=True,
              ma_pull_opportunities=True, lead_distribution=True, ld_pull_opportunities=True,
              event_types=["email_click", "form_submission"], create_campaigns=True)
    ids = make_leads(app, org, 3, prefix="pv", events=("email_click",))
    with app.app_context():
        db.session.add(Campaign(organization_id=org, name="Spring launch"))
        db.session.commit()
    first = run_steps(app, iid)
    assert first["status"] == "finished", first

    # What changed since: one new CRM activity and one new opportunity on a linked lead, one new event,
    # one campaign edited. Nothing new to link, so every step's work is known before the run.
    with app.app_context():
        link = db.session.scalar(select(CrmLink).where(CrmLink.integration_id == iid, CrmLink.local_id == ids[0],
                                                       CrmLink.local_type == "lead"))
        lead_ref = EntityReference(link.crm_id, link.entity)
        acts_before = len(db.session.scalars(select(CrmActivity)).all())
        opps_before = len(db.session.scalars(select(Opportunity)).all())
    svc = _service(app, iid)
    svc.create("task", {"subject": "Follow up on the preview", "regardingobjectid": lead_ref})
    svc.create("opportunity", {"name": "Preview deal", "originatingleadid": lead_ref})
    svc.transport.close()
    add_event(app, ids[1], "form_submission")
    with app.app_context():
        campaign = db.session.scalar(select(Campaign).where(Campaign.organization_id == org))
        campaign.description, campaign.updated_at = "Now with a description", utcnow()
        db.session.commit()

    records_before = crm.stats()["records"]
    preview = run_steps(app, iid, dry_run=True)
    assert preview["status"] == "finished", preview
    assert crm.stats()["records"] == records_before  # nothing written to the CRM
    with app.app_context():
        assert len(db.session.scalars(select(CrmActivity)).all()) == acts_before  # nor to the portal
        assert len(db.session.scalars(select(Opportunity)).all()) == opps_before
    real = run_steps(app, iid)
    assert real["status"] == "finished", real

    # A step whose work reads what an earlier step writes can only match when those steps wrote nothing.
    dependent = {name for name in sync.NIGHTLY_STEPS
                 if any(real["steps"][d]["created"] or real["steps"][d]["updated"]
                        for d in sync.REGISTRY[name].depends_on)}
    compared = [name for name in sync.NIGHTLY_STEPS if name not in dependent]
    assert {"pull_activities", "pull_opportunities", "push_events", "push_campaigns"} <= set(compared), dependent
    differ = {}
    for name in compared:
        predicted = {k: preview["steps"][name][k] for k in COUNTS}
        done = {k: real["steps"][name][k] for k in COUNTS}
        if predicted != done:
            differ[name] = f"preview {predicted}, real run {done}"
    assert differ == {}
    assert real["steps"]["pull_activities"]["created"] == 1
    assert real["steps"]["pull_opportunities"]["created"] == 1
    assert real["steps"]["push_events"]["created"] == 1
    assert real["steps"]["push_campaigns"]["updated"] == 1


def test_steps_that_read_earlier_writes_say_so(app):
    """The registry names, for each step, the steps whose writes its work reads (Preview cannot see those)."""
    deps = {name: set(sync.REGISTRY[name].depends_on) for name in sync.NIGHTLY_STEPS}
    assert deps["contact_lists"] == {"pull_records"}
    assert deps["push_events"] == {"push_marketing_leads", "push_distributed_leads"}
    for name in ("pull_activities", "pull_status", "pull_opportunities"):
        assert deps[name] == {"pull_records", "push_marketing_leads", "push_distributed_leads"}
    for name in ("pull_records", "push_marketing_leads", "push_distributed_leads", "push_campaigns"):
        assert deps[name] == set()
    order = sync.NIGHTLY_STEPS
    assert all(order.index(d) < order.index(name) for name, ds in deps.items() for d in ds)
