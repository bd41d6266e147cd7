"""The cascade, streamed: the student's tokens flow once a prefix decides, an escalation
streams the teacher as it writes.

``CascadeRouter.route`` judges a finished answer, so a stream built on it is a replay:
the first token leaves with the last. Here the student's tokens are held until its
commit rule (``router._early``, calibrated per version and output kind, carried on the
stream's ``StreamHead``) decides: ``serve`` releases the held prefix and every later
token as it comes; ``escalate`` closes the student's stream at once (the replica's
generation is cancelled, its engine slot freed) and relays the teacher's. An answer that
ends before its commit point, a structured answer (its contract needs the whole answer)
and a version without a commit rule are judged whole, exactly as ``route`` judges them.

Failures keep ``route``'s rules while nothing has been sent: a student that fails
escalates, a teacher that fails before its first piece falls back to the student's answer
(asked for again if its stream was cancelled) under ``serve_student``. After the first
piece has gone out nothing can be taken back: the stream ends with ``StreamBroken``,
which the gateway writes as an error event. A consumer that stops reading (a client gone)
closes this generator, which closes whichever tier stream is open.

The route prior (``router._prior``, on the router) may decide before the student is
asked: a route it is sure escalates goes to the teacher at once (decided at 0 tokens), a
route it is sure the student serves streams from the first token.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncGenerator, Sequence
from contextlib import aclosing
from dataclasses import dataclass, replace
from typing import Literal, Protocol

from router._cascade import CascadeResult, CascadeRouter, Tier
from router._contract import check_answer
from router._early import CommitRule, EarlyDecider
from router._policy import Decision
from router._resilience import classify_teacher_error
from router._scoring import all_scores, confidence_logprobs
from router._types import Generation, GenerationRequest, StreamHead, TokenDelta
from router.errors import InvalidRequest, StudentUnavailable, TeacherUnavailable

__all__ = [
    "Chunk",
    "Decided",
    "StreamBroken",
    "StreamEnd",
    "StreamingCascade",
    "StudentStreamClient",
    "TeacherStreamClient",
    "TierItem",
]


TierItem = StreamHead | TokenDelta | Generation
"""What a tier's stream carries (``BackendSlots.stream``, ``ModelServer.stream``)."""


class StudentStreamClient(Protocol):
    """The student as the streaming cascade sees it: a ``StreamHead``, its tokens, then
    the whole ``Generation``; and a whole answer on request (the fallback)."""

    def stream(self, request: GenerationRequest) -> AsyncGenerator[TierItem, None]: ...

    async def generate(self, request: GenerationRequest) -> Generation: ...


class TeacherStreamClient(Protocol):
    """The teacher as a tier stream: its head, its text as it writes it, the whole answer."""

    def stream(self, request: GenerationRequest) -> AsyncGenerator[TierItem, None]: ...


@dataclass(frozen=True)
class Chunk:
    """Text for the client, from one tier."""

    text: str
    tier: Tier


@dataclass(frozen=True)
class Decided:
    """Before the first text: which tier answers, on what evidence (the response's
    headers and its first chunk's routing info are written from it)."""

    tier: Tier
    escalated: bool
    confidence: float | None
    threshold: float
    model_version: str
    low_confidence: bool = False
    at_tokens: int | None = None
    """Student tokens written when a commit rule decided (``None``: judged whole, or no
    student answer): the first text left when the student had written this many."""


@dataclass(frozen=True)
class StreamEnd:
    """The last item: what was served and how it was decided."""

    result: CascadeResult
    late_doubt: bool = False
    """Committed early, and the whole answer scores below the whole-answer bar: the answer
    stands; the request is recorded so the audits and the next dataset can use it."""
    student_cancelled: bool = False

    @property
    def decided_at(self) -> int | None:
        """Student tokens seen when a commit rule decided (0: the route prior, before the
        student; ``None``: judged whole): the result's ``decided_at_tokens``."""
        return self.result.decided_at_tokens


class StreamBroken(Exception):
    """A tier failed after its first piece reached the client: nothing can be retracted,
    the stream ends with an error event."""

    def __init__(self, tier: Tier, message: str) -> None:
        super().__init__(message)
        self.tier: Tier = tier


@dataclass
class _StudentRun:
    head: StreamHead | None = None
    final: Generation | None = None
    held: list[str] | None = None
    decider: EarlyDecider | None = None
    committed: bool = False
    sent: str = ""
    """The student's text already yielded (once committed)."""
    cancelled: bool = False
    latency_s: float = 0.0


class StreamingCascade:
    """Streams one request through ``router``'s policy, breaker and fallbacks."""

    def __init__(
        self, router: CascadeRouter, student: StudentStreamClient, teacher: TeacherStreamClient
    ) -> None:
        self._router = router
        self._student = student
        self._teacher = teacher

    async def stream(
        self, request: GenerationRequest, force: Tier | None = None, *, whole: bool = False
    ) -> AsyncGenerator[Chunk | Decided | StreamEnd, None]:
        """``whole``: the client wants the whole answer (nothing is streamed to it), so an
        escalation asks the teacher for its whole answer instead of relaying its stream
        (a stream's per-piece hops buy nothing there); the student is still decided on
        its prefix and cancelled at its commit point."""
        kind = request.output_kind
        teacher = self._teacher_whole if whole else self._relay_teacher
        if force == "teacher":
            async with aclosing(teacher(request, None, None, 0.0, None, 0.0)) as items:
                async for item in items:
                    yield item
            return
        if force is None and self._router.prior.skip_student(request.route):
            threshold = self._router.policy.threshold
            async with aclosing(teacher(request, None, None, 0.0, "ok", threshold, decided_at=0)) as items:
                async for item in items:
                    yield item
            return
        breaker = self._router.student_breaker
        permit = self._router.student_permit(force)
        if permit is None:  # the student tier is failing: not asked until its probe
            async with aclosing(teacher(request, None, None, 0.0, "student_failed", 0.0)) as items:
                async for item in items:
                    yield item
            return
        run = _StudentRun(held=[])
        failed: Exception | None = None
        try:
            async with aclosing(self._run_student(request, run, force)) as chunks:
                async for chunk in chunks:
                    yield chunk
            breaker.record_success(permit)
        except (InvalidRequest, StreamBroken):
            breaker.release(permit)
            raise
        except Exception as exc:
            breaker.record_failure(permit)
            if isinstance(exc, StudentUnavailable):
                raise
            if force == "student":
                raise StudentUnavailable(
                    f"the student failed: {type(exc).__name__}: {str(exc)[:200]}"
                ) from exc
            failed = exc
        except BaseException:  # the client went away (cancellation): no verdict
            breaker.release(permit)
            raise
        if failed is not None:
            relay = teacher(request, None, None, run.latency_s, "student_failed", 0.0)
            async with aclosing(relay) as items:
                async for item in items:
                    yield item
            return
        if run.committed:
            assert run.final is not None and run.decider is not None
            # Text a delta held back (a character split across tokens at the very end):
            # the whole answer is the authority on what the client reads.
            if len(run.final.text) > len(run.sent) and run.final.text.startswith(run.sent):
                yield Chunk(run.final.text[len(run.sent) :], "student")
            evidence = confidence_logprobs(run.final, sampled=request.sampled, mode=self._mode)
            decision = self._decision(run.decider.rule.scorer, run.decider.rule.threshold, evidence, False)
            result = CascadeResult(
                run.final, "student", decision, False, False, None, run.latency_s, 0.0, "ok",
                run.decider.rule.threshold, kind, decided_at_tokens=run.decider.rule.commit_tokens,
            )  # fmt: skip
            yield StreamEnd(result, late_doubt=run.decider.late_doubt(evidence))
            return
        if run.cancelled:  # escalated on its prefix
            assert run.decider is not None and run.decider.prefix_confidence is not None
            rule = run.decider.rule
            decision = self._decision(rule.scorer, rule.threshold, run.decider.logprobs, True)
            relay = teacher(
                request, decision, None, run.latency_s, "ok", rule.threshold, decided_at=rule.commit_tokens
            )
            asked = run.head.model_version if run.head is not None else None
            async with aclosing(relay) as items:
                async for item in items:
                    if isinstance(item, StreamEnd):  # its escalation still counts for its version
                        item = replace(item, result=replace(item.result, cancelled_version=asked))
                    yield item
            return
        # Judged whole, as ``CascadeRouter.route`` judges an answer.
        final = run.final
        assert final is not None
        policy = self._router.policy_for(final)
        evidence = confidence_logprobs(final, sampled=request.sampled, mode=self._mode)
        decision = policy.decide(evidence)
        if kind != "text":
            check = check_answer(request, final.text, final.finish_reason)
            if not check.valid:
                decision = Decision(decision.confidence, True, decision.scores, check.reason)
        if force == "student" or not decision.escalate:
            yield Decided("student", False, decision.confidence, policy.threshold, final.model_version)
            if kind == "text" and final.text:
                yield Chunk(final.text, "student")
            result = CascadeResult(
                final,
                "student",
                decision,
                False,
                False,
                None,
                run.latency_s,
                0.0,
                "ok",
                policy.threshold,
                kind,
            )
            yield StreamEnd(result)
            return
        relay = teacher(request, decision, final, run.latency_s, "ok", policy.threshold)
        async with aclosing(relay) as items:
            async for item in items:
                yield item

    @property
    def _mode(self) -> Literal["top_token", "sampled_token"]:
        return self._router._config.sampled_confidence

    async def _run_student(
        self, request: GenerationRequest, run: _StudentRun, force: Tier | None
    ) -> AsyncGenerator[Chunk | Decided, None]:
        """Reads the student's stream into ``run``; yields its text once committed."""
        assert run.held is not None
        started = time.perf_counter()
        deadline = asyncio.get_running_loop().time() + self._router._config.student_timeout_s
        async with aclosing(self._student.stream(request)) as items:
            while True:
                try:
                    async with asyncio.timeout_at(deadline):
                        item = await anext(items)
                except StopAsyncIteration:
                    break
                except Exception as exc:
                    if run.committed:
                        raise StreamBroken(
                            "student", f"the student failed mid-answer: {type(exc).__name__}"
                        ) from exc
                    raise
                if isinstance(item, StreamHead):
                    run.head = item
                    self._router.prior.saw_version(item.model_version)
                    run.decider = self._decider(request, item, force)
                elif isinstance(item, TokenDelta):
                    if run.committed:
                        if item.token:
                            run.sent += item.token
                            yield Chunk(item.token, "student")
                        continue
                    run.held.append(item.token)
                    if run.decider is None:
                        continue
                    lp = (
                        item.top_logprob if request.sampled and item.top_logprob is not None else item.logprob
                    )
                    verdict = run.decider.feed(lp)
                    if verdict == "serve":
                        run.committed = True
                        rule = run.decider.rule
                        version = run.head.model_version if run.head is not None else ""
                        at = len(run.decider.logprobs)
                        sure = run.decider.prefix_confidence
                        yield Decided("student", False, sure, rule.threshold, version, at_tokens=at)
                        if prefix := "".join(run.held):
                            run.sent = prefix
                            yield Chunk(prefix, "student")
                    elif verdict == "escalate":
                        run.cancelled = True  # leaving the block closes the student's stream
                        break
                else:
                    run.final = item
        run.latency_s = time.perf_counter() - started
        if run.final is None and not run.cancelled:
            raise StudentUnavailable("the student's stream ended without an answer")

    def _decider(
        self, request: GenerationRequest, head: StreamHead, force: Tier | None
    ) -> EarlyDecider | None:
        """A commit rule for text answers of a version that has one; ``force=student``
        streams from the first token (there is nothing to escalate to), and so does a
        route the prior is sure the student serves (its late doubts are recorded)."""
        if request.output_kind != "text":
            return None
        policy = self._router.policy_for(_stamp(head))
        if force == "student" or (
            force is None and self._router.prior.stream_from_first(request.route, head.model_version)
        ):
            return EarlyDecider(CommitRule(1, 0.0, policy.threshold, policy.scorer))
        if head.commit_tokens is None or head.commit_bar is None:
            return None
        return EarlyDecider(CommitRule(head.commit_tokens, head.commit_bar, policy.threshold, policy.scorer))

    @staticmethod
    def _decision(scorer: str, threshold: float, evidence: Sequence[float], escalate: bool) -> Decision:
        scores = all_scores(evidence)
        return Decision(scores[scorer], escalate, scores)

    async def _relay_teacher(
        self,
        request: GenerationRequest,
        decision: Decision | None,
        student: Generation | None,
        student_latency_s: float,
        outcome: Literal["ok", "student_failed"] | None,
        threshold: float,
        *,
        decided_at: int | None = None,
    ) -> AsyncGenerator[Chunk | Decided | StreamEnd, None]:
        """The teacher's stream; ``outcome`` None: asked for by name (not an escalation)."""
        kind = request.output_kind
        escalated = outcome is not None

        async def first_piece(left_s: float) -> tuple[AsyncGenerator[TierItem, None], TierItem, str]:
            """The teacher's stream up to its first token (or its whole answer): a
            failure before it is retried or falls back; its head says who answers."""
            pieces = self._teacher.stream(request)
            version = ""
            try:
                async with asyncio.timeout(left_s):
                    while isinstance(item := await anext(pieces), StreamHead):
                        version = item.model_version
                    return pieces, item, version
            except StopAsyncIteration:
                raise TeacherUnavailable("the teacher's stream ended before its first piece") from None
            except BaseException:
                await pieces.aclose()
                raise

        started = time.monotonic()
        confidence = decision.confidence if decision is not None else None
        try:
            (pieces, first, version), permit, _ = await self._router.teacher_attempts(
                first_piece, settle=False
            )
        except TeacherUnavailable as failed:
            fallback = self._student_fallback(
                failed, request, decision, student, student_latency_s, outcome, threshold, decided_at
            )
            async with aclosing(fallback) as events:
                async for event in events:
                    yield event
            return
        yield Decided("teacher", escalated, confidence, threshold, version, at_tokens=decided_at)
        breaker = self._router.breaker
        settled = False
        deadline = started + self._router._config.teacher_timeout_s
        final: Generation | None = None
        try:
            async with aclosing(pieces):
                item: TierItem | None = first
                while item is not None:
                    if isinstance(item, Generation):
                        final = item
                    elif isinstance(item, TokenDelta) and kind == "text" and item.token:
                        yield Chunk(item.token, "teacher")
                    try:
                        async with asyncio.timeout(max(0.0, deadline - time.monotonic())):
                            item = await anext(pieces)
                    except StopAsyncIteration:
                        item = None
                    except Exception as exc:
                        failure = classify_teacher_error(exc)
                        breaker.record_failure(permit)
                        settled = True
                        self._router._observer.teacher_error(failure.reason if failure else "error")
                        why = f"the teacher failed mid-answer: {type(exc).__name__}"
                        raise StreamBroken("teacher", why) from exc
                if final is None:
                    breaker.record_failure(permit)
                    settled = True
                    raise StreamBroken("teacher", "the teacher's stream ended without its answer")
                breaker.record_success(permit)
                settled = True
        finally:
            if not settled:  # the client went away: no verdict on the teacher's health
                breaker.release(permit)
        assert final is not None
        t_lat = time.monotonic() - started
        result = CascadeResult(
            final, "teacher", decision, escalated, False, student, student_latency_s, t_lat,
            outcome or "ok", threshold, kind, decided_at_tokens=decided_at,
        )  # fmt: skip
        yield StreamEnd(result, student_cancelled=bool(decided_at))

    async def _teacher_whole(
        self,
        request: GenerationRequest,
        decision: Decision | None,
        student: Generation | None,
        student_latency_s: float,
        outcome: Literal["ok", "student_failed"] | None,
        threshold: float,
        *,
        decided_at: int | None = None,
    ) -> AsyncGenerator[Chunk | Decided | StreamEnd, None]:
        """The teacher's whole answer (``_relay_teacher``'s rules, one call)."""
        try:
            final, t_lat = await self._router.call_teacher(request)
        except TeacherUnavailable as failed:
            fallback = self._student_fallback(
                failed, request, decision, student, student_latency_s, outcome, threshold, decided_at
            )
            async with aclosing(fallback) as events:
                async for event in events:
                    yield event
            return
        confidence = decision.confidence if decision is not None else None
        escalated = outcome is not None
        yield Decided("teacher", escalated, confidence, threshold, final.model_version, at_tokens=decided_at)
        if request.output_kind == "text" and final.text:
            yield Chunk(final.text, "teacher")
        result = CascadeResult(
            final, "teacher", decision, escalated, False, student, student_latency_s, t_lat,
            outcome or "ok", threshold, request.output_kind, decided_at_tokens=decided_at,
        )  # fmt: skip
        yield StreamEnd(result, student_cancelled=bool(decided_at))

    async def _student_fallback(
        self,
        failed: TeacherUnavailable,
        request: GenerationRequest,
        decision: Decision | None,
        student: Generation | None,
        student_latency_s: float,
        outcome: Literal["ok", "student_failed"] | None,
        threshold: float,
        decided_at: int | None,
    ) -> AsyncGenerator[Chunk | Decided | StreamEnd, None]:
        """The teacher failed before its first piece: ``route``'s rule, the student's answer
        (asked for again if its stream was cancelled) under ``serve_student``; else the
        failure stands."""
        policy = self._router._config.teacher_failure_policy
        invalid = decision is not None and decision.invalid is not None
        if outcome != "ok" or policy != "serve_student" or invalid:
            raise failed
        fallback = student or await self._student.generate(request)
        confidence = decision.confidence if decision is not None else None
        yield Decided("student", True, confidence, threshold, fallback.model_version, low_confidence=True)
        if request.output_kind == "text" and fallback.text:
            yield Chunk(fallback.text, "student")
        result = CascadeResult(
            fallback, "student", decision, True, True, fallback, student_latency_s, 0.0,
            "teacher_failed_served_student", threshold, request.output_kind, decided_at_tokens=decided_at,
        )  # fmt: skip
        yield StreamEnd(result, student_cancelled=student is None and bool(decided_at))


def _stamp(head: StreamHead) -> Generation:
    """A token-less ``Generation`` carrying the head's stamp, for ``policy_for``."""
    return Generation(
        text="",
        tokens=[],
        token_logprobs=[],
        finish_reason="stop",
        prompt_tokens=0,
        completion_tokens=0,
        model_id=head.model_id,
        model_version=head.model_version,
        calibrated_threshold=head.calibrated_threshold,
        calibrated_scorer=head.calibrated_scorer,
        threshold_override=head.threshold_override,
    )
