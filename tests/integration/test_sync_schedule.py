"""Nightly scheduling: slots spread between 01:00 and 05:00 UTC, stable, one scheduled job per integration."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from rq.registry import ScheduledJobRegistry

from portal import queues, schedule
from portal.extensions import db
from portal.models import CrmIntegration

from .sync_helpers import configure


def test_nightly_slot_is_spread_over_the_night_and_stable():
    day = datetime(2026, 11, 26, 14, 30, tzinfo=UTC)
    slots = {i: schedule.nightly_slot(i, day) for i in range(1, 501)}
    start, end = datetime(2026, 11, 26, 1, 0, tzinfo=UTC), datetime(2026, 11, 26, 5, 0, tzinfo=UTC)
    assert all(start <= s < end for s in slots.values())
    assert len({s for s in slots.values()}) >= 200  # spread, not bunched on the hour
    assert all(schedule.nightly_slot(i, day) == s for i, s in slots.items())  # stable
    assert all(schedule.nightly_slot(i, day + timedelta(days=1)) == s + timedelta(days=1) for i, s in slots.items())
    assert schedule.nightly_slot(7, day.replace(hour=0, minute=5)) == slots[7]  # the time of day does not matter


def scheduled(app) -> list:
    with app.app_context():
        queue = queues.queue(queues.QUEUE_NIGHTLY)
        registry = ScheduledJobRegistry(queue=queue)
        return [queue.fetch_job(job_id) for job_id in registry.get_job_ids()]


def test_schedule_next_night_enqueues_one_job_per_integration(app, factory):
    factory.org("Night Supplier", "supplier")
    ids = []
    for name in ("Night A", "Night B", "Night C"):
        org = factory.org(name, "partner", ("Night Supplier",))
        ids.append(factory.integration(org))
    for iid in ids[:2]:
        configure(app, iid, enabled=True)
    with app.app_context():
        assert schedule.ensure_schedules() == 2
        assert schedule.ensure_schedules() == 2  # a second worker start does not double them
        schedule.schedule_next_night(ids[0])
        schedule.schedule_next_night(ids[0])
    jobs = scheduled(app)
    assert sorted(job.args[0] for job in jobs) == ids[:2]
    assert {job.func_name for job in jobs} == {"jobs.sync.nightly"}
    with app.app_context():
        registry = ScheduledJobRegistry(queue=queues.queue(queues.QUEUE_NIGHTLY))
        now = datetime.now(UTC)
        for job in jobs:
            when = registry.get_scheduled_time(job)
            slot = schedule.nightly_slot(job.args[0], now)
            assert when in (slot, schedule.nightly_slot(job.args[0], now + timedelta(days=1)))
            assert when > now - timedelta(seconds=5) and time_of_night(when)


def time_of_night(when: datetime) -> bool:
    return 1 <= when.astimezone(UTC).hour < 5


def test_the_nightly_job_of_an_integration_switched_off_does_nothing(app, factory):
    from jobs import sync as sync_jobs

    factory.org("Off Supplier", "supplier")
    iid = factory.integration(factory.org("Off Partner", "partner", ("Off Supplier",)))
    with app.app_context():
        assert sync_jobs.nightly(iid)["status"] == "skipped"
        assert db.session.get(CrmIntegration, iid).enabled is False
