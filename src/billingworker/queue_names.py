"""The broker's queues, by what they carry. Billing work and email delivery are separate so that
a slow mail server never delays invoicing. Named here, apart from ``broker.py``, so that the
operator commands read them without importing the broker (which imports their middleware)."""

BILLING_QUEUE = "billing"
EMAIL_QUEUE = "emails"
QUEUES = (BILLING_QUEUE, EMAIL_QUEUE)
