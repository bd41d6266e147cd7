"""The backends one tier serves: the current model and an optional canary, swapped live.

A swap loads the new backend beside the old one and replaces it in one assignment:
requests already running keep their reference to the old backend and finish on it, so
none is dropped, and the old backend is closed (a vLLM engine frees its KV cache) only
once its in-flight calls have returned. Each slot carries the calibration of *its* model
directory, stamped on every answer, because a threshold belongs to one model version.

No Ray here: the Serve shell (``gateway._model_server``) owns batching and the registry
follower, and calls ``apply`` when the rollout changes.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import AsyncGenerator, Callable, Sequence
from contextlib import aclosing
from dataclasses import dataclass
from pathlib import Path

from common.model_dir import CalibrationRecord
from router._backend import Backend
from router._types import Generation, GenerationRequest, StreamHead, TokenDelta

__all__ = ["BackendSlots", "Slot", "continuous_batching"]

logger = logging.getLogger(__name__)

Loader = Callable[[Path], Backend]
"""Builds a backend for a model directory (blocking: it runs in a worker thread)."""


def continuous_batching(backend: Backend) -> bool:
    """An engine that batches at every decoding step (vLLM): it gets each request as it
    comes, since an outer batch would hold short requests until its longest one finished."""
    return bool(getattr(backend, "continuous_batching", False))


@dataclass(frozen=True)
class Slot:
    """One served model: its backend, where it was loaded from, its own calibration."""

    backend: Backend
    model_dir: Path
    calibration: CalibrationRecord | None

    @classmethod
    def of(cls, backend: Backend, model_dir: Path) -> Slot:
        return cls(backend, model_dir, CalibrationRecord.load(model_dir))

    def stamp(
        self,
        requests: Sequence[GenerationRequest],
        gens: list[Generation],
        threshold_override: float | None,
        *,
        canary: bool = False,
    ) -> list[Generation]:
        """Names on each answer the threshold it must be judged by (``router.resolve_threshold``):
        the one calibrated for its request's route, else for its output kind
        (``CalibrationRecord.threshold_for``: constrained decoding moves log-probs), the
        agreement its version was calibrated at, and whether the canary answered."""
        cal = self.calibration
        if cal is None and threshold_override is None and not canary:
            return gens
        common = {
            "calibrated_scorer": cal.scorer if cal is not None else None,
            "calibrated_agreement": cal.agreement if cal is not None else None,
            "threshold_override": threshold_override,
            "canary": canary,
        }
        return [
            g.model_copy(
                update={
                    **common,
                    "calibrated_threshold": cal.threshold_for(r.output_kind, r.route)
                    if cal is not None
                    else None,
                }
            )
            for r, g in zip(requests, gens, strict=True)
        ]

    def head(
        self, request: GenerationRequest, threshold_override: float | None, *, canary: bool
    ) -> StreamHead:
        """What a stream says before its first token: ``stamp``'s bars, and the commit
        point calibrated for the request's output kind (none: decided on the whole answer)."""
        cal = self.calibration
        commit = cal.commit.get(request.output_kind) if cal is not None else None
        return StreamHead(
            model_version=self.backend.version,
            model_id=self.backend.model_id,
            calibrated_threshold=cal.threshold_for(request.output_kind, request.route) if cal else None,
            calibrated_scorer=cal.scorer if cal is not None else None,
            threshold_override=threshold_override,
            commit_tokens=commit.tokens if commit is not None else None,
            commit_bar=commit.bar if commit is not None else None,
            canary=canary,
        )


def _replayed(gen: Generation) -> list[TokenDelta]:
    """A whole answer as the deltas a stream would have carried: one per scored token,
    their texts joining to the answer's text (where the backend's token pieces do not,
    the last delta carries it all: the decision needs the scores, the client the text)."""
    scored = gen.token_logprobs
    if not scored:
        return []
    tops = gen.top_logprobs if len(gen.top_logprobs) == len(scored) else [None] * len(scored)
    texts = list(gen.tokens[: len(scored)])
    if len(texts) != len(scored) or "".join(texts) != gen.text:
        texts = [""] * (len(scored) - 1) + [gen.text]
    return [TokenDelta(t, -1, lp, top) for t, lp, top in zip(texts, scored, tops, strict=True)]


class BackendSlots:
    """The current slot, an optional canary taking ``canary_share`` of requests, and the
    operator's threshold pin; counts calls per backend so a replaced one closes when idle."""

    def __init__(self, current: Slot, load: Loader, *, tier: str, rng: random.Random | None = None) -> None:
        self.current = current
        self.canary: Slot | None = None
        self.canary_share = 0.0
        self.threshold_override: float | None = None
        self.loads = 1
        """Backends built for this tier, the first included (a test asserts one at boot)."""
        self.retired: list[str] = []
        """Versions closed after a swap, newest last (the last eight)."""
        self._load = load
        self._tier = tier
        self._rng = rng or random.Random()
        self._in_flight: dict[int, int] = {}
        self._idle = asyncio.Condition()
        self._retiring: set[asyncio.Task[None]] = set()
        self._open: dict[int, Backend] = {id(current.backend): current.backend}
        """Every backend loaded and not yet closed (or being closed): two swaps in a row
        hand the same old backend to two retirements, and it must close once."""

    @classmethod
    def open(cls, model_dir: Path, load: Loader, *, tier: str) -> BackendSlots:
        return cls(Slot.of(load(model_dir), model_dir), load, tier=tier)

    def pick(self) -> tuple[Slot, bool]:
        """The slot for one request, and whether it is the canary."""
        if self.canary is not None and self._rng.random() < self.canary_share:
            return self.canary, True
        return self.current, False

    def in_flight(self) -> int:
        return sum(self._in_flight.values())

    async def generate(self, slot: Slot, requests: Sequence[GenerationRequest]) -> list[Generation]:
        """``slot.backend.generate``, counted and stamped with the slot's calibration."""
        key = self._enter(slot)
        try:
            gens = await slot.backend.generate(requests)
        finally:
            await self._leave(key)
        return slot.stamp(requests, gens, self.threshold_override, canary=slot is self.canary)

    async def stream(
        self, slot: Slot, request: GenerationRequest
    ) -> AsyncGenerator[StreamHead | TokenDelta | Generation, None]:
        """The slot's ``StreamHead``, its tokens as the engine writes them, then the whole
        answer, stamped (``router._streaming``'s student stream). A backend that cannot
        stream answers whole and its tokens follow at once: the same items, no earlier.
        Counted in flight like ``generate``, so a swap never closes an engine mid-stream;
        closing the stream (the consumer is gone, or escalated) cancels the generation."""
        key = self._enter(slot)
        canary = slot is self.canary
        try:
            yield slot.head(request, self.threshold_override, canary=canary)
            streamer = getattr(slot.backend, "stream_generation", None)
            whole: Generation | None = None
            if streamer is None:
                whole = (await slot.backend.generate([request]))[0]
                for delta in _replayed(whole):
                    yield delta
            else:
                async with aclosing(streamer(request)) as items:
                    async for item in items:
                        if isinstance(item, Generation):
                            whole = item
                        else:
                            yield item
            if whole is None:
                raise RuntimeError(f"{slot.backend.version}'s stream ended without its answer")
            yield slot.stamp([request], [whole], self.threshold_override, canary=canary)[0]
        finally:
            await self._leave(key)

    def _enter(self, slot: Slot) -> int:
        """Counts a call on ``slot``'s backend in flight (a retirement waits for it)."""
        key = id(slot.backend)
        self._in_flight[key] = self._in_flight.get(key, 0) + 1
        return key

    async def _leave(self, key: int) -> None:
        self._in_flight[key] -= 1
        if not self._in_flight[key]:
            del self._in_flight[key]
        async with self._idle:
            self._idle.notify_all()

    async def apply(
        self,
        model_dir: Path | None,
        canary_dir: Path | None,
        canary_share: float,
        threshold_override: float | None,
    ) -> None:
        """Moves to a rollout (promote, canary start or end, rollback, threshold pin).

        ``model_dir`` None keeps the current model (nothing registered yet). Promoting the
        canary reuses its loaded engine. Returns once the new slots serve; the replaced
        backends close in the background, after their in-flight calls."""
        replaced = [self.current, self.canary]
        if model_dir is not None and model_dir != self.current.model_dir:
            if self.canary is not None and model_dir == self.canary.model_dir:
                self.current = self.canary
            else:
                self.current = Slot.of(await self._loaded(model_dir), model_dir)
            logger.info("%s swapped to %s (%s)", self._tier, self.current.backend.version, model_dir)
        if canary_dir is None:
            self.canary = None
        elif self.canary is None or canary_dir != self.canary.model_dir:
            self.canary = Slot.of(await self._loaded(canary_dir), canary_dir)
        self.canary_share = canary_share if self.canary is not None else 0.0
        self.threshold_override = threshold_override
        task = asyncio.get_running_loop().create_task(self._retire(replaced))
        self._retiring.add(task)
        task.add_done_callback(self._retiring.discard)

    async def _loaded(self, model_dir: Path) -> Backend:
        """A new backend, warmed with one request when it is an engine (a fresh vLLM engine's
        first step is slow), so traffic reaches it only once it answers at speed."""
        backend = await asyncio.to_thread(self._load, model_dir)
        self.loads += 1
        self._open[id(backend)] = backend
        if continuous_batching(backend):
            try:
                await backend.generate([GenerationRequest(prompt="warm up", max_tokens=1)])
            except Exception:
                logger.exception("warm-up request on %s failed", backend.version)
        return backend

    async def _retire(self, slots: list[Slot | None]) -> None:
        """Closes backends no longer served, after their in-flight requests finish."""
        live = {id(self.current.backend), id(self.canary.backend) if self.canary else None}
        keys = {id(s.backend) for s in slots if s is not None} - live
        for key in keys:
            backend = self._open.pop(key, None)
            if backend is None:  # another retirement has it
                continue
            async with self._idle:
                await self._idle.wait_for(lambda: key not in self._in_flight)  # noqa: B023
            try:
                await backend.close()
            except Exception:
                logger.exception("closing the replaced backend %s failed", backend.version)
            self.retired = [*self.retired, backend.version][-8:]
            logger.info("%s closed the replaced backend %s", self._tier, backend.version)

    async def drained(self) -> None:
        """Waits for the background closes (tests; a clean shutdown)."""
        while self._retiring:
            await asyncio.gather(*list(self._retiring), return_exceptions=True)
