"""Loaded metrics shared by the faces that keep models in memory: the Streamlit app and the REST service.

``MetricCache`` is a small thread-safe, bounded cache of ``load_metric`` results. It is plain Python (no Streamlit,
no FastAPI), so both faces use the same one: ``app/resources.py`` wraps it in a Streamlit spinner, the service keeps
one per process with the served metric pinned. Streamlit's ``st.cache_resource`` is not used for this because the
service runs outside a Streamlit runtime (where those caches only warn), must load on the device it was started
with, and must never evict the metric it serves.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable

from lookalike.metric import Metric, load_metric


class MetricCache:
    """Up to ``max_entries`` loaded metrics by name, least recently used dropped first; pinned ones stay.

    One load at a time: two threads asking for the same new metric load it once.

    Args:
        max_entries: how many metrics stay loaded (pinned ones included).
        device: the device metrics are loaded on (None: cuda > mps > cpu).
        load: ``name -> Metric`` (default ``load_metric(name, device=device)``).
    """

    def __init__(self, max_entries: int = 8, *, device: str | None = None,
                 load: Callable[[str], Metric] | None = None):
        if max_entries < 1:
            raise ValueError(f"max_entries must be >= 1, got {max_entries}")
        self.max_entries = max_entries
        self._load = load or (lambda name: load_metric(name, device=device))
        self._items: OrderedDict[str, Metric] = OrderedDict()
        self._pinned: set[str] = set()
        self._lock = threading.Lock()

    def __contains__(self, name: object) -> bool:
        with self._lock:
            return name in self._items

    def pin(self, metric: Metric) -> None:
        """Keep an already loaded metric under its name for good (the one a service serves)."""
        with self._lock:
            self._items[metric.name] = metric
            self._pinned.add(metric.name)

    def get(self, name: str) -> Metric:
        """The loaded metric ``name`` (loaded now if needed).

        Raises:
            UnknownName: (a KeyError) no such metric.
            WeightsNotFound: its weights are missing.
        """
        with self._lock:
            m = self._items.get(name)
            if m is None:
                m = self._load(name)
                self._items[name] = m
                self._evict()
            self._items.move_to_end(name)
            return m

    def _evict(self) -> None:
        for old in list(self._items):
            if len(self._items) <= self.max_entries:
                return
            if old not in self._pinned:
                del self._items[old]
