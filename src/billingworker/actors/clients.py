"""Client lifecycle jobs (docs/jobs.md, SPEC §12): close, delete, merge, export a client.

Thin: validate, one unit of work around one domain function, commit; files on disk are only
removed after the commit that deleted their rows.
"""

from __future__ import annotations

import logging
from pathlib import Path

from ..domain.accounts import closing, deletion, exporting, merging
from ..domain.models import Client
from ..runtime import runtime
from .arguments import argument_rules, parse_bool, parse_id
from .base import job, once_per_message, receipt_key
from .unit_of_work import UnitOfWork

log = logging.getLogger("billingworker.jobs")


@job()
@argument_rules(client_id=parse_id)
def close_client(client_id):
    """Close the client (status Closed, Unpaid invoices and live things Cancelled); idempotent."""
    client_id = parse_id("client_id", client_id)
    rt = runtime()
    with UnitOfWork(rt.engine) as work:
        result = closing.close_client(work.session, client_id, as_of=rt.clock.today())
        work.commit()
    return result.as_dict()


@job()
@argument_rules(client_id=parse_id, delete_users=parse_bool)
def delete_client(client_id, delete_users=False):
    """Delete the client and everything of theirs but transactions; idempotent ("already_deleted")."""
    client_id = parse_id("client_id", client_id)
    delete_users = parse_bool("delete_users", delete_users)
    rt = runtime()
    with UnitOfWork(rt.engine) as work:
        # The message's receipt, besides the domain's own "already deleted" answer: on SQLite a
        # new client can be given a deleted client's id, and a redelivered message must never
        # delete that one.
        result = once_per_message(work.session, "delete_client", lambda: deletion.delete_client(
            work.session, client_id, delete_users=delete_users, now=rt.clock.now()).as_dict())
        # A redelivery after SQLite gave the id to a new client: that client's files are not ours.
        reused = work.session.get(Client, client_id) is not None
        work.commit()
    if result["outcome"] != "not_found":
        # After the commit: a rollback must never have removed a file its row still names. A
        # redelivery after a crash here removes what is left (files are named after the client).
        # Not for "not_found": a client merged away left its files to the target client.
        removed = remove_export_files(rt.exports_dir, client_id, result.get("export_files", []),
                                      every_file_of_the_client=not reused)
        return {**result, "files_removed": removed}
    return result


@job()
@argument_rules(source_client_id=parse_id, target_client_id=parse_id)
def merge_clients(source_client_id, target_client_id):
    """Merge the source client into the target in one transaction; a second run is "already_merged"."""
    source_client_id = parse_id("source_client_id", source_client_id)
    target_client_id = parse_id("target_client_id", target_client_id)
    rt = runtime()
    with UnitOfWork(rt.engine) as work:
        result = once_per_message(work.session, "merge_clients", lambda: merging.merge_clients(
            work.session, source_client_id, target_client_id, as_of=rt.clock.today(), now=rt.clock.now()).as_dict())
        work.commit()
    return result


@job()
@argument_rules(client_id=parse_id)
def export_client_data(client_id, request_id=None):
    """Write the client's data as JSON into EXPORTS_DIR, once per message id or ``request_id``."""
    client_id = parse_id("client_id", client_id)
    key = receipt_key("export_client_data", request_id)
    rt = runtime()
    with UnitOfWork(rt.engine) as work:
        result = exporting.export_client_data(work.session, client_id, exports_dir=rt.exports_dir, request_key=key,
                                              now=rt.clock.now())
        work.commit()
    return result.as_dict()


def remove_export_files(exports_dir: Path, client_id: int, filenames: list[str], *,
                        every_file_of_the_client: bool = True) -> list[str]:
    """Remove a deleted client's export files: those its rows named, and (unless told not to:
    the id now belongs to a new client) any other file of the client's (``client-<id>-*.json``,
    e.g. left by an export whose transaction rolled back)."""
    directory = Path(exports_dir)
    paths = {directory / Path(name).name for name in filenames}
    if every_file_of_the_client and directory.is_dir():
        paths.update(directory.glob(f"client-{client_id}-*.json"))
    removed = []
    for path in sorted(paths):
        try:
            path.unlink()
            removed.append(path.name)
        except FileNotFoundError:
            continue
        except OSError as exc:  # the deletion stands; the operator removes the file by hand
            log.warning("could not remove export file %s of deleted client %s: %s", path, client_id, exc)
    return removed
