"""The console's pages, one module per group; each exposes ``routes``."""

from . import audit_log, clients, letters, outbox, parked, queues, runs, session

ROUTES = [*session.routes, *queues.routes, *letters.routes, *runs.routes, *parked.routes, *outbox.routes,
          *clients.routes, *audit_log.routes]
