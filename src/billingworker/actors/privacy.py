"""Privacy jobs (docs/jobs.md#anonymise_client, SPEC §12): anonymise a client.

Thin: validate, one unit of work around the domain function, commit; the client's export files
(full of the personal data just erased) are removed from disk only after that commit.
"""

from __future__ import annotations

from ..domain.accounts import anonymising
from ..runtime import runtime
from .arguments import argument_rules, parse_bool, parse_id
from .base import job, once_per_message
from .clients import remove_export_files
from .unit_of_work import UnitOfWork


@job(calls_outside=True)
@argument_rules(client_id=parse_id, allow_unpaid=parse_bool)
def anonymise_client(client_id, allow_unpaid=False):
    """Replace the client's personal data, keep its fiscal records, close it; idempotent."""
    client_id = parse_id("client_id", client_id)
    allow_unpaid = parse_bool("allow_unpaid", allow_unpaid)
    rt = runtime()
    ran_now: list[bool] = []

    def anonymise() -> dict:
        ran_now.append(True)
        return anonymising.anonymise_client(work.session, client_id, allow_unpaid=allow_unpaid,
                                            gateway_for=rt.gateway_for, as_of=rt.clock.today(),
                                            now=rt.clock.now()).as_dict()

    with UnitOfWork(rt.engine) as work:
        # The message's receipt, besides the domain's "already anonymised": on SQLite a deleted
        # client's id can be given to a new client, and a redelivery must never anonymise that one.
        result = once_per_message(work.session, "anonymise_client", anonymise)
        work.commit()
    # After the commit: a rollback must never have removed a file its row still names. The run
    # that anonymised removes every file of the client (also one an export left behind when it
    # rolled back); a redelivery (a crash before this line) removes only the files the record
    # names, not the exports made since, which hold no personal data.
    files_removed = remove_export_files(rt.exports_dir, client_id, result.get("export_files", []),
                                        every_file_of_the_client=bool(ran_now) and result["outcome"] == "anonymised")
    return {**result, "files_removed": files_removed}
