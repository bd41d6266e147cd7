"""The evaluation gate: a candidate replaces the serving student only if it is not worse.

Both models answer the same held-out teacher answers (never trained on) and the same
fixed regression suite covering every route. Compared: agreement with the label (the
configured agreement metric: exact, normalized, token F1 or chrF), format validity,
calibration of the confidence (expected calibration error), and the escalation rate each
would have at its own recalibrated threshold: thresholds belong to one model version, so
the candidate is recalibrated before it is judged.

Structured requests (a ``response_format`` or tools) are judged on their contract too:
agreement with the label is structural there (the same parsed JSON value; the same
functions with the same parsed arguments), never text equality; ``json_validity`` is the
share of their answers that keep the contract (``router.check_answer``), and an answer
that breaks it counts as invalid. Constrained decoding moves log-probs, so each
structured kind with enough answers gets its own recalibrated threshold
(``kind_thresholds``, written to ``CalibrationRecord.by_kind``).

Both are served for the evaluation by the engine that will serve them (``backend_factory``,
the serving factory in production: vLLM where installed), with the answer budget of the
model directory unless the config sets one.
"""

from __future__ import annotations

import asyncio
import math
from collections import Counter
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from common.model_dir import CalibrationRecord, CommitRecord, ModelManifest, read_model_version
from retrain._dataset import Pair
from retrain.config import GateConfig
from router import (
    AgreementMetric,
    Backend,
    CommitPoint,
    CommitSample,
    Generation,
    GenerationRequest,
    calibrate_commit,
    calibration_curve,
    confidence_logprobs,
    generate_requests,
    get_scorer,
    pick_threshold,
)
from router._contract import answer_agrees, check_answer

__all__ = [
    "CommitChoice",
    "commit_points",
    "DEFAULT_MAX_NEW_TOKENS",
    "BackendFactory",
    "EvalResult",
    "GateReport",
    "answer_valid",
    "evaluate_model",
    "expected_calibration_error",
    "judge",
    "kind_thresholds",
    "recalibration",
    "route_regression",
    "run_gate",
    "sign_test_p",
    "transformers_factory",
]

BackendFactory = Callable[[Path], Backend]
"""Builds the engine that serves a model directory (called inside the event loop that
uses it, as vLLM requires)."""

DEFAULT_MAX_NEW_TOKENS = 24


def transformers_factory(model_dir: Path) -> Backend:
    from router._transformers_backend import TransformersBackend

    return TransformersBackend(model_dir, num_threads=2)


def answer_budget(model_dir: Path, configured: int | None) -> int:
    """The configured answer length, else the model directory's, else 24 tokens."""
    if configured is not None:
        return configured
    manifest = ModelManifest.load(model_dir)
    if manifest is not None and manifest.max_new_tokens:
        return manifest.max_new_tokens
    return DEFAULT_MAX_NEW_TOKENS


def expected_calibration_error(
    confidences: Sequence[float], correct: Sequence[bool], bins: int = 10
) -> float:
    n = len(confidences)
    if n == 0:
        return 0.0
    total = 0.0
    for b in range(bins):
        lo, hi = b / bins, (b + 1) / bins
        idx = [i for i, c in enumerate(confidences) if (lo < c <= hi) or (b == 0 and c == 0.0)]
        if idx:
            acc = sum(correct[i] for i in idx) / len(idx)
            conf = sum(confidences[i] for i in idx) / len(idx)
            total += len(idx) / n * abs(acc - conf)
    return total


def answer_valid(request: GenerationRequest, gen: Generation) -> bool:
    """Non-empty, not cut by the length limit and, for a structured request, keeping its
    contract."""
    if not gen.text.strip() or gen.finish_reason != "stop":
        return False
    return request.output_kind == "text" or check_answer(request, gen.text, gen.finish_reason).valid


def kind_thresholds(
    kinds: Sequence[str],
    confidences: Sequence[float],
    correct: Sequence[bool],
    *,
    min_answers: int,
    target_agreement: float | None = None,
    target_escalation_rate: float | None = None,
) -> dict[str, float]:
    """A threshold per structured output kind (``json``, ``tool_call``) with at least
    ``min_answers`` labelled answers, picked on that kind's answers alone; kinds with
    fewer (and free text) use the overall threshold."""
    structured = [k if k != "text" else None for k in kinds]
    return group_thresholds(
        structured,
        confidences,
        correct,
        min_answers=min_answers,
        target_agreement=target_agreement,
        target_escalation_rate=target_escalation_rate,
    )


def group_thresholds(
    groups: Sequence[str | None],
    confidences: Sequence[float],
    correct: Sequence[bool],
    *,
    min_answers: int,
    target_agreement: float | None = None,
    target_escalation_rate: float | None = None,
) -> dict[str, float]:
    """A threshold per group (an output kind, a route) with at least ``min_answers``
    labelled answers, picked on that group's answers alone at the same target; answers of
    no group (None) and groups with fewer get none."""
    members: dict[str, list[int]] = {}
    for i, group in enumerate(groups):
        if group is not None:
            members.setdefault(group, []).append(i)
    out: dict[str, float] = {}
    for group, idx in sorted(members.items()):
        if len(idx) < min_answers:
            continue
        curve = calibration_curve([confidences[i] for i in idx], [correct[i] for i in idx])
        point = pick_threshold(
            curve, target_agreement=target_agreement, target_escalation_rate=target_escalation_rate
        )
        out[group] = point.threshold
    return out


@dataclass
class EvalResult:
    version: str
    holdout_agreement: float | None
    suite_accuracy: float
    per_skill: dict[str, float]
    invalid_rate: float
    ece: float
    threshold: float
    escalation_rate: float
    served_agreement: float
    json_validity: float | None = None
    """Share of the structured requests' answers (JSON, tool calls) that keep their
    contract; None when there were none."""
    structural_agreement: float | None = None
    """Share of the structured requests' answers that agree structurally with the label."""
    by_kind: dict[str, int] = field(default_factory=dict)
    """Requests judged, per output kind (``text``, ``json``, ``tool_call``)."""
    kind_thresholds: dict[str, float] = field(default_factory=dict)
    """Thresholds recalibrated per structured kind with enough answers."""
    route_thresholds: dict[str, float] = field(default_factory=dict)
    """Thresholds recalibrated per route with enough answers (they win over the kind's)."""
    commit: dict[str, CommitRecord] = field(default_factory=dict)
    """Where a live stream of each kind is decided, calibrated on these answers at the
    recalibrated threshold (``router._early``); a kind without one is decided whole."""
    answers: list[str] = field(default_factory=list, repr=False)
    """The model's greedy answers, holdout then suite (a quantized candidate is also judged
    on how often it answers as its parent: compared here, not generated a second time)."""
    suite_correct: dict[str, list[bool]] = field(default_factory=dict, repr=False)
    """Per route, whether each suite item (in suite order) agreed with its label: two models
    judged on the same suite pair up item by item (``route_regression``)."""
    suite_escalated: dict[str, list[bool]] = field(default_factory=dict, repr=False)
    """Per route, whether each suite item would escalate at this model's recalibrated
    threshold (its kind's, for a structured request): what serving it would do."""
    suite_scores: dict[str, list[tuple[str, float]]] = field(default_factory=dict, repr=False)
    """Per route, each suite item's output kind and confidence (``escalated_at``)."""
    item_valid: list[bool] = field(default_factory=list, repr=False)
    """Per item (holdout then suite), whether the answer was valid (``answer_valid``): two
    models judged on the same items pair up item by item (``invalid_regression``)."""

    def summary(self) -> dict[str, Any]:
        out = asdict(self)
        for private in ("answers", "suite_correct", "suite_escalated", "suite_scores", "item_valid"):
            del out[private]
        out["commit"] = {kind: record.model_dump(exclude_none=True) for kind, record in self.commit.items()}
        return out

    def escalated_at(self, calibration: CalibrationRecord) -> EvalResult:
        """The same answers, escalated at the thresholds of ``calibration`` (the serving
        student's own record: what users get from it today, not what it would get from a
        recalibration on the gate's sample)."""
        escalated = {
            skill: [conf < calibration.threshold_for(kind, skill) for kind, conf in items]
            for skill, items in self.suite_scores.items()
        }
        return replace(self, suite_escalated=escalated)


@dataclass
class GateReport:
    passed: bool
    reasons: list[str]
    candidate: EvalResult
    current: EvalResult
    config: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "passed": self.passed,
            "reasons": self.reasons,
            "candidate": self.candidate.summary(),
            "current": self.current.summary(),
            "config": self.config,
        }


@dataclass(frozen=True)
class CommitChoice:
    record: CommitRecord | None
    why: str
    points: list[CommitPoint] = field(default_factory=list)
    """Every candidate point at its cheapest bar: what deciding there would do."""


def commit_points(
    requests: Sequence[GenerationRequest],
    answers: Sequence[Generation],
    agrees: Sequence[bool],
    *,
    threshold: float,
    scorer: str,
    escalation_budget: float = 0.02,
) -> dict[str, CommitChoice]:
    """The commit point for text answers (structured ones are decided whole: their
    contract needs the whole answer), calibrated on the same answers as the threshold;
    ``escalation_budget``: ``GateConfig.commit_escalation_budget``."""
    samples = [
        CommitSample(tuple(confidence_logprobs(g, sampled=False)), ok)
        for r, g, ok in zip(requests, answers, agrees, strict=True)
        if r.output_kind == "text"
    ]
    cal = calibrate_commit(
        samples, threshold=threshold, scorer=scorer, max_extra_escalation=escalation_budget
    )
    chosen = cal.chosen
    record = (
        CommitRecord(
            tokens=chosen.commit_tokens,
            bar=chosen.bar,
            escalation_rate=chosen.escalation_rate,
            agreement=chosen.agreement,
            flips=chosen.flips,
            n=cal.n,
        )
        if chosen is not None
        else None
    )
    return {"text": CommitChoice(record, cal.why, list(cal.points))}


class GateEngines:
    """The engine the gate's models answer on, one after the other in one event loop: the
    next model's weights go into the engine already running where its backend can load
    them in place (``reload_from``: the vLLM backend, for a candidate and its parent),
    else its engine replaces the last one. The gate judged each model on an engine of its
    own: two engine starts, ~45 s of a refresh beside serving on 2 cores."""

    def __init__(self, factory: BackendFactory) -> None:
        self._factory = factory
        self._runner = asyncio.Runner()
        self._backend: Any = None

    def answers(
        self, model_dir: Path, requests: Sequence[GenerationRequest], batch_size: int
    ) -> list[Generation]:
        return self._runner.run(self._answers(model_dir, requests, batch_size))

    async def _answers(
        self, model_dir: Path, requests: Sequence[GenerationRequest], batch_size: int
    ) -> list[Generation]:
        backend, self._backend = self._backend, None
        if backend is not None:
            reload = getattr(backend, "reload_from", None)
            if reload is not None and await reload(model_dir):
                self._backend = backend
            else:
                await backend.close()
        if self._backend is None:
            self._backend = self._factory(model_dir)
        return await generate_requests(self._backend, requests, batch_size=batch_size)

    def close(self) -> None:
        backend, self._backend = self._backend, None
        try:
            if backend is not None:
                self._runner.run(backend.close())
        finally:
            self._runner.close()

    def __enter__(self) -> GateEngines:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def evaluate_model(
    model_dir: Path,
    holdout: Sequence[Pair],
    suite: Sequence[Pair],
    *,
    scorer: str = "mean_logprob",
    target_agreement: float = 0.995,
    agreement: AgreementMetric | None = None,
    backend_factory: BackendFactory = transformers_factory,
    max_new_tokens: int | None = None,
    batch_size: int = 64,
    min_kind_answers: int = 20,
    min_route_answers: int | None = None,
    engines: GateEngines | None = None,
    commit_escalation_budget: float = 0.02,
) -> EvalResult:
    """``min_kind_answers``: the answers a structured kind needs for its own threshold;
    ``min_route_answers``: a route's for its own (None: one threshold for all routes).
    ``engines``: the engine to answer on, shared with the gate's other model (None: one
    of its own, from ``backend_factory``).

    ``escalation_rate`` and ``served_agreement`` are what serving the model at these
    thresholds does (each answer judged by its route's bar, else its kind's, else the
    overall one) on the holdout and suite."""
    agree = agreement or AgreementMetric()
    pairs = list(holdout) + list(suite)
    budget = answer_budget(model_dir, max_new_tokens)
    requests = [p.to_request(budget) for p in pairs]
    with GateEngines(backend_factory) if engines is None else nullcontext(engines) as answering:
        gens = answering.answers(model_dir, requests, batch_size)
    kinds = [r.output_kind for r in requests]
    score = get_scorer(scorer)
    correct = [
        answer_agrees(r, g.text, g.finish_reason, p.completion, agree)
        for r, g, p in zip(requests, gens, pairs, strict=True)
    ]
    valid = [answer_valid(r, g) for r, g in zip(requests, gens, strict=True)]
    structured = [i for i, k in enumerate(kinds) if k != "text"]
    kept = [check_answer(requests[i], gens[i].text, gens[i].finish_reason).valid for i in structured]
    conf = [score(confidence_logprobs(g, sampled=False)) for g in gens]
    n_hold = len(holdout)
    # Routes weigh equally in the recalibration: a refresh's sample is mostly the drifted
    # route's, and pooled, an old route's few wrong answers barely moved the served
    # agreement (loop robustness seeds 1-2: 98% on the gate's 98 answers at a bar of 0.86,
    # capital 10 of 12 right; live, old routes' agreement fell 96% -> 90.5% after the swap).
    routes = [p.skill or "unlabelled" for p in pairs]
    per_route = Counter(routes)
    weights = [1.0 / per_route[r] for r in routes]
    point = pick_threshold(calibration_curve(conf, correct, weights), target_agreement=target_agreement)
    by_kind = kind_thresholds(
        kinds, conf, correct, min_answers=min_kind_answers, target_agreement=target_agreement
    )
    shared = CalibrationRecord(scorer=scorer, threshold=point.threshold, by_kind=by_kind)
    by_route = (
        group_thresholds(
            [p.skill for p in pairs],
            conf,
            correct,
            min_answers=min_route_answers,
            target_agreement=target_agreement,
        )
        if min_route_answers is not None
        else {}
    )
    # A route's own bar only ever lowers the one its answers would get: where the shared bar
    # is too low for a route's target, raising it there escalated right answers the current
    # student served (live, loop robustness seed 2: order_number 0.996 vs 0.977 shared,
    # escalation 0.16 -> 0.29 of its suite, refused), while lowering it for a route that is
    # right at lower confidence is what the bars are for.
    by_route = {
        route: bar
        for route, bar in by_route.items()
        if bar < min(shared.threshold_for(kinds[i]) for i, p in enumerate(pairs) if p.skill == route)
    }
    record = shared.model_copy(update={"by_route": by_route})
    served = [conf[i] >= record.threshold_for(kinds[i], pairs[i].skill) for i in range(len(pairs))]
    per_skill: dict[str, list[bool]] = {}
    escalated: dict[str, list[bool]] = {}
    scores: dict[str, list[tuple[str, float]]] = {}
    for i, p in enumerate(suite, start=n_hold):
        skill = p.skill or "unlabelled"
        per_skill.setdefault(skill, []).append(correct[i])
        escalated.setdefault(skill, []).append(not served[i])
        scores.setdefault(skill, []).append((kinds[i], conf[i]))
    served_right = [c for c, s in zip(correct, served, strict=True) if s]
    return EvalResult(
        version=read_model_version(model_dir),
        holdout_agreement=(sum(correct[:n_hold]) / n_hold) if n_hold else None,
        suite_accuracy=sum(correct[n_hold:]) / max(1, len(suite)),
        per_skill={k: sum(v) / len(v) for k, v in sorted(per_skill.items())},
        suite_correct=dict(sorted(per_skill.items())),
        suite_escalated=dict(sorted(escalated.items())),
        suite_scores=dict(sorted(scores.items())),
        invalid_rate=1 - sum(valid) / len(valid),
        ece=expected_calibration_error(conf[n_hold:], correct[n_hold:]),
        threshold=point.threshold,
        escalation_rate=1 - len(served_right) / len(served) if served else 0.0,
        served_agreement=sum(served_right) / len(served_right) if served_right else 1.0,
        json_validity=sum(kept) / len(kept) if kept else None,
        structural_agreement=sum(correct[i] for i in structured) / len(structured) if structured else None,
        by_kind=dict(sorted(Counter(kinds).items())),
        kind_thresholds=by_kind,
        route_thresholds=by_route,
        commit={
            kind: choice.record
            for kind, choice in commit_points(
                requests,
                gens,
                correct,
                threshold=point.threshold,
                scorer=scorer,
                escalation_budget=commit_escalation_budget,
            ).items()
            if choice.record is not None
        },
        answers=[g.text for g in gens],
        item_valid=valid,
    )


def run_gate(
    current_dir: Path,
    candidate_dir: Path,
    holdout: Sequence[Pair],
    suite: Sequence[Pair],
    config: GateConfig,
    *,
    scorer: str = "mean_logprob",
    agreement: AgreementMetric | None = None,
    backend_factory: BackendFactory = transformers_factory,
) -> GateReport:
    agree = agreement or AgreementMetric()
    report_config = {**config.model_dump(mode="json"), "agreement": agree.name}
    if not holdout and not suite:  # no evidence either way: refuse, never promote blind
        cur, cand = _unjudged(current_dir), _unjudged(candidate_dir)
        why = "nothing to judge the candidate on: no held-out teacher answers and no regression suite"
        return GateReport(False, [why], cand, cur, report_config)

    def evaluate(model_dir: Path, engines: GateEngines) -> EvalResult:
        return evaluate_model(
            model_dir,
            holdout,
            suite,
            scorer=scorer,
            target_agreement=config.target_agreement,
            agreement=agree,
            backend_factory=backend_factory,
            max_new_tokens=config.max_new_tokens,
            batch_size=config.batch_size,
            min_kind_answers=config.min_kind_calibration,
            min_route_answers=config.min_route_calibration,
            engines=engines,
            commit_escalation_budget=config.commit_escalation_budget,
        )

    with GateEngines(backend_factory) as engines:
        cur, cand = evaluate(current_dir, engines), evaluate(candidate_dir, engines)
    serving = CalibrationRecord.load(current_dir)
    # Per route, the candidate at the threshold it would be served at (the recalibrated
    # one, written next to it on promotion) against the current at the one it is served at.
    # Recalibrated on a gate sample dominated by a drifted route, the current's threshold
    # can drop far below its own (0.958 vs 0.988 on the real pair), which made it look as if
    # it escalated almost nothing on its old routes.
    served_cur = cur.escalated_at(serving) if serving is not None else cur
    if serving is not None and config.min_route_calibration is not None:
        cand = keep_current_bars(served_cur, cand, serving)
    reasons = judge(served_cur, cand, config)
    return GateReport(not reasons, reasons or ["all checks passed"], cand, cur, report_config)


def keep_current_bars(cur: EvalResult, cand: EvalResult, serving: CalibrationRecord) -> EvalResult:
    """Old routes too small for a bar of their own keep the one they are served at today.

    A refresh's recalibration is dominated by the routes it was trained for; the candidate's
    shared threshold can rise above the one the current version serves a small old route
    at, and that route's right answers then escalate (loop robustness seed 3: the shared
    bar 0.985 -> 0.992, ``capital``'s 13 suite items below ``min_route_calibration``, its
    live escalations 7.5% -> 15.5% after the swap). Such a route (text answers only: a
    route's bar wins over a kind's) gets the current's bar as its own where the candidate,
    at that bar, serves no more of its suite items wrong than the current does; a bar is
    only ever lowered. ``cand``'s overall escalation rate is left as recalibrated (lowering
    a route's bar can only lower it, so the gate's comparison stays conservative)."""
    route_bars = dict(cand.route_thresholds)
    escalated = dict(cand.suite_escalated)
    for route, items in cand.suite_scores.items():
        if route in route_bars or route == "unlabelled" or any(kind != "text" for kind, _ in items):
            continue
        bar = serving.threshold_for("text", route)
        if bar >= cand.threshold:
            continue
        now_right, was_right, was_esc = (
            cand.suite_correct.get(route),
            cur.suite_correct.get(route),
            cur.suite_escalated.get(route),
        )
        if (
            now_right is None
            or was_right is None
            or was_esc is None
            or not len(now_right) == len(was_right) == len(items)
        ):
            continue
        kept = [conf >= bar for _, conf in items]
        now_wrong = sum(k and not r for k, r in zip(kept, now_right, strict=True))
        was_wrong = sum(not e and not r for e, r in zip(was_esc, was_right, strict=True))
        if now_wrong <= was_wrong:
            route_bars[route] = bar
            escalated[route] = [not k for k in kept]
    return replace(cand, route_thresholds=route_bars, suite_escalated=escalated)


def judge(cur: EvalResult, cand: EvalResult, config: GateConfig) -> list[str]:
    """Why ``cand`` may not replace ``cur`` (empty: it may). Pure: unit-tested on numbers."""
    reasons: list[str] = []
    if cand.holdout_agreement is not None and cur.holdout_agreement is not None:
        need = cur.holdout_agreement + config.min_holdout_agreement_gain
        if cand.holdout_agreement < need:
            reasons.append(f"holdout agreement {cand.holdout_agreement:.3f} < required {need:.3f}")
    for skill in cur.per_skill:
        reasons += route_regression(skill, cur, cand, config)
    ece_bar = max(config.max_ece, cur.ece + config.max_ece_increase)
    if cand.ece > ece_bar + 1e-9:
        reasons.append(f"calibration error {cand.ece:.3f} > {ece_bar:.3f} (current {cur.ece:.3f})")
    reasons += invalid_regression(cur, cand, config)
    if cand.json_validity is not None and cur.json_validity is not None:
        cur_valid, cand_valid = cur.json_validity, cand.json_validity
        validity_bar = min(config.min_json_validity, cur_valid)
        if cand_valid < validity_bar - 1e-9:
            reasons.append(f"JSON validity {cand_valid:.3f} < {validity_bar:.3f} (current {cur_valid:.3f})")
    if cand.structural_agreement is not None and cur.structural_agreement is not None:
        cur_agree, cand_agree = cur.structural_agreement, cand.structural_agreement
        if cand_agree < cur_agree - config.max_skill_regression - 1e-9:
            reasons.append(f"structural agreement regressed {cur_agree:.3f} -> {cand_agree:.3f}")
    if cand.escalation_rate > cur.escalation_rate + 1e-9:
        reasons.append(
            f"escalation rate at its calibrated threshold {cand.escalation_rate:.3f} "
            f"> current {cur.escalation_rate:.3f}"
        )
    return reasons


def sign_test_p(lost: int, gained: int) -> float:
    """One-sided exact sign test: the chance of losing at least ``lost`` of the
    ``lost + gained`` items on which two equally good models differ."""
    n = lost + gained
    if n == 0:
        return 1.0
    return float(sum(math.comb(n, k) for k in range(lost, n + 1)) / 2**n)


def paired_change(bad_before: Sequence[bool], bad_after: Sequence[bool]) -> tuple[int, int, float]:
    """Items that became bad, items that stopped being bad (two models on the same items),
    and ``sign_test_p`` of the first against the second."""
    worse = sum(a and not b for b, a in zip(bad_before, bad_after, strict=True))
    better = sum(b and not a for b, a in zip(bad_before, bad_after, strict=True))
    return worse, better, sign_test_p(worse, better)


def invalid_regression(cur: EvalResult, cand: EvalResult, config: GateConfig) -> list[str]:
    """Why ``cand`` gives invalid answers (empty, cut off, breaking a contract) too often.

    Above ``max(max_invalid_rate, current + max_invalid_increase)``, and, where both models
    answered the same items, beyond chance: the items that became invalid outnumber those
    that became valid (``sign_test_p`` < ``route_regression_alpha``), the rule the routes
    follow. A gate sample holds ~100 items, where one answer is a point: loop robustness
    seed 1 refused a candidate for 2 of 96 answers cut off (0.021 > 0.020) that had cut
    escalation at its threshold from 40.6% to 7.3%, kept order_number at 98.0% and taken
    held-out agreement from 0 to 0.82. Without per-item answers, the rates alone decide."""
    bar = max(config.max_invalid_rate, cur.invalid_rate + config.max_invalid_increase)
    if cand.invalid_rate <= bar + 1e-9:
        return []
    why = f"invalid answers {cand.invalid_rate:.3f} > {bar:.3f} (current {cur.invalid_rate:.3f})"
    if not cur.item_valid or len(cur.item_valid) != len(cand.item_valid):
        return [why]
    worse, better, p = paired_change([not v for v in cur.item_valid], [not v for v in cand.item_valid])
    if p >= config.route_regression_alpha:
        return []
    return [f"{why}: {worse} became invalid, {better} valid (sign test p={p:.3f})"]


def route_regression(skill: str, cur: EvalResult, cand: EvalResult, config: GateConfig) -> list[str]:
    """Why ``cand`` would serve route ``skill`` worse than ``cur`` does (empty: it would not).
    Only a route the current student masters is protected.

    With both models' answers per suite item, what serving them would do is compared (the
    current at its served threshold, ``run_gate``; the candidate at its recalibrated one):
    the share of items *served wrong* (kept, and disagreeing with the label) may rise by
    ``max_skill_regression``, the share *escalated*
    by ``max_route_escalation_increase``, and a rise beyond that counts only when the items
    that got worse outnumber those that got better beyond chance (``sign_test_p`` <
    ``route_regression_alpha``). Greedy accuracy alone is not the measure: a candidate that
    answers a few items in another of the teacher's templates ("The order number is 9320."
    for "The order number in this message is 9320.") and escalates every one of them serves
    the route as well, at a cost the escalation check sees. Without per-item answers (a
    report built from numbers), the accuracy drop decides."""
    acc, new = cur.per_skill[skill], cand.per_skill.get(skill, 0.0)
    if acc < config.min_route_accuracy:
        return []
    was_right, now_right = cur.suite_correct.get(skill), cand.suite_correct.get(skill)
    was_esc, now_esc = cur.suite_escalated.get(skill), cand.suite_escalated.get(skill)
    if (
        was_right is None
        or now_right is None
        or was_esc is None
        or now_esc is None
        or not len(was_right) == len(now_right) == len(was_esc) == len(now_esc)
    ):
        if new < acc - config.max_skill_regression:
            return [f"route {skill!r} regressed {acc:.3f} -> {new:.3f}"]
        return []
    was_wrong = [not e and not r for r, e in zip(was_right, was_esc, strict=True)]
    now_wrong = [not e and not r for r, e in zip(now_right, now_esc, strict=True)]
    checks = (
        ("serves wrong answers", was_wrong, now_wrong, config.max_skill_regression),
        ("escalates", was_esc, now_esc, config.max_route_escalation_increase),
    )
    reasons: list[str] = []
    for what, before, after, bar in checks:
        n = len(before)
        rate_before, rate_after = sum(before) / n, sum(after) / n
        if rate_after <= rate_before + bar + 1e-9:
            continue
        worse, better, p = paired_change(before, after)
        if p < config.route_regression_alpha:
            reasons.append(
                f"route {skill!r} {what} more: {rate_before:.3f} -> {rate_after:.3f} of {n} items"
                f" ({worse} worse, {better} better: sign test p={p:.3f})"
            )
    return reasons


def recalibration(
    report: GateReport, config: GateConfig, *, scorer: str, agreement: str, n: int, source: str
) -> CalibrationRecord:
    """The candidate's ``calibration.json``: the threshold the gate recalibrated it to,
    and one per structured kind and per route that had enough answers (``by_kind``,
    ``by_route``)."""
    cand = report.candidate
    return CalibrationRecord(
        scorer=scorer,
        threshold=cand.threshold,
        by_kind=dict(cand.kind_thresholds),
        by_route=dict(cand.route_thresholds),
        commit=dict(cand.commit),
        target={"agreement": config.target_agreement},
        escalation_rate=cand.escalation_rate,
        agreement=cand.served_agreement,
        agreement_metric=agreement,
        n=n,
        source=source,
        student_version=cand.version,
    )


def _unjudged(model_dir: Path) -> EvalResult:
    return EvalResult(read_model_version(model_dir), None, 0.0, {}, 0.0, 0.0, 1.0, 1.0, 1.0)
