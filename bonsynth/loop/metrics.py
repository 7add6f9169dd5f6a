"""Per-round metrics on the fixed eval prompts, computed from the eval run's `candidates.jsonl`.

Every round samples the same eval prompts with the same seeds (sample j of prompt p uses one seed in every
round), so the rounds differ only by the policy, and "this round against the previous one" is a paired
comparison: the win rate counts, over all (prompt, sample) pairs, how often this round's sample gets a higher
RM reward than the previous policy's sample with the same seed (ties count half).
"""

from __future__ import annotations

import json
import statistics
from collections.abc import Sequence
from pathlib import Path

from bonsynth.select.selection import distinct_n


def _read(path: Path) -> list[dict]:
    with open(path, encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile with linear interpolation between order statistics (numpy's default)."""
    xs = sorted(values)
    if not xs:
        raise ValueError("percentile of no values")
    pos = (len(xs) - 1) * q / 100.0
    lo = int(pos)
    hi = min(lo + 1, len(xs) - 1)
    return float(xs[lo] + (xs[hi] - xs[lo]) * (pos - lo))


def win_rate(current: list[dict], previous: list[dict]) -> dict:
    """Paired comparison of two eval runs on the same prompts and seeds (ties count half)."""
    prev = {(r["id"], c["index"]): c["reward"] for r in previous for c in r["candidates"]}
    wins = ties = losses = 0
    for r in current:
        for c in r["candidates"]:
            other = prev.get((r["id"], c["index"]))
            if other is None:
                continue
            if c["reward"] > other:
                wins += 1
            elif c["reward"] < other:
                losses += 1
            else:
                ties += 1
    total = wins + ties + losses
    return {
        "win_rate": (wins + 0.5 * ties) / total if total else None,
        "wins": wins,
        "ties": ties,
        "losses": losses,
    }


def eval_metrics(candidates_path: str | Path, previous_path: str | Path | None = None) -> dict:
    """Reward, best-of-N gain, length and diversity statistics of one eval run (policy samples, before selection)."""
    rows = _read(Path(candidates_path))
    rewards = [c["reward"] for r in rows for c in r["candidates"]]
    if not rewards:
        raise ValueError(f"{candidates_path} holds no candidates")
    best = [max(c["reward"] for c in r["candidates"]) for r in rows if r["candidates"]]
    lengths = [c["num_tokens"] for r in rows for c in r["candidates"]]
    texts = [c["text"] for r in rows for c in r["candidates"]]
    mean = statistics.fmean(rewards)
    m = {
        "num_prompts": len(rows),
        "num_samples": len(rewards),
        "reward_mean": mean,
        "reward_median": float(statistics.median(rewards)),
        "reward_p90": percentile(rewards, 90),
        "reward_std": float(statistics.pstdev(rewards)),
        "reward_min": min(rewards),
        "reward_max": max(rewards),
        "best_of_n_mean": statistics.fmean(best),
        "bon_gain": statistics.fmean(best) - mean,
        "length_mean": statistics.fmean(lengths),
        "length_median": float(statistics.median(lengths)),
        "length_p90": percentile(lengths, 90),
        "length_max": max(lengths),
        "truncated_fraction": sum(c["finish_reason"] == "length" for r in rows for c in r["candidates"]) / len(rewards),
        "distinct_2": distinct_n(texts, 2),
    }
    if previous_path is not None:
        wr = win_rate(rows, _read(Path(previous_path)))
        m["win_rate_vs_previous"] = wr.pop("win_rate")
        m["win_rate_counts"] = wr
    else:
        m["win_rate_vs_previous"] = None
    return m


def eval_rewards(candidates_path: str | Path) -> list[float]:
    """Every eval sample's reward, for the distribution plot."""
    return [c["reward"] for r in _read(Path(candidates_path)) for c in r["candidates"]]
