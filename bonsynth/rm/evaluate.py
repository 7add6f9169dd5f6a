"""Reward-model evaluation: the numbers `bonsynth rm eval` prints and `rm train` reports on its eval split.

Pairwise metrics use open-instruct's names (`accuracy`, `loss`, `chosen_rewards`, `rejected_rewards`,
`reward_margin`) but are averaged per example, not per batch, so they do not depend on the batch size.
Binary data adds `auc`; its `accuracy` is accuracy at P(good) = sigmoid(reward) >= 0.5. Ranked data reports
mean NDCG@k over groups plus the pairwise metrics on the groups' expanded pairs.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from bonsynth.data.records import PairRecord, RankedGroup
from bonsynth.errors import InputError
from bonsynth.rm.encode import binary_item

PAIRWISE_KEYS = ("accuracy", "loss", "chosen_rewards", "rejected_rewards", "reward_margin")


def log_sigmoid(x: float) -> float:
    """Stable log(sigmoid(x))."""
    return -math.log1p(math.exp(-x)) if x >= 0 else x - math.log1p(math.exp(x))


def _mean(values: Sequence[float]) -> float:
    return float(sum(values) / len(values)) if values else float("nan")


def pairwise_metrics(
    chosen: Sequence[float], rejected: Sequence[float], margins: Sequence[float] | None = None
) -> dict[str, float]:
    """Bradley–Terry view of chosen/rejected rewards: accuracy (strictly higher), loss -log σ(r⁺ - r⁻ - m)."""
    if len(chosen) != len(rejected):
        raise ValueError("chosen and rejected rewards differ in length")
    margins = margins if margins is not None else [0.0] * len(chosen)
    diffs = [c - r for c, r in zip(chosen, rejected, strict=True)]
    return {
        "accuracy": _mean([1.0 if d > 0 else 0.0 for d in diffs]),
        "loss": _mean([-log_sigmoid(d - m) for d, m in zip(diffs, margins, strict=True)]),
        "chosen_rewards": _mean(list(chosen)),
        "rejected_rewards": _mean(list(rejected)),
        "reward_margin": _mean(diffs),
    }


def roc_auc(scores: Sequence[float], labels: Sequence[int]) -> float | None:
    """Area under the ROC curve (Mann–Whitney, ties count half); None when only one class is present."""
    pos = sorted(s for s, y in zip(scores, labels, strict=True) if y == 1)
    neg = sorted(s for s, y in zip(scores, labels, strict=True) if y != 1)
    if not pos or not neg:
        return None
    # average ranks over the pooled scores
    pooled = sorted([(s, 1) for s in pos] + [(s, 0) for s in neg])
    rank_sum_pos = 0.0
    i = 0
    while i < len(pooled):
        j = i
        while j + 1 < len(pooled) and pooled[j + 1][0] == pooled[i][0]:
            j += 1
        avg_rank = (i + j) / 2 + 1
        rank_sum_pos += avg_rank * sum(1 for k in range(i, j + 1) if pooled[k][1] == 1)
        i = j + 1
    n_pos, n_neg = len(pos), len(neg)
    return (rank_sum_pos - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)


def binary_metrics(rewards: Sequence[float], labels: Sequence[int]) -> dict[str, Any]:
    """Thumbs-up metrics: accuracy at 0.5 on sigmoid(reward), log loss, AUC, mean reward per class."""
    pos = [r for r, y in zip(rewards, labels, strict=True) if y == 1]
    neg = [r for r, y in zip(rewards, labels, strict=True) if y != 1]
    return {
        "accuracy": _mean([1.0 if (r >= 0) == (y == 1) else 0.0 for r, y in zip(rewards, labels, strict=True)]),
        "auc": roc_auc(rewards, labels),
        "loss": _mean([-log_sigmoid(r if y == 1 else -r) for r, y in zip(rewards, labels, strict=True)]),
        "positive_rewards": _mean(pos),
        "negative_rewards": _mean(neg),
        "reward_margin": _mean(pos) - _mean(neg) if pos and neg else float("nan"),
        "num_positive": len(pos),
    }


def ndcg(true_scores: Sequence[float], predicted: Sequence[float], k: int | None = None) -> float | None:
    """NDCG@k of one group: linear gain = true score minus the group's lowest, log2 discount.

    Shifting by the minimum makes any score scale (ratings 1-10, -1..1) usable as gain, with the worst reply
    worth 0. Returns None when all true scores are equal (nothing to rank).
    """
    gains = [t - min(true_scores) for t in true_scores]
    k = len(gains) if k is None else min(k, len(gains))
    ideal = sorted(gains, reverse=True)[:k]
    idcg = sum(g / math.log2(i + 2) for i, g in enumerate(ideal))
    if idcg <= 0:
        return None
    order = sorted(range(len(gains)), key=lambda i: -predicted[i])[:k]
    dcg = sum(gains[j] / math.log2(i + 2) for i, j in enumerate(order))
    return dcg / idcg


def ranked_metrics(
    groups: Sequence[RankedGroup], rewards: Sequence[Sequence[float]], k: int | None = None
) -> dict[str, Any]:
    """Mean NDCG@k over groups (groups with all-equal scores skipped) and pairwise metrics on expanded pairs."""
    values = []
    chosen: list[float] = []
    rejected: list[float] = []
    for group, pred in zip(groups, rewards, strict=True):
        value = ndcg(group.scores, pred, k)
        if value is not None:
            values.append(value)
        for i, ti in enumerate(group.scores):
            for j, tj in enumerate(group.scores):
                if ti > tj:
                    chosen.append(pred[i])
                    rejected.append(pred[j])
    out: dict[str, Any] = {"ndcg": _mean(values), "ndcg_k": k, "num_groups_ranked": len(values)}
    out.update(pairwise_metrics(chosen, rejected))
    out["num_pairs"] = len(chosen)
    return out


# --- scoring records with a RewardModel -------------------------------------------------------------------


def score_items(rm: Any, items: list, batch_size: int | None) -> list[float]:
    """Rewards via `RewardModel.score`; a batch size becomes its token budget (batch_size full-length texts)."""
    if batch_size is None:
        return [float(x) for x in rm.score(items)]
    return [float(x) for x in rm.score(items, token_budget=max(1, batch_size) * rm.max_length)]


def score_pairs(rm: Any, pairs: Sequence[PairRecord], batch_size: int | None = None) -> tuple[list[float], list[float]]:
    items = [(p.prompt, p.chosen) for p in pairs] + [(p.prompt, p.rejected) for p in pairs]
    scores = score_items(rm, items, batch_size)
    return scores[: len(pairs)], scores[len(pairs) :]


def score_groups(rm: Any, groups: Sequence[RankedGroup], batch_size: int | None = None) -> list[list[float]]:
    items = [(g.prompt, r) for g in groups for r in g.responses]
    flat = score_items(rm, items, batch_size)
    out, pos = [], 0
    for g in groups:
        out.append(flat[pos : pos + len(g.responses)])
        pos += len(g.responses)
    return out


def evaluate_records(
    rm: Any, kind: str, records: Sequence, batch_size: int | None = None, ndcg_k: int | None = None
) -> dict[str, Any]:
    """Metrics for one set of records of one kind (pairwise, binary or ranked)."""
    if kind == "pairwise":
        chosen, rejected = score_pairs(rm, records, batch_size)
        return pairwise_metrics(chosen, rejected, [p.margin for p in records])
    if kind == "binary":
        rewards = score_items(rm, [binary_item(r) for r in records], batch_size)
        return binary_metrics(rewards, [r.label for r in records])
    if kind == "ranked":
        return ranked_metrics(records, score_groups(rm, records, batch_size), ndcg_k)
    raise ValueError(f"cannot evaluate records of kind {kind!r}")


def evaluate_files(
    model: str,
    files: Sequence[str],
    fmt: str = "auto",
    batch_size: int = 16,
    max_length: int | None = None,
    ndcg_k: int | None = None,
    device: str = "auto",
    trust_remote_code: bool = False,
    allow_unsafe_weights: bool = False,
    skip_invalid: bool = False,
) -> list[dict[str, Any]]:
    """Evaluate a saved RM on each file; one result dict per file (`file`, `kind`, `num_examples` + metrics).

    `skip_invalid` drops rows that fail validation (reported on stderr; `num_skipped_invalid` and
    `skipped_lines` in each result) instead of failing.
    """
    from bonsynth.data.readers import load_records
    from bonsynth.rm.model import RewardModel

    if ndcg_k is not None and ndcg_k < 1:
        raise InputError(f"--k must be at least 1, got {ndcg_k}")
    loaded = []
    for path in files:  # read (and validate) every file before loading the model
        data = load_records(path, fmt, skip_invalid=skip_invalid)
        data.skipped.report()
        if data.kind == "prompts":
            raise InputError(
                "holds prompts only (no preferences, labels or scores to evaluate against)", path=path
            )
        if not data.records:
            raise InputError("no examples to evaluate", path=path)
        loaded.append(data)
    rm = RewardModel.load(model, device=device, dtype="auto", max_length=max_length,
                          trust_remote_code=trust_remote_code, allow_unsafe_weights=allow_unsafe_weights)
    results = []
    for path, data in zip(files, loaded, strict=True):
        result: dict[str, Any] = {"file": str(path), "kind": data.kind, "num_examples": len(data.records)}
        if skip_invalid:
            result.update(data.skipped.to_json())
        result.update(evaluate_records(rm, data.kind, data.records, batch_size=batch_size, ndcg_k=ndcg_k))
        results.append(_json_safe(result))
    return results


def _json_safe(result: dict[str, Any]) -> dict[str, Any]:
    """NaN is not JSON: report a metric that cannot be computed as null."""
    return {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in result.items()}
