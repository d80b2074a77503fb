"""The throttle benchmark: does the shared token bucket hold its rate, burst and cap?

Run it with ``python -m bench.throttle [--quick] [--seconds N]``. The parts:

``tasks``    the task the dispatchers run: one call to the protected backend, its
             resource declared from environment variables;
``worker``   one dispatcher process (``python -m bench.throttle.worker``), started
             and stopped by the harness, writing what it did to a JSON file;
``harness``  one scenario end to end: fresh queue and table, enqueue, start N
             workers, run the window, stop them, collect;
``metrics``  pure figures from timestamps: achieved rate, worst window, recovery;
``report``   the table, the JSON and the markdown;
``keyed``    the keyed section (``--section keyed``): per-key limits and fairness
             with one dispatcher (``keyed_tasks``, ``keyed_worker``), its tables
             and chart;
``chart``    the PNG (matplotlib, optional).
"""
