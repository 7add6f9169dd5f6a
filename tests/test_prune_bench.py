"""benchmarks/bench_prune.py: the per-prompt selection it compares and its paired bootstrap."""

from __future__ import annotations

import importlib.util
import statistics
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.fixture(scope="module")
def bench():
    sys.path.insert(0, str(BENCH))  # the script imports its sibling `_common`
    try:
        spec = importlib.util.spec_from_file_location("bench_prune", BENCH / "bench_prune.py")
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
    finally:
        sys.path.remove(str(BENCH))
    return mod


def _row(pid: str, rewards: list[float | None], pruned: set[int] = frozenset()) -> dict:
    return {"id": pid, "candidates": [{"index": j, "reward": r, "pruned_at": 16 if j in pruned else None}
                                      for j, r in enumerate(rewards)]}


def test_selected_uses_finished_candidates_and_the_first_k(bench):
    rows = [_row("a", [1.0, 5.0, 3.0], pruned={1}), _row("b", [None, 2.0, 4.0]), {"id": "c", "candidates": []}]
    assert bench._selected(rows) == {"a": 3.0, "b": 4.0}  # a pruned or null-reward candidate is never selected
    assert bench._selected(rows, k=2) == {"a": 1.0, "b": 2.0}


def test_paired_ci_against_a_direct_computation(bench):
    plain = [_row("a", [0.0, 2.0, 1.0, 5.0]), _row("b", [1.0, 1.0, 3.0, 0.0]), _row("c", [2.0, 0.0, 0.0, 4.0])]
    # the pruned run kept other candidates: its picks 2.0, 3.0, 4.0
    pruned = [_row("a", [0.0, 2.0, 1.0, 5.0], pruned={3}), _row("b", [1.0, 1.0, 3.0, 0.0]),
              _row("c", [2.0, 0.0, 0.0, 4.0], pruned={0})]
    (share, lo, hi), (diff, dlo, dhi) = bench._paired_ci(plain, pruned, k=2, reps=2000)
    means = [2.0, 1.25, 1.5]
    gains = [2.0 - means[0], 3.0 - means[1], 4.0 - means[2]]
    full = [5.0 - means[0], 3.0 - means[1], 4.0 - means[2]]
    assert share == pytest.approx(sum(gains) / sum(full))
    assert diff == pytest.approx(statistics.fmean([2.0 - 2.0, 3.0 - 1.0, 4.0 - 2.0]))
    assert lo <= share <= hi and dlo <= diff <= dhi and 0 <= lo and hi <= 1.0 and dhi <= 2.0
    # without pruning, the pruned run is plain best-of-N: all of the gain, at every resample
    same = bench._paired_ci(plain, plain, k=4, reps=500)
    assert same[0] == pytest.approx((1.0, 1.0, 1.0)) and same[1] == pytest.approx((0.0, 0.0, 0.0))
