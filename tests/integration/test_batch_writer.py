"""The connector's batch writer used on its own, as another program would: lanes, batches, Server Busy."""

from __future__ import annotations

import threading

from portal.connectors.dynamics import CreateRequest, OrganizationService, Transport
from portal.connectors.dynamics.batch import BatchWriter
from portal.connectors.dynamics.transport import ConnectionConfig
from portal.connectors.dynamics.urlguard import parse_allowed_networks


def _writer(crm, parallel: int, **kw):
    """A writer over one Organization Service per lane thread, built from the connector alone."""
    config = ConnectionConfig(org_url=crm.org_url, username=crm.username, password=crm.password, domain=crm.domain,
                              allowed_networks=parse_allowed_networks("127.0.0.0/8"))
    local, transports = threading.local(), []

    def service():
        if not hasattr(local, "svc"):
            transport = Transport(config)
            transports.append(transport)
            local.svc = OrganizationService(transport)
        return local.svc

    return BatchWriter(service, parallel=parallel, **kw), transports


def test_batches_over_two_lanes_one_result_per_request_in_order(crm):
    crm.reset(seed=False, platform_option=True)
    writer, transports = _writer(crm, 2, batch_size=100)
    requests = [CreateRequest("lead", {"lastname": f"L{i}", "emailaddress1": f"bw{i}@example.net"})
                for i in range(250)]
    results = writer.write(requests)
    writer.close()
    assert [r.index for r in results] == list(range(250)) and all(r.ok and r.id for r in results)
    assert sum(t.requests_sent for t in transports) >= 3 and len(transports) == 2  # 3 batches, 2 lanes
    assert len(crm.records("lead", limit=1000)) == 250
    for t in transports:
        t.close()


def test_server_busy_halves_the_lanes_and_gets_through(crm):
    crm.reset(seed=False, platform_option=True)
    crm.set_faults(busy_every_nth=2)
    waits: list[float] = []
    writer, transports = _writer(crm, 2, batch_size=50, sleep=waits.append)
    results = writer.write([CreateRequest("lead", {"lastname": f"B{i}"}) for i in range(200)])
    writer.close()
    assert all(r.ok for r in results) and len(results) == 200
    assert writer.busy_events >= 1 and waits and waits == sorted(waits)  # backing off, longer each time
    assert len(crm.records("lead", limit=1000)) == 200
    for t in transports:
        t.close()
