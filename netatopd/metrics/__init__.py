"""The fleet view: per-group counters and the daemon's health for Prometheus.

Off unless ``netatopd --metrics-listen ADDR:PORT`` is given.  Three parts,
split by thread:

* ``book.MetricsBook`` (the counting loop's thread): folds the task table and
  the finished processes into per-group totals (``--metrics-group-by``),
  applies the series cap and the idle drop, and publishes an immutable
  ``MetricsSnapshot`` (engine.Engine.publish calls it, at most once a
  second);
* ``families.SnapshotCollector`` (the HTTP server's threads): turns the latest
  snapshot into ``prometheus_client`` metric families on each scrape;
* ``http.MetricsServer``: the HTTP server (``prometheus_client.make_wsgi_app``)
  in its own thread, with a cap on connections and a deadline per connection.

The loop never waits for a scraper: it only swaps the snapshot reference.
``catalogue`` names every metric the daemon's health is exported as, from the
STATUS registry (netatopd.status).  Wired by daemon.main and daemon.engine.
"""

from .book import MetricsBook, MetricsSnapshot
from .options import (
    GROUP_LABELS,
    MetricsListenError,
    parse_group_by,
    parse_listen,
)

__all__ = [
    "GROUP_LABELS",
    "MetricsBook",
    "MetricsListenError",
    "MetricsSnapshot",
    "parse_group_by",
    "parse_listen",
]
