"""Counts and summary statistics, recomputed from `candidates.jsonl` itself.

Computing them from the file (not from in-memory running sums) keeps them right after a resume and lets
`gather` recompute them for merged shards with the same code.
"""

from __future__ import annotations

import math
import statistics
from collections import Counter
from collections.abc import Iterable

from bonsynth.select.selection import distinct_n


def kl_bound(n: int) -> float:
    """Best-of-n's KL divergence from the policy is at most log n - (n - 1)/n nats."""
    return math.log(n) - (n - 1) / n if n >= 1 else 0.0


def summarize(rows: Iterable[dict], n: int) -> tuple[dict, dict]:
    """(counts, summary) over candidates rows."""
    counts: Counter = Counter()
    finish: Counter = Counter()
    skipped: Counter = Counter()
    all_rewards: list[float] = []
    sel_rewards: list[float] = []
    chosen_r: list[float] = []
    rejected_r: list[float] = []
    lengths: list[int] = []
    all_texts: list[str] = []
    sel_texts: list[str] = []
    for row in rows:
        counts["prompts"] += 1
        counts["prompts_truncated"] += int(bool(row.get("prompt_truncated")))
        counts["prompts_skipped"] += int(bool(row.get("skipped")))
        cands = row["candidates"]
        counts["candidates"] += len(cands)
        for c in cands:
            all_rewards.append(c["reward"])
            lengths.append(c["num_tokens"])
            finish[c["finish_reason"]] += 1
            all_texts.append(c["text"])
            counts["duplicates"] += int(c.get("duplicate", False))
        for i in row["selected"]:
            sel_rewards.append(cands[i]["reward"])
            sel_texts.append(cands[i]["text"])
        counts["selected"] += len(row["selected"])
        counts["below_min_reward"] += row.get("below_min_reward", 0)
        if row.get("pair"):
            counts["pairs"] += 1
            chosen_r.append(cands[row["pair"][0]]["reward"])
            rejected_r.append(cands[row["pair"][1]]["reward"])
        elif row.get("pair_skipped"):
            skipped[row["pair_skipped"]] += 1
        if not row["selected"]:
            counts["prompts_without_selection"] += 1

    def mean(xs):
        return float(statistics.fmean(xs)) if xs else None

    mean_all, mean_sel = mean(all_rewards), mean(sel_rewards)
    summary = {
        "mean_reward_all": mean_all,
        "mean_reward_selected": mean_sel,
        "bon_gain": (mean_sel - mean_all) if mean_all is not None and mean_sel is not None else None,
        "median_reward_all": float(statistics.median(all_rewards)) if all_rewards else None,
        "mean_reward_chosen": mean(chosen_r),
        "mean_reward_rejected": mean(rejected_r),
        "mean_pair_margin": mean([c - r for c, r in zip(chosen_r, rejected_r, strict=True)]),
        "kl_bound_nats": kl_bound(n),
        "distinct_2_all": distinct_n(all_texts, 2),
        "distinct_2_selected": distinct_n(sel_texts, 2),
        "mean_candidate_tokens": mean(lengths),
    }
    out_counts = dict(counts)
    out_counts["finish_reasons"] = dict(sorted(finish.items()))
    out_counts["pairs_skipped"] = dict(sorted(skipped.items()))
    for key in ("prompts", "candidates", "selected", "pairs", "duplicates", "below_min_reward", "prompts_without_selection",
                "prompts_truncated", "prompts_skipped"):
        out_counts.setdefault(key, 0)
    return out_counts, summary
