"""Email from the portal: every message is kept in the outbox, and a job sends it when SMTP is configured.

A web request or a job only records the message; the sending (a slow, failing mail server included) happens in
the ``jobs.notify.send`` job, queued once the message is committed.
"""

from __future__ import annotations

import logging
import smtplib
from email.message import EmailMessage

from flask import current_app
from sqlalchemy import event
from sqlalchemy.orm import Session

from .extensions import db
from .platform_models import OutboxEmail

log = logging.getLogger(__name__)

_QUEUED = "notify_mail_ids"  # session.info key: mails to queue once their row is committed


def email(organization_id: int | None, to: list[str], subject: str, body: str) -> OutboxEmail:
    """Keep a message in the outbox; it is queued for sending when the session commits (if SMTP is set)."""
    mail = OutboxEmail(organization_id=organization_id, to=", ".join(to), subject=subject, body=body)
    db.session.add(mail)
    if current_app.config.get("SMTP_HOST"):
        db.session.flush()
        db.session.info.setdefault(_QUEUED, []).append(mail.id)
    return mail


@event.listens_for(Session, "after_commit")
def _queue_committed(session: Session) -> None:
    """Queue the sending of the messages just committed."""
    ids = session.info.pop(_QUEUED, None)
    if not ids:
        return
    from . import queues

    for mail_id in ids:
        try:
            queues.queue(queues.QUEUE_DEFAULT).enqueue("jobs.notify.send", mail_id, job_timeout=60,
                                                       retry=_retry())
        except Exception:  # noqa: BLE001 - the message stays in the outbox, unsent, for a person to see
            log.exception("could not queue email %s", mail_id)


@event.listens_for(Session, "after_rollback")
def _forget_rolled_back(session: Session) -> None:
    """Messages rolled back are not queued."""
    session.info.pop(_QUEUED, None)


def _retry():
    from rq import Retry

    return Retry(max=3, interval=[60, 300, 1800])


def send(mail_id: int) -> bool:
    """Send one message from the outbox over SMTP; True when sent (or sent before)."""
    mail = db.session.get(OutboxEmail, mail_id)
    host = current_app.config.get("SMTP_HOST")
    if mail is None or mail.sent or not host:
        return bool(mail and mail.sent)
    msg = EmailMessage()
    msg["Subject"], msg["From"], msg["To"] = mail.subject, current_app.config["SMTP_FROM"], mail.to
    msg.set_content(mail.body)
    with smtplib.SMTP(host, current_app.config["SMTP_PORT"], timeout=10) as smtp:
        smtp.send_message(msg)
    mail.sent = True
    db.session.commit()
    return True
