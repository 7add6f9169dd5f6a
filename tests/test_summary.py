"""The streaming summary: same numbers as a plain list-based computation, in memory that does not grow
with the candidate texts; distinct-2 is exact below its cap and a close HyperLogLog estimate above it."""

from __future__ import annotations

import math
import os
import random
import statistics
import subprocess
import sys
import tracemalloc
from collections import Counter
from collections.abc import Iterator

import numpy as np
import pytest

from bonsynth.generate.summary import (
    DistinctNgrams,
    ExactSum,
    HyperLogLog,
    kl_bound,
    ngram_hashes,
    summarize,
)
from bonsynth.select.selection import distinct_n

WORDS = "the a ship storm sea crew gold map island wizard spell tower é 北京 knight dragon".split()


def _rows(count: int, seed: int = 0, n: int = 4) -> Iterator[dict]:
    """Candidates rows as the pipeline writes them, with ties, skips, empty texts and unselected prompts."""
    rng = random.Random(seed)
    for p in range(count):
        skipped = rng.random() < 0.05
        k = 0 if skipped else n
        cands = [{
            "index": i,
            "text": " ".join(rng.choice(WORDS) for _ in range(rng.randint(0, 30))),
            "reward": rng.choice([rng.gauss(0, 3), round(rng.gauss(0, 1), 1), 1e15 * rng.random(), -0.0]),
            "num_tokens": rng.randint(0, 64),
            "finish_reason": rng.choice(["stop", "length"]),
            "duplicate": rng.random() < 0.1,
        } for i in range(k)]
        selected = sorted(rng.sample(range(k), rng.randint(0, min(k, 2))))
        pair = rng.sample(range(k), 2) if k and rng.random() < 0.6 else None
        for i, c in enumerate(cands):  # a broken RM's NaN, written as null: never selected nor paired
            if i not in selected and i not in (pair or ()) and rng.random() < 0.05:
                c["reward"] = None
        yield {"id": f"p{p}", "prompt": "q", "prompt_truncated": rng.random() < 0.1, "skipped": skipped,
               "candidates": cands, "selected": selected, "pair": pair,
               "pair_skipped": None if pair else rng.choice(["margin", "too-few", None]),
               "below_min_reward": rng.randint(0, 2)}


def _straightforward(rows: list[dict], n: int) -> tuple[dict, dict]:
    """The same statistics from plain lists of everything (what the summary used to keep)."""
    cands = [c for r in rows for c in r["candidates"]]
    sel = [r["candidates"][i] for r in rows for i in r["selected"]]
    pairs = [(r["candidates"][r["pair"][0]]["reward"], r["candidates"][r["pair"][1]]["reward"])
             for r in rows if r["pair"]]
    rewards = [c["reward"] for c in cands if c["reward"] is not None]
    mean_all = statistics.fmean(rewards)
    mean_sel = statistics.fmean([c["reward"] for c in sel])
    counts = {
        "prompts": len(rows),
        "prompts_truncated": sum(bool(r["prompt_truncated"]) for r in rows),
        "prompts_skipped": sum(bool(r["skipped"]) for r in rows),
        "candidates": len(cands),
        "duplicates": sum(c["duplicate"] for c in cands),
        "selected": len(sel),
        "below_min_reward": sum(r["below_min_reward"] for r in rows),
        "pairs": len(pairs),
        "prompts_without_selection": sum(not r["selected"] for r in rows),
        "finish_reasons": dict(sorted(Counter(c["finish_reason"] for c in cands).items())),
        "pairs_skipped": dict(sorted(Counter(r["pair_skipped"] for r in rows
                                             if not r["pair"] and r["pair_skipped"]).items())),
        "nonfinite_rewards": sum(c["reward"] is None for c in cands),
    }
    summary = {
        "mean_reward_all": mean_all,
        "mean_reward_selected": mean_sel,
        "bon_gain": mean_sel - mean_all,
        "median_reward_all": float(statistics.median(rewards)),
        "mean_reward_chosen": statistics.fmean([c for c, _ in pairs]),
        "mean_reward_rejected": statistics.fmean([r for _, r in pairs]),
        "mean_pair_margin": statistics.fmean([c - r for c, r in pairs]),
        "kl_bound_nats": kl_bound(n),
        "distinct_2_all": distinct_n([c["text"] for c in cands], 2),
        "distinct_2_selected": distinct_n([c["text"] for c in sel], 2),
        "distinct_2_exact": True,
        "mean_candidate_tokens": statistics.fmean([c["num_tokens"] for c in cands]),
    }
    return counts, summary


@pytest.mark.parametrize("count", [1, 2, 7, 400])
def test_summary_equals_a_straightforward_computation(count):
    rows = list(_rows(count, seed=count))
    rows[0]["selected"] = rows[0]["selected"] or ([0] if rows[0]["candidates"] else [])
    if not any(r["pair"] for r in rows):
        rows[0]["candidates"] = rows[0]["candidates"] or list(next(_rows(1, seed=99))["candidates"])
        rows[0]["selected"], rows[0]["pair"] = [0], [0, 1]
    # Bit for bit, not approximately: the means are exact sums, the median the same middle values.
    assert summarize(iter(rows), 4) == _straightforward(rows, 4)


def test_summary_of_no_rows_and_of_rows_without_selection():
    counts, s = summarize(iter([]), 4)
    assert counts["prompts"] == 0 and s["mean_reward_all"] is None and s["median_reward_all"] is None
    assert s["distinct_2_all"] == 0.0 and s["distinct_2_exact"] is True and s["mean_pair_margin"] is None
    rows = [{"candidates": [{"text": "a b c", "reward": 2, "num_tokens": 3, "finish_reason": "stop"}],
             "selected": [], "pair": None}]
    counts, s = summarize(rows, 1)
    assert counts["prompts_without_selection"] == 1 and s["mean_reward_selected"] is None and s["bon_gain"] is None
    assert s["median_reward_all"] == 2.0 and s["distinct_2_all"] == 1.0 and s["distinct_2_selected"] == 0.0


def test_exact_sum_mean_is_fmean_bit_for_bit():
    rng = random.Random(3)
    cases = [
        [1e16, 1.0, -1e16, 1e-16] * 50,
        [rng.uniform(-1e308, 1e308) / 4 for _ in range(1000)],
        [rng.gauss(0, 1) * 10 ** rng.randint(-20, 20) for _ in range(1000)],
        [0.1] * 10_000,
        [-0.0, -0.0],
        [3, 4, 2**60 + 1],
        [math.inf, 1.0],
        [math.nan, 1.0],
    ]
    for xs in cases:
        acc = ExactSum()
        for x in xs:
            acc.add(x)
        got, want = acc.mean(), statistics.fmean(xs)
        assert got == want or (math.isnan(got) and math.isnan(want))
        assert math.copysign(1.0, got) == math.copysign(1.0, want)
    acc = ExactSum()
    acc.add(math.inf)
    acc.add(-math.inf)
    with pytest.raises(ValueError):  # as fsum: -inf + inf has no sum
        acc.mean()


def test_distinct_exact_path_equals_distinct_n():
    rng = random.Random(5)
    texts = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(0, 12))) for _ in range(300)]
    texts += ["", "one", "a  b\tc\nd\u00a0e\u2003f", "x\ud800y z", "a b a b", "ab c", "a bc"]
    for n in (1, 2, 3):
        counter = DistinctNgrams(n)
        for t in texts:
            counter.add(t)
        assert counter.exact
        assert counter.value() == distinct_n(texts, n)
    assert DistinctNgrams(2).value() == 0.0


def test_distinct_survives_flushes_into_the_compact_array(monkeypatch):
    # A small flush threshold makes the sorted-array merge run many times, with overlapping hashes.
    monkeypatch.setattr("bonsynth.generate.summary._FLUSH_AT", 7)
    rng = random.Random(6)
    texts = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(0, 20))) for _ in range(500)]
    counter = DistinctNgrams(2)
    for t in texts:
        counter.add(t)
    assert counter.exact and counter.value() == distinct_n(texts, 2)


def test_ngram_hashes_are_stable_across_processes():
    # Python's str hash is salted per process; the distinct counts must not depend on it (gather, resume).
    code = "from bonsynth.generate.summary import ngram_hashes; print(sorted(ngram_hashes('a b c a b é 北', 2)[1]))"
    outs = {
        subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                       env=dict(os.environ, PYTHONHASHSEED=seed)).stdout.strip()
        for seed in ("1", "2")
    }
    assert outs == {str(sorted(ngram_hashes("a b c a b é 北", 2)[1]))}
    total, hashes = ngram_hashes("a b c a b é 北", 2)
    assert total == 6 and len(hashes) == 5 and all(0 <= h < 2**64 for h in hashes)


@pytest.mark.parametrize("true_count", [50_000, 120_000])
def test_hyperloglog_estimate_above_a_tiny_cap_is_within_3_percent(true_count):
    rng = random.Random(true_count)
    texts = [f"w{i} v{i % 97}" for i in range(true_count)]  # one distinct bigram each
    texts += rng.choices(texts, k=true_count // 2)  # repeats must not count again
    counter = DistinctNgrams(2, cap=1000)
    for t in texts:
        counter.add(t)
    assert not counter.exact
    assert counter.total == len(texts)
    assert counter.distinct() == pytest.approx(true_count, rel=0.03)
    assert counter.value() == pytest.approx(true_count / len(texts), rel=0.03)


def test_hyperloglog_small_range_uses_linear_counting():
    rng = np.random.default_rng(0)
    for count in (10, 1000, 30_000):
        hll = HyperLogLog()
        hashes = rng.integers(0, 2**64, size=count, dtype=np.uint64, endpoint=False)
        hll.add_hashes(hashes)
        hll.add_hashes(hashes[: count // 2])
        assert hll.estimate() == pytest.approx(count, rel=0.03, abs=1)


def test_summary_flags_an_estimated_distinct_2():
    rows = [{"candidates": [{"text": f"u{i} v{i} w{i}", "reward": 0.0, "num_tokens": 3, "finish_reason": "stop"}],
             "selected": [0], "pair": None} for i in range(5000)]
    exact = summarize(rows, 1)[1]
    assert exact["distinct_2_exact"] is True and exact["distinct_2_all"] == 1.0
    est = summarize(rows, 1, distinct_cap=500)[1]
    assert est["distinct_2_exact"] is False
    assert est["distinct_2_all"] == pytest.approx(1.0, rel=0.03) and est["distinct_2_all"] <= 1.0


def _long_text_rows(count: int, seed: int) -> Iterator[dict]:
    """Rows of ~1 KB candidate texts, all different, drawn from 40 long words (at most 1,600 bigrams):
    keeping the texts would cost ~2 KB per row, while the distinct-bigram hashes stay the same size."""
    rng = random.Random(seed)
    vocab = [f"{w}{'x' * 80}{i}" for i, w in enumerate(WORDS * 3)][:40]
    for p in range(count):
        cands = [{"text": " ".join(rng.choices(vocab, k=12)), "reward": rng.random(), "num_tokens": 12,
                  "finish_reason": "stop"} for _ in range(2)]
        yield {"id": f"p{p}", "candidates": cands, "selected": [0], "pair": [0, 1]}


def _peak_bytes(count: int) -> int:
    tracemalloc.start()
    try:
        counts, _ = summarize(_long_text_rows(count, seed=count), 2)  # a generator: nothing is listed up front
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
        assert counts["prompts"] == count


@pytest.mark.slow
def test_summary_memory_does_not_grow_with_the_texts():
    small, large = _peak_bytes(1_500), _peak_bytes(15_000)
    # The rewards array is the one structure that grows: 8 bytes per candidate, counted twice for the
    # copy a resize may make. Keeping the texts would add ~27,000 texts × ~1 KB = ~27 MB.
    rewards_growth = 2 * 8 * (15_000 - 1_500) * 2
    assert large - small < rewards_growth + 512 * 1024, (small, large)
