"""A real RQ worker on a real Redis runs the health job that the listing reports on."""

from __future__ import annotations

from rq import SimpleWorker

from portal import queues
from portal.extensions import db
from portal.models import BackgroundJob


def test_health_job_runs_on_a_real_worker(app, partner_admin, client, auth):
    resp = client.post("/settings/health", data={"csrf_token": auth.token()},
                       headers={"HX-Request": "true", "X-CSRFToken": auth.token()})
    assert resp.status_code == 200 and 'data-health="waiting"' in resp.text
    with app.app_context():
        job_id = db.session.query(BackgroundJob).one().id
        assert queues.queue(queues.QUEUE_DEFAULT).count == 1
        SimpleWorker([queues.queue(queues.QUEUE_DEFAULT)], connection=queues.redis()).work(burst=True)
    status = client.get(f"/settings/health/{job_id}")
    assert status.status_code == 286  # stops the htmx polling
    assert 'data-health="ok"' in status.text and "The background worker answered" in status.text
    assert "The background worker answered" in client.get("/settings/crm").text


def test_no_worker_is_reported_instead_of_spinning(app, partner_admin, client, auth):
    from datetime import timedelta

    from portal.models import utcnow

    client.post("/settings/health", data={"csrf_token": auth.token()})
    with app.app_context():
        row = db.session.query(BackgroundJob).one()
        row.created_at = utcnow() - timedelta(seconds=60)
        db.session.commit()
        job_id = row.id
    status = client.get(f"/settings/health/{job_id}")
    assert status.status_code == 286
    assert "No background worker has picked the check up" in status.text
