"""Client-message jobs (docs/jobs.md): emails an admin sends from the client profile."""

from __future__ import annotations

from ..domain.messaging.client_email import ClientEmail, check_client_email, prepare_client_email, record_client_email
from ..runtime import runtime
from .arguments import argument_rules, check_characters, parse_bool, parse_id
from .base import job, receipt_key
from .emails import delivery_messages, enqueue_delivery
from .unit_of_work import UnitOfWork


@job()
@argument_rules(client_id=parse_id, save_message=parse_bool)
def send_client_email(client_id, template=None, subject=None, body=None, save_message=False, save_as=None,
                      request_id=None):
    """One email to a client: a named template, or a subject and body an admin wrote (rendered in
    Jinja2's sandbox); once per message or ``request_id``. ``save_message`` keeps the written
    message in ``email_templates`` (as ``save_as``, default the subject)."""
    client_id = parse_id("client_id", client_id)
    save_message = parse_bool("save_message", save_message)
    # The domain checks their types and lengths; a control character (NUL...) stops here.
    for name, text in (("template", template), ("subject", subject), ("save_as", save_as)):
        check_characters(name, text)
    check_characters("body", body, multiline=True)
    key = receipt_key("send_client_email", request_id)
    rt = runtime()
    now = rt.clock.now()
    with UnitOfWork(rt.engine) as work:
        draft = prepare_client_email(work.session, client_id, template=template, subject=subject, body=body,
                                     save_message=save_message, save_as=save_as, dedupe_key=key, now=now)
    if isinstance(draft, ClientEmail):
        # Already queued (a redelivery): enqueue its delivery again, in case the first run died
        # before it could; a delivery sends an email once however often it is asked.
        done = draft
        enqueue_delivery(done.email_ids)
    else:
        # The admin's text renders (within its budget: up to 2 s) with no transaction open: on
        # SQLite a transaction holds the writer lock. A breach is a ValidationError: refused once.
        check_client_email(draft)
        with UnitOfWork(rt.engine) as work:
            done = record_client_email(work.session, draft, now=now)
            work.send_after_commit(*delivery_messages(done.email_ids))
            work.commit()
    return {"outcome": done.outcome, "template": done.template, "email_ids": list(done.email_ids),
            "saved_template_id": done.saved_template_id}
