"""The operator's web console (``billingworker console``): queues, retries, dead letters, daily
runs, parked clients, the outbox and a client's accounts, in a browser.

Server-rendered (Starlette + Jinja2, autoescaped), live parts polled with htmx (vendored in
``static/``), charts drawn on the server as inline SVG. Nothing is served before sign-in
except the sign-in page, the static files and ``/healthz``; every action is a POST with a CSRF
token, refused to the read-only role, and written to the audit log (``console_audit``).
"""

from .app import create_app

__all__ = ["create_app"]
