"""The route prior's learner: re-reads the feedback store's counts in the ingress, so the
cascade's prior (``router._prior``) follows what the cascade has been deciding.

It runs on the ingress's event loop, the store read in a thread, every
``cascade.prior.refresh_s``. The store is opened on the first refresh (the stack's consumer
creates it); a store that cannot be read keeps the last verdicts (they are per student
version, so a swap still starts the new version without one) and is retried next time.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable

from feedback import FeedbackStore, open_store
from gateway.metrics import GatewayMetrics
from router import PriorConfig, RoutePrior, learn_prior

__all__ = ["PriorLearner"]

logger = logging.getLogger(__name__)


class PriorLearner:
    def __init__(
        self,
        prior: RoutePrior,
        dsn: str,
        sample_rate: float,
        metrics: GatewayMetrics,
        *,
        opener: Callable[[str], FeedbackStore] = open_store,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.prior = prior
        self._dsn = dsn
        self._sample_rate = sample_rate
        self._metrics = metrics
        self._opener = opener
        self._clock = clock
        self._store: FeedbackStore | None = None
        self._task: asyncio.Task[None] | None = None
        self._failing = False

    @property
    def config(self) -> PriorConfig:
        return self.prior.config

    def refresh(self) -> None:
        """One read of the store and a new set of verdicts (blocking: run it in a thread)."""
        if self._store is None:
            self._store = self._opener(self._dsn)
        counts = self._store.route_counts(since=self._clock() - self.config.window_s)
        self.prior.update(learn_prior(counts, self._sample_rate, self.config))
        self._metrics.set_route_prior(self.prior.entries)

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.config.refresh_s)
            try:
                await asyncio.to_thread(self.refresh)
            except Exception as exc:  # the store is down or not there yet: keep the verdicts
                if not self._failing:
                    logger.warning("route prior: the feedback store could not be read (%s)", exc)
                self._failing = True
                if self._store is not None:
                    with contextlib.suppress(Exception):
                        self._store.close()
                    self._store = None
                continue
            if self._failing:
                logger.info("route prior: the feedback store is readable again")
            self._failing = False

    def start(self) -> PriorLearner:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="route-prior")
        return self

    def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
        if self._store is not None:
            with contextlib.suppress(Exception):
                self._store.close()
