"""Client-account jobs (docs/jobs.md): see the module's actors."""

from __future__ import annotations
