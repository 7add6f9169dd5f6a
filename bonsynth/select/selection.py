"""Pick training data out of N scored candidates for one prompt.

Every choice is deterministic: candidates are ranked by (reward desc, candidate index asc), so ties go to
the earlier candidate, whatever the batch or machine. A candidate whose reward is not a finite number (a broken
RM's NaN or inf) is never selected, neither for SFT nor as either side of a pair.

The modes write different files: `best` and `top-k:K` give SFT rows (plus a best-vs-worst DPO pair per prompt
only when `pairs` is asked for too); `pairs` gives only the DPO pair.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field

from bonsynth.settings import FieldError

_WS = re.compile(r"\s+")


@dataclass(frozen=True)
class SelectionConfig:
    mode: str = "best"  # "best" | "top-k" | "pairs"
    k: int = 1
    min_reward: float | None = None  # candidates below are never selected (nor used as chosen)
    min_margin: float | None = None  # pairs whose chosen-rejected margin is below are skipped
    dedup: bool = False  # drop exact and near-duplicate candidates before selecting
    near_dup_threshold: float = 0.9  # Jaccard similarity of word 3-gram shingles
    length_normalize: bool = False  # rank by reward / number of tokens
    write_pairs: bool = False  # best / top-k: also form the DPO pair (always on in `pairs` mode)

    @property
    def sft(self) -> bool:
        """Whether SFT rows are selected (every mode but `pairs`)."""
        return self.mode != "pairs"

    @property
    def pairs(self) -> bool:
        """Whether a DPO pair is formed."""
        return self.mode == "pairs" or self.write_pairs

    def describe(self) -> str:
        return f"top-k:{self.k}" if self.mode == "top-k" else self.mode


def parse_select(spec: str) -> tuple[str, int]:
    """`best`, `pairs` or `top-k:K`."""
    if spec in ("best", "pairs"):
        return spec, 1
    m = re.fullmatch(r"top-k:(\d+)", spec)
    if m and int(m.group(1)) >= 1:
        return "top-k", int(m.group(1))
    raise FieldError(f"unknown `select` {spec!r}; use best, pairs or top-k:K (K >= 1)")


@dataclass
class SelectionResult:
    selected: list[int] = field(default_factory=list)  # candidate indices for SFT, best first
    pair: tuple[int, int] | None = None  # (chosen, rejected) for DPO
    duplicates: list[int] = field(default_factory=list)  # indices dropped as duplicates
    below_min_reward: int = 0
    nonfinite: list[int] = field(default_factory=list)  # indices whose reward is NaN or inf (never selected)
    skipped_pair_reason: str | None = None  # "margin", "identical", "too-few", "min-reward"


def _normalize(text: str) -> str:
    return _WS.sub(" ", text.strip().lower())


def _shingles(text: str, n: int = 3) -> set[tuple[str, ...]]:
    words = _normalize(text).split(" ")
    if len(words) < n:
        return {tuple(words)}
    return {tuple(words[i : i + n]) for i in range(len(words) - n + 1)}


def find_duplicates(texts: Sequence[str], threshold: float = 0.9) -> list[int]:
    """Indices that repeat an earlier candidate exactly (after whitespace/case folding) or nearly."""
    dups: list[int] = []
    seen_exact: set[str] = set()
    kept: list[set] = []
    for i, t in enumerate(texts):
        key = _normalize(t)
        if key in seen_exact:
            dups.append(i)
            continue
        sh = _shingles(t)
        if any(len(sh & o) / max(1, len(sh | o)) >= threshold for o in kept):
            dups.append(i)
            continue
        seen_exact.add(key)
        kept.append(sh)
    return dups


def ranking_scores(rewards: Sequence[float], num_tokens: Sequence[int], length_normalize: bool) -> list[float]:
    if not length_normalize:
        return list(rewards)
    return [r / max(1, n) for r, n in zip(rewards, num_tokens, strict=True)]


def select_candidates(
    texts: Sequence[str],
    rewards: Sequence[float],
    num_tokens: Sequence[int],
    cfg: SelectionConfig,
) -> SelectionResult:
    """Rank one prompt's candidates and choose SFT rows and/or one DPO pair, as the mode asks."""
    res = SelectionResult()
    scores = ranking_scores(rewards, num_tokens, cfg.length_normalize)
    res.nonfinite = [i for i, r in enumerate(rewards) if not math.isfinite(r)]
    bad = set(res.nonfinite)
    pool = [i for i in range(len(texts)) if i not in bad]
    if cfg.dedup:  # among the scored candidates only: a NaN one must not knock out its finite twin
        res.duplicates = [pool[j] for j in find_duplicates([texts[i] for i in pool], cfg.near_dup_threshold)]
        dropped = set(res.duplicates)
        pool = [i for i in pool if i not in dropped]
    ranked = sorted(pool, key=lambda i: (-scores[i], i))

    eligible = ranked
    if cfg.min_reward is not None:
        eligible = [i for i in ranked if rewards[i] >= cfg.min_reward]
        res.below_min_reward = len(ranked) - len(eligible)

    k = 1 if cfg.mode in ("best", "pairs") else cfg.k
    if cfg.sft:
        res.selected = eligible[:k]
    if not cfg.pairs:
        return res

    # Pair: the best eligible against the worst candidate, never two identical texts.
    if not eligible or len(ranked) < 2:
        res.skipped_pair_reason = "min-reward" if ranked and not eligible else "too-few"
        return res
    chosen = eligible[0]
    rejected = next((i for i in reversed(ranked) if i != chosen and _normalize(texts[i]) != _normalize(texts[chosen])), None)
    if rejected is None:
        res.skipped_pair_reason = "identical"
    elif cfg.min_margin is not None and scores[chosen] - scores[rejected] < cfg.min_margin:
        res.skipped_pair_reason = "margin"
    elif scores[chosen] <= scores[rejected]:
        res.skipped_pair_reason = "margin"  # all equal: no preference to learn
    else:
        res.pair = (chosen, rejected)
    return res


def distinct_n(texts: Sequence[str], n: int = 2) -> float:
    """Distinct-n diversity: unique word n-grams over all word n-grams (0 when there are none)."""
    total = 0
    uniq: set[tuple[str, ...]] = set()
    for t in texts:
        words = t.split()
        grams = [tuple(words[i : i + n]) for i in range(len(words) - n + 1)]
        total += len(grams)
        uniq.update(grams)
    return len(uniq) / total if total else 0.0
