"""Sign-in attempts: counted atomically per email and client address, locked out for longer each time.

An email's failures from every address together are counted too (the row whose client is ``*``), with a
higher limit and locks capped at an hour: guessing from many addresses gets a few dozen tries an hour, and the
owner waits at most an hour, never a day, because of someone else's guesses.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import case, delete, func, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from werkzeug.security import check_password_hash

from .extensions import db
from .models import LoginThrottle, User, utcnow

# Checked against a real hash when the email is unknown, so both paths take the same time.
_DUMMY_HASH = "scrypt:32768:8:1$0000000000000000$" + "0" * 128
# However often a pair is locked again, it waits at most a day.
MAX_LOCK = timedelta(days=1)
# The row that counts an email's failures from every address together, its limit as a multiple of the
# per-address one, and its longest lock.
ANY_ADDRESS = "*"
ANY_ADDRESS_FACTOR = 4
ANY_ADDRESS_MAX_LOCK = timedelta(hours=1)


@dataclass(frozen=True)
class Outcome:
    """What a sign-in attempt came to: the user when it succeeded, the lock's end when refused unchecked."""

    user: User | None = None
    locked_until: datetime | None = None


def _reserve(email: str, client: str, now: datetime) -> tuple[int, datetime | None]:
    """Count this attempt in one atomic UPDATE … RETURNING and return (attempts so far, locked until).

    Counting before the password is checked is what makes parallel guesses fail: of any burst, only the
    first ``limit`` get a number that lets them be checked, whatever the interleaving.
    """
    table = LoginThrottle.__table__
    insert = pg_insert if db.session.get_bind().dialect.name == "postgresql" else sqlite_insert
    db.session.execute(insert(table).values(email=email, client=client, attempts=0, locks=0, updated_at=now)
                       .on_conflict_do_nothing(index_elements=["email", "client"]))
    locked = table.c.locked_until.is_not(None) & (table.c.locked_until > now)
    attempts, locked_until = db.session.execute(
        update(table).where(table.c.email == email, table.c.client == client)
        .values(attempts=case((locked, table.c.attempts), else_=table.c.attempts + 1), updated_at=now)
        .returning(table.c.attempts, table.c.locked_until)
    ).one()
    db.session.commit()
    return attempts, locked_until


def _lock(email: str, client: str, now: datetime, base_seconds: int, longest: timedelta = MAX_LOCK) -> None:
    """Lock the pair unless it already is; each lock lasts twice the one before, up to ``longest``."""
    table = LoginThrottle.__table__
    row = db.session.execute(select(table.c.locks).where(table.c.email == email, table.c.client == client)).one()
    seconds = min(base_seconds * 2 ** min(row.locks, 20), longest.total_seconds())
    db.session.execute(
        update(table).where(table.c.email == email, table.c.client == client,
                            table.c.locked_until.is_(None) | (table.c.locked_until <= now))
        .values(locked_until=now + timedelta(seconds=seconds), locks=table.c.locks + 1, attempts=0)
    )
    # Pairs quiet for a day and not locked are forgotten, so guessing at random emails cannot grow the table
    # without bound; locks are when guessing happens, so that is when to sweep.
    db.session.execute(delete(table).where(table.c.updated_at < now - MAX_LOCK,
                                           table.c.locked_until.is_(None) | (table.c.locked_until <= now)))
    db.session.commit()


def client_key(address: str | None) -> str:
    """The address an attempt is counted under: an IPv6 client by its /64 (one host holds the whole block)."""
    try:
        ip = ipaddress.ip_address((address or "").strip())
    except ValueError:
        return (address or "")[:64]
    if ip.version == 4:
        return str(ip)
    if ip.ipv4_mapped is not None:
        return str(ip.ipv4_mapped)
    return str(ipaddress.ip_network(f"{ip}/64", strict=False))


def _locked_until(email: str, client: str) -> datetime | None:
    return db.session.scalar(
        select(LoginThrottle.locked_until).where(LoginThrottle.email == email, LoginThrottle.client == client))


def attempt(email: str, password: str, client: str, *, limit: int, lockout_seconds: int) -> Outcome:
    """Check one sign-in; unknown emails, disabled users and wrong passwords are answered alike."""
    email = email.strip().lower()
    client = client_key(client)
    db.session.commit()  # the reservation starts a transaction of its own, which SQLite can serialize
    now = utcnow()
    # (client, limit, longest lock) for this address, then for every address together.
    counters = [(client, limit, MAX_LOCK), (ANY_ADDRESS, limit * ANY_ADDRESS_FACTOR, ANY_ADDRESS_MAX_LOCK)]
    counted = []
    for key, _, _ in counters:
        # An attempt refused by its address's lock is not counted for every address: one address's guessing
        # must not lock the owner out from elsewhere.
        attempts, until = _reserve(email, key, now)
        if until is not None and until > now:
            return Outcome(locked_until=until)
        counted.append((attempts, until))
    over = [(key, longest) for (key, most, longest), (attempts, _) in zip(counters, counted, strict=True)
            if attempts > most]
    if over:
        for key, longest in over:
            _lock(email, key, now, lockout_seconds, longest)
        return Outcome(locked_until=max(_locked_until(email, key) or now for key, _ in over))
    user = db.session.scalar(select(User).where(func.lower(User.email) == email))
    if user is not None and user.check_password(password) and user.is_active:
        # Forgive the attempts up to this one; those still in flight stay counted, so a burst around a
        # right password gets no more guesses than the limit.
        table = LoginThrottle.__table__
        for (key, _, _), (attempts, _) in zip(counters, counted, strict=True):
            db.session.execute(update(table).where(table.c.email == email, table.c.client == key).values(
                attempts=case((table.c.attempts > attempts, table.c.attempts - attempts), else_=0), locks=0))
        db.session.commit()
        return Outcome(user=user)
    if user is None:
        check_password_hash(_DUMMY_HASH, password)
    for (key, most, longest), (attempts, _) in zip(counters, counted, strict=True):
        if attempts >= most:
            _lock(email, key, now, lockout_seconds, longest)
    return Outcome()
