"""The fields of a Dramatiq message as Redis keeps it (a dead letter, a message waiting for its
retry), read without trusting them: a payload from outside may carry any JSON at all, so every
field falls back to an empty value of its type rather than raising."""

from __future__ import annotations

from typing import Any


class StoredMessage:
    """Read-only views over ``self.message``, the decoded JSON object the subclass provides."""

    message: dict[str, Any]

    @property
    def message_id(self) -> str:
        return str(self.message.get("message_id", ""))

    @property
    def actor(self) -> str:
        return str(self.message.get("actor_name", ""))

    @property
    def options(self) -> dict[str, Any]:
        options = self.message.get("options")
        return options if isinstance(options, dict) else {}

    @property
    def retries(self) -> int:
        """Attempts that failed so far (``options.retries``; 0 when it is not a count)."""
        retries = self.options.get("retries", 0)
        return retries if isinstance(retries, int) and not isinstance(retries, bool) and retries >= 0 else 0

    @property
    def args(self) -> list[Any]:
        """The positional arguments as stored ([] if none or not a list)."""
        args = self.message.get("args")
        return list(args) if isinstance(args, list | tuple) else []

    @property
    def kwargs(self) -> dict[str, Any]:
        """The keyword arguments as stored ({} if none or not an object)."""
        kwargs = self.message.get("kwargs")
        return kwargs if isinstance(kwargs, dict) else {}

    @property
    def traceback_error(self) -> str:
        """The exception line of the traceback the last failed attempt left ("" if none)."""
        lines = [line for line in str(self.options.get("traceback", "")).splitlines() if line.strip()]
        return lines[-1].strip() if lines else ""
