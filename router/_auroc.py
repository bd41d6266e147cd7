"""Area under the ROC curve, for judging how well a scorer separates right from wrong."""

from __future__ import annotations

from collections.abc import Sequence

__all__ = ["auroc"]


def auroc(scores: Sequence[float], positives: Sequence[bool]) -> float | None:
    """P(score of a random positive > score of a random negative), ties counting half.

    None when one class is empty (the AUROC is undefined there).
    """
    pos = [s for s, p in zip(scores, positives, strict=True) if p]
    neg = [s for s, p in zip(scores, positives, strict=True) if not p]
    if not pos or not neg:
        return None
    ranked = sorted((s, i) for i, s in enumerate(scores))
    ranks = [0.0] * len(scores)
    i = 0
    while i < len(ranked):
        j = i
        while j + 1 < len(ranked) and ranked[j + 1][0] == ranked[i][0]:
            j += 1
        for k in range(i, j + 1):
            ranks[ranked[k][1]] = (i + j) / 2 + 1
        i = j + 1
    rank_sum = sum(r for r, p in zip(ranks, positives, strict=True) if p)
    return (rank_sum - len(pos) * (len(pos) + 1) / 2) / (len(pos) * len(neg))
