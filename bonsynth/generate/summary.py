"""Counts and summary statistics, recomputed from `candidates.jsonl` itself, in one streaming pass.

Computing them from the file (not from in-memory running sums) keeps them right after a resume and lets
`gather` recompute them for merged shards with the same code.

Memory stays bounded as the run grows: rows are consumed one at a time and no candidate text is kept.
Means are exact running sums (Shewchuk partials, so they equal `statistics.fmean` bit for bit); distinct-2
keeps 8-byte hashes of the distinct bigrams up to a cap and switches to a HyperLogLog estimate beyond it.
The one structure that grows with the run is the `array('d')` of all rewards (8 bytes per candidate), kept
because an exact median needs every value.
"""

from __future__ import annotations

import hashlib
import math
from array import array
from collections import Counter
from collections.abc import Iterable

import numpy as np

# Distinct n-grams counted exactly (8 bytes each) before the counter switches to a HyperLogLog estimate.
DISTINCT_CAP = 1_000_000
# Hashes collected in a Python set (about 70 bytes each) before they are merged into the compact array.
_FLUSH_AT = 1 << 16
_HLL_P = 14  # 2**14 registers: standard error 1.04 / sqrt(16384), about 0.8%
_HLL_M = 1 << _HLL_P
_HLL_REST = 64 - _HLL_P  # hash bits left after the register index


def kl_bound(n: int) -> float:
    """Best-of-n's KL divergence from the policy is at most log n - (n - 1)/n nats."""
    return math.log(n) - (n - 1) / n if n >= 1 else 0.0


class ExactSum:
    """Running sum and count whose mean equals `statistics.fmean` of all values added, bit for bit.

    Keeps Shewchuk's non-overlapping partials (what `math.fsum` uses inside), so the exact sum is carried
    in a handful of floats; non-finite values are tracked apart, as `fsum` treats them.
    """

    __slots__ = ("_partials", "_special", "count")

    def __init__(self) -> None:
        self._partials: list[float] = []
        self._special: dict[str, float] = {}  # at most one each of inf, -inf, nan
        self.count = 0

    def add(self, value: float) -> None:
        x = float(value)
        self.count += 1
        if not math.isfinite(x):
            self._special[repr(x)] = x
            return
        partials = self._partials
        i = 0
        for y in partials:
            if abs(x) < abs(y):
                x, y = y, x
            hi = x + y
            lo = y - (hi - x)
            if lo:
                partials[i] = lo
                i += 1
            x = hi
        if not math.isfinite(x):
            raise OverflowError("intermediate overflow in fsum")
        partials[i:] = [x]

    def total(self) -> float:
        return math.fsum([*self._special.values(), *self._partials])

    def mean(self) -> float | None:
        return self.total() / self.count if self.count else None


def ngram_hashes(text: str, n: int = 2) -> tuple[int, set[int]]:
    """(number of word n-grams, stable 64-bit hashes of the distinct ones) of one text.

    Same n-grams as `bonsynth.select.selection.distinct_n`: `str.split()` words, n in a row. Words never
    hold a space, so joining them with one is unambiguous; blake2b (not the per-process salted `hash`)
    makes the result the same in every process, which `gather` relies on.
    """
    words = text.split()
    total = max(0, len(words) - n + 1)
    grams = {" ".join(g) for g in zip(*(words[k:] for k in range(n)), strict=False)}
    return total, {
        int.from_bytes(hashlib.blake2b(g.encode("utf-8", "surrogatepass"), digest_size=8).digest(), "little")
        for g in grams
    }


class HyperLogLog:
    """HyperLogLog over 64-bit hashes (Flajolet et al. 2007): 2**14 one-byte registers, 16 KiB.

    Raw estimate with the standard alpha_m bias correction; linear counting in the small range.
    """

    def __init__(self) -> None:
        self.registers = np.zeros(_HLL_M, dtype=np.uint8)

    def add_hashes(self, hashes: np.ndarray) -> None:
        """Add a uint64 array of hashes: the top 14 bits pick the register, the rest give the rank."""
        if not hashes.size:
            return
        idx = (hashes >> np.uint64(_HLL_REST)).astype(np.intp)
        rest = hashes & np.uint64((1 << _HLL_REST) - 1)
        # frexp's exponent is the bit length; exact since rest < 2**50 converts to float64 without rounding.
        bit_length = np.frexp(rest.astype(np.float64))[1]
        rank = (_HLL_REST + 1 - bit_length).astype(np.uint8)  # position of the leftmost 1 bit
        np.maximum.at(self.registers, idx, rank)

    def estimate(self) -> float:
        m = float(_HLL_M)
        alpha = 0.7213 / (1 + 1.079 / m)
        raw = alpha * m * m / float(np.sum(np.ldexp(1.0, -self.registers.astype(np.int32))))
        zeros = int(np.count_nonzero(self.registers == 0))
        if raw <= 2.5 * m and zeros:
            return m * math.log(m / zeros)  # linear counting
        return raw  # 64-bit hashes: no large-range correction needed


class DistinctNgrams:
    """Streaming distinct-n: distinct n-grams / all n-grams, in bounded memory.

    The total is counted exactly. Distinct n-grams are counted exactly, as a sorted uint64 array of their
    hashes (8 bytes each), until more than `cap` are seen; then the array seeds a HyperLogLog and the count
    becomes an estimate (`exact` turns False). Below the cap the value equals `distinct_n` (up to a 64-bit
    hash collision, about 3e-8 likely at a million distinct n-grams).
    """

    def __init__(self, n: int = 2, cap: int = DISTINCT_CAP) -> None:
        if n < 1 or cap < 1:
            raise ValueError(f"need n >= 1 and cap >= 1, got n={n}, cap={cap}")
        self.n, self.cap = n, cap
        self.total = 0
        self._pending: set[int] = set()
        self._seen = np.empty(0, dtype=np.uint64)  # sorted, unique
        self._hll: HyperLogLog | None = None
        self._floor = 0  # distinct n-grams known for certain when the estimate took over

    @property
    def exact(self) -> bool:
        return self._hll is None

    def add(self, text: str) -> None:
        self.add_hashes(*ngram_hashes(text, self.n))

    def add_hashes(self, total: int, hashes: Iterable[int]) -> None:
        """Add one text's n-gram count and hashes (from `ngram_hashes`, shared between counters)."""
        self.total += total
        self._pending.update(hashes)
        if len(self._pending) >= min(_FLUSH_AT, self.cap + 1):
            self._flush()

    def _flush(self) -> None:
        if not self._pending:
            return
        new = np.sort(np.fromiter(self._pending, dtype=np.uint64, count=len(self._pending)))
        self._pending.clear()
        if self._hll is not None:
            self._hll.add_hashes(new)
            return
        seen = self._seen
        pos = np.searchsorted(seen, new)
        if seen.size:
            known = seen[np.minimum(pos, seen.size - 1)] == new
            new, pos = new[~known], pos[~known]
        self._seen = np.insert(seen, pos, new)  # one copy; equal positions keep new's ascending order
        if self._seen.size > self.cap:
            self._floor = int(self._seen.size)
            self._hll = HyperLogLog()
            self._hll.add_hashes(self._seen)
            self._seen = np.empty(0, dtype=np.uint64)

    def distinct(self) -> float:
        """The number of distinct n-grams: exact while `exact`, else the HyperLogLog estimate."""
        self._flush()
        if self._hll is None:
            return float(self._seen.size)
        # The estimate is off by about 1%: clip it to what is certain (at least the count seen when it took
        # over, at most the number of n-grams).
        return min(max(self._hll.estimate(), float(self._floor)), float(self.total))

    def value(self) -> float:
        """Distinct-n, 0 when there are no n-grams (as `distinct_n`, bit for bit on the exact path)."""
        return self.distinct() / self.total if self.total else 0.0


def _median(values: array) -> float | None:
    """`statistics.median` of a float array, without turning it into a list of Python floats."""
    if not values:
        return None
    a = np.frombuffer(values, dtype=np.float64)
    k = len(a) // 2
    if len(a) % 2:
        return float(np.partition(a, k)[k])
    part = np.partition(a, [k - 1, k])
    return (float(part[k - 1]) + float(part[k])) / 2


def summarize(rows: Iterable[dict], n: int, *, distinct_cap: int = DISTINCT_CAP,
              pruning: bool = False) -> tuple[dict, dict]:
    """(counts, summary) over candidates rows, read once as a stream (a generator is fine).

    Memory: O(1) per row except the rewards array (8 bytes per candidate, for the exact median) and the
    distinct-bigram hashes (8 bytes each, at most `distinct_cap` per counter before the estimate).

    With `pruning` (a run with --prune-at/--prune-keep) the reward, length and diversity statistics are over
    the finished candidates (a pruned one's partial reply is not a sample of the policy's replies), and the
    summary adds `pruned` (candidates stopped early), `generated_tokens` (every token generated, pruned
    candidates' included: each candidate's `num_tokens`, as a survivor's kept tokens are never generated
    twice) and `generated_tokens_without_pruning`: what plain best-of-N would have generated, estimated per
    prompt as N x the mean length of its finished candidates.
    """
    counts: Counter = Counter()
    finish: Counter = Counter()
    skipped: Counter = Counter()
    all_rewards = array("d")  # the one O(candidates) structure: the median needs every value
    mean_all, mean_sel, mean_len = ExactSum(), ExactSum(), ExactSum()
    chosen, rejected, margin = ExactSum(), ExactSum(), ExactSum()
    d2_all, d2_sel = DistinctNgrams(2, distinct_cap), DistinctNgrams(2, distinct_cap)
    generated, without_pruning, pruned = 0, ExactSum(), 0
    for row in rows:
        counts["prompts"] += 1
        counts["prompts_truncated"] += int(bool(row.get("prompt_truncated")))
        counts["prompts_skipped"] += int(bool(row.get("skipped")))
        cands = row["candidates"]
        counts["candidates"] += len(cands)
        grams: list = []
        finished = ExactSum()
        for c in cands:
            generated += int(c["num_tokens"])
            if pruning and c.get("pruned_at") is not None:
                pruned += 1
                finish[c["finish_reason"]] += 1
                grams.append(None)
                continue
            finished.add(c["num_tokens"])
            if c["reward"] is None:  # a NaN/inf reward, written as null: never selected, left out of the means
                counts["nonfinite_rewards"] += 1
            else:
                all_rewards.append(c["reward"])
                mean_all.add(c["reward"])
            mean_len.add(c["num_tokens"])
            finish[c["finish_reason"]] += 1
            g = ngram_hashes(c["text"], 2)
            grams.append(g)
            d2_all.add_hashes(*g)
            counts["duplicates"] += int(c.get("duplicate", False))
        if finished.count:
            without_pruning.add(n * finished.mean())
        for i in row["selected"]:
            mean_sel.add(cands[i]["reward"])
            d2_sel.add_hashes(*grams[i])
        counts["selected"] += len(row["selected"])
        counts["below_min_reward"] += row.get("below_min_reward", 0)
        if row.get("pair"):
            counts["pairs"] += 1
            c_r, r_r = cands[row["pair"][0]]["reward"], cands[row["pair"][1]]["reward"]
            chosen.add(c_r)
            rejected.add(r_r)
            margin.add(c_r - r_r)
        elif row.get("pair_skipped"):
            skipped[row["pair_skipped"]] += 1
        if not row["selected"]:
            counts["prompts_without_selection"] += 1

    m_all, m_sel = mean_all.mean(), mean_sel.mean()
    d2_all_value, d2_sel_value = d2_all.value(), d2_sel.value()
    summary = {
        "mean_reward_all": m_all,
        "mean_reward_selected": m_sel,
        "bon_gain": (m_sel - m_all) if m_all is not None and m_sel is not None else None,
        "median_reward_all": _median(all_rewards),
        "mean_reward_chosen": chosen.mean(),
        "mean_reward_rejected": rejected.mean(),
        "mean_pair_margin": margin.mean(),
        "kl_bound_nats": kl_bound(n),
        "distinct_2_all": d2_all_value,
        "distinct_2_selected": d2_sel_value,
        # False when more than `distinct_cap` distinct bigrams made either value a HyperLogLog estimate.
        "distinct_2_exact": d2_all.exact and d2_sel.exact,
        "mean_candidate_tokens": mean_len.mean(),
    }
    if pruning:
        summary.update(pruned=pruned, generated_tokens=generated,
                       generated_tokens_without_pruning=without_pruning.total())
    out_counts = dict(counts)
    out_counts["finish_reasons"] = dict(sorted(finish.items()))
    out_counts["pairs_skipped"] = dict(sorted(skipped.items()))
    for key in ("prompts", "candidates", "selected", "pairs", "duplicates", "below_min_reward", "prompts_without_selection",
                "prompts_truncated", "prompts_skipped", "nonfinite_rewards"):
        out_counts.setdefault(key, 0)
    return out_counts, summary
