"""Email jobs: send a message kept in the outbox."""

from __future__ import annotations

from .context import with_app


@with_app
def send(mail_id: int) -> bool:
    """Send one outbox message over SMTP (RQ retries it when the mail server does not answer)."""
    from portal import notify

    return notify.send(mail_id)
