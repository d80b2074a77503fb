"""The keyed section's dispatcher process: :mod:`bench.throttle.worker` with the keyed task.

::

    python -m bench.throttle.keyed_worker --ready PATH --result PATH --max-run-s SECONDS

The same contract with the harness as :mod:`bench.throttle.worker` (it runs that
worker's ``main``); importing :mod:`bench.throttle.keyed_tasks` first registers the
keyed task, and once the worker has written its result file this adds
``key_starts``: ``[tenant, started_at, ended_at]`` for every call it ran.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from pathlib import Path

from bench.throttle import keyed_tasks, worker


def main(argv: Sequence[str] | None = None) -> int:
    """Run the worker, then add the per-tenant starts to its result file."""
    arguments = list(sys.argv[1:] if argv is None else argv)
    code = worker.main(arguments)
    result = Path(arguments[arguments.index("--result") + 1])
    try:
        payload = json.loads(result.read_text())
    except (OSError, ValueError):
        return code or 1  # the harness reports the missing result
    payload["key_starts"] = [list(row) for row in keyed_tasks.STARTS]
    partial = result.with_name(f".{result.name}.keyed")
    partial.write_text(json.dumps(payload))
    partial.replace(result)
    return code


if __name__ == "__main__":
    sys.exit(main())
