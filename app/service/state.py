"""What one service process holds: the open index (re-opened after a writer commits), loaded metrics, dedup reports.

Routes reach it through the ``get_service`` dependency (``app.state.service``), so a route module needs nothing but
its ``APIRouter`` and this.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field

from fastapi import Request

from lookalike.app.loaders import MetricCache
from lookalike.app.service.config import ServeConfig
from lookalike.app.service.errors import ApiError
from lookalike.app.views import index_stamp
from lookalike.indexer import DedupReport, ImageIndex, open_index
from lookalike.metric import Metric

_logger = logging.getLogger(__name__)

#: Seconds a duplicates request waits for a report of the same settings that another request is computing.
REPORT_WAIT_S = 120.0


class IndexHolder:
    """The open index of the service: the metric is loaded once; the index is re-opened after a writer commits.

    A request calls ``get()``; at most every ``refresh_interval_s`` it compares the folder's files (name, size,
    mtime) with those seen at the last opening and, when they differ, opens the index again with the same loaded
    metric and swaps it in. Requests in flight finish on the index they started with.
    """

    def __init__(self, cfg: ServeConfig):
        self.cfg = cfg
        self._lock = threading.Lock()
        index = open_index(cfg.index_dir, metric=cfg.metric, db_url=cfg.db_url, device=cfg.device)
        self.metric: Metric = index.metric  # loaded here, once: a missing weight file fails at start
        self._index = index
        self._stamp = index_stamp(cfg.index_dir)
        self._checked = time.monotonic()
        self.generation = 0

    def get(self) -> ImageIndex:
        now = time.monotonic()
        if now - self._checked >= self.cfg.refresh_interval_s:
            with self._lock:
                if now - self._checked >= self.cfg.refresh_interval_s:
                    self._checked = now
                    stamp = index_stamp(self.cfg.index_dir)
                    if stamp != self._stamp:
                        self._reopen(stamp)
        return self._index

    def refresh_now(self) -> None:
        """Look at the index folder on the next ``get()`` (this process has just written to the catalog)."""
        with self._lock:
            self._checked = float("-inf")

    def _reopen(self, stamp: tuple) -> None:
        try:
            fresh = open_index(self.cfg.index_dir, metric=self.metric, db_url=self.cfg.db_url)
        except (ValueError, FileNotFoundError, OSError) as e:  # mid-write or damaged: keep serving the old one
            _logger.warning("index changed but could not be re-opened (still serving the previous state): %s", e)
            return
        self._index, self._stamp = fresh, stamp
        self.generation += 1
        _logger.info("index re-opened (generation %d): %d vectors", self.generation, fresh.vectors.ntotal)


class ReportCache:
    """The last few dedup reports, by key; one computed at a time.

    A request for a report that is being computed waits for it; a request for another one while a computation runs
    is answered 429 (with Retry-After) instead of queueing: a report costs up to O(n^2), and waiting requests would
    hold the worker threads that searches need.
    """

    def __init__(self, size: int = 4):
        self._size = size
        self._cond = threading.Condition()  # guards _items and _computing
        self._computing: tuple | None = None
        self._items: OrderedDict[tuple, DedupReport] = OrderedDict()

    def get(self, key: tuple, compute: Callable[[], DedupReport]) -> DedupReport:
        with self._cond:
            while True:
                if key in self._items:
                    self._items.move_to_end(key)
                    return self._items[key]
                if self._computing is None:
                    self._computing = key  # this request computes it
                    break
                if self._computing != key or not self._cond.wait(timeout=REPORT_WAIT_S):
                    raise ApiError(429, "another duplicates report is being computed; retry shortly (a report at "
                                        "these settings is cached once computed)", headers={"Retry-After": "5"})
        report = None
        try:
            report = compute()
        finally:
            with self._cond:
                if report is not None:
                    self._items[key] = report
                    while len(self._items) > self._size:
                        self._items.popitem(last=False)
                self._computing = None
                self._cond.notify_all()
        return report


@dataclass
class Service:
    """The state of one ``lookalike serve`` process."""

    cfg: ServeConfig
    holder: IndexHolder
    metrics: MetricCache
    reports: ReportCache = field(default_factory=ReportCache)

    @classmethod
    def open(cls, cfg: ServeConfig, holder: IndexHolder | None = None) -> Service:
        """Open the index and load its metric (unless given ``holder``)."""
        holder = holder or IndexHolder(cfg)
        metrics = MetricCache(max_entries=8, device=cfg.device)
        metrics.pin(holder.metric)
        return cls(cfg=cfg, holder=holder, metrics=metrics)


def get_service(request: Request) -> Service:
    """The dependency every route takes: the service state of this application."""
    return request.app.state.service
