"""Exact best-of-n statistics for one prompt's N scored candidates, and their summaries over prompts.

Best-of-n here means: draw n of the N candidates uniformly without replacement and keep the one the proxy RM
ranks first. Its expectation needs no sampling. Sort the candidates ascending by the proxy; the one at rank i
(1-based) is the best of a random n-subset exactly when it is in the subset and the other n - 1 come from the
i - 1 below it, so with probability C(i-1, n-1) / C(N, n). The weights are computed from exact integers
(`math.comb`, correctly rounded division), so N = 64 or 1024 is as exact as N = 4, and each prompt costs one
sort plus a dot product per n.

Ties in the proxy are broken as `bonsynth.select.selection` does: ranked by (reward desc, index asc), so among
equal rewards the lower index wins, i.e. sits higher in the ascending order.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from functools import lru_cache

import numpy as np


def n_grid(n_max: int) -> list[int]:
    """1, 2, 4, ... up to n_max, and n_max itself."""
    grid, n = [], 1
    while n <= n_max:
        grid.append(n)
        n *= 2
    if grid[-1] != n_max:
        grid.append(n_max)
    return grid


@lru_cache(maxsize=4096)
def _weights(size: int, n: int) -> np.ndarray:
    """P(rank i is the best of a uniform n-subset of `size`), i = 1..size, as float64 (read-only)."""
    total = math.comb(size, n)
    w = np.array([math.comb(i - 1, n - 1) / total for i in range(1, size + 1)], dtype=np.float64)
    w.setflags(write=False)
    return w


def bon_weights(size: int, n: int) -> np.ndarray:
    """The exact best-of-n weights over ascending ranks (they sum to 1); n is capped at `size`."""
    if size < 1:
        raise ValueError("need at least one candidate")
    return _weights(size, min(max(1, n), size))


def proxy_order(proxy: Sequence[float]) -> np.ndarray:
    """Candidate positions sorted ascending by the proxy, equal rewards with the LOWER index ranked higher."""
    p = np.asarray(proxy, dtype=np.float64)
    idx = np.arange(len(p))
    # lexsort sorts by the last key first: reward ascending, then index descending (so index asc wins ties).
    return np.lexsort((-idx, p))


def best_of_n(proxy: Sequence[float], gold: Sequence[float], n: int) -> tuple[float, float, float]:
    """(E[proxy of the proxy's pick], E[gold of the proxy's pick], E[gold of the gold's pick]) for best-of-n."""
    p = np.asarray(proxy, dtype=np.float64)
    g = np.asarray(gold, dtype=np.float64)
    w = bon_weights(len(p), n)
    order = proxy_order(p)
    return float(w @ p[order]), float(w @ g[order]), float(w @ np.sort(g))


def proxy_pick(proxy: Sequence[float]) -> int:
    """The candidate best-of-all selects: highest proxy, lowest index among ties."""
    return int(proxy_order(proxy)[-1])


def win_rate_vs_random(proxy: Sequence[float], gold: Sequence[float]) -> float:
    """Gold win rate of the proxy's best-of-N pick against a uniformly random candidate (itself included), ties half."""
    g = np.asarray(gold, dtype=np.float64)
    gb = g[proxy_pick(proxy)]
    return float((np.sum(gb > g) + 0.5 * np.sum(gb == g)) / len(g))


def bootstrap_ci(values: Sequence[float], *, resamples: int = 2000, seed: int = 0,
                 level: float = 0.95) -> tuple[float, float] | None:
    """Percentile bootstrap CI of the mean, resampling prompts (seeded, so a report is reproducible)."""
    v = np.asarray(values, dtype=np.float64)
    if v.size == 0:
        return None
    rng = np.random.default_rng(seed)
    means = np.empty(resamples)
    step = max(1, 2_000_000 // max(1, v.size))  # resamples per chunk: bounded memory for many prompts
    for lo in range(0, resamples, step):
        hi = min(resamples, lo + step)
        means[lo:hi] = v[rng.integers(0, v.size, size=(hi - lo, v.size))].mean(axis=1)
    alpha = (1 - level) / 2
    return float(np.quantile(means, alpha)), float(np.quantile(means, 1 - alpha))


def kendall_tau_b(x: Sequence[float], y: Sequence[float]) -> float | None:
    """Kendall's tau-b (ties corrected); None when either side is constant (tau undefined).

    Exact O(N^2) pair counting in numpy: for the tens to hundreds of candidates of one prompt it is about ten
    times faster than `scipy.stats.kendalltau` (per-call overhead) and gives the same value (tested).
    """
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if len(x) < 2:
        return None
    iu = np.triu_indices(len(x), 1)
    dx = np.sign(x[iu[1]] - x[iu[0]])
    dy = np.sign(y[iu[1]] - y[iu[0]])
    pairs = len(iu[0])
    denom = math.sqrt(float(np.count_nonzero(dx)) * float(np.count_nonzero(dy)))
    return float(np.dot(dx, dy)) / denom if denom and pairs else None


def _se(values: np.ndarray) -> float | None:
    return float(np.std(values, ddof=1) / math.sqrt(values.size)) if values.size > 1 else None


def curve(prompts: Sequence[tuple[Sequence[float], Sequence[float]]], n_max: int) -> list[dict]:
    """Per n of `n_grid(n_max)`: the means over prompts of proxy/gold/oracle best-of-n, and standard errors.

    `gold_gain_se` is the standard error of the paired per-prompt difference gold(n) - gold(1), the right
    yardstick for "did best-of-n beat n = 1"; `gold_step_se` that of gold(n) - gold(previous n), the yardstick
    for "did doubling n still help". Both are paired: prompts differ far more from each other than best-of-n
    moves any one of them, so the level's standard error (`gold_se`) would hide every step.
    """
    grid = n_grid(n_max)
    table = np.empty((len(prompts), len(grid), 3))
    for j, (p, g) in enumerate(prompts):
        p, g = np.asarray(p, dtype=np.float64), np.asarray(g, dtype=np.float64)
        order = proxy_order(p)
        by_proxy, gold_by_proxy, gold_sorted = p[order], g[order], np.sort(g)
        for k, n in enumerate(grid):
            w = bon_weights(len(p), n)
            table[j, k] = (w @ by_proxy, w @ gold_by_proxy, w @ gold_sorted)
    rows = []
    for k, n in enumerate(grid):
        col = table[:, k]
        rows.append({
            "n": n,
            "kl_bound": math.log(n) - (n - 1) / n,
            "proxy_mean": float(col[:, 0].mean()),
            "gold_mean": float(col[:, 1].mean()),
            "oracle_gold_mean": float(col[:, 2].mean()),
            "proxy_se": _se(col[:, 0]),
            "gold_se": _se(col[:, 1]),
            "gold_gain": float((col[:, 1] - table[:, 0, 1]).mean()),
            "gold_gain_se": _se(col[:, 1] - table[:, 0, 1]),
            "gold_step_se": _se(col[:, 1] - table[:, k - 1, 1]) if k > 0 else None,
        })
    return rows


def recommended_n(rows: Sequence[dict]) -> int:
    """The first n after which gold_mean stops rising by more than the standard error of that rise (or peaks).

    The rise from one n to the next is measured on the same prompts, so its standard error is the paired one
    (`gold_step_se`); rows from before that field fall back to the level's `gold_se`.
    """
    for a, b in zip(rows, rows[1:], strict=False):
        se = b.get("gold_step_se", b["gold_se"]) or 0.0
        if b["gold_mean"] - a["gold_mean"] <= se:
            return a["n"]
    return rows[-1]["n"]


def verdict(rows: Sequence[dict], judge: str, rec_n: int) -> str:
    """One plain sentence: does best-of-N help under this judge, and from which n on it stops helping."""
    first = rows[0]
    peak = max(rows, key=lambda r: r["gold_mean"])
    last = rows[-1]
    if len(rows) == 1:
        return f"With N = 1 there is no choice to make, so best-of-N cannot help or hurt under {judge}."

    def significant(r: dict) -> bool:
        return r["gold_gain_se"] is not None and abs(r["gold_gain"]) > 2 * r["gold_gain_se"]

    if peak["n"] == first["n"] or not (significant(peak) and peak["gold_gain"] > 0):
        worse = last["gold_gain"] < 0 and significant(last)
        return (f"Best-of-N does not help under {judge}: gold reward at n = {last['n']} is {last['gold_mean']:.4g} "
                f"against {first['gold_mean']:.4g} at n = 1"
                + (", significantly worse (more than 2 standard errors): the proxy picks against the judge."
                   if worse else ", a difference within 2 standard errors (a null result)."))
    text = (f"Best-of-N helps under {judge}: gold reward rises from {first['gold_mean']:.4g} at n = 1 to "
            f"{peak['gold_mean']:.4g} at n = {peak['n']}")
    if rec_n < last["n"]:
        text += f"; it stops rising by more than its standard error from n = {rec_n} on"
    if last["n"] != peak["n"] and peak["gold_mean"] - last["gold_mean"] > (last["gold_se"] or 0.0):
        text += f", and falls to {last['gold_mean']:.4g} at n = {last['n']} (over-optimisation of the proxy)"
    return text + "."
