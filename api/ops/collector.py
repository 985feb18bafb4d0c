"""The garbage collector of a process that serves for long.

CPython's garbage-collector defaults cost a serving worker a share of its CPU worth taking back
(bench/RESULTS.md, "Collector"; measured with `python -m bench.gc_cost`):

- A young-generation collection runs whenever 700 more container objects exist than before. With
  32 requests in flight, each holding a few dozen, the count crosses 700 on every wave of requests,
  though reference counting frees nearly all of it once they answer.
- A full collection walks every object the imports created, though nearly all of them live as long
  as the process.

So, once the app is built, `gc.freeze()` moves everything that exists out of the collector's sight
(it lives as long as the process anyway), and the young threshold rises to 7,000, which leaves
almost no collections in the same measurement. Cycles still get collected, a little later. Tests
build apps with `create_app` and keep CPython's defaults.
"""

import gc

_YOUNG_GENERATION_THRESHOLD = 7_000


def tune_collector_for_serving() -> None:
    """Freeze what exists and raise the young threshold: call once the long-lived objects are built."""
    gc.freeze()
    _, middle, old = gc.get_threshold()
    gc.set_threshold(_YOUNG_GENERATION_THRESHOLD, middle, old)
