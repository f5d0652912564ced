"""Sign-in attempts: counted atomically per email and client address, locked out for longer each time."""

from __future__ import annotations

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


def _lock(email: str, client: str, now: datetime, base_seconds: int) -> None:
    """Lock the pair unless it already is; each lock lasts twice the one before, up to a day."""
    table = LoginThrottle.__table__
    row = db.session.execute(select(table.c.locks).where(table.c.email == email, table.c.client == client)).one()
    seconds = min(base_seconds * 2 ** min(row.locks, 20), MAX_LOCK.total_seconds())
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


def attempt(email: str, password: str, client: str, *, limit: int, lockout_seconds: int) -> Outcome:
    """Check one sign-in; unknown emails, disabled users and wrong passwords are answered alike."""
    email = email.strip().lower()
    client = (client or "")[:64]
    db.session.commit()  # the reservation starts a transaction of its own, which SQLite can serialize
    now = utcnow()
    attempts, locked_until = _reserve(email, client, now)
    if locked_until is not None and locked_until > now:
        return Outcome(locked_until=locked_until)
    if attempts > limit:
        _lock(email, client, now, lockout_seconds)
        return Outcome(locked_until=db.session.scalar(
            select(LoginThrottle.locked_until).where(LoginThrottle.email == email, LoginThrottle.client == client)))
    user = db.session.scalar(select(User).where(func.lower(User.email) == email))
    if user is not None and user.check_password(password) and user.is_active:
        # Forgive the attempts up to this one; those still in flight stay counted, so a burst around a
        # right password gets no more guesses than the limit.
        table = LoginThrottle.__table__
        db.session.execute(update(table).where(table.c.email == email, table.c.client == client).values(
            attempts=case((table.c.attempts > attempts, table.c.attempts - attempts), else_=0), locks=0))
        db.session.commit()
        return Outcome(user=user)
    if user is None:
        check_password_hash(_DUMMY_HASH, password)
    if attempts >= limit:
        _lock(email, client, now, lockout_seconds)
    return Outcome()
