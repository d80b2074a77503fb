"""``dispatch ui``: a local web console over the queue, its dispatchers, tasks and dead letters.

Served by aiohttp on 127.0.0.1 with the caller's AWS credentials and ``DISPATCH_*``
settings; read-only unless started with ``--allow-actions``. The pages reuse what the
CLI reads (:mod:`dispatch.ops.top`, :mod:`dispatch.ops.listing`, :mod:`dispatch.ops.dlq`,
:mod:`dispatch.ops.pausing`); templates and static files ship in this package, so it
works offline. docs/operations.md ("The console") describes the pages and the security
model.
"""
