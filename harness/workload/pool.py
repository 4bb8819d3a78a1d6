"""Each worker's requests, built ahead of sending: `RequestPool`.

Worker k of n owns the global indices k, k+n, k+2n, ... (requests, or conversations in a
conversation workload). Because every item is a pure function of (seed, index)
(`harness.workload.requests`), the union of all workers' pools is the same multiset of requests
for any n, and `max_requests` N is exact over all workers without any coordination: the items
covering the first N requests are fixed in advance (a conversation that straddles N is cut short),
and each worker sends just its own share of them.

Building happens before sending: `prebuild` items when the pool is made (before the first send),
then `refill()`, which the sending loop calls between requests: each time `step` items were taken
it builds `step` more (default 256 requests, conversations counted by their turns; ~1.5 ms at the ~5 µs per request measured in
benchmarks/bench_workload.py), so in a Locust process no refill holds the event loop long while
other users' streams are being read. `take()` only builds if the pool ran dry (`late_builds`
counts that, for the run's health figures).
"""

from __future__ import annotations

from collections import deque
from typing import Any

import numpy as np
import numpy.typing as npt

from harness.workload.requests import Workload

__all__ = ["RequestPool", "items_for_max_requests", "worker_share"]

_CHUNK = 65536


def items_for_max_requests(workload: Workload, max_requests: int) -> tuple[int, int]:
    """How many items (from index 0) cover exactly `max_requests` requests, and the number of turns
    the last of them keeps (its full count unless it straddles the limit)."""
    if not workload.conversational:
        return max_requests, 1
    total = 0
    start = 0
    while True:
        turns = workload.turns_of(np.arange(start, start + _CHUNK))
        cum = total + np.cumsum(turns)
        hit = int(np.searchsorted(cum, max_requests))  # first position with cum >= max_requests
        if hit < len(cum):
            before = int(cum[hit - 1]) if hit > 0 else total
            return start + hit + 1, max_requests - before
        total = int(cum[-1])
        start += _CHUNK


def worker_share(n_items: int, worker: int, workers: int) -> int:
    """Items of 0..n_items-1 that are ≡ worker (mod workers)."""
    return max(0, (n_items - worker + workers - 1) // workers)


class RequestPool:
    """Worker `worker` of `workers`: its items in order, built ahead; `None` when its share is done."""

    def __init__(
        self,
        workload: Workload,
        *,
        worker: int = 0,
        workers: int = 1,
        max_requests: int | None = None,
        prebuild: int = 4096,
        step: int = 256,
    ) -> None:
        if not 0 <= worker < workers:
            raise ValueError(f"worker index {worker} out of range for {workers} workers")
        self.workload = workload
        self.worker = worker
        self.workers = workers
        self.block = max(1, prebuild)
        # Build in batches (numpy's per-call cost would dominate one item at a time), never more
        # than half the pool at once so a refill always comes before the pool runs dry.
        # `step` counts requests: a conversation of T turns is T of them.
        items_per_step = max(1, round(step / workload.mean_turns()))
        self.step = max(1, min(items_per_step, self.block // 2))
        self.late_builds = 0
        self._next = 0  # this worker's next item number (global index = worker + next * workers)
        self._items: deque[Any] = deque()
        self._end: int | None = None  # this worker's item count when limited
        self._last_item: int | None = None
        self._last_turns = 0
        if max_requests is not None:
            n_items, last_turns = items_for_max_requests(workload, max_requests)
            self._end = worker_share(n_items, worker, workers)
            self._last_item, self._last_turns = n_items - 1, last_turns
        self._build(self.block)

    @property
    def exhausted(self) -> bool:
        return not self._items and self._end is not None and self._next >= self._end

    def __len__(self) -> int:
        return len(self._items)

    def _indices(self, count: int) -> npt.NDArray[np.int64]:
        stop = self._next + count if self._end is None else min(self._end, self._next + count)
        return self.worker + np.arange(self._next, stop, dtype=np.int64) * self.workers

    def _build(self, count: int) -> int:
        idx = self._indices(count)
        if idx.size == 0:
            return 0
        caps = None
        if self.workload.conversational and self._last_item is not None and idx[-1] == self._last_item:
            caps = [1 << 30] * (idx.size - 1) + [self._last_turns]
        self._items.extend(self.workload.build(idx, caps))
        self._next += idx.size
        return int(idx.size)

    def refill(self) -> int:
        """Between sends: once `step` items were taken, build `step` more. Returns items built."""
        if self.block - len(self._items) >= self.step:
            return self._build(self.step)
        return 0

    def take(self) -> Any:
        """The next RequestSpec (or SessionSpec); None when this worker's share is sent."""
        if not self._items:
            if self._build(self.step):
                self.late_builds += 1
            else:
                return None
        return self._items.popleft()
