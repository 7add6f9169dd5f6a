"""The one best-of-N step: a batch of prompts -> N candidates each -> rewards -> selection -> rows.

Every engine runs this same step: `bonsynth generate` batch by batch, `BestOfN`, the Ray actors (which split
it into its generate and score halves across actor pools) and the server. A new feature of the step (a new
way to sample, to score, to select) is added here once and every engine has it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from bonsynth.data.records import PromptRecord
from bonsynth.generate import outputs
from bonsynth.generate.backends.base import GenerationBackend, GenerationResult, SamplingConfig
from bonsynth.generate.prune import PruneConfig, generate_pruned
from bonsynth.select.selection import SelectionConfig, select_candidates


@runtime_checkable
class Scorer(Protocol):
    """What the step needs from a reward engine (`RewardEnsemble` is the one bonsynth builds).

    `score` returns an object with `combined` (one reward per response) and `per_model` (raw rewards per RM
    name), in the order of its inputs.
    """

    def score(self, prompts: Sequence[Any], responses: Sequence[str]) -> Any: ...

    def describe(self) -> list[dict]: ...

    def close(self) -> None: ...


@dataclass
class StepScores:
    """Rewards of every candidate of a batch, in `flatten` order (what `score_results` returns)."""

    combined: list[float]
    per_model: dict[str, list[float]]


def flatten(batch: Sequence[PromptRecord], results: Sequence[GenerationResult]) -> tuple[list, list[str]]:
    """(prompt, candidate text) lists, candidate by candidate, in the order the rewards come back."""
    prompts = [rec.prompt for rec, res in zip(batch, results, strict=True) for _ in res.completions]
    texts = [c.text for res in results for c in res.completions]
    return prompts, texts


def score_results(scorer: Scorer, batch: Sequence[PromptRecord], results: Sequence[GenerationResult]) -> Any:
    """All candidates of a batch in one scorer call (one call lets the RM engine batch across prompts).

    A pruned candidate was scored where it stopped: it keeps those rewards and is not scored again.
    """
    prompts, texts = flatten(batch, results)
    comps = [c for res in results for c in res.completions]
    if all(c.pruned_at is None for c in comps):
        return scorer.score(prompts, texts)
    live = [k for k, c in enumerate(comps) if c.pruned_at is None]
    scores = scorer.score([prompts[k] for k in live], [texts[k] for k in live])
    combined = [float(c.pruned_reward) if c.pruned_reward is not None else math.nan for c in comps]
    per_model = {name: [math.nan] * len(comps) for name in scores.per_model}
    for k, c in enumerate(comps):
        for name, value in (c.pruned_rewards or {}).items():
            per_model.setdefault(name, [math.nan] * len(comps))[k] = value
    for pos, k in enumerate(live):
        combined[k] = float(scores.combined[pos])
        for name, vals in scores.per_model.items():
            per_model[name][k] = float(vals[pos])
    return StepScores(combined=combined, per_model=per_model)


def generate_candidates(
    batch: list[PromptRecord],
    backend: GenerationBackend,
    sampling: SamplingConfig,
    prune: PruneConfig | None = None,
    scorer: Scorer | None = None,
) -> list[GenerationResult]:
    """N candidates per prompt: in one go, or with `prune` segment by segment, the weakest stopped at each
    point (`bonsynth.generate.prune`; the scorer then scores the partial replies)."""
    if prune is None:
        return backend.generate(batch, sampling)
    if scorer is None:
        raise ValueError("pruned generation needs the scorer")
    return generate_pruned(batch, backend, scorer.score, sampling, prune)


def best_of_n_step(
    batch: list[PromptRecord],
    backend: GenerationBackend,
    scorer: Scorer,
    sampling: SamplingConfig,
    selection: SelectionConfig,
    prune: PruneConfig | None = None,
) -> dict[str, list[dict]]:
    """Generate (pruning as `prune` says), score and select one batch; returns the rows of candidates/sft/dpo.jsonl."""
    results = generate_candidates(batch, backend, sampling, prune, scorer)
    scores = score_results(scorer, batch, results)
    return build_rows(batch, results, scores.combined, scores.per_model, selection, pruning=prune is not None)


def finite_or_none(x: float) -> float | None:
    """A reward as written to disk: strict JSON has no NaN or Infinity, so a non-finite reward is `null`."""
    return x if math.isfinite(x) else None


def build_rows(
    batch: list[PromptRecord],
    results: list[GenerationResult],
    rewards: list[float],
    per_model: dict[str, list[float]],
    selection: SelectionConfig,
    *,
    pruning: bool = False,
) -> dict[str, list[dict]]:
    """Turn one batch's generations and rewards into rows for the three data files.

    With `pruning`, every candidate row says where it was pruned (`pruned_at`, null for finished ones) and
    selection sees only the finished candidates.
    """
    rows: dict[str, list[dict]] = {name: [] for name in outputs.DATA_FILES}
    k = 0
    for rec, res in zip(batch, results, strict=True):
        comps = res.completions
        r = [float(x) for x in rewards[k : k + len(comps)]]
        per = {name: vals[k : k + len(comps)] for name, vals in per_model.items()}
        k += len(comps)
        texts = [c.text for c in comps]
        sel = _select_finished(comps, texts, r, selection)
        dup = set(sel.duplicates)
        cand_rows = []
        for i, c in enumerate(comps):
            cand_rows.append({
                "index": i,
                "text": c.text,
                "reward": finite_or_none(r[i]),
                "rewards": {name: finite_or_none(float(vals[i])) for name, vals in per.items()},
                "finish_reason": c.finish_reason,
                "num_tokens": c.num_tokens,
                "duplicate": i in dup,
            })
            if pruning:
                cand_rows[-1]["pruned_at"] = c.pruned_at
        row = {
            "id": rec.id,
            "prompt": rec.prompt,
            "prompt_tokens": res.prompt_tokens,
            "prompt_truncated": res.prompt_truncated,
            "skipped": res.skipped,
            "candidates": cand_rows,
            "selected": sel.selected,
            "pair": list(sel.pair) if sel.pair else None,
            "pair_skipped": sel.skipped_pair_reason,
            "below_min_reward": sel.below_min_reward,
        }
        if sel.nonfinite:
            row["nonfinite_rewards"] = len(sel.nonfinite)
        rows[outputs.CANDIDATES].append(row)
        for i in sel.selected:
            rows[outputs.SFT].append(outputs.sft_row(rec, texts[i], r[i]))
        if sel.pair:
            c, j = sel.pair
            rows[outputs.DPO].append(outputs.dpo_row(rec, texts[c], texts[j], r[c], r[j]))
    return rows


def _select_finished(comps: Sequence, texts: list[str], rewards: list[float], selection: SelectionConfig):
    """`select_candidates` over the finished candidates only (a pruned partial reply is never training data),
    with indices mapped back to the prompt's candidate list."""
    keep = [i for i, c in enumerate(comps) if c.pruned_at is None]
    if len(keep) == len(comps):
        return select_candidates(texts, rewards, [c.num_tokens for c in comps], selection)
    sel = select_candidates([texts[i] for i in keep], [rewards[i] for i in keep],
                            [comps[i].num_tokens for i in keep], selection)
    sel.selected = [keep[j] for j in sel.selected]
    sel.duplicates = [keep[j] for j in sel.duplicates]
    sel.nonfinite = [keep[j] for j in sel.nonfinite]
    if sel.pair:
        sel.pair = (keep[sel.pair[0]], keep[sel.pair[1]])
    return sel
