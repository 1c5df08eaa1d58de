"""Client-message jobs (docs/jobs.md): emails an admin sends from the client profile."""

from __future__ import annotations

from ..db import unit_of_work
from ..domain.client_email import send_client_email as queue_client_email
from ..runtime import runtime
from .arguments import parse_bool, parse_id
from .base import job, receipt_key, send_emails


@job()
def send_client_email(client_id, template=None, subject=None, body=None, save_message=False, save_as=None,
                      request_id=None):
    """One email to a client: a named template, or a subject and body an admin wrote (rendered in
    Jinja2's sandbox); once per message or ``request_id``. ``save_message`` keeps the written
    message in ``email_templates`` (as ``save_as``, default the subject)."""
    client_id = parse_id("client_id", client_id)
    save_message = parse_bool("save_message", save_message)
    key = receipt_key("send_client_email", request_id)
    rt = runtime()
    with unit_of_work(rt.engine) as session:
        done = queue_client_email(session, client_id, template=template, subject=subject, body=body,
                                  save_message=save_message, save_as=save_as, dedupe_key=key, now=rt.clock.now())
        session.commit()
    send_emails(list(done.email_ids))
    return {"outcome": done.outcome, "template": done.template, "email_ids": list(done.email_ids),
            "saved_template_id": done.saved_template_id}
