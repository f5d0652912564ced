"""The worker process: each job on a clean database session, whatever the job before it left behind."""

from __future__ import annotations

from portal import queues
from portal.extensions import db
from portal.models import BackgroundJob, JobStatus

from .sync_helpers import start_worker, stop_worker


def test_a_failed_job_does_not_poison_the_next_one(app, tmp_path):
    """A job that dies mid-flush is followed by one that works: the worker rolled back and removed its session."""
    with app.app_context():
        first, second = "a" * 32, "b" * 32
        db.session.add_all([BackgroundJob(id=first, kind="health"), BackgroundJob(id=second, kind="health")])
        db.session.commit()
        q = queues.queue(queues.QUEUE_DEFAULT)
        q.enqueue("tests.integration.worker_jobs.poison", first, job_id=f"poison-{first}")
        q.enqueue("jobs.health.ping", second, job_id=second)
    worker = start_worker(app, tmp_path / "worker.log", "--burst", "--queues", queues.QUEUE_DEFAULT)
    try:
        worker.wait(timeout=60)
    finally:
        stop_worker(worker)
    log = (tmp_path / "worker.log").read_text()
    with app.app_context():
        assert db.session.get(BackgroundJob, second).status == JobStatus.finished, log
    assert "PendingRollbackError" not in log, log


def test_a_pool_of_workers_shares_the_queues_and_one_scheduler(app, tmp_path):
    """``--processes 2``: jobs run in two worker processes; a scheduled job is moved onto its queue once."""
    import json
    from datetime import timedelta

    import psutil

    from .sync_helpers import wait_for

    ids = [f"{i:032x}" for i in range(1, 7)]
    with app.app_context():
        db.session.add_all([BackgroundJob(id=i, kind="health") for i in ids])
        db.session.commit()
    pool = start_worker(app, tmp_path / "pool.log", "--processes", "2", "--queues", queues.QUEUE_DEFAULT)
    try:
        children = wait_for(lambda: len(psutil.Process(pool.pid).children()) == 2 and psutil.Process(pool.pid)
                            .children(), 30, "two worker processes")
        with app.app_context():
            q = queues.queue(queues.QUEUE_DEFAULT)
            q.enqueue_in(timedelta(seconds=1), "jobs.health.ping", ids[0], job_id=ids[0])
            for job_id in ids[1:]:
                q.enqueue("jobs.health.ping", job_id, job_id=job_id)

        def finished() -> list:
            with app.app_context():
                rows = [db.session.get(BackgroundJob, i) for i in ids]
                db.session.rollback()
                return rows if all(r.status == JobStatus.finished for r in rows) else []

        try:
            rows = wait_for(finished, 60, "every job to finish")
        except AssertionError as exc:
            with app.app_context():
                states = {i[-1]: (str(db.session.get(BackgroundJob, i).status), q.fetch_job(i) and
                                  q.fetch_job(i).get_status()) for i in ids}
            raise AssertionError(f"{exc}: {states}\n{(tmp_path / 'pool.log').read_text()}") from None
    finally:
        stop_worker(pool)
    pids = {json.loads(r.result_json)["pid"] for r in rows}
    assert pids <= {c.pid for c in children} and pool.pid not in pids
    log = (tmp_path / "pool.log").read_text()
    # The parent schedules every queue, once; the workers do not schedule at all.
    assert log.count("Acquired scheduler lock") == len(queues.ALL_QUEUES), log


def test_a_pool_forks_a_worker_only_between_the_scheduler_s_looks(redis_url, monkeypatch):
    """A forked worker has only the thread that forked it: a lock the scheduler thread held at that moment (an
    import's, mid-look) stays held in the worker for ever, and it hangs before its first job (seen: both workers of
    a pool stuck in the import lock). So the pool forks only while no look is under way: during a long look it
    leaves the worker to its next check, and a pool told to stop forks nothing."""
    import threading

    from redis import Redis
    from rq.scheduler import RQScheduler
    from rq.worker_pool import WorkerPool

    from jobs import worker

    looking, look_may_end = threading.Event(), threading.Event()
    forked_mid_look: list[bool] = []

    def slow_look(self):
        """A look at the scheduled jobs that takes until the test lets it end."""
        looking.set()
        look_may_end.wait(30)

    def fork_recorded(self, *args, **kwargs):
        """Instead of forking: whether a look was under way when the pool forked."""
        forked_mid_look.append(looking.is_set() and not look_may_end.is_set())

    monkeypatch.setattr(RQScheduler, "enqueue_scheduled_jobs", slow_look)
    monkeypatch.setattr(WorkerPool, "start_worker", fork_recorded)
    conn = Redis.from_url(redis_url)
    stop = threading.Event()
    scheduler = worker.run_scheduler(conn, [queues.QUEUE_DEFAULT], stop)
    try:
        assert looking.wait(30), "the scheduler never looked"
        pool = worker.PortalWorkerPool([queues.QUEUE_DEFAULT], connection=conn, num_workers=1,
                                       worker_class=worker.PoolWorker)
        forking = threading.Thread(target=pool.start_worker)
        forking.start()
        forking.join(worker.FORK_WAIT + 30)
        assert not forking.is_alive() and forked_mid_look == []  # waited for the look, then left it to the next
        look_may_end.set()
        pool.start_worker()
        assert forked_mid_look == [False]
        pool.status = pool.Status.STOPPED
        pool.start_worker()
        assert forked_mid_look == [False]
    finally:
        look_may_end.set()
        stop.set()
        scheduler.join(30)
        conn.flushdb()
        conn.close()


def test_a_stopped_worker_gives_up_its_scheduler_locks_at_once(app, tmp_path):
    """Another machine's scheduler takes over as soon as a worker stops, not once the locks expire a minute later."""
    from .sync_helpers import wait_for

    with app.app_context():
        conn = queues.redis()
    lock = f"rq:scheduler-lock:{queues.QUEUE_DEFAULT}"
    proc = start_worker(app, tmp_path / "worker.log", "--queues", queues.QUEUE_DEFAULT)
    try:
        wait_for(lambda: conn.exists(lock), 30, "the scheduler to take its lock")
        proc.terminate()
        proc.wait(30)
        log = (tmp_path / "worker.log").read_text()
        assert not conn.exists(lock), log
    finally:
        stop_worker(proc)


def test_a_run_past_its_time_limit_frees_the_worker_and_the_integration(app, connected, tmp_path):
    """A CRM that holds every write: the job's timeout ends the run in plain words, frees its lock and the worker."""
    from portal import sync
    from portal.models import CrmIntegration
    from portal.platform_models import RunStatus, SyncRun
    from portal.schedule import start_run

    from .holding_proxy import HoldingProxy
    from .sync_helpers import configure, make_leads, wait_for

    crm, iid, org = connected["crm"], connected["integration_id"], connected["org_id"]
    crm.reset(seed=False, platform_option=True)
    proxy = HoldingProxy(crm.org_url)
    configure(app, iid, marketing_automation=True, enabled=True, org_url=proxy.url(crm.org_url),
              odata_url=proxy.url(crm.webapi_url))
    make_leads(app, org, 1500, prefix="held")  # two batches: both lanes stuck in a request
    app.config.update(SYNC_RUN_TIMEOUT_BASE=4, SYNC_SECONDS_PER_RECORD=0)
    with app.app_context():
        run_id = start_run(db.session.get(CrmIntegration, iid), "manual", steps=["push_marketing_leads"],
                           trigger="test").id
    worker = start_worker(app, tmp_path / "worker.log", "--queues", f"{queues.QUEUE_NIGHTLY},{queues.QUEUE_DEFAULT}")
    try:
        def ended():
            with app.app_context():
                run = db.session.get(SyncRun, run_id)
                return run if run.status not in (RunStatus.queued, RunStatus.running) else None

        run = wait_for(ended, 40, "the run to end at its time limit")
        assert proxy.held >= 1, run.message  # a lane was in a request the CRM never answered
        assert run.status == RunStatus.failed and "time limit" in run.message, run.message
        with app.app_context():
            # The integration is free as the run's job ends (not when the stuck request would have).
            wait_for(lambda: queues.redis().get(sync.lock_name(iid, "manual")) is None, 5, "the lock to go")
            db.session.add(BackgroundJob(id="c" * 32, kind="health"))
            db.session.commit()
            queues.queue(queues.QUEUE_DEFAULT).enqueue("jobs.health.ping", "c" * 32, job_id="c" * 32)

        def pinged() -> bool:
            with app.app_context():
                return db.session.get(BackgroundJob, "c" * 32).status == JobStatus.finished

        wait_for(pinged, 10, "the same worker to run the next job")
    finally:
        stop_worker(worker, kill=True)
        proxy.close()


def test_a_connection_test_of_a_hung_crm_ends_at_its_deadline(app, connected):
    """A CRM that never answers: the test says so within its deadline and the worker goes on (not 5 minutes)."""
    import time

    from jobs.worker import PortalWorker
    from portal import jobs_state
    from portal.models import CrmIntegration

    from .holding_proxy import HoldingProxy

    crm, iid = connected["crm"], connected["integration_id"]
    proxy = HoldingProxy(crm.org_url, marker=b"POST ")  # every request held, the NTLM handshake's first
    app.config["CONNECTION_TEST_DEADLINE"] = 2
    try:
        with app.app_context():
            row = db.session.get(CrmIntegration, iid)
            row.org_url, row.odata_url = proxy.url(crm.org_url), proxy.url(crm.webapi_url)
            db.session.commit()
            job = jobs_state.enqueue("connection-test", "jobs.connection.run_test", queue_name=queues.QUEUE_TESTS,
                                     integration_id=iid, args=(iid, False), timeout=60).id
            started = time.monotonic()
            PortalWorker([queues.queue(queues.QUEUE_TESTS)], connection=queues.redis()).work(burst=True)
            took = time.monotonic() - started
            done = db.session.get(BackgroundJob, job)
            assert done.status == JobStatus.failed and "did not finish answering within 2 s" in done.message
        assert proxy.held >= 1 and took < 10, took
    finally:
        proxy.close()
