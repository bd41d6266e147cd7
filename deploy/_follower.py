"""Follows a registry's pointers and hands each new rollout to whoever serves it.

Promote, canary start and end, rollback and the operator's threshold pin are all writes
to the registry's pointers; serving replicas poll their revision (one small read from the
control store: a file, or one indexed row) and apply the new ``RolloutState`` in place.
This is the one hot-swap path: the loop, the CLI and the admin API write the registry,
and the replicas follow.

With the control store unreachable (PostgreSQL stopped), a replica keeps serving the last
rollout it applied; ``status()`` says since when it cannot read it (``/healthz``), the log
says so once each way, and the first poll after it returns applies whatever changed.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

from deploy._control import ControlStoreUnavailable
from deploy._registry import ModelRegistry
from deploy._rollout import RolloutState

__all__ = ["RegistryFollower"]

logger = logging.getLogger(__name__)


class RegistryFollower:
    """Calls ``apply`` with the registry's rollout whenever its pointers change."""

    def __init__(
        self,
        registry: ModelRegistry,
        apply: Callable[[RolloutState], Awaitable[None]],
        *,
        poll_s: float = 1.0,
    ) -> None:
        self._registry = registry
        self._apply = apply
        self._poll_s = poll_s
        self._seen: str | None = None
        self._task: asyncio.Task[None] | None = None
        self._unreachable: tuple[float, str] | None = None

    def status(self) -> dict[str, object]:
        """Whether the last poll could read the control store (for ``/healthz``)."""
        if self._unreachable is None:
            return {"reachable": True}
        since, error = self._unreachable
        return {"reachable": False, "since": since, "error": error}

    def start(self) -> RegistryFollower:
        self._task = asyncio.get_running_loop().create_task(self._run())
        return self

    async def check(self) -> bool:
        """One poll; True when a changed rollout was applied. A failed apply is retried at
        the next poll (the pointers are remembered only once applied)."""
        revision = self._registry.pointers_revision()
        if revision is None or revision == self._seen:
            return False
        # In a thread: with versions at a URL, reading the rollout pulls the new version's
        # files (hundreds of MB), which must not stall the replica's requests.
        state = await asyncio.to_thread(self._registry.rollout_state)
        await self._apply(state)
        self._seen = revision
        try:
            pruned = await asyncio.to_thread(self._registry.prune_cache)
        except Exception:  # a cache left unpruned is not a failed rollout
            logger.warning("could not prune the model cache", exc_info=True)
        else:
            if pruned:
                logger.info("model cache: removed %d version(s) no pointer names", len(pruned))
        return True

    async def _run(self) -> None:
        while True:
            try:
                await self.check()
            except ControlStoreUnavailable as exc:
                if self._unreachable is None:
                    logger.warning("control store unreachable; serving the last rollout applied: %s", exc)
                    self._unreachable = (time.time(), str(exc))
            except Exception:
                logger.exception("could not apply the registry's rollout state")
            else:
                if self._unreachable is not None:
                    down = time.time() - self._unreachable[0]
                    logger.warning("control store reachable again after %.0f s", down)
                    self._unreachable = None
            await asyncio.sleep(self._poll_s)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
