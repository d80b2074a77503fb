"""The chaos run: many tasks through several dispatcher processes while AWS calls fail
and dispatchers are SIGKILLed, checked against a ledger kept outside the framework.

``python -m bench.chaos [--quick]`` (``make chaos``); docs/reliability.md explains
the figures. :mod:`bench.chaos.run` is the harness, :mod:`bench.chaos.dispatcher`
one dispatcher process, :mod:`bench.chaos.tasks` the handlers and their ledger.
"""
