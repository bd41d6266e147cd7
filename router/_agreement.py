"""Does one answer agree with another? The one definition calibration, the gate, the
benchmarks and the live counters share.

Free-text answers of a real instruct model differ in ways that do not matter ("The order
number is 5249." vs "The order number is 5249") and in ways that do (another number), so
the metric is configurable:

* ``exact``: byte-equal after stripping surrounding whitespace (the toy domain's choice);
* ``normalized``: equal after case folding, Unicode NFKC, dropping punctuation and
  collapsing whitespace;
* ``token_f1``: SQuAD-style token F1 over normalized words, agreeing at ``threshold``;
* ``chrf``: chrF (character n-gram F-score, n = 1..6, beta = 2; Popovic 2015), agreeing at
  ``threshold``; kinder than token F1 to inflections, harsher to a changed number.

Soft metrics can call a changed number "agreeing" when the rest of a long answer is
equal; ``key_tokens`` (defaults to digits) makes any difference in such tokens a
disagreement whatever the score, which is what extraction workloads need. And where the
number is the whole content of a short templated answer, the words around it are the
teacher's own choice of template ("The order number is 5249." and "The order number in
this message is 5249." from one model for one route): ``numbers_decide`` lets equal
numbers agree whatever the words, so a student is not judged wrong for the other template.
"""

from __future__ import annotations

import re
import unicodedata
from collections import Counter
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

__all__ = ["AGREEMENT_METRICS", "AgreementConfig", "AgreementMetric", "agreement_score", "normalize_answer"]

AGREEMENT_METRICS = ("exact", "normalized", "token_f1", "chrf")
_PUNCT = re.compile(r"[^\w\s]", re.UNICODE)
_SPACE = re.compile(r"\s+")


def normalize_answer(text: str) -> str:
    folded = unicodedata.normalize("NFKC", text).casefold()
    return _SPACE.sub(" ", _PUNCT.sub(" ", folded)).strip()


def _token_f1(a: str, b: str) -> float:
    ta, tb = normalize_answer(a).split(), normalize_answer(b).split()
    if not ta and not tb:
        return 1.0
    common = sum((Counter(ta) & Counter(tb)).values())
    if not common:
        return 0.0
    precision, recall = common / len(ta), common / len(tb)
    return 2 * precision * recall / (precision + recall)


def _chrf(hypothesis: str, reference: str, max_n: int = 6, beta: float = 2.0) -> float:
    """chrF over characters with whitespace removed (sacreBLEU's default behaviour)."""
    hyp = "".join(hypothesis.split())
    ref = "".join(reference.split())
    if not hyp and not ref:
        return 1.0
    precisions: list[float] = []
    recalls: list[float] = []
    for n in range(1, max_n + 1):
        h = Counter(hyp[i : i + n] for i in range(len(hyp) - n + 1))
        r = Counter(ref[i : i + n] for i in range(len(ref) - n + 1))
        if not h or not r:
            continue
        match = sum((h & r).values())
        precisions.append(match / sum(h.values()))
        recalls.append(match / sum(r.values()))
    if not precisions:
        return 0.0
    prec, rec = sum(precisions) / len(precisions), sum(recalls) / len(recalls)
    if prec + rec == 0:
        return 0.0
    b2 = beta * beta
    return (1 + b2) * prec * rec / (b2 * prec + rec)


_DIGITS = re.compile(r"\d+")


class AgreementConfig(BaseModel):
    """How two answers are compared.

    Parameters:
        metric (`"exact" | "normalized" | "token_f1" | "chrf"`, defaults to ``exact``).
        threshold (`float`, defaults to 0.8): the score at which ``token_f1``/``chrf``
            call two answers agreeing (ignored by ``exact`` and ``normalized``).
        key_tokens (`bool`, defaults to True): with a soft metric, answers whose numbers
            differ never agree (an order number off by one digit is a wrong answer).
        numbers_decide (`bool`, defaults to False): with a soft metric and ``key_tokens``,
            answers that both carry numbers, the same ones in the same order, agree
            whatever the words around them. For workloads whose numbered answers are an
            extraction in a sentence; not for free text where a number is a detail.
    """

    model_config = ConfigDict(frozen=True)

    metric: Literal["exact", "normalized", "token_f1", "chrf"] = "exact"
    threshold: float = Field(default=0.8, ge=0.0, le=1.0)
    key_tokens: bool = True
    numbers_decide: bool = False

    def describe(self) -> str:
        if self.metric in ("exact", "normalized"):
            return self.metric
        numbers = "|numbers" if self.key_tokens and self.numbers_decide else ""
        return f"{self.metric}>={self.threshold:g}{numbers}"


def agreement_score(answer: str, reference: str, metric: str) -> float:
    """A similarity in [0, 1] (1 = the same answer under ``metric``)."""
    if metric == "exact":
        return float(answer.strip() == reference.strip())
    if metric == "normalized":
        return float(normalize_answer(answer) == normalize_answer(reference))
    if metric == "token_f1":
        return _token_f1(answer, reference)
    if metric == "chrf":
        return _chrf(answer, reference)
    raise ValueError(f"unknown agreement metric {metric!r}; choose one of {', '.join(AGREEMENT_METRICS)}")


class AgreementMetric:
    """``config`` applied: ``metric(answer, reference) -> bool``."""

    def __init__(self, config: AgreementConfig | None = None) -> None:
        self.config = config or AgreementConfig()

    @property
    def name(self) -> str:
        return self.config.describe()

    def score(self, answer: str, reference: str) -> float:
        return agreement_score(answer, reference, self.config.metric)

    def __call__(self, answer: str, reference: str) -> bool:
        cfg = self.config
        if cfg.metric in ("exact", "normalized"):
            return self.score(answer, reference) == 1.0
        if cfg.key_tokens:
            numbers = _DIGITS.findall(answer)
            if numbers != _DIGITS.findall(reference):
                return False
            if numbers and cfg.numbers_decide:
                return True
        return self.score(answer, reference) >= cfg.threshold
