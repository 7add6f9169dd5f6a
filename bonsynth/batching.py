"""Token-budget batching: group sequences so that each padded batch costs at most `budget` tokens.

A fixed batch size wastes compute on padding when lengths vary (one long text pads 31 short ones) and runs
out of memory on long texts. Sorting by length and filling batches up to a budget of padded tokens
(`max_len_in_batch * batch_size`) keeps padding small and memory use flat, whatever the length mix.

It sits below `rm` and `generate` (the RM scorer and the hf backend both batch this way), so neither layer
imports the other for it.
"""

from __future__ import annotations

from collections.abc import Sequence

# On a CPU, small batches win: at 16k padded tokens the activations (~100 MB per MLP intermediate for a
# 6x384 GPT-2) fall out of cache and scoring was 1.6x slower than at 2k (fp32 and bf16 alike, BENCHMARKS.md).
CPU_TOKEN_BUDGET = 2_048
CUDA_TOKEN_BUDGET = 131_072  # ~100M activations per layer at d=768: fits a 0.5B RM in bf16 on a 24 GB card


def default_token_budget(device: str) -> int:
    """A budget that is safe for a small RM on this kind of device (the OOM fallback covers the rest)."""
    return CUDA_TOKEN_BUDGET if str(device).startswith("cuda") else CPU_TOKEN_BUDGET


def padded_tokens(lengths: Sequence[int], batch: Sequence[int]) -> int:
    """What a right-padded batch costs: its longest sequence times its size."""
    return max((lengths[i] for i in batch), default=0) * len(batch)


def token_budget_batches(
    lengths: Sequence[int],
    budget: int,
    max_batch_size: int | None = None,
    min_fill: float = 0.5,
) -> list[list[int]]:
    """Indices into `lengths`, grouped into batches whose padded size fits `budget`.

    Longest first, so that an out-of-memory error (if any) shows up on the first batch rather than after an
    hour. A sequence longer than the budget on its own gets a batch of one. Every index appears exactly once.
    A batch also closes when the next sequence is shorter than `min_fill` times the batch's longest: without
    that, the short tail of a length distribution (100 tokens down to 5) lands in one batch that is mostly
    padding. With 0.5 no row is more than half padding, at the cost of a few more (cheap, short) batches.
    """
    if budget < 1:
        raise ValueError(f"token budget must be positive, got {budget}")
    if not 0.0 <= min_fill <= 1.0:
        raise ValueError(f"min_fill must be in [0, 1], got {min_fill}")
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    batches: list[list[int]] = []
    current: list[int] = []
    current_max = 0
    for i in order:
        n = max(int(lengths[i]), 1)
        new_max = max(current_max, n)
        full = max_batch_size is not None and len(current) >= max_batch_size
        if current and (full or new_max * (len(current) + 1) > budget or n < min_fill * current_max):
            batches.append(current)
            current, new_max = [], n
        current.append(i)
        current_max = new_max
    if current:
        batches.append(current)
    return batches


def fixed_size_batches(n: int, batch_size: int) -> list[list[int]]:
    """Plain batches of `batch_size` in input order (the naive baseline, kept for comparisons)."""
    return [list(range(s, min(s + batch_size, n))) for s in range(0, n, batch_size)]
