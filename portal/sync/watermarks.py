"""How far each pull step has read an integration's CRM: the ``modifiedon`` of the newest record it read.

A nightly pull asks only for records modified since its watermark, less an overlap so that clock skew between the
CRM's servers and records saved while the last read was going on are not missed. A full read (on demand, or by
itself once a week) reads everything again; it is also when records deleted in the CRM are noticed.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from datetime import datetime, timedelta

from sqlalchemy import func, select

from ..connectors.dynamics.soap import fetch_xml
from ..extensions import db
from ..models import utcnow
from ..platform_models import CrmLink, SyncWatermark

OVERLAP = timedelta(minutes=5)  # records modified this long before the watermark are read again
# Links are numbered as they are made; a link made by a transaction still open when the last read began may
# carry a lower number than the newest seen then. The links of this window are counted at each read: when more
# are there at the next read, they count as new again (a push writes at most a batch of 1,000 at once).
LINK_OVERLAP = 1000
FULL_EVERY = timedelta(days=7)  # a pull reads everything when its last full read is older than this


class Watermarks:
    """One run's view of its integration's watermarks; saved with the run's data (never by a Preview)."""

    def __init__(self, integration_id: int, *, full: bool, writes: bool, now: datetime | None = None):
        self.integration_id = integration_id
        self.full = full
        self.writes = writes
        self.now = now or utcnow()
        self._rows = {row.name: row for row in db.session.scalars(
            select(SyncWatermark).where(SyncWatermark.integration_id == integration_id))}

    def since(self, name: str) -> datetime | None:
        """Read records modified at or after this time; None: read everything (a full read)."""
        row = self._rows.get(name)
        if self.full or row is None or row.modified_on is None or row.full_at is None:
            return None
        if self.now - row.full_at >= FULL_EVERY:
            return None
        return row.modified_on - OVERLAP

    def links_seen(self, name: str) -> tuple[int | None, int]:
        """The newest link when the last read of this name began, and how many links its window held then."""
        row = self._rows.get(name)
        return (row.link_id, row.link_window or 0) if row is not None else (None, 0)

    def advance(self, name: str, newest: datetime | None, *, full: bool,
                links: tuple[int | None, int] = (None, 0)) -> None:
        """A read finished: keep the newest ``modifiedon`` read (never going back) and, after a full read, its time."""
        if not self.writes:
            return
        row = self._rows.get(name)
        if row is None:
            row = self._rows[name] = SyncWatermark(integration_id=self.integration_id, name=name)
            db.session.add(row)
        if newest is not None and (row.modified_on is None or newest > row.modified_on):
            row.modified_on = newest
        elif row.modified_on is None:
            # Nothing to read yet: whatever the CRM saves from now on is newer than when this read began.
            row.modified_on = self.now
        row.read_at = self.now
        if links[0] is not None:
            row.link_id, row.link_window = links
        if full:
            row.full_at = self.now


class Tracker:
    """Watches records go by: the newest ``modifiedon``, and (for a full read) every id seen."""

    def __init__(self, keep_ids: bool):
        self.newest: datetime | None = None
        self.ids: set[str] | None = set() if keep_ids else None

    def watch(self, records: Iterable) -> Iterator:
        """The records, unchanged, noting each one."""
        for rec in records:
            stamp = rec.attributes.get("modifiedon")
            if isinstance(stamp, datetime) and (self.newest is None or stamp > self.newest):
                self.newest = stamp
            if self.ids is not None:
                self.ids.add(rec.id.lower())
            yield rec


def follow(ctx, mark: str, entity: str, columns: list[str], field: str, guids: dict[str, int], *,
           order: str | None = None) -> Iterator:
    """The CRM records of ``entity`` about our leads (``field`` names one of ``guids``), as a pull step reads them.

    On a full read, every such record, asked for by lead in chunks. Nightly, the records modified since the
    watermark (kept when about one of our leads), and every record about a lead linked since the last read (it
    may carry records older than the watermark). The watermark moves once every record has been given.
    """
    since = ctx.watermarks.since(mark)
    tracker = Tracker(keep_ids=False)
    columns = [*columns, "modifiedon"]
    newest_link = db.session.scalar(select(func.max(CrmLink.id)).where(
        CrmLink.integration_id == ctx.integration.id, CrmLink.local_type == "lead"))
    links = (newest_link, _window(ctx, newest_link)) if newest_link is not None else (None, 0)
    if since is None:
        records = ctx.gateway.fetch_in(entity, columns, field, sorted(guids), order=order)
    else:
        records = _changed_or_new(ctx, mark, entity, columns, field, guids, since, order)
    yield from tracker.watch(records)
    ctx.watermarks.advance(mark, tracker.newest, full=since is None, links=links)


def _changed_or_new(ctx, mark, entity, columns, field, guids, since, order) -> Iterator:
    """Records modified since the watermark about our leads, then those about leads linked since the last read."""
    last_link, window = ctx.watermarks.links_seen(mark)
    fresh_query = select(CrmLink.crm_id).where(CrmLink.integration_id == ctx.integration.id,
                                               CrmLink.local_type == "lead", CrmLink.crm_id != "")
    if last_link is not None:
        late = _window(ctx, last_link) != window  # links committed after the last read began, numbered before
        fresh_query = fresh_query.where(CrmLink.id > (last_link - LINK_OVERLAP if late else last_link))
    fresh = sorted({crm_id.lower() for crm_id in db.session.scalars(fresh_query)} & set(guids))
    given: set[str] = set()
    changed = ctx.gateway.fetch(fetch_xml(entity, columns, [("modifiedon", "ge", since)],
                                          order=[order or f"{entity}id"]))
    for rec in changed:
        if about(rec, field) in guids:
            given.add(rec.id)
            yield rec
    for rec in ctx.gateway.fetch_in(entity, columns, field, fresh, order=order):
        if rec.id not in given:
            yield rec


def _window(ctx, newest: int) -> int:
    """How many lead links are numbered within ``LINK_OVERLAP`` before ``newest`` (``newest`` included)."""
    return db.session.scalar(select(func.count()).select_from(CrmLink).where(
        CrmLink.integration_id == ctx.integration.id, CrmLink.local_type == "lead",
        CrmLink.id > newest - LINK_OVERLAP, CrmLink.id <= newest)) or 0


def about(rec, field: str) -> str | None:
    """The lowercased CRM id that ``field`` of a record names (a lookup, or the record's own id)."""
    value = rec.id if field == f"{rec.logical_name}id" else rec.attributes.get(field)
    value = getattr(value, "id", value)
    return value.lower() if isinstance(value, str) else None
