"""Speculative rejection (Sun et al., NeurIPS 2024): start N candidates, score the partial replies with the RM at
set token counts, and stop the weakest there, so only the promising ones run to `max_new_tokens`.

Schedule: `points` are token counts T1 < T2 < ... < max_new_tokens. Candidates are generated segment by segment
(0..T1, T1..T2, ..., Tk..max_new_tokens). At each point the candidates still running (not finished on EOS or a
stop string) are scored by the run's RM engine (prefix sharing included: a partial reply is a reply), ranked by
(reward desc, candidate index asc), and the best `kept_count(keep, m)` = ceil(keep * m), at least 1, of the m
running ones go on; the others are pruned there. A candidate that finished before a point is never pruned (it
costs nothing more) and is scored once, at the end, with the survivors.

`--prune-keep` without `--prune-at` has one automatic point, `auto_point(max_new_tokens)` = max_new_tokens // 8
(at least 1): early enough to save most of the tokens (N x T1 + kept x the rest), late enough that the RM sees a
sentence or two of the reply.

Seeding: candidate j's segment s is sampled with `segment_seed(run seed, prompt id, j, s)` and continues from
the candidate's kept tokens (hf and vllm feed prompt + kept token ids, so the continuation is exact), so an
output depends on nothing but the run seed, the prompt id and the candidate: not on the batch, shard or resume.

Pruned candidates are kept in the outputs (finish reason "pruned", `pruned_at`, their partial text, token count
and the rewards they got at that point); selection uses only finished candidates.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from bonsynth.data.records import PromptRecord
from bonsynth.generate.backends.base import (
    Completion,
    Continuation,
    GenerationBackend,
    GenerationResult,
    SamplingConfig,
    cut_at_stop,
)
from bonsynth.generate.seeding import segment_seed
from bonsynth.settings import FieldError

# Scores (prompts, partial texts) -> an object with `combined` and `per_model`, as `Scorer.score` returns; the step
# (`bonsynth.generate.step`, the one place that calls a scorer) passes its scorer's.
ScoreFn = Callable[[Sequence[Any], Sequence[str]], Any]

PRUNED = "pruned"  # the finish reason of a pruned candidate


def auto_point(max_new_tokens: int) -> int:
    """The one prune point used when only `--prune-keep` is given: an eighth of the reply budget, at least 1."""
    return max(1, max_new_tokens // 8)


def kept_count(keep: float, running: int) -> int:
    """How many of `running` candidates a point keeps: ceil(keep x running), at least 1 (0 of 0).

    The product is rounded to 9 decimals first, so 0.3 x 10 keeps 3, not the 4 that float rounding would give.
    """
    if running <= 0:
        return 0
    return min(running, max(1, math.ceil(round(keep * running, 9))))


@dataclass(frozen=True)
class PruneConfig:
    """The prune schedule: token counts `points` (increasing, each below max_new_tokens) and the share `keep`."""

    points: tuple[int, ...]
    keep: float

    @classmethod
    def resolve(cls, prune_at: Sequence[int] | None, prune_keep: float | None,
                max_new_tokens: int) -> PruneConfig | None:
        """The schedule a config asks for, or None (no pruning); a bad value is a one-line error naming the flag."""
        if prune_at is None and prune_keep is None:
            return None
        if prune_keep is None:
            raise FieldError("`prune_at` needs `prune_keep` F (the share of candidates kept at each point)")
        if isinstance(prune_keep, bool) or not isinstance(prune_keep, (int, float)) or not 0 < prune_keep <= 1:
            raise FieldError(f"`prune_keep` must be a share in (0, 1] (got {prune_keep!r})")
        if prune_at is None:
            points: tuple[int, ...] = (auto_point(max_new_tokens),)
            if points[0] >= max_new_tokens:
                raise FieldError(f"`prune_keep`: `max_new_tokens` {max_new_tokens} leaves no room for a prune point "
                                  "(needs at least 2)")
            return cls(points=points, keep=float(prune_keep))
        pts = list(prune_at)
        if not pts:
            raise FieldError("`prune_at` needs at least one token count, e.g. 16,48")
        if any(isinstance(t, bool) or not isinstance(t, int) or t < 1 for t in pts):
            raise FieldError(f"`prune_at` must be positive token counts (got {pts})")
        if any(b <= a for a, b in zip(pts, pts[1:], strict=False)):
            raise FieldError(f"`prune_at` must be strictly increasing (got {pts})")
        if pts[-1] >= max_new_tokens:
            raise FieldError(f"`prune_at` {pts[-1]} is not below `max_new_tokens` {max_new_tokens}: a point must "
                              "come before the end of the reply")
        return cls(points=tuple(pts), keep=float(prune_keep))

    @classmethod
    def for_budget(cls, prune_at: Sequence[int] | None, prune_keep: float | None,
                   max_new_tokens: int) -> PruneConfig | None:
        """The schedule for one reply budget, where budgets differ per request (`bonsynth serve`): points at or
        past the budget are dropped (a short reply is pruned only at the points it reaches), and a budget
        too short for any point is plain best-of-N (None)."""
        if prune_keep is None:
            return None
        if prune_at is None:
            return cls.resolve(None, prune_keep, max_new_tokens) if auto_point(max_new_tokens) < max_new_tokens else None
        points = [t for t in prune_at if t < max_new_tokens]
        return cls.resolve(points, prune_keep, max_new_tokens) if points else None

    def survivors(self, n: int) -> int:
        """The fewest of n candidates that can finish: every point keeps ceil(keep x running), at least 1."""
        for _ in self.points:
            n = kept_count(self.keep, n)
        return n


@dataclass
class _Candidate:
    tokens: tuple[int, ...] = ()
    text: str = ""
    num_tokens: int = 0
    finish_reason: str | None = None  # None while running
    pruned_at: int | None = None
    pruned_reward: float | None = None
    pruned_rewards: dict[str, float] | None = None

    @property
    def running(self) -> bool:
        return self.finish_reason is None




def _rank_key(reward: float, index: int) -> tuple[float, int]:
    """Best first, ties to the earlier candidate; a NaN/inf reward ranks last (a broken score never saves one)."""
    return (-reward if math.isfinite(reward) else math.inf, index)


def generate_pruned(batch: list[PromptRecord], backend: GenerationBackend, score: ScoreFn,
                    sampling: SamplingConfig, prune: PruneConfig) -> list[GenerationResult]:
    """N candidates per prompt, pruned at each point of the schedule; one result per prompt, in input order."""
    prepared = backend.prepare(batch, sampling)
    cands: list[list[_Candidate]] = [
        [] if p.result.skipped else [_Candidate() for _ in range(sampling.n)] for p in prepared
    ]
    ends = [*prune.points, sampling.max_new_tokens]
    done = 0
    for segment, end in enumerate(ends):
        todo = [(i, j) for i, row in enumerate(cands) for j, c in enumerate(row) if c.running]
        if not todo:
            break
        items = [Continuation(prompt=i, seed=segment_seed(sampling.seed, batch[i].id, j, segment),
                              tokens=cands[i][j].tokens, text=cands[i][j].text,
                              num_tokens=cands[i][j].num_tokens) for i, j in todo]
        for (i, j), ext in zip(todo, backend.extend(prepared, items, sampling, end - done), strict=True):
            c = cands[i][j]
            text, stopped = cut_at_stop(ext.text, sampling.stop)
            c.tokens, c.text, c.num_tokens = ext.tokens, text, ext.num_tokens
            if stopped or ext.finish_reason == "stop":
                c.finish_reason = "stop"
            elif ext.num_tokens >= sampling.max_new_tokens:
                c.finish_reason = "length"
            elif ext.num_tokens < end:  # a backend that gave fewer tokens than asked without saying why: it stopped
                c.finish_reason = "stop"
        done = end
        if segment < len(prune.points):
            _prune_point(batch, cands, score, prune.keep, end)
    return [_result(p, row) for p, row in zip(prepared, cands, strict=True)]


def _prune_point(batch: list[PromptRecord], cands: list[list[_Candidate]], score: ScoreFn, keep: float,
                 point: int) -> None:
    """Score the running candidates of every prompt that has more than it keeps (one scorer call for the
    whole batch, so the RM engine batches across prompts) and prune all but the best of each."""
    todo = [(i, j) for i, row in enumerate(cands)
            if sum(c.running for c in row) > kept_count(keep, sum(c.running for c in row))
            for j, c in enumerate(row) if c.running]
    if not todo:
        return
    scores = score([batch[i].prompt for i, _ in todo], [cands[i][j].text for i, j in todo])
    by_prompt: dict[int, list[tuple[int, int]]] = {}
    for k, (i, j) in enumerate(todo):
        by_prompt.setdefault(i, []).append((j, k))
    for i, members in by_prompt.items():
        ranked = sorted(members, key=lambda m: _rank_key(float(scores.combined[m[1]]), m[0]))
        for j, k in ranked[kept_count(keep, len(members)):]:
            c = cands[i][j]
            c.finish_reason, c.pruned_at = PRUNED, point
            c.pruned_reward = float(scores.combined[k])
            c.pruned_rewards = {name: float(vals[k]) for name, vals in scores.per_model.items()}


def _result(prepared, row: list[_Candidate]) -> GenerationResult:
    comps = tuple(Completion(text=c.text, finish_reason=c.finish_reason or "length", num_tokens=c.num_tokens,
                             pruned_at=c.pruned_at, pruned_reward=c.pruned_reward, pruned_rewards=c.pruned_rewards)
                  for c in row)
    return dataclasses.replace(prepared.result, completions=comps)
