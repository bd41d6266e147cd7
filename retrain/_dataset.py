"""Builds a distillation dataset from the feedback store.

Teacher answers to escalated prompts are the new signal; the student's own training data
is replayed beside them so old skills are not forgotten. Deduplicated by prompt (the
latest teacher answer wins), rows without a usable teacher answer are dropped, and the
train/holdout split is the store's stable hash of the request id: the holdout is never
trained on, whichever machine builds the set.

Chat fidelity: a chat escalation is kept whole (system prompt, earlier turns, the last
user turn), never reduced to its last user message, so the trainer renders it with the
student's own chat template exactly as serving does (``Pair.to_request`` is the request
the backend would have been given). "The same prompt" means the same whole conversation.

The contract too: a request that asked for JSON (``response_format``) or offered tools
keeps them (``Pair.contract``), and the turns keep their tool calls and tool results
(``Pair.tool_turns``), so ``to_request`` is again the whole request the student was
served: ``render_prompt`` renders the tools and tool turns with the student's tool
format and, for a forced call, ends with the ``<tool_call>`` opener. The same conversation
under another schema or other tools is another prompt. A structured label must keep its
contract (``router.check_answer``), or it is dropped as ``contract:<reason>``; a tool-call
label is stored in its one canonical text (``router._contract.tool_calls_text``).

Which answer teaches a prompt (corrections, confirmed teacher answers, plain ones; what
verifiers and a second teacher reject) is ``retrain._labels``'s rule; this module applies
it to what the store holds and counts every label by source and every rejection by reason.
"""

from __future__ import annotations

import hashlib
import json
import random
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

from common.model_dir import REFERENCE_FILE, ToolFormat
from feedback import EscalationEvent, FeedbackStore
from retrain._labels import LABEL_PRECEDENCE, SecondOpinion, Verifier, build_verifiers, second_opinions
from retrain.config import DistillConfig
from retrain.errors import NotEnoughFeedback
from router import AgreementMetric, ChatTurn, GenerationRequest, render_prompt
from router._contract import check_answer, forced_tool, schema_text, tool_calls_text
from router._types import ResponseFormat, ToolCall, ToolSpec

__all__ = [
    "REFERENCE_FILE",
    "DistillDataset",
    "Pair",
    "build_dataset",
    "load_pairs",
    "load_reference",
    "save_pairs",
]

Turns = tuple[tuple[str, str], ...]

STRUCTURED_ANSWER_TOKENS = 64
"""The least answer budget of a structured pair (``Pair.to_request``)."""


def _json_text(value: Any) -> str:
    """A JSON value as the gateway writes a call's arguments (key order kept)."""
    return json.dumps(value, ensure_ascii=False)


def request_contract(request: GenerationRequest) -> str | None:
    """What the answer must be, as one JSON text: ``response_format`` (its schema as an
    object), ``tools`` with ``tool_choice`` and ``parallel_tool_calls``; None for a request
    with neither (free text, rendered without tools)."""
    out: dict[str, Any] = {}
    fmt = request.response_format
    if fmt is not None:
        schema = None if fmt.schema_text is None else json.loads(fmt.schema_text)
        out["response_format"] = {"type": fmt.type, "schema": schema, "name": fmt.name, "strict": fmt.strict}
    if request.tools:
        out["tools"] = [
            {
                "name": t.name,
                "description": t.description,
                "parameters": json.loads(t.parameters),
                "strict": t.strict,
            }
            for t in request.tools
        ]
        out["tool_choice"] = request.tool_choice
        out["parallel_tool_calls"] = request.parallel_tool_calls
    return schema_text(out) if out else None


def _contract_fields(contract: str | None) -> dict[str, Any]:
    """``request_contract``'s text back as ``GenerationRequest`` fields (schemas as the
    gateway writes them: key order kept)."""
    if contract is None:
        return {}
    spec = json.loads(contract)
    out: dict[str, Any] = {}
    fmt = spec.get("response_format")
    if fmt is not None and fmt.get("type") != "text":
        named = fmt.get("json_schema") if isinstance(fmt.get("json_schema"), dict) else fmt  # OpenAI's shape
        schema = named.get("schema")
        out["response_format"] = ResponseFormat(
            type=fmt["type"],
            schema_text=None if schema is None else schema_text(schema),
            name=named.get("name", "response"),
            strict=bool(named.get("strict", False)),
        )
    if spec.get("tools"):
        functions = [t.get("function") or t for t in spec["tools"]]
        out["tools"] = tuple(
            ToolSpec(
                name=t["name"],
                description=t.get("description") or "",
                parameters=schema_text(t.get("parameters") or {"type": "object", "properties": {}}),
                strict=bool(t.get("strict", False)),
            )
            for t in functions
        )
        choice = spec.get("tool_choice", "auto")
        out["tool_choice"] = choice["function"]["name"] if isinstance(choice, dict) else choice
        out["parallel_tool_calls"] = bool(spec.get("parallel_tool_calls", True))
    return out


def _contract_of(spec: dict[str, Any]) -> str | None:
    """``request_contract`` of a row's or an event's ``response_format`` / ``tools`` /
    ``tool_choice`` / ``parallel_tool_calls`` (read as ``GenerationRequest`` fields, so
    every source spells one contract the same way)."""
    spec = {k: v for k, v in spec.items() if v is not None}
    if spec.get("response_format") is None and not spec.get("tools"):
        return None
    return request_contract(GenerationRequest(prompt="-", **_contract_fields(_json_text(spec))))


def _event_contract(event: EscalationEvent) -> str | None:
    fmt = event.response_format
    return _contract_of(
        {
            "response_format": None
            if fmt is None
            else {"type": fmt.type, "schema": fmt.json_schema, "name": fmt.name, "strict": fmt.strict},
            "tools": [t.model_dump(mode="json") for t in event.tools],
            "tool_choice": event.tool_choice,
            "parallel_tool_calls": event.parallel_tool_calls,
        }
    )


def _call(call: dict[str, Any]) -> dict[str, Any]:
    """``{"id", "name", "arguments"}`` (OpenAI's ``{"function": {...}}`` too), the
    arguments as a JSON object when they are one (their text otherwise)."""
    fn = call.get("function") or call
    arguments = fn.get("arguments", {})
    if isinstance(arguments, str):
        try:
            parsed = json.loads(arguments or "{}")
        except ValueError:
            parsed = None
        arguments = parsed if isinstance(parsed, dict) else arguments
    return {"id": call.get("id") or "", "name": fn["name"], "arguments": arguments}


def _turn_tools(turn: dict[str, Any]) -> dict[str, Any]:
    """One turn's tool fields (empty for a plain turn)."""
    out: dict[str, Any] = {}
    if turn.get("tool_calls"):
        out["tool_calls"] = [_call(c) for c in turn["tool_calls"]]
    for name in ("tool_call_id", "name"):
        if turn.get(name) is not None:
            out[name] = turn[name]
    return out


def _tool_turns(turns: Sequence[dict[str, Any]]) -> str | None:
    """Every turn's tool fields as one JSON list, or None when all turns are plain. Key
    order is kept (not sorted): an earlier call's arguments are rendered in it."""
    extras = [_turn_tools(t) for t in turns]
    return _json_text(extras) if any(extras) else None


def _arguments_text(arguments: Any) -> str:
    return arguments if isinstance(arguments, str) else _json_text(arguments)


@dataclass(frozen=True)
class Pair:
    """A request and the answer it should get.

    ``prompt`` is the raw prompt, or for chat the last user turn (what drift checks and
    route labels read); ``messages`` is the whole conversation for chat requests, as
    (role, content) pairs; ``tool_turns`` their tool calls, tool-call ids and names (a JSON
    list, one object per turn; None when every turn is plain); ``contract`` what the answer
    must be (``request_contract``; None for free text without tools)."""

    prompt: str
    completion: str
    skill: str | None = None
    source: str = "teacher"
    messages: Turns | None = None
    contract: str | None = None
    tool_turns: str | None = None

    @property
    def key(self) -> str:
        """What "the same prompt" means: the whole conversation for chat, with its tool
        turns and the contract its answer had to keep."""
        base: Any = self.prompt if self.messages is None else self.messages
        if self.contract is None and self.tool_turns is None:
            return base if isinstance(base, str) else json.dumps(base, ensure_ascii=False)
        return json.dumps([base, self.tool_turns, self.contract], ensure_ascii=False)

    def to_request(self, max_tokens: int) -> GenerationRequest:
        """The request as served. ``max_tokens`` is the workload's free-text budget; a pair
        with a contract gets at least ``STRUCTURED_ANSWER_TOKENS`` (a JSON object or a tool
        call is longer than a short text answer, and one cut at the limit is invalid: the
        gate would refuse every candidate on answers the budget cut, not the model)."""
        fields = _contract_fields(self.contract)
        if fields:
            max_tokens = max(max_tokens, STRUCTURED_ANSWER_TOKENS)
        if self.messages is None:
            return GenerationRequest(prompt=self.prompt, max_tokens=max_tokens, **fields)
        extras: list[dict[str, Any]] = (
            json.loads(self.tool_turns) if self.tool_turns else [{} for _ in self.messages]
        )
        turns = tuple(
            ChatTurn(
                role=r,  # type: ignore[arg-type]
                content=c,
                name=extra.get("name"),
                tool_call_id=extra.get("tool_call_id"),
                tool_calls=tuple(
                    ToolCall(id=t.get("id", ""), name=t["name"], arguments=_arguments_text(t["arguments"]))
                    for t in extra.get("tool_calls", ())
                ),
            )
            for (r, c), extra in zip(self.messages, extras, strict=True)
        )
        return GenerationRequest(messages=turns, max_tokens=max_tokens, **fields)

    def served_prompt(self, tokenizer: Any, tool_format: ToolFormat | None = None) -> str:
        """The prompt as the model reads it when it answers: the raw prompt, or the chat
        rendered by ``router.render_prompt`` (tools, tool turns, a forced call's opener)."""
        if self.messages is None:
            return self.prompt
        return render_prompt(tokenizer, self.to_request(1), tool_format)

    def to_row(self) -> dict[str, Any]:
        row: dict[str, Any] = {"prompt": self.prompt, "completion": self.completion, "skill": self.skill}
        if self.messages is not None:
            extras = json.loads(self.tool_turns) if self.tool_turns else [{} for _ in self.messages]
            row["messages"] = [
                {"role": r, "content": c, **extra}
                for (r, c), extra in zip(self.messages, extras, strict=True)
            ]
        if self.contract is not None:
            row.update(json.loads(self.contract))
        return row

    @classmethod
    def from_row(cls, row: dict[str, Any], source: str) -> Pair:
        """A JSONL row: ``prompt`` or ``messages`` (OpenAI-style turns, with ``tool_calls``
        as ``{"id", "name", "arguments"}``), ``completion``, optional ``skill``/``route``
        and the request's ``response_format`` / ``tools`` / ``tool_choice`` /
        ``parallel_tool_calls`` as ``to_row`` writes them."""
        messages = row.get("messages")
        turns: Turns | None = None
        tool_turns = None
        if messages:
            turns = tuple((str(m["role"]), str(m.get("content") or "")) for m in messages)
            tool_turns = _tool_turns(messages)
        prompt = row.get("prompt")
        if prompt is None and turns is not None:
            prompt = next((c for r, c in reversed(turns) if r == "user"), "")
        keys = ("response_format", "tools", "tool_choice", "parallel_tool_calls")
        contract = _contract_of({k: row.get(k) for k in keys})
        return cls(
            str(prompt or ""),
            str(row["completion"]),
            row.get("skill") or row.get("route"),
            source,
            turns,
            contract,
            tool_turns,
        )

    @classmethod
    def from_event(cls, event: EscalationEvent, answer: str, source: str = "teacher") -> Pair:
        turns = tool_turns = None
        if event.messages is not None:
            turns = tuple((m.role, m.content) for m in event.messages)
            tool_turns = _tool_turns([m.model_dump(mode="json") for m in event.messages])
        return cls(
            event.prompt_text(), answer, event.skill, source, turns, _event_contract(event), tool_turns
        )

    def under_contract(self) -> tuple[Pair | None, str | None]:
        """This pair as a label that keeps its contract, or why it cannot be one.

        A free-text pair is returned as it is. A structured one must pass
        ``check_answer``; a tool-call answer is rewritten in its canonical text (the JSON
        list after the opener for a forced call, ``<tool_call>...</tool_call>`` otherwise),
        which is what the student is trained and served to write."""
        request = self.to_request(1)
        if request.output_kind == "text":
            return self, None
        check = check_answer(request, self.completion, "stop")
        if not check.valid:
            return None, f"contract:{check.reason}"
        if check.tool_calls and (forced_tool(request) or check.content is None):
            canonical = tool_calls_text(check.tool_calls, forced=forced_tool(request))
            return replace(self, completion=canonical), None
        return self, None


@dataclass
class DistillDataset:
    train: list[Pair]
    holdout: list[Pair]
    new_examples: int
    replay_examples: int
    dropped: int
    by_skill: dict[str, int] = field(default_factory=dict)
    by_source: dict[str, int] = field(default_factory=dict)
    """Training examples per label source (correction, teacher_agreed, teacher, audit, replay)."""
    rejected: dict[str, int] = field(default_factory=dict)
    """Labels not used, by reason (unusable, rated_bad, contract:<reason>, verifier:<name>,
    second_teacher_disagreed)."""
    new_by_skill: dict[str, int] = field(default_factory=dict)
    """New (not replayed) training examples per route label: what the refresh is for."""

    @property
    def sha256(self) -> str:
        blob = json.dumps([[p.key, p.completion] for p in self.train], ensure_ascii=False)
        return hashlib.sha256(blob.encode()).hexdigest()


def load_pairs(path: Path, source: str) -> list[Pair]:
    """JSONL rows of ``prompt`` or ``messages``, ``completion`` and optional ``skill``/``route``."""
    if not path.is_file():
        return []
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [Pair.from_row(r, source) for r in rows]


def save_pairs(pairs: Sequence[Pair], path: Path) -> None:
    path.write_text("".join(json.dumps(p.to_row(), ensure_ascii=False) + "\n" for p in pairs))


def load_reference(model_dir: Path) -> list[Pair]:
    """The student's training sample (``train_reference.jsonl``, written by whoever built it)."""
    return load_pairs(model_dir / REFERENCE_FILE, "replay")


def _usable(answer: str | None) -> bool:
    return bool(answer and answer.strip())


@dataclass
class _Labeller:
    """Chooses one label per prompt for one split, counting what it rejects."""

    verifiers: Sequence[Verifier]
    second_teacher: SecondOpinion | None
    agreement: AgreementMetric
    rejected: Counter[str]

    def labels(
        self, events: Sequence[EscalationEvent], ratings: Sequence[EscalationEvent]
    ) -> dict[str, Pair]:
        rated = {r.request_id: r for r in ratings if r.rating is not None}
        found: list[tuple[Pair, float]] = []
        for r in rated.values():
            if r.correction is not None and r.correction.strip() and r.prompt_text().strip():
                pair = self._kept(Pair.from_event(r, r.correction.strip(), "correction"))
                if pair is not None:
                    found.append((pair, r.created_at))
        found += self._confirmed(self._teacher_labels(events, rated))
        chosen: dict[str, tuple[Pair, tuple[int, float]]] = {}
        for pair, created_at in found:
            rank = (LABEL_PRECEDENCE[pair.source], -created_at)  # the best source, then the latest
            held = chosen.get(pair.key)
            if held is None or rank < held[1]:
                chosen[pair.key] = (pair, rank)
        return {key: pair for key, (pair, _) in chosen.items()}

    def _teacher_labels(
        self, events: Sequence[EscalationEvent], rated: dict[str, EscalationEvent]
    ) -> list[tuple[Pair, float]]:
        out: list[tuple[Pair, float]] = []
        for event in events:
            if not event.prompt_text().strip() or not _usable(event.teacher_answer):
                self.rejected["unusable"] += 1
                continue
            label = event.teacher_label()
            if label is None:  # cut off by the token limit: it would teach not to stop
                self.rejected["teacher_cut_off"] += 1
                continue
            source = "audit" if event.kind == "audit" else "teacher"
            rating = rated.get(event.request_id)
            if rating is not None and rating.tier == "teacher" and rating.rating is not None:
                if rating.rating < 0.5:
                    self.rejected["rated_bad"] += 1
                    continue
                source = "teacher_agreed"
            pair = self._kept(Pair.from_event(event, label, source))
            if pair is None:
                continue
            failed = next(
                (v for v in self.verifiers if v.rejects(pair.completion, pair.prompt, pair.skill)), None
            )
            if failed is not None:
                self.rejected[failed.reason] += 1
                continue
            out.append((pair, event.created_at))
        return out

    def _kept(self, pair: Pair) -> Pair | None:
        """The label if it keeps its request's contract (counted as ``contract:<reason>``
        when it does not: a correction too, since an answer that breaks the contract is
        never served, so it must not be taught)."""
        kept, why = pair.under_contract()
        if why is not None:
            self.rejected[why] += 1
        return kept

    def _confirmed(self, labels: list[tuple[Pair, float]]) -> list[tuple[Pair, float]]:
        """With a second teacher: the labels it agrees with, as ``teacher_agreed``."""
        if self.second_teacher is None:
            return labels
        confirmed = [label for label in labels if label[0].source == "teacher_agreed"]
        unconfirmed = [label for label in labels if label[0].source != "teacher_agreed"]
        verdicts = second_opinions(self.second_teacher, [pair for pair, _ in unconfirmed], self.agreement)
        for (pair, created_at), agreed in zip(unconfirmed, verdicts, strict=True):
            if agreed:
                confirmed.append((replace(pair, source="teacher_agreed"), created_at))
            else:
                self.rejected["second_teacher_disagreed"] += 1
        return confirmed


def build_dataset(
    store: FeedbackStore,
    reference: list[Pair],
    config: DistillConfig,
    *,
    since: float | None = None,
    verifiers: Sequence[Verifier] | None = None,
    second_teacher: SecondOpinion | None = None,
    agreement: AgreementMetric | None = None,
    served: Sequence[Pair] = (),
) -> DistillDataset:
    """``verifiers`` None builds ``config.verifiers``; ``second_teacher`` confirms (or drops)
    every teacher label not already confirmed, judged by ``agreement``. ``served``: the
    serving student's own answers to live prompts (``retrain._replay.served_pairs``), up
    to ``config.replay_served`` of the replayed rows; the reference fills the rest."""
    labeller = _Labeller(
        build_verifiers(config.verifiers) if verifiers is None else verifiers,
        second_teacher,
        agreement or AgreementMetric(),
        Counter(),
    )
    splits: dict[Literal["train", "holdout"], dict[str, Pair]] = {}
    for split in ("train", "holdout"):
        query: dict[str, Any] = {"since": since, "split": split, "holdout_fraction": config.holdout_fraction}
        events = sorted(
            store.events(kind="escalation", **query) + store.events(kind="audit", **query),
            key=lambda e: (e.created_at, e.request_id),
        )
        splits[split] = labeller.labels(events, store.ratings(**query))
    latest, holdout = splits["train"], splits["holdout"]
    for key in list(latest):
        if key in holdout:  # the same prompt in both: keep it out of training
            del latest[key]
    # Sorted, so the set does not depend on the order concurrent requests were stored in.
    new = sorted(latest.values(), key=lambda p: p.key)
    usable = len(new) + len(holdout)
    if usable < config.min_new_examples:
        raise NotEnoughFeedback(f"{usable} usable escalations (need {config.min_new_examples}) since {since}")
    rng = random.Random(config.seed)
    budget_new = min(len(new), int(config.max_examples * (1 - config.replay_share)))
    new = rng.sample(new, budget_new)
    pool = bool(reference) or bool(served)
    n_replay = round(len(new) * config.replay_share / (1 - config.replay_share)) if pool else 0
    taken = {p.key for p in new} | set(holdout)
    own = [p for p in served if p.key not in taken]
    n_served = min(len(own), round(n_replay * config.replay_served))
    replay = rng.sample(own, n_served)
    replay += [rng.choice(reference) for _ in range(n_replay - n_served)] if reference else []
    train = new + replay
    rng.shuffle(train)
    by_skill: dict[str, int] = {}
    for p in train:
        key = p.skill or "unlabelled"
        by_skill[key] = by_skill.get(key, 0) + 1
    by_source = dict(sorted(Counter(p.source for p in train).items()))
    new_by_skill = dict(sorted(Counter(p.skill or "unlabelled" for p in new).items()))
    rejected = dict(sorted(labeller.rejected.items()))
    return DistillDataset(
        train,
        list(holdout.values()),
        len(new),
        len(replay),
        sum(rejected.values()),
        by_skill,
        by_source,
        rejected,
        new_by_skill,
    )
