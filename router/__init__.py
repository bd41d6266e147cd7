"""The cascade: model backends, confidence scoring, threshold policy and calibration."""

from router._agreement import AGREEMENT_METRICS, AgreementConfig, AgreementMetric, agreement_score
from router._audit import AUDIT_DROP_REASONS, AuditConfig, AuditObserver, AuditVerdict, ShadowAuditor
from router._auroc import auroc
from router._backend import Backend
from router._batching import generate_prompts, generate_requests
from router._calibration import CalibrationPoint, calibration_curve, pick_threshold
from router._cascade import CascadeResult, CascadeRouter, GenerationClient, Tier
from router._contract import AnswerCheck, answer_agrees, check_answer, decoding_schema, structural_agreement
from router._early import CommitPoint, CommitRule, CommitSample, EarlyDecider, calibrate_commit
from router._factory import build_backend
from router._openai_backend import OpenAIHTTPBackend
from router._policy import Decision, ThresholdPolicy
from router._prior import NO_PRIOR, EscalationPrior, PriorConfig, PriorEntry, RoutePrior, learn_prior
from router._render import prompt_token_ids, render_prompt
from router._resilience import (
    BREAKER_STATE_CODES,
    TEACHER_ERROR_REASONS,
    BreakerState,
    CircuitBreaker,
    RetryPolicy,
    TeacherObserver,
)
from router._scoring import (
    SCORER_NAMES,
    ConfidenceScorer,
    SampledConfidence,
    all_scores,
    confidence_logprobs,
    get_scorer,
)
from router._streaming import Chunk, Decided, StreamBroken, StreamEnd, StreamingCascade, TierItem
from router._types import (
    ChatTurn,
    Generation,
    GenerationRequest,
    OutputKind,
    ResponseFormat,
    StreamHead,
    TokenDelta,
    ToolCall,
    ToolSpec,
)
from router.config import BackendConfig, CascadeConfig
from router.pricing import PricingConfig, RequestCost, TierPrice

__all__ = [
    "NO_PRIOR",
    "EscalationPrior",
    "PriorConfig",
    "PriorEntry",
    "RoutePrior",
    "learn_prior",
    "Chunk",
    "Decided",
    "CommitPoint",
    "CommitRule",
    "CommitSample",
    "EarlyDecider",
    "StreamBroken",
    "StreamEnd",
    "StreamHead",
    "StreamingCascade",
    "TierItem",
    "TokenDelta",
    "calibrate_commit",
    "AnswerCheck",
    "OutputKind",
    "ResponseFormat",
    "ToolCall",
    "ToolSpec",
    "answer_agrees",
    "check_answer",
    "decoding_schema",
    "structural_agreement",
    "AGREEMENT_METRICS",
    "AUDIT_DROP_REASONS",
    "AuditConfig",
    "AuditObserver",
    "AuditVerdict",
    "ShadowAuditor",
    "AgreementConfig",
    "AgreementMetric",
    "agreement_score",
    "confidence_logprobs",
    "generate_requests",
    "prompt_token_ids",
    "render_prompt",
    "BREAKER_STATE_CODES",
    "SCORER_NAMES",
    "SampledConfidence",
    "TEACHER_ERROR_REASONS",
    "Backend",
    "BackendConfig",
    "BreakerState",
    "CalibrationPoint",
    "CascadeConfig",
    "CascadeResult",
    "CascadeRouter",
    "ChatTurn",
    "CircuitBreaker",
    "ConfidenceScorer",
    "Decision",
    "Generation",
    "GenerationClient",
    "GenerationRequest",
    "OpenAIHTTPBackend",
    "PricingConfig",
    "RequestCost",
    "RetryPolicy",
    "TeacherObserver",
    "ThresholdPolicy",
    "TierPrice",
    "Tier",
    "all_scores",
    "auroc",
    "build_backend",
    "generate_prompts",
    "calibration_curve",
    "get_scorer",
    "pick_threshold",
]
