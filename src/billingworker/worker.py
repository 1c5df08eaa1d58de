"""The worker processes' entry point: ``dramatiq billingworker.worker --queues billing emails``.

Importing it bootstraps the process from the environment (``bootstrap.bootstrap``): the broker
of BROKER_URL with our middleware, every job bound to it, the runtime installed.
"""

from .bootstrap import bootstrap

broker = bootstrap().broker
