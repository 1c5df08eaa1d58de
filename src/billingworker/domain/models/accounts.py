"""Client-account records (SPEC §9–§14): password-reset tokens, server-module commands,
client exports, saved email templates and merges."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import BigInteger, Boolean, ForeignKey, Index, Integer, String, text
from sqlalchemy.orm import Mapped, mapped_column

from .base import LONG_TEXT, Base


class PasswordResetToken(Base):
    """A single-use password-reset link (SPEC §10). Only the token's SHA-256 is stored.

    ``used_at`` and ``invalidated_at`` end a token; a token is valid only while both are null
    and ``expires_at`` is in the future. ``request_key`` makes a redelivered job a no-op.
    """

    __tablename__ = "password_reset_tokens"
    __table_args__ = (Index("ix_password_reset_tokens_user", "user_id", "created_at"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    #: Hex SHA-256 of the token sent in the link; the token itself is never stored.
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    #: "client" (asked by the person) or "admin" (Reset & Send Password).
    requested_by: Mapped[str] = mapped_column(String(10))
    #: The calling app confirmed the security question was answered (SPEC §10).
    security_checked: Mapped[bool] = mapped_column(Boolean, default=False, server_default=text("false"))
    request_key: Mapped[str | None] = mapped_column(String(200), unique=True)
    created_at: Mapped[datetime]
    expires_at: Mapped[datetime]
    used_at: Mapped[datetime | None]
    invalidated_at: Mapped[datetime | None]


class ModuleCommandStatus:
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"


class ModuleCommand(Base):
    """A server-module command (create, suspend, …) decided by a job, run after it commits.

    The row is the outbox of ``run_module_command``: written in the deciding transaction,
    run once under a row lock, re-enqueued by ``relay_module_commands`` (sent by the scheduler
    with ``relay_outbox``) if a crash left it queued.
    """

    __tablename__ = "module_commands"
    __table_args__ = (Index("ix_module_commands_status", "status", "created_at"),
                      Index("ix_module_commands_item", "item_type", "item_id"))

    id: Mapped[int] = mapped_column(primary_key=True)
    #: No foreign key: the history of what ran on a server outlives the client.
    client_id: Mapped[int | None] = mapped_column(Integer, index=True)
    #: service, addon or domain.
    item_type: Mapped[str] = mapped_column(String(20))
    item_id: Mapped[int] = mapped_column(Integer)
    #: create, suspend, unsuspend, terminate, change_package, change_password.
    command: Mapped[str] = mapped_column(String(30))
    #: JSON object of the command's parameters, each secret value (a key naming a password,
    #: secret, token, API key...) replaced by "[sealed]" (domain/accounts/sealing.py).
    params: Mapped[str] = mapped_column(LONG_TEXT, default="{}", server_default="{}")
    #: The whole parameters, sealed under a key derived from SECRET_KEY, while the command has a
    #: secret and has not run yet; erased (NULL) once it succeeded or failed for good.
    sealed_params: Mapped[str | None] = mapped_column(LONG_TEXT)
    #: One command per request: e.g. "mass_update:message:<id>:service:12".
    request_key: Mapped[str | None] = mapped_column(String(200), unique=True)
    status: Mapped[str] = mapped_column(String(10), default=ModuleCommandStatus.QUEUED, server_default="queued")
    attempts: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    result: Mapped[str] = mapped_column(LONG_TEXT, default="", server_default="")
    created_at: Mapped[datetime]
    finished_at: Mapped[datetime | None]


class ClientExport(Base):
    """A JSON export of one client's data written to EXPORTS_DIR, for an app to offer as a download."""

    __tablename__ = "client_exports"

    id: Mapped[int] = mapped_column(primary_key=True)
    client_id: Mapped[int] = mapped_column(ForeignKey("clients.id", ondelete="CASCADE"), index=True)
    #: File name inside EXPORTS_DIR.
    filename: Mapped[str] = mapped_column(String(255))
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    sha256: Mapped[str] = mapped_column(String(64))
    request_key: Mapped[str | None] = mapped_column(String(200), unique=True)
    created_at: Mapped[datetime]


class EmailTemplate(Base):
    """A message an admin wrote and saved for reuse (``send_client_email(save_message=True)``).

    Rendered in Jinja2's sandbox, never with the file templates' full environment.
    """

    __tablename__ = "email_templates"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(100), unique=True)
    subject: Mapped[str] = mapped_column(String(500))
    body: Mapped[str] = mapped_column(LONG_TEXT)
    created_at: Mapped[datetime]


class ClientMerge(Base):
    """A client merged into another (SPEC §12): the audit record, and the answer a second run gets."""

    __tablename__ = "client_merges"

    #: No foreign keys: the source is gone after the merge, the record stays.
    source_client_id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    target_client_id: Mapped[int] = mapped_column(Integer, index=True)
    #: JSON object: how many rows of each kind moved, and the credit added.
    moved: Mapped[str] = mapped_column(LONG_TEXT, default="{}", server_default="{}")
    merged_at: Mapped[datetime]
