"""Connection tests count in the CRM's in-flight slots: they wait for a turn, and Server Busy lowers the limit."""

from __future__ import annotations

import contextlib
import threading

import pytest

from portal.extensions import db
from portal.models import CrmIntegration

from .sync_helpers import wait_for
from .test_connection_job import connection_tests, integ, run_worker, save_and_test
from .test_online_settings import online_fields, post_connection, use_sandbox_authority

WAITING = "Waiting for the CRM"


class HeldSlots:
    """In-flight slots of one integration held by threads of their own (a run's lanes), until ``release``."""

    def __init__(self, app, iid: int, count: int):
        from portal.sync import inflight

        with app.app_context():
            self.slots = inflight.Slots(iid)
        self.conn = self.slots.conn
        self._done = threading.Event()
        taken = threading.Semaphore(0)

        def hold() -> None:
            with self.slots.slot(wait=5):
                taken.release()
                self._done.wait(120)

        self._threads = [threading.Thread(target=hold, daemon=True) for _ in range(count)]
        for thread in self._threads:
            thread.start()
        for _ in self._threads:
            assert taken.acquire(timeout=10)

    def release(self) -> None:
        """The batches end: every slot is given back."""
        self._done.set()
        for thread in self._threads:
            thread.join(10)


@contextlib.contextmanager
def slots_held(app, iid: int, count: int):
    """``count`` slots of the integration held for the length of the block."""
    held = HeldSlots(app, iid, count)
    try:
        yield held
    finally:
        held.release()


def crm_requests(crm) -> int:
    """Every HTTP request the sandbox has answered so far."""
    return sum(crm.stats()["http"].values())


def switched_on(app, iid: int) -> None:
    with app.app_context():
        db.session.get(CrmIntegration, iid).enabled = True
        db.session.commit()


def test_a_connection_test_waits_for_a_slot_the_runs_hold(app, partner_admin, client, auth, crm):
    """With every slot held by a run's batches, the test sends nothing until one comes free, then passes."""
    iid = partner_admin["integration_id"]
    seen: dict = {}
    with slots_held(app, iid, 2) as slots:
        before = crm_requests(crm)
        assert save_and_test(client, auth, iid, crm, crm.password).status_code == 200

        def watch() -> None:
            # What the CRM and Redis looked like once the test waited (or finished), then the run's batches end.
            try:
                seen["job"] = wait_for(lambda: next((t for t in connection_tests(app, iid) if t.finished_at
                                                     or WAITING in [s["name"] for s in t.steps]), None),
                                       30, "the test to wait for a slot or to finish")
                seen["requests"] = crm_requests(crm)
                seen["held"] = slots.conn.zcard(f"portal:inflight:{iid}")
            finally:
                slots.release()

        watcher = threading.Thread(target=watch)
        watcher.start()
        run_worker(app)
        watcher.join(60)
    job = seen["job"]
    assert job.finished_at is None, job.steps  # it did not go ahead beside the two batches
    assert seen["requests"] == before  # not one request reached the CRM while the slots were held
    assert seen["held"] == 2
    waiting = next(s for s in job.steps if s["name"] == WAITING)
    assert waiting["ok"] and "sync" in waiting["detail"]
    job = connection_tests(app, iid)[0]
    assert job.result["ok"], job.result
    assert [s["name"] for s in job.steps][:4] == ["URL check", "DNS and TCP", "TLS", WAITING]
    assert slots.conn.zcard(f"portal:inflight:{iid}") == 0  # the test gave its slot back


def test_no_slot_within_the_wait_is_said_in_plain_words_and_keeps_the_integration_on(
        app, factory, partner_admin, client, auth, crm):
    """A sync that keeps every slot: the test ends saying so, and the integration is not switched Off."""
    iid = partner_admin["integration_id"]
    factory.profile(iid)
    switched_on(app, iid)
    app.config["CONNECTION_TEST_SLOT_WAIT"] = 1
    with slots_held(app, iid, 2):
        before = crm_requests(crm)
        assert save_and_test(client, auth, iid, crm, crm.password).status_code == 200
        run_worker(app)
        assert crm_requests(crm) == before
    job = connection_tests(app, iid)[0]
    assert job.result["ok"] is False and job.result["error"]["code"] == "crm_in_use", job.result
    assert "sync" in job.message and "2 " in job.message
    row = integ(app, iid)
    assert row.enabled and row.error_code == "crm_in_use"


def test_server_busy_during_a_connection_test_halves_the_limit_of_the_integration(
        app, factory, partner_admin, client, auth, crm):
    """An on-premises Server Busy met by the test lowers the in-flight limit every run then uses."""
    from portal.sync import inflight

    iid = partner_admin["integration_id"]
    factory.profile(iid)
    switched_on(app, iid)
    crm.set_faults(busy_ratio=1.0)
    assert save_and_test(client, auth, iid, crm, crm.password).status_code == 200
    run_worker(app)
    assert crm.stats()["faults"].get("busy", 0) > 0
    job = connection_tests(app, iid)[0]
    assert job.result["error"]["code"] == "server_busy", job.result
    with app.app_context():
        assert inflight.current_limit(iid) == 1
    assert integ(app, iid).enabled  # a busy CRM says nothing about the settings: the integration stays On


def test_a_429_during_the_online_test_halves_the_limit_of_the_integration(app, client, auth, connected):
    """Service protection 429s met by the online test lower the integration's limit, kept in Redis."""
    from portal.sync import inflight

    iid, crm = connected["integration_id"], connected["crm"]
    use_sandbox_authority(app, crm)
    crm.reset(seed=True, platform_option=True)
    crm.set_faults(throttle_every_nth=3, throttle_retry_after=0)
    assert post_connection(client, auth, iid, online_fields(crm, secret=crm.client_secret),
                           action="test").status_code == 200
    run_worker(app)
    assert crm.stats()["faults"].get("throttle", 0) > 0
    job = connection_tests(app, iid)[0]
    assert job.result["ok"], job.result  # the 429s were waited out
    with app.app_context():
        assert inflight.current_limit(iid) == 1
        assert inflight.Slots(iid).conn.zcard(f"portal:inflight:{iid}") == 0


def test_a_waiting_connection_test_takes_the_next_free_slot_before_any_batch(app, partner_admin):
    """A slot that comes free while a test waits goes to the test: the sync's next batch waits behind it."""
    from portal.sync import inflight

    iid = partner_admin["integration_id"]
    with app.app_context():
        turn = inflight.Turn(iid, wait=30)
        batches = inflight.Slots(iid)
    first, second = HeldSlots(app, iid, 1), HeldSlots(app, iid, 1)
    got = threading.Event()

    def test_request() -> None:
        with turn.hold():
            got.set()

    thread = threading.Thread(target=test_request)
    thread.start()
    try:
        wait_for(lambda: batches.conn.zcard(f"portal:inflight-first:{iid}") == 1, 10, "the test to queue")
        first.release()  # one batch is answered: its slot is the test's, not the next batch's
        with pytest.raises(inflight.NoSlot), batches.slot(wait=0.5):
            pass
        assert got.wait(10)
        assert batches.held() == 2 and batches.conn.zcard(f"portal:inflight-first:{iid}") == 0
    finally:
        thread.join(10)
        turn.close()
        second.release()
    assert batches.held() == 0


def test_the_slot_of_a_killed_connection_test_comes_back_soon(app, partner_admin, monkeypatch):
    """A test whose worker dies holding its slot (never closed) frees it within minutes; a batch's slot lasts."""
    import time
    import types

    from portal.sync import inflight

    iid = partner_admin["integration_id"]
    app.config["SYNC_PARALLEL_BATCHES"] = 2
    with app.app_context():
        turn = inflight.Turn(iid, wait=5)
        batches = inflight.Slots(iid)
    with turn.hold():
        pass  # the test's first request: its slot is taken, and the worker is killed before ``close``
    batch = batches.acquire(wait=1)
    try:
        later = time.time() + inflight.TEST_SLOT_SECONDS + 1
        monkeypatch.setattr(inflight, "time", types.SimpleNamespace(
            time=lambda: later, monotonic=time.monotonic, sleep=time.sleep))
        with batches.slot(wait=1):  # the killed test's slot is free again
            assert batches.held() == 2  # this one and the older batch's, which lives on
    finally:
        monkeypatch.undo()
        batches.release(batch)
        batches.conn.delete(f"portal:inflight:{iid}")
