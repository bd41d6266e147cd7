"""Prometheus metrics of the gateway, owned by the ingress replica.

One ``CollectorRegistry`` per ingress replica, exposed at ``/metrics`` by that replica.
The cascade decision (and so every metric below) happens in the ingress, so student and
teacher replicas export nothing of their own. With more than one ingress replica, scrape
each replica (or aggregate in PromQL with ``sum``): see docs/operations.md.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from deploy import LiveMetrics, parse_live_metrics
from router import (
    AUDIT_DROP_REASONS,
    BREAKER_STATE_CODES,
    TEACHER_ERROR_REASONS,
    AuditConfig,
    AuditVerdict,
    BreakerState,
    CascadeResult,
    PriorEntry,
)
from router.pricing import PricingConfig

__all__ = ["GatewayMetrics"]

_Labelled = Counter | Gauge | Histogram

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
# Confidences of a well-trained student crowd just below 1.0: resolve that end finely.
MAX_STUDENT_VERSIONS = 2
MAX_ROUTE_LABELS = 32
"""Distinct route labels on ``distillery_student_answers_total``; later ones count as
``other`` (a client's ``metadata.route`` is free text: the label set must stay bounded)."""
CANARY_SAMPLES = (
    "distillery_student_answers_total",
    "distillery_audits_total",
    "distillery_audit_share",
    "distillery_gate_agreement",
)
"""The samples ``deploy.parse_live_metrics`` reads."""
CONFIDENCE_BUCKETS = (0.1, 0.3, 0.5, 0.7, 0.8, 0.9, 0.95, 0.98, 0.99, 0.995, 0.999, 0.9999, 1.0)


class GatewayMetrics:
    def __init__(
        self, registry: CollectorRegistry | None = None, pricing: PricingConfig | None = None
    ) -> None:
        self.registry = registry or CollectorRegistry()
        self._pricing = pricing or PricingConfig()
        r = self.registry
        self.requests = Counter(
            "distillery_requests_total",
            "Inference requests by the tier that answered and outcome.",
            ["endpoint", "tier", "outcome"],
            registry=r,
        )
        self.structured_requests = Counter(
            "distillery_structured_requests_total",
            "Requests with an output contract (json: response_format; tool_call: tools offered),"
            " by the tier that answered.",
            ["kind", "tier"],
            registry=r,
        )
        self.route_prior = Gauge(
            "distillery_route_prior_escalation_rate",
            "The route prior's escalation rate per (student version, route), from the feedback"
            " store's escalations and samples; verdict: teacher (the student is skipped),"
            " student (streamed from its first token) or none (the cascade decides).",
            ["version", "route", "verdict"],
            registry=r,
        )
        self.escalations = Counter(
            "distillery_escalations_total",
            "Requests sent on to the teacher, by reason (invalid_answer: the student's answer"
            " broke the request's output contract: unparsable JSON, schema, unknown tool;"
            " route_prior: the route prior sent it past the student).",
            ["reason"],
            registry=r,
        )
        self.request_latency = Histogram(
            "distillery_request_latency_seconds",
            "End-to-end latency inside the gateway, by the tier that answered.",
            ["tier"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.tier_latency = Histogram(
            "distillery_tier_latency_seconds",
            "Latency of one call to a tier's model deployment.",
            ["tier"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.stream_decision = Histogram(
            "distillery_stream_time_to_decision_seconds",
            "Live streams: from the request to the cascade's decision, by the tier it chose.",
            ["tier"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.stream_first_token = Histogram(
            "distillery_stream_time_to_first_token_seconds",
            "Live streams: from the request to the first text the client was sent.",
            ["tier"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.stream_inter_token = Histogram(
            "distillery_stream_inter_token_latency_seconds",
            "Live streams: between consecutive text chunks sent to the client.",
            ["tier"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.late_doubts = Counter(
            "distillery_late_doubts_total",
            "Live streams committed on a prefix whose whole answer scored below the threshold"
            " (the answer stood; the request is recorded for the audits and the dataset).",
            ["model_version"],
            registry=r,
        )
        self.confidence = Histogram(
            "distillery_confidence",
            "Student confidence score of each routed request.",
            buckets=CONFIDENCE_BUCKETS,
            registry=r,
        )
        self.tokens = Counter(
            "distillery_tokens_total",
            "Tokens processed, by tier and kind (prompt|completion).",
            ["tier", "kind"],
            registry=r,
        )
        self.model_info = Gauge(
            "distillery_model_version_info",
            "1 for the model version each tier is serving.",
            ["tier", "model_id", "model_version"],
            registry=r,
        )
        self.backend_info = Gauge(
            "distillery_backend_info",
            "1 for the engine serving each tier (transformers|vllm|openai) and why it was chosen"
            " (configured|vllm_supported|vllm_not_installed|vllm_import_failed|architecture_unsupported).",
            ["tier", "backend", "reason"],
            registry=r,
        )
        self.student_answers = Counter(
            "distillery_student_answers_total",
            "Student answers by the model version that produced them, whether they escalated,"
            " and the request's route label (bounded: the current version and at most one canary;"
            f" {MAX_ROUTE_LABELS} routes, then 'other'; '' when unlabelled). The canary judges a"
            " candidate on the routes it was trained for from these counts.",
            ["model_version", "escalated", "route"],
            registry=r,
        )
        self._student_versions: list[str] = []
        self._routes: set[str] = set()
        self._children: dict[tuple[int, tuple[str, ...]], Any] = {}
        # Estimated spend from `pricing` (per-tier prices per million tokens, in
        # pricing.currency). Saved = teacher-equivalent - actual; both start at 0.
        self.cost = Counter(
            "distillery_cost_total",
            "Estimated model spend by the tier that ran (pricing.currency units).",
            ["tier"],
            registry=r,
        )
        self.teacher_equivalent_cost = Counter(
            "distillery_teacher_equivalent_cost_total",
            "What the same answered requests would have cost sent straight to the teacher.",
            registry=r,
        )
        for tier_name in ("student", "teacher"):
            self.cost.labels(tier_name)
        for reason in ("low_confidence", "student_error", "invalid_answer", "route_prior"):
            self.escalations.labels(reason)  # exported from 0, so rate() sees the first one
        for endpoint in ("completions", "chat"):  # likewise the escalation rate's denominator
            for tier_name in ("student", "teacher"):
                self.requests.labels(endpoint, tier_name, "ok")
        self.threshold = Gauge(
            "distillery_confidence_threshold",
            "Current escalation threshold of the cascade.",
            registry=r,
        )
        self.rejected = Counter(
            "distillery_rejected_requests_total",
            "Requests refused at admission, by reason (invalid_api_key, insufficient_scope,"
            " request_too_large, rate_limited, overloaded).",
            ["reason"],
            registry=r,
        )
        self.in_flight = Gauge(
            "distillery_in_flight_requests",
            "Inference requests admitted and not yet finished, in this ingress replica.",
            registry=r,
        )
        self.admin_actions = Counter(
            "distillery_admin_actions_total",
            "Changes made through the admin API, by action.",
            ["action"],
            registry=r,
        )
        # Teacher failure policy (router._resilience): every label value exported from 0.
        self.teacher_breaker_state = Gauge(
            "distillery_teacher_breaker_state",
            "Teacher circuit breaker in this ingress replica: 0 closed, 1 half-open, 2 open.",
            registry=r,
        )
        self.teacher_breaker_transitions = Counter(
            "distillery_teacher_breaker_transitions_total",
            "Teacher circuit breaker state changes, by the state entered.",
            ["state"],
            registry=r,
        )
        self.student_breaker_state = Gauge(
            "distillery_student_breaker_state",
            "Student tier circuit breaker in this ingress replica: 0 closed, 1 half-open, 2 open "
            "(open: requests go straight to the teacher).",
            registry=r,
        )
        self.student_breaker_transitions = Counter(
            "distillery_student_breaker_transitions_total",
            "Student tier circuit breaker state changes, by the state entered.",
            ["state"],
            registry=r,
        )
        self.teacher_errors = Counter(
            "distillery_teacher_errors_total",
            "Failed teacher calls (each attempt), by reason; circuit_open: failed fast, not called.",
            ["reason"],
            registry=r,
        )
        self.teacher_retries = Counter(
            "distillery_teacher_retries_total",
            "Teacher calls retried after a transient failure.",
            registry=r,
        )
        for state in BREAKER_STATE_CODES:
            self.teacher_breaker_transitions.labels(state)
            self.student_breaker_transitions.labels(state)
        for reason in TEACHER_ERROR_REASONS:
            self.teacher_errors.labels(reason)
        # Live quality (router._audit, POST /v1/feedback).
        self.audits = Counter(
            "distillery_audits_total",
            "Shadow audits of student-served answers, by the version that served and the verdict"
            " (agreed|disagreed with the teacher; disagreed is a missed escalation).",
            ["model_version", "verdict"],
            registry=r,
        )
        self.audits_dropped = Counter(
            "distillery_audits_dropped_total",
            "Sampled audits not completed, by reason (" + "|".join(AUDIT_DROP_REASONS) + ").",
            ["reason"],
            registry=r,
        )
        self.audit_share = Gauge(
            "distillery_audit_share",
            "Configured audit share of student-served answers, by slot (current|canary).",
            ["slot"],
            registry=r,
        )
        self.audit_cost = Counter(
            "distillery_audit_cost_total",
            "Estimated teacher spend of the audits (pricing.currency units; not in distillery_cost_total).",
            registry=r,
        )
        self.gate_agreement = Gauge(
            "distillery_gate_agreement",
            "Served agreement each audited student version showed at its gate (calibration.json).",
            ["model_version"],
            registry=r,
        )
        self.feedback_ratings = Counter(
            "distillery_feedback_ratings_total",
            "Application feedback (POST /v1/feedback), by the tier that answered and the verdict"
            " (good: rating >= 0.5|bad) and whether it carried a correction.",
            ["tier", "verdict", "correction"],
            registry=r,
        )
        for reason in AUDIT_DROP_REASONS:
            self.audits_dropped.labels(reason)
        for tier_name in ("student", "teacher"):
            for verdict in ("good", "bad"):
                for corrected in ("true", "false"):
                    self.feedback_ratings.labels(tier_name, verdict, corrected)
        self.audit_cost.inc(0)

    def set_route_prior(self, entries: Sequence[PriorEntry]) -> None:
        """The whole table, replaced: a (version, route) no longer in the window goes."""
        self.route_prior.clear()
        for e in entries:
            self.route_prior.labels(e.version, e.route, e.verdict or "none").set(e.rate)

    def canary_evidence(self) -> LiveMetrics:
        """This replica's per-version counts the canary is judged on (what it publishes to
        the registry's evidence board)."""
        text = generate_latest(self.registry.restricted_registry(CANARY_SAMPLES)).decode()
        return parse_live_metrics(text)

    def set_audit_config(self, config: AuditConfig) -> None:
        self.audit_share.labels("current").set(config.share)
        self.audit_share.labels("canary").set(config.canary_share)

    # ---- router.AuditObserver -----------------------------------------------------------
    def audit_verdict(self, verdict: AuditVerdict) -> None:
        version = verdict.student.model_version
        self.audits.labels(version, "agreed" if verdict.agreed else "disagreed").inc()
        if version in self._student_versions:  # not one retired while its audit ran
            self.set_gate_agreement(version, verdict.student.calibrated_agreement)
        teacher = verdict.teacher
        self.audit_cost.inc(self._pricing.teacher.cost(teacher.prompt_tokens, teacher.completion_tokens))

    def audit_dropped(self, reason: str) -> None:
        self.audits_dropped.labels(reason if reason in AUDIT_DROP_REASONS else "teacher_error").inc()

    def observe_rating(self, tier: str, rating: float, corrected: bool) -> None:
        verdict = "good" if rating >= 0.5 else "bad"
        self.feedback_ratings.labels(tier, verdict, str(corrected).lower()).inc()

    def set_backend(self, tier: str, backend: str, reason: str) -> None:
        for labels in list(self.backend_info._metrics):
            if labels[0] == tier:
                self.backend_info.remove(*labels)
        self.backend_info.labels(tier, backend, reason).set(1)

    def set_model(self, tier: str, model_id: str, version: str) -> None:
        for labels in list(self.model_info._metrics):
            if labels[0] == tier:
                self.model_info.remove(*labels)
        self.model_info.labels(tier, model_id, version).set(1)
        self._student_versions = [version] if tier == "student" else self._student_versions
        if tier == "student":
            self._audits_from_zero(version)

    def _audits_from_zero(self, version: str) -> None:
        """A student version's audit counters exist from 0, so rate() sees its first audit."""
        for verdict in ("agreed", "disagreed"):
            self.audits.labels(version, verdict)

    def set_gate_agreement(self, version: str, agreement: float | None) -> None:
        if agreement is not None:
            self.gate_agreement.labels(version).set(agreement)

    def _saw_student(self, model_id: str, version: str) -> None:
        """Versions answering now (current, and a canary beside it): at most the last
        ``MAX_STUDENT_VERSIONS`` stay labelled, so the label set stays bounded."""
        if version in self._student_versions:
            return
        self._student_versions.append(version)
        self.model_info.labels("student", model_id, version).set(1)
        self._audits_from_zero(version)
        while len(self._student_versions) > MAX_STUDENT_VERSIONS:
            old = self._student_versions.pop(0)
            for labels in list(self.model_info._metrics):
                if labels[0] == "student" and labels[2] == old:
                    self.model_info.remove(*labels)
            if (old,) in self.gate_agreement._metrics:
                self.gate_agreement.remove(old)

    def _route_label(self, route: str | None) -> str:
        if not route:
            return ""
        if route not in self._routes and len(self._routes) >= MAX_ROUTE_LABELS:
            return "other"
        self._routes.add(route)
        return route

    def _child(self, metric: _Labelled, *labels: str) -> Any:
        """``metric.labels(*labels)``, kept: prometheus-client validates and locks on every
        ``labels`` call, seven times a request here (a tenth of the ingress's own Python
        time per request, measured). Only for label sets that are never removed."""
        key = (id(metric), labels)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(*labels)
        return child

    def observe(
        self, endpoint: str, result: CascadeResult, elapsed_s: float, route: str | None = None
    ) -> None:
        """``route``: the request's route label (``metadata.route``, else
        ``feedback.route_labeler``'s), None when it has none."""
        tier = result.tier
        self._child(self.requests, endpoint, tier, result.outcome).inc()
        self._child(self.request_latency, tier).observe(elapsed_s)
        if result.decision is not None:
            self.confidence.observe(result.decision.confidence)
            self.threshold.set(result.threshold)
            student = result.student_answer
            version = result.student_version  # a student cancelled on its prefix counts too
            if version is not None:
                self._child(
                    self.student_answers, version, str(result.escalated).lower(), self._route_label(route)
                ).inc()
            if student is not None:
                self._saw_student(student.model_id, student.model_version)
        if result.student_latency_s:
            self._child(self.tier_latency, "student").observe(result.student_latency_s)
        if result.teacher_latency_s:
            self._child(self.tier_latency, "teacher").observe(result.teacher_latency_s)
        if result.escalated:
            reason = "student_error" if result.outcome == "student_failed" else "low_confidence"
            if result.decision is not None and result.decision.invalid is not None:
                reason = "invalid_answer"
            elif result.decision is None and result.decided_at_tokens == 0:
                reason = "route_prior"
            self._child(self.escalations, reason).inc()
        kind = result.output_kind
        if kind != "text":
            self._child(self.structured_requests, kind, tier).inc()
        gen = result.generation
        self._child(self.tokens, tier, "prompt").inc(gen.prompt_tokens)
        self._child(self.tokens, tier, "completion").inc(gen.completion_tokens)
        if result.student is not None and tier == "teacher":
            self._child(self.tokens, "student", "prompt").inc(result.student.prompt_tokens)
            self._child(self.tokens, "student", "completion").inc(result.student.completion_tokens)
        self._observe_cost(result)

    def _observe_cost(self, result: CascadeResult) -> None:
        """The student pays for every answer it produced (kept or escalated); the teacher for
        the answers it served. The teacher-only baseline prices the served answer's tokens."""
        gen, prices = result.generation, self._pricing
        student = result.student_answer
        if student is not None:
            spent = prices.student.cost(student.prompt_tokens, student.completion_tokens)
            self._child(self.cost, "student").inc(spent)
        teacher_cost = prices.teacher.cost(gen.prompt_tokens, gen.completion_tokens)
        if result.tier == "teacher":
            self._child(self.cost, "teacher").inc(teacher_cost)
        self.teacher_equivalent_cost.inc(teacher_cost)

    def observe_stream_timing(self, tier: str, seconds: float, what: str) -> None:
        """``what``: ``decision``, ``first_token`` or ``inter_token``."""
        histogram = {
            "decision": self.stream_decision,
            "first_token": self.stream_first_token,
            "inter_token": self.stream_inter_token,
        }[what]
        histogram.labels(tier).observe(seconds)

    def observe_late_doubt(self, model_version: str) -> None:
        self.late_doubts.labels(model_version).inc()

    def observe_error(self, endpoint: str, outcome: str) -> None:
        self.requests.labels(endpoint, "none", outcome).inc()

    # ---- router.TeacherObserver ---------------------------------------------------------
    def teacher_error(self, reason: str) -> None:
        self.teacher_errors.labels(reason if reason in TEACHER_ERROR_REASONS else "error").inc()

    def teacher_retry(self) -> None:
        self.teacher_retries.inc()

    def breaker_transition(self, old: BreakerState, new: BreakerState) -> None:
        self.teacher_breaker_state.set(BREAKER_STATE_CODES[new])
        self.teacher_breaker_transitions.labels(new).inc()

    def student_breaker_transition(self, old: BreakerState, new: BreakerState) -> None:
        self.student_breaker_state.set(BREAKER_STATE_CODES[new])
        self.student_breaker_transitions.labels(new).inc()

    def render(self) -> bytes:
        return generate_latest(self.registry)
