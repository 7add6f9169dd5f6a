"""The reward convention in code: from a head's logits to bonsynth's reward, and its normalisation.

Both scorers (`RewardModel`, the HF engine, and `VLLMRewardScorer`, vLLM's pooling runner) read rewards
through these functions, so they cannot drift apart. The convention (see `bonsynth.rm.meta`): a scalar,
higher is better. A 1-label head gives its logit; a 2-label head gives `logit[1] - logit[0]`, the log-odds
of "good", so `sigmoid(reward)` is the classifier's softmax probability of label 1.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from bonsynth.errors import BonsynthError
from bonsynth.rm.meta import RMMeta

LABEL_COUNTS = (1, 2)


def check_num_labels(num_labels: Any) -> int:
    """A head bonsynth can read a reward from: 1 label (reward) or 2 (bad/good)."""
    n = int(num_labels)
    if n not in LABEL_COUNTS:
        raise BonsynthError(
            f"reward model has {n} labels; bonsynth scores 1-label (reward) or 2-label (bad/good) heads"
        )
    return n


def rewards_from_logits(logits: Any, num_labels: int) -> list[float]:
    """Rewards of a batch of head logits (a tensor or array shaped [batch, num_labels]), in batch order."""
    rewards = logits[:, 0] if num_labels == 1 else logits[:, 1] - logits[:, 0]
    return [float(r) for r in rewards.tolist()]


def normalize_rewards(rewards: Sequence[float], meta: RMMeta) -> list[float]:
    """z-scores with the RM's recorded mean/std (`bonsynth_rm.json`), so several RMs can be mixed."""
    std = float(meta.reward_std)
    if not std > 0:
        raise BonsynthError(f"cannot normalize: bonsynth_rm.json has reward_std={std}")
    mean = float(meta.reward_mean)
    return [(r - mean) / std for r in rewards]


def sigmoid(x: float) -> float:
    """P(good) of a reward, without overflow for large |x|."""
    if x >= 0:
        return 1.0 / (1.0 + math.exp(-x))
    z = math.exp(x)
    return z / (1.0 + z)
