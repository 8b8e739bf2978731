"""A test hook that stops the process dead (SIGKILL) at a named point of an indexing run."""

from __future__ import annotations

import logging
import os
import signal
from collections import Counter

from lookalike.common.errors import InvalidArgument

_logger = logging.getLogger(__name__)

ENV_VAR = "LOOKALIKE_CRASH_AT"

#: The named points a run passes through, in order.
CRASH_POINTS = (
    "scan",  # after the scan and diff committed
    "decode",  # a batch decoded, not embedded yet
    "embed",  # a batch embedded, not written yet
    "during_flush",  # the FAISS temp file written, not renamed yet
    "after_flush",  # the FAISS file replaced, the catalog rows not committed
    "during_commit",  # catalog rows sent inside the transaction, not committed
    "after_commit",  # a checkpoint completed
)


class CrashHook:
    """Kill this process at a point: spec "name" (first pass) or "name:n" (the n-th pass), from a parameter or
    ``$LOOKALIKE_CRASH_AT``. Never set it outside tests."""

    def __init__(self, spec: str | None = None):
        spec = spec if spec is not None else os.environ.get(ENV_VAR)
        self.targets: dict[str, int] = {}
        for part in (spec or "").split(","):
            part = part.strip()
            if not part:
                continue
            name, _, n = part.partition(":")
            if name not in CRASH_POINTS:
                raise InvalidArgument(f"unknown crash point {name!r}; choose from {', '.join(CRASH_POINTS)}")
            self.targets[name] = int(n or 1)
        self.seen: Counter[str] = Counter()

    def __call__(self, name: str) -> None:
        if not self.targets:
            return
        self.seen[name] += 1
        if self.targets.get(name) == self.seen[name]:
            _logger.warning("crash hook: SIGKILL at %s (pass %d)", name, self.seen[name])
            os.kill(os.getpid(), signal.SIGKILL)
